// Speed of the matching core (matcher::Pool) on a steady stream of tickets,
// driven the way the server drives it (service/queue_runtime.cc RunPool):
// each arrival is an Add followed by Process(now), and Process also runs at
// NextWakeup() whenever that comes before the next arrival. Time is virtual:
// tickets arrive every 1/rate seconds of it, so the pool holds what a real
// queue at that rate would hold, whatever the speed of the machine.
//
// Heap allocations are counted by replacing the global operator new/delete
// (all forms) in this binary; `allocs/ticket` is their number in the timed
// part / tickets, and must be 0 in steady state.
//
//   build/bench/pool_bench --benchmark_min_time=2 --benchmark_counters_tabular=true
//   build/bench/pool_bench --digest   # fingerprint of the matches of fixed seeded streams
//
// --digest runs each scenario on a fixed stream from a fixed seed and prints a
// hash of everything the pool reported (teams, times, spreads, regions,
// expiries), then again with churn: short expiries, callers that leave
// (StillWaiting false), Remove and Explain calls, and an unrated queue. More
// streams cover the rules' other features: partitions and latency regions,
// partial lobbies, the youngest-wait basis, a custom rule (crossplay), and
// arrivals 1/3000 s apart, whose times are not whole nanoseconds. A change
// that must not alter matching (speed, memory) must leave every digest as it
// was; compare the output before and after.
//
// CI smoke run (about a second; checks that it runs, not its speed: the
// warmup is too short for steady state):
//   build/bench/pool_bench --smoke
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <new>
#include <random>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "absl/time/time.h"
#include "matcher/pool.h"
#include "matcher/rules/crossplay_rule.h"

// ---------------------------------------------------------------------------
// Counting allocator: every global operator new in the process counts one.

namespace {

std::atomic<uint64_t> g_allocations{0};

void* CountedAlloc(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size == 0 ? 1 : size);
}

void* CountedAlignedAlloc(std::size_t size, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(align);
  // aligned_alloc wants a size that is a multiple of the alignment.
  const std::size_t rounded = (size + a - 1) / a * a;
  return std::aligned_alloc(a, rounded == 0 ? a : rounded);
}

// Out of line: GCC otherwise sees free() on a pointer from operator new once
// the replaced operator delete is inlined, and warns (-Wmismatched-new-delete).
[[gnu::noinline]] void Release(void* p) noexcept { std::free(p); }

uint64_t Allocations() { return g_allocations.load(std::memory_order_relaxed); }

}  // namespace

