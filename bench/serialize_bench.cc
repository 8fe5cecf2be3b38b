// What it costs to build each member's `matched` event of a large match:
// matchd serializes the match once and gives every member a small header
// plus the same refcounted bytes (service/events.h); the naive way
// serializes the whole MatchEvent again for every member.
//
//   build/bench/serialize_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <string>

#include "absl/time/clock.h"
#include "service/events.h"

namespace {

namespace mm = ::matchmaking::v1;

mm::Match MakeMatch(int players) {
  mm::Match m;
  m.set_match_id("m-4f1c2a9e0b7d3c58a1e2f3b4");
  m.set_queue("royale");
  const int teams = players >= 10 ? players / 4 : 2;
  for (int t = 0; t < teams; ++t) m.add_teams();
  for (int i = 0; i < players; ++i) {
    mm::Player* p = m.mutable_teams(i % teams)->add_players();
    p->set_id("player-" + std::to_string(100000 + i));
    p->set_rating(1500 + i);
    (*p->mutable_latency_ms())["eu-west"] = 20 + i % 50;
    (*p->mutable_attributes())["language"] = "en";
    m.add_ticket_ids(std::string(32, 'a' + i % 6));
  }
  return m;
}

void SetCounters(benchmark::State& state, int members, size_t bytes) {
  const double events = static_cast<double>(state.iterations()) * members;
  state.counters["time_per_member"] =
      benchmark::Counter(events, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["bytes_per_event"] = static_cast<double>(bytes) / events;
}

// matchd's way: one serialization per match, a header per member.
void BM_SharedBody(benchmark::State& state) {
  const int members = static_cast<int>(state.range(0));
  const mm::Match match = MakeMatch(members);
  const absl::Time now = absl::Now();
  size_t bytes = 0;
  for (auto _ : state) {
    auto shared = matchd::MakeSharedMatch(match);
    for (int i = 0; i < members; ++i) {
      grpc::ByteBuffer event = matchd::MatchedEventBytes(match.ticket_ids(i), 7, now, shared);
      bytes += event.Length();
      benchmark::DoNotOptimize(event);
    }
  }
  SetCounters(state, members, bytes);
}

// The naive way: each member's MatchEvent serialized in full.
void BM_PerMemberSerialization(benchmark::State& state) {
  const int members = static_cast<int>(state.range(0));
  const mm::Match match = MakeMatch(members);
  const absl::Time now = absl::Now();
  size_t bytes = 0;
  for (auto _ : state) {
    for (int i = 0; i < members; ++i) {
      mm::MatchEvent ev;
      ev.set_ticket_id(match.ticket_ids(i));
      ev.set_seq(7);
      *ev.mutable_time() = matchd::ToProtoTime(now);
      *ev.mutable_matched()->mutable_match() = match;
      grpc::ByteBuffer event = matchd::EventBytes(ev);
      bytes += event.Length();
      benchmark::DoNotOptimize(event);
    }
  }
  SetCounters(state, members, bytes);
}

BENCHMARK(BM_SharedBody)->Arg(2)->Arg(10)->Arg(100);
BENCHMARK(BM_PerMemberSerialization)->Arg(2)->Arg(10)->Arg(100);

}  // namespace

BENCHMARK_MAIN();
