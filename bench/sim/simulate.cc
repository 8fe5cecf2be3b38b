#include "bench/sim/simulate.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <utility>

#include "absl/time/time.h"

namespace matchd::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

absl::Time At(double s) { return absl::UnixEpoch() + absl::Seconds(s); }
double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

// Records the pool's outcomes into a SimResult. Keys are ticket index + 1.
class Recorder final : public matcher::PoolListener {
 public:
  explicit Recorder(SimResult* result) : result_(result) {}
  void set_now(double now) { now_ = now; }
  bool StillWaiting(matcher::TicketKey) override { return true; }
  void OnMatched(const matcher::FormedMatch& match) override {
    SimMatch m;
    m.formed_s = now_;
    m.region = match.region;
    for (const auto& team : match.teams) {
      m.teams.emplace_back();
      for (matcher::TicketKey key : team) {
        const int i = static_cast<int>(key - 1);
        m.teams.back().push_back(i);
        result_->outcome[i] = Outcome::kMatched;
        result_->done_s[i] = now_;
      }
    }
    result_->matches.push_back(std::move(m));
  }
  void OnExpired(matcher::TicketKey key) override { Leave(key, Outcome::kExpired); }
  void OnWithdrawn(matcher::TicketKey key) override { Leave(key, Outcome::kAbandoned); }
  void Leave(matcher::TicketKey key, Outcome outcome) {
    result_->outcome[key - 1] = outcome;
    result_->done_s[key - 1] = now_;
  }

 private:
  SimResult* result_;
  double now_ = 0;
};

}  // namespace

namespace {

matcher::TicketSpec SpecOf(const SimTicket& t, double max_wait) {
  matcher::TicketSpec spec;
  spec.key = t.key;
  spec.party_size = t.party_size();
  spec.rating = t.rating;
  spec.enqueued_at = At(t.arrival_s);
  spec.expires_at = At(t.arrival_s + max_wait);
  for (size_t r = 0; r < t.latency_ms.size() && r < spec.latency_ms.size(); ++r) {
    spec.latency_ms[r] = static_cast<uint16_t>(std::min(t.latency_ms[r], 10000.0));
  }
  return spec;
}

// The batch baseline: every interval, the waiting tickets are sorted by
// rating and cut into consecutive groups (the best a batch can do for 1v1:
// sorted neighbours). Each group goes through a Pool with no window, so it
// gets the production team split; tickets it cannot place (parties that do
// not pack) carry over to the next group.
SimResult SimulateBatch(const std::vector<SimTicket>& tickets, const AlgorithmSpec& algorithm) {
  SimResult result;
  result.outcome.assign(tickets.size(), Outcome::kWaiting);
  result.done_s.assign(tickets.size(), kInf);
  Recorder recorder(&result);
  const double max_wait = absl::ToDoubleSeconds(algorithm.rules.max_wait);
  matcher::QueueRules rules = algorithm.rules;
  rules.rated = true;
  rules.initial_window = 1e12;
  rules.widen_per_second = 0;
  rules.max_window = 0;
  const int need = rules.players_per_match();
  std::vector<int> waiting;  // ticket indexes
  size_t next = 0;
  for (double tick = algorithm.interval_s;; tick += algorithm.interval_s) {
    for (; next < tickets.size() && tickets[next].arrival_s <= tick; ++next) {
      waiting.push_back(static_cast<int>(next));
    }
    recorder.set_now(tick);
    // Abandonments and expiries since the last tick, at their own times.
    std::vector<int> kept;
    for (int i : waiting) {
      const SimTicket& t = tickets[i];
      const double expires = t.arrival_s + max_wait;
      if (t.abandon_s <= tick && t.abandon_s <= expires) {
        recorder.set_now(t.abandon_s);
        recorder.Leave(t.key, Outcome::kAbandoned);
      } else if (expires <= tick) {
        recorder.set_now(expires);
        recorder.Leave(t.key, Outcome::kExpired);
      } else {
        kept.push_back(i);
      }
    }
    recorder.set_now(tick);
    waiting.swap(kept);
    std::stable_sort(waiting.begin(), waiting.end(),
                     [&](int a, int b) { return tickets[a].rating < tickets[b].rating; });
    matcher::Pool group(rules, &recorder);
    for (int i : waiting) {
      (void)group.Add(SpecOf(tickets[i], max_wait));
      if (group.players_waiting() >= need) group.Process(At(tick));
    }
    kept.clear();
    for (int i : waiting) {
      if (result.outcome[i] == Outcome::kWaiting) kept.push_back(i);
    }
    waiting.swap(kept);
    if (next >= tickets.size() && waiting.empty()) break;
    if (next >= tickets.size() && tick > tickets.back().arrival_s + max_wait) break;
  }
  return result;
}

}  // namespace