void* operator new(std::size_t size) {
  if (void* p = CountedAlloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = CountedAlloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return CountedAlloc(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return CountedAlloc(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
  if (void* p = CountedAlignedAlloc(size, align)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) {
  if (void* p = CountedAlignedAlloc(size, align)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAlignedAlloc(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAlignedAlloc(size, align);
}

void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, std::size_t) noexcept { Release(p); }
void operator delete[](void* p, std::size_t) noexcept { Release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }

// ---------------------------------------------------------------------------

namespace {

using matchd::matcher::CrossplayRule;
using matchd::matcher::Explanation;
using matchd::matcher::FormedMatch;
using matchd::matcher::Pool;
using matchd::matcher::PoolListener;
using matchd::matcher::QueueRules;
using matchd::matcher::TicketKey;
using matchd::matcher::TicketSpec;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

// Distinct arrivals before the stream repeats (with fresh keys and times).
constexpr size_t kStreamLength = size_t{1} << 16;
constexpr uint64_t kSeed = 20240611;
// Arrivals before the timed part of each run (--smoke: kSmokeWarmupTickets,
// too few for steady state).
constexpr int64_t kWarmupTickets = 20000;
constexpr int64_t kSmokeWarmupTickets = 1000;
int64_t g_warmup_tickets = kWarmupTickets;

struct Scenario {
  const char* name;
  QueueRules rules;
  bool parties;  // party sizes 1..5 at 65/20/5/3/7 %; else all solo
  // Partitions 0..partitions-1 at 60/25/15 % (or evenly past 3); 1: none.
  int partitions = 1;
  // With rules.custom_rule: each party's crossplay kinds (mouse 70 %).
  bool crossplay = false;
};

QueueRules Rated(int team_size, int max_party_size) {
  QueueRules rules;
  rules.team_count = 2;
  rules.team_size = team_size;
  rules.max_party_size = max_party_size;
  rules.rated = true;
  rules.initial_window = 50;
  rules.widen_per_second = 25;
  rules.max_window = 600;
  rules.max_wait = absl::Seconds(120);
  return rules;
}

// Three regions; a player is near one (10-60 ms) and reaches each of the
// others with probability 60 % (40-200 ms).
QueueRules WithRegions(QueueRules rules) {
  rules.region_count = 3;
  rules.max_latency_ms = 40;
  rules.latency_widen_per_second = 10;
  rules.latency_cap_ms = 150;
  return rules;
}

Scenario OneVsOneRegions() {
  Scenario s{"1v1_regions", WithRegions(Rated(1, 1)), false};
  s.partitions = 3;
  return s;
}

// Initial windows from the arrival rate (QueueRules::wait_cost): about 20
// rating points near the mean at 1000 arrivals/s.
QueueRules WithWaitCost(QueueRules rules) {
  rules.initial_window = 0;
  rules.wait_cost = 1000;
  return rules;
}

const Scenario kScenarios[] = {
    {"1v1", Rated(1, 1), false},
    {"5v5_solo", Rated(5, 1), false},
    {"5v5_parties", Rated(5, 5), true},
    // Partitions and latency regions (widening limit).
    OneVsOneRegions(),
    {"1v1_cost", WithWaitCost(Rated(1, 1)), false},
};
// kScenarios[0..kBaseScenarios): the main --digest streams' scenarios (the
// last one has its own streams, see FeatureScenarios).
constexpr int kBaseScenarios = 3;

// For --digest only: an unrated queue (groups by age, not rating).
Scenario UnratedScenario() {
  QueueRules rules;
  rules.team_count = 3;
  rules.team_size = 4;
  rules.max_party_size = 3;
  return {"3x4_unrated", rules, true};
}

// For --digest only: the rules' other features, each with its number of
// arrivals per stream (fewer where regions make evaluations slow) and its
// arrival rates without and with churn (1/3000 s or 1/30 s apart: times in
// quarter nanoseconds, not whole ones).
struct FeatureScenario {
  Scenario scenario;
  int64_t tickets;
  int rate = 1000;
  int churn_rate = 3000;
};
std::vector<FeatureScenario> FeatureScenarios() {
  std::vector<FeatureScenario> scenarios;
  scenarios.push_back({OneVsOneRegions(), 100'000});
  {
    // Free-for-all of 8 that starts with 4+ players after 5 s.
    QueueRules rules = Rated(1, 1);
    rules.team_count = 8;
    rules.initial_window = 100;
    rules.min_players = 4;
    rules.partial_after = absl::Seconds(5);
    scenarios.push_back({{"ffa8_partial", rules, false}, 300'000});
  }
  {
    QueueRules rules = Rated(5, 5);
    rules.wait_basis = QueueRules::WaitBasis::kYoungestWait;
    scenarios.push_back({{"5v5p_youngest", rules, true}, 300'000});
  }
  {
    // Everything at once: partitions, regions, partial lobbies (6+ players
    // after 15 s) and crossplay with a penalty.
    QueueRules rules = WithRegions(Rated(5, 5));
    rules.min_players = 6;
    rules.partial_after = absl::Seconds(15);
    rules.custom_rule = std::make_shared<CrossplayRule>("input", "mouse", 150, true);
    Scenario s{"5v5p_all", rules, true};
    s.partitions = 2;
    s.crossplay = true;
    scenarios.push_back({s, 20'000});
  }
  {
    // Unrated with regions, partitions and crossplay kinds kept apart.
    QueueRules rules = WithRegions(QueueRules());
    rules.team_count = 4;
    rules.custom_rule = std::make_shared<CrossplayRule>("input", "mouse", 0, false);
    Scenario s{"ffa4_unrated_reg", rules, false};
    s.partitions = 2;
    s.crossplay = true;
    scenarios.push_back({s, 300'000});
  }
  {
    // Parties in a thin queue with a slow window: many groups start as
    // partial lobbies (6+ players after 5 s), whose teams can be too small for
    // the anchor's own party.
    QueueRules rules = Rated(5, 5);
    rules.widen_per_second = 5;
    rules.max_window = 300;
    rules.min_players = 6;
    rules.partial_after = absl::Seconds(5);
    scenarios.push_back({{"5v5p_partial", rules, true}, 100'000, 20, 30});
  }
  {
    scenarios.push_back({kScenarios[4], 300'000});
    QueueRules rules = WithWaitCost(Rated(5, 5));
    rules.wait_cost = 20000;
    scenarios.push_back({{"5v5p_cost", rules, true}, 300'000});
  }
  return scenarios;
}

struct Arrival {
  double rating;
  int party_size;
  uint64_t partition = 0;
  uint64_t custom = 0;
  std::array<uint16_t, QueueRules::kMaxRegions> latency_ms = TicketSpec::FilledUnreachable();
};

// Ratings N(1500, 350); a party's members lie within +-100 of the party's
// centre and the ticket's rating is their mean.
std::vector<Arrival> MakeStream(const Scenario& scenario, size_t length, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> centre(1500, 350);
  std::uniform_real_distribution<double> offset(-100, 100);
  std::discrete_distribution<int> party({65, 20, 5, 3, 7});  // index + 1 players
  std::vector<Arrival> stream;
  stream.reserve(length);
  for (size_t i = 0; i < length; ++i) {
    Arrival a{centre(rng), 1};
    if (scenario.parties) {
      a.party_size = std::min(party(rng) + 1, scenario.rules.max_party_size);
      if (a.party_size > 1) {
        double sum = 0;
        for (int m = 0; m < a.party_size; ++m) sum += a.rating + offset(rng);
        a.rating = sum / a.party_size;
      }
    }
    // Only scenarios with these features draw more numbers, so that the
    // others' streams stay as they were.
    if (scenario.partitions > 1) {
      const int p = std::uniform_int_distribution<int>(0, 99)(rng);
      a.partition = scenario.partitions > 3 ? static_cast<uint64_t>(p % scenario.partitions)
                    : p < 60                ? 0
                    : p < 85                ? 1 % scenario.partitions
                                            : 2 % scenario.partitions;
    }
    const int regions = scenario.rules.region_count;
    if (regions > 0) {
      const int home = std::uniform_int_distribution<int>(0, regions - 1)(rng);
      for (int r = 0; r < regions; ++r) {
        if (r == home) {
          a.latency_ms[r] = static_cast<uint16_t>(std::uniform_int_distribution<int>(10, 60)(rng));
        } else if (std::uniform_int_distribution<int>(0, 99)(rng) < 60) {
          a.latency_ms[r] = static_cast<uint16_t>(std::uniform_int_distribution<int>(40, 200)(rng));
        }
      }
    }
    if (scenario.crossplay) {
      // Bit 0: a mouse player; bit 1: a controller player (CrossplayRule).
      for (int m = 0; m < a.party_size; ++m) {
        a.custom |= std::uniform_int_distribution<int>(0, 99)(rng) < 70 ? CrossplayRule::kFirstKind
                                                                        : CrossplayRule::kOtherKind;
      }
    }
    stream.push_back(a);
  }
  return stream;
}

// 64-bit FNV-1a over the words fed to it.
class Digest {
 public:
  void Add(uint64_t word) {
    for (int i = 0; i < 8; ++i) {
      hash_ ^= (word >> (8 * i)) & 0xff;
      hash_ *= 0x100000001b3ULL;
    }
  }
  void AddDouble(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, sizeof bits);
    Add(bits);
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// Feeds a pool like the server's event loop and listens to it like a
// listener whose callers never leave; or, with a churn seed (--digest only),
// whose callers do (see Churn).
class Driver final : public PoolListener {
 public:
  Driver(const Scenario& scenario, const std::vector<Arrival>& stream, double rate,
         uint64_t churn_seed = 0)
      : pool_(scenario.rules, this),
        stream_(stream),
        interval_(absl::Seconds(1) / rate),
        max_wait_(scenario.rules.max_wait),
        churn_(churn_seed != 0),
        // Hash what only these features report (so that the other digests
        // stay comparable with runs from before they existed).
        features_(scenario.rules.region_count > 0 || scenario.rules.custom_rule != nullptr),
        rng_(churn_seed) {}

  // One arrival: first the wakeups due before it, then Add and Process.
  void Step() {
    now_ += interval_;
    for (absl::Time wake = pool_.NextWakeup(); wake < now_; wake = pool_.NextWakeup()) {
      pool_.Process(wake);
    }
    const Arrival& a = stream_[next_ % stream_.size()];
    ++next_;
    TicketSpec spec;
    spec.key = next_;
    spec.party_size = a.party_size;
    spec.rating = a.rating;
    spec.enqueued_at = now_;
    spec.expires_at = now_ + max_wait_;
    spec.partition = a.partition;
    spec.custom = a.custom;
    spec.latency_ms = a.latency_ms;
    if (churn_) {
      spec.expires_at = now_ + absl::Milliseconds(Uniform(500, 20000));
      if (Uniform(0, 99) < 5) gone_.insert(spec.key);
    }
    if (!pool_.Add(spec).ok()) std::abort();
    pool_.Process(now_);
    pool_size_sum_ += pool_.tickets_waiting();
    if (churn_) Churn();
  }

  bool StillWaiting(TicketKey key) override { return !churn_ || gone_.count(key) == 0; }
  void OnMatched(const FormedMatch& match) override {
    ++matches_;
    wait_sum_ += match.mean_wait;
    for (const auto& team : match.teams) {
      for (TicketKey key : team) digest_.Add(key);
      digest_.Add(~uint64_t{0});  // team boundary
    }
    digest_.Add(static_cast<uint64_t>(absl::ToUnixNanos(match.formed_at)));
    // In absl's quarter nanoseconds: a mean need not be whole nanoseconds.
    absl::Duration rest;
    digest_.Add(static_cast<uint64_t>(
        absl::IDivDuration(match.mean_wait, absl::Nanoseconds(1) / 4, &rest)));
    digest_.AddDouble(match.rating_spread);
    digest_.AddDouble(match.team_gap);
    if (features_) {
      digest_.Add(static_cast<uint64_t>(match.region));
      digest_.AddDouble(match.max_latency_ms);
    }
  }
  void OnExpired(TicketKey key) override {
    ++expired_;
    digest_.Add(key ^ 0x8000000000000000ULL);
  }
  void OnWithdrawn(TicketKey key) override {
    if (gone_.erase(key) == 0) std::abort();
    digest_.Add(key ^ 0x4000000000000000ULL);
  }

  uint64_t matches() const { return matches_; }
  uint64_t expired() const { return expired_; }
  uint64_t pool_size_sum() const { return pool_size_sum_; }
  absl::Duration wait_sum() const { return wait_sum_; }  // over matches, of their mean wait
  uint64_t digest() const { return digest_.value(); }

 private:
  Pool pool_;
  const std::vector<Arrival>& stream_;
  const absl::Duration interval_;
  const absl::Duration max_wait_;
  absl::Time now_ = kStart;
  uint64_t next_ = 0;
  uint64_t matches_ = 0;
  uint64_t expired_ = 0;
  uint64_t pool_size_sum_ = 0;
  absl::Duration wait_sum_;
  Digest digest_;
  const bool churn_;
  const bool features_;
  std::mt19937_64 rng_;
  std::unordered_set<TicketKey> gone_;  // StillWaiting says false

 private:
  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  // After an arrival: now and then, Remove or Explain a recent ticket.
  void Churn() {
    const TicketKey key = next_ - std::min<TicketKey>(next_ - 1, Uniform(0, 200));
    const int64_t action = Uniform(0, 99);
    if (action < 5 && pool_.Remove(key)) {
      gone_.erase(key);
      pool_.Process(now_);
      digest_.Add(key ^ 0x2000000000000000ULL);
    } else if (action < 10 && pool_.Contains(key)) {
      const Explanation e = pool_.Explain(key, now_);
      digest_.Add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(e.waited)));
      digest_.AddDouble(e.window);
      digest_.Add(static_cast<uint64_t>(e.players_waiting));
      digest_.Add(static_cast<uint64_t>(e.blocker));
      digest_.AddDouble(e.best_spread);
      digest_.Add(e.acceptable_at.has_value()
                      ? static_cast<uint64_t>(absl::ToUnixNanos(*e.acceptable_at))
                      : 1);
      if (features_) {
        digest_.AddDouble(e.penalty);
        digest_.Add(static_cast<uint64_t>(e.region));
        digest_.AddDouble(e.worst_latency_ms);
        digest_.AddDouble(e.latency_limit_ms);
      }
    }
  }
};

const std::vector<Arrival>& StreamFor(int index) {
  static const auto* const kStreams = [] {
    auto* streams = new std::vector<std::vector<Arrival>>();
    for (const Scenario& s : kScenarios) streams->push_back(MakeStream(s, kStreamLength, kSeed));
    return streams;
  }();
  return (*kStreams)[index];
}

// range(0): scenario index; range(1): arrivals per second of virtual time.
void BM_Pool(benchmark::State& state) {
  const int index = static_cast<int>(state.range(0));
  const double rate = static_cast<double>(state.range(1));
  const Scenario& scenario = kScenarios[index];
  Driver driver(scenario, StreamFor(index), rate);
  // Warm up until the pool's size and every container's capacity have
  // reached steady state (waits are well under a second here: see wait_ms).
  for (int64_t i = 0; i < g_warmup_tickets; ++i) driver.Step();

  const uint64_t matches_before = driver.matches();
  const uint64_t expired_before = driver.expired();
  const uint64_t pool_sum_before = driver.pool_size_sum();
  const absl::Duration wait_sum_before = driver.wait_sum();
  const uint64_t allocations_before = Allocations();
  for (auto _ : state) driver.Step();
  const uint64_t allocations = Allocations() - allocations_before;

  const double tickets = static_cast<double>(state.iterations());
  state.SetLabel(scenario.name);
  state.counters["tickets/s"] = benchmark::Counter(tickets, benchmark::Counter::kIsRate);
  state.counters["allocs/ticket"] = static_cast<double>(allocations) / tickets;
  const uint64_t matches = driver.matches() - matches_before;
  state.counters["matches"] = static_cast<double>(matches);
  state.counters["wait_ms"] =
      matches == 0 ? 0
                   : absl::ToDoubleMilliseconds(driver.wait_sum() - wait_sum_before) /
                         static_cast<double>(matches);
  state.counters["expired"] = static_cast<double>(driver.expired() - expired_before);
  state.counters["pool"] = static_cast<double>(driver.pool_size_sum() - pool_sum_before) / tickets;
}

void Args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"scenario", "rate"});
  for (int i = 0; i < kBaseScenarios; ++i) b->Args({i, 1000});
  // Ten times the arrival rate: a fuller pool (not ten times: matches form sooner).
  b->Args({0, 10000});
  b->Args({2, 10000});
  // Partitions and latency regions.
  b->Args({3, 1000});
  // Windows from the arrival rate.
  b->Args({4, 1000});
}
BENCHMARK(BM_Pool)->Apply(Args);

// Arrivals per --digest stream.
constexpr int64_t kTickets = 300'000;

// Fingerprints of fixed seeded streams (see the top of the file).
void PrintDigests() {
  auto run = [](const Scenario& scenario, uint64_t seed, int rate, bool churn,
                int64_t tickets = kTickets) {
    const absl::Time start = absl::Now();
    const std::vector<Arrival> stream = MakeStream(scenario, tickets, seed);
    Driver driver(scenario, stream, rate, churn ? seed + 100 : 0);
    for (int64_t t = 0; t < tickets; ++t) driver.Step();
    std::printf("%-16s rate=%-6d churn=%d tickets=%" PRId64 " matches=%" PRIu64 " expired=%" PRIu64
                " digest=%016" PRIx64 "\n",
                scenario.name, rate, churn, tickets, driver.matches(), driver.expired(),
                driver.digest());
    std::fflush(stdout);
    std::fprintf(stderr, "  (%.1f s)\n", absl::ToDoubleSeconds(absl::Now() - start));
  };
  // The first three, UnratedScenario, and the default rates.
  std::vector<Scenario> scenarios(std::begin(kScenarios), std::begin(kScenarios) + kBaseScenarios);
  scenarios.push_back(UnratedScenario());
  for (bool churn : {false, true}) {
    for (int rate : {1000, 10000}) {
      for (size_t i = 0; i < scenarios.size(); ++i) {
        if (!churn && !scenarios[i].rules.rated) continue;
        run(scenarios[i], kSeed + i, rate, churn);
      }
    }
  }
  // Arrivals 1/3000 s apart: times in quarter nanoseconds, not whole ones.
  for (bool churn : {false, true}) {
    run(kScenarios[0], kSeed + 10, 3000, churn);
    run(kScenarios[2], kSeed + 12, 3000, churn);
  }
  // The other features.
  const std::vector<FeatureScenario> features = FeatureScenarios();
  for (size_t i = 0; i < features.size(); ++i) {
    const FeatureScenario& f = features[i];
    run(f.scenario, kSeed + 20 + i, f.rate, false, f.tickets);
    run(f.scenario, kSeed + 20 + i, f.churn_rate, true, f.tickets);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // --smoke: every benchmark, briefly, for CI (a given --benchmark_min_time
  // still wins: it comes later).
  char smoke_min_time[] = "--benchmark_min_time=0.01";
  std::vector<char*> args = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    if (arg == "--digest") {
      PrintDigests();
      return 0;
    }
    if (arg == "--smoke") {
      g_warmup_tickets = kSmokeWarmupTickets;
      args.insert(args.begin() + 1, smoke_min_time);
    } else {
      args.push_back(argv[i]);
    }
  }
  argc = static_cast<int>(args.size());
  args.push_back(nullptr);
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