SimResult Simulate(const std::vector<SimTicket>& tickets, const AlgorithmSpec& algorithm) {
  if (algorithm.interval_s > 0) return SimulateBatch(tickets, algorithm);
  SimResult result;
  result.outcome.assign(tickets.size(), Outcome::kWaiting);
  result.done_s.assign(tickets.size(), kInf);
  Recorder recorder(&result);
  matcher::Pool pool(algorithm.rules, &recorder);
  const double max_wait = absl::ToDoubleSeconds(algorithm.rules.max_wait);

  // Abandonments of waiting tickets, soonest first: (time, index).
  using Abandon = std::pair<double, int>;
  std::priority_queue<Abandon, std::vector<Abandon>, std::greater<>> abandons;
  size_t next = 0;
  while (true) {
    while (!abandons.empty() && result.outcome[abandons.top().second] != Outcome::kWaiting) {
      abandons.pop();
    }
    const double arrival = next < tickets.size() ? tickets[next].arrival_s : kInf;
    const double abandon = abandons.empty() ? kInf : abandons.top().first;
    const absl::Time w = pool.NextWakeup();
    const double wake = w == absl::InfiniteFuture() ? kInf : Seconds(w);
    const double now = std::min({arrival, abandon, wake});
    if (now == kInf) break;
    recorder.set_now(now);
    if (arrival == now) {
      const SimTicket& t = tickets[next];
      // The stream was validated against the rules by the caller.
      (void)pool.Add(SpecOf(t, max_wait));
      if (std::isfinite(t.abandon_s)) abandons.push({t.abandon_s, static_cast<int>(next)});
      ++next;
    } else if (abandon == now) {
      const int i = abandons.top().second;
      abandons.pop();
      pool.Remove(tickets[i].key);
      recorder.Leave(tickets[i].key, Outcome::kAbandoned);
    }
    pool.Process(At(now));
  }
  return result;
}

double Quantile(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  const size_t i = std::min(values.size() - 1, static_cast<size_t>(q * values.size()));
  std::nth_element(values.begin(), values.begin() + i, values.end());
  return values[i];
}

namespace {

double Mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double sum = 0;
  for (double x : v) sum += x;
  return sum / v.size();
}

}  // namespace

Summary Summarize(const std::vector<SimTicket>& tickets, const SimResult& result,
                  double measure_from_s, double measure_to_s) {
  Summary s;
  auto measured = [&](int i) {
    return tickets[i].arrival_s >= measure_from_s && tickets[i].arrival_s < measure_to_s;
  };
  std::vector<double> waits;
  std::vector<std::vector<double>> waits_by_party;
  std::vector<std::pair<double, double>> rating_wait;  // per matched or expired player
  int matched = 0, abandoned = 0, expired = 0;
  for (size_t i = 0; i < tickets.size(); ++i) {
    if (!measured(static_cast<int>(i))) continue;
    ++s.tickets;
    s.players += tickets[i].party_size();
    const Outcome outcome = result.outcome[i];
    switch (outcome) {
      case Outcome::kMatched: ++matched; break;
      case Outcome::kAbandoned: ++abandoned; break;
      case Outcome::kExpired: ++expired; break;
      case Outcome::kWaiting: break;
    }
    // An expired player waited until its maximum wait for nothing: its wait
    // counts, or a rule that leaves its hardest tickets to expire would look
    // faster than one that matches them late. Abandoned players chose when to
    // leave; their patience is the workload's, not the algorithm's.
    if (outcome != Outcome::kMatched && outcome != Outcome::kExpired) continue;
    const double wait = result.done_s[i] - tickets[i].arrival_s;
    for (double r : tickets[i].member_ratings) {
      waits.push_back(wait);
      rating_wait.push_back({r, wait});
    }
    const size_t size = tickets[i].party_size();
    if (waits_by_party.size() < size) waits_by_party.resize(size);
    waits_by_party[size - 1].push_back(wait);
  }
  if (s.tickets == 0) return s;
  s.matched_share = double(matched) / s.tickets;
  s.abandoned_share = double(abandoned) / s.tickets;
  s.expired_share = double(expired) / s.tickets;
  s.wait_mean = Mean(waits);
  s.wait_p50 = Quantile(waits, 0.50);
  s.wait_p90 = Quantile(waits, 0.90);
  s.wait_p99 = Quantile(waits, 0.99);
  s.wait_max = waits.empty() ? 0 : *std::max_element(waits.begin(), waits.end());
  s.players_per_s = s.players / (measure_to_s - measure_from_s);
  for (std::vector<double>& w : waits_by_party) {
    s.wait_p50_by_party.push_back(Quantile(w, 0.50));
    s.wait_p99_by_party.push_back(Quantile(w, 0.99));
  }

  std::vector<double> gaps, spreads, slot_means, slot_maxes, latencies;
  int placed_players = 0, in_best_region = 0;
  int fair = 0, two_team = 0, within_5 = 0;
  bool one_v_one = true;
  std::vector<double> a, b;
  for (const SimMatch& m : result.matches) {
    int first = -1;
    for (const auto& team : m.teams) {
      for (int i : team) {
        if (first < 0 || tickets[i].arrival_s < tickets[first].arrival_s) first = i;
      }
    }
    if (first < 0 || !measured(first)) continue;
    ++s.matches;
    double lo = kInf, hi = -kInf;
    std::vector<double> means;
    for (const auto& team : m.teams) {
      double sum = 0;
      int n = 0;
      for (int i : team) {
        for (double r : tickets[i].member_ratings) {
          sum += r;
          ++n;
          lo = std::min(lo, r);
          hi = std::max(hi, r);
        }
      }
      if (n != 1) one_v_one = false;
      means.push_back(n ? sum / n : 0);
    }
    spreads.push_back(hi - lo);
    if (m.region >= 0) {
      for (const auto& team : m.teams) {
        for (int i : team) {
          const std::vector<double>& l = tickets[i].latency_ms;
          for (int k = 0; k < tickets[i].party_size(); ++k) latencies.push_back(l[m.region]);
          placed_players += tickets[i].party_size();
          if (l[m.region] <= *std::min_element(l.begin(), l.end())) {
            in_best_region += tickets[i].party_size();
          }
        }
      }
    }
    if (m.teams.size() != 2) {
      one_v_one = false;
      continue;
    }
    ++two_team;
    const double gap = std::abs(means[0] - means[1]);
    gaps.push_back(gap);
    if (gap <= 5) ++within_5;
    const double p = 1 / (1 + std::pow(10.0, (means[1] - means[0]) / 400));
    if (std::max(p, 1 - p) <= 0.55) ++fair;
    a.clear();
    b.clear();
    for (int i : m.teams[0]) a.insert(a.end(), tickets[i].member_ratings.begin(), tickets[i].member_ratings.end());
    for (int i : m.teams[1]) b.insert(b.end(), tickets[i].member_ratings.begin(), tickets[i].member_ratings.end());
    std::sort(a.rbegin(), a.rend());
    std::sort(b.rbegin(), b.rend());
    double slot_sum = 0, slot_max = 0;
    const size_t slots = std::min(a.size(), b.size());
    for (size_t k = 0; k < slots; ++k) {
      slot_sum += std::abs(a[k] - b[k]);
      slot_max = std::max(slot_max, std::abs(a[k] - b[k]));
    }
    slot_means.push_back(slots ? slot_sum / slots : 0);
    slot_maxes.push_back(slot_max);
  }
  s.gap_mean = Mean(gaps);
  s.gap_p99 = Quantile(gaps, 0.99);
  s.gap_within_5 = two_team ? double(within_5) / two_team : 0;
  s.spread_mean = Mean(spreads);
  s.spread_p99 = Quantile(spreads, 0.99);
  s.slot_delta_mean = Mean(slot_means);
  s.slot_delta_max_p99 = Quantile(slot_maxes, 0.99);
  s.fair_share = two_team ? double(fair) / two_team : 0;
  s.latency_mean = Mean(latencies);
  s.latency_p99 = Quantile(latencies, 0.99);
  s.best_region_share = placed_players ? double(in_best_region) / placed_players : 0;
  s.k = (one_v_one ? s.gap_mean : s.spread_mean) * s.wait_mean * s.players_per_s;

  // Tail fairness: the 1 % of matched or expired players at either end of the ratings.
  std::sort(rating_wait.begin(), rating_wait.end());
  const size_t tail = std::max<size_t>(1, rating_wait.size() / 100);
  if (!rating_wait.empty()) {
    std::vector<double> bottom, top;
    for (size_t i = 0; i < tail; ++i) {
      bottom.push_back(rating_wait[i].second);
      top.push_back(rating_wait[rating_wait.size() - 1 - i].second);
    }
    s.wait_p99_bottom1 = Quantile(bottom, 0.99);
    s.wait_p99_top1 = Quantile(top, 0.99);
  }
  return s;
}

uint64_t Fingerprint(const SimResult& result) {
  // FNV-1a over the match list.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (const SimMatch& m : result.matches) {
    mix(static_cast<uint64_t>(std::llround(m.formed_s * 1e9)));
    for (const auto& team : m.teams) {
      mix(team.size());
      for (int i : team) mix(static_cast<uint64_t>(i));
    }
  }
  return h;
}

}  // namespace matchd::sim
