// lookahead_model: is a fixed rating window already the best an online 1v1
// pool can do? (docs/QUALITY.md, "Why the efficiency targets are not met").
// Not matchd's code: a model, trusted for that question only.
//
// Locally, any rating distribution looks uniform, so the model is uniform: a
// circle of --length rating units, one arrival per unit per second (the
// arrival density ρ = 1), waits costing --wait_cost per second per ticket.
// At the default cost the best fixed --window is about 1 (the cost per match
// is lowest there; 0.8 and 1.3 cost 1–5 % more). K for N(1500, 350²) is about
// κ × 1,755, where κ = mean gap × mean wait × ρ (QUALITY.md, "Why the
// efficiency targets are not met": K = κ × (∫√f)²).
//
// --policy=0: the base rule. A newcomer takes its nearer waiting neighbour
//   if that one is within --window; otherwise it waits. Waiting tickets
//   never meet each other (the window does not widen).
// --policy=1: one step of policy iteration on the base rule. At each arrival
//   every action is scored by simulating the base rule forward (--samples
//   futures of --horizon seconds of arrivals within ±--reach of the
//   newcomer, the same futures for every action), and the cheapest is taken.
//   Actions: the newcomer waits; it takes a waiting ticket within --max_gap
//   next to it; with --pairs=1 also two adjacent waiting tickets next to it
//   meet while it waits. A ticket still waiting at the horizon costs
//   --terminal. Exact policy iteration can only improve on its base; this
//   one estimates, so it is only as good as its samples (with fewer than
//   about 256, or other horizons and terminal costs, it does worse than its
//   base). If it gains nothing, no decision rule that sees the pool does
//   better than the base by more than that error, about 1–2 %. (Matching
//   between arrivals cannot help: nothing changes between them, so a pair
//   matched then could have been matched at the previous arrival for less
//   wait.)
//
//   lookahead_model [--flag=value ...]
//     --tickets=10000 --length=200 --seed=1 --wait_cost=1 --window=1
//     --policy=0 --samples=64 --horizon=3 --reach=8 --max_gap=3 --pairs=0
//     --terminal=1
//
// Prints the cost per match (gap + 2 × wait_cost × mean wait per player),
// the mean gap and wait, the wait p99, κ, K ≈ κ × 1,755 (over the tickets
// that arrived in the middle 80 % of the run, and the matches whose older
// ticket did), and how many of the rollout's decisions differ from the base
// rule's (over the whole run).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/sim/model_flags.h"

namespace {

struct Waiting {
  double rating;
  int index;
};

// A future arrival: seconds from now, rating relative to the newcomer.
using Arrival = std::pair<double, double>;

// The base rule run forward from `pool` (ratings relative to the newcomer,
// on a line) over `future`: the wait it costs until `horizon`, the gaps of the
// matches it makes, and `terminal` per ticket still waiting at the end.
double BaseCost(std::vector<double> pool, const std::vector<Arrival>& future, double horizon,
                double window, double wait_cost, double terminal) {
  std::sort(pool.begin(), pool.end());
  double cost = 0, now = 0;
  for (const auto& [at, rating] : future) {
    cost += wait_cost * pool.size() * (at - now);
    now = at;
    auto it = std::lower_bound(pool.begin(), pool.end(), rating);
    auto partner = pool.end();
    double nearest = window;
    if (it != pool.end() && *it - rating <= nearest) {
      nearest = *it - rating;
      partner = it;
    }
    if (it != pool.begin() && rating - *(it - 1) <= nearest) {
      nearest = rating - *(it - 1);
      partner = it - 1;
    }
    if (partner != pool.end()) {
      cost += nearest;
      pool.erase(partner);
    } else {
      pool.insert(it, rating);
    }
  }
  return cost + wait_cost * pool.size() * (horizon - now) + terminal * pool.size();
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, double> flag = {
      {"tickets", 10000}, {"length", 200}, {"seed", 1},    {"wait_cost", 1},
      {"window", 1},      {"policy", 0},   {"samples", 64}, {"horizon", 3},
      {"reach", 8},       {"max_gap", 3},  {"pairs", 0},   {"terminal", 1}};
  if (!matchd::sim::ParseModelFlags(argc, argv, "lookahead_model", &flag)) return 2;
  const int n = static_cast<int>(flag["tickets"]);
  const double length = flag["length"], window = flag["window"], wait_cost = flag["wait_cost"];
  const double reach = flag["reach"], horizon = flag["horizon"], max_gap = flag["max_gap"];
  const int samples = static_cast<int>(flag["samples"]);
  const bool rollout = flag["policy"] == 1, pairs = flag["pairs"] == 1;
  if (!(flag["tickets"] >= 100 && flag["tickets"] <= 1e7) || !(length > 2 * reach) ||
      !(reach > 0) || !(horizon > 0) || samples < 1 || !(window > 0)) {
    std::fprintf(stderr,
                 "lookahead_model: need --tickets in [100, 1e7], --length > 2 x --reach > 0, "
                 "--horizon > 0, --samples >= 1, --window > 0\n");
    return 2;
  }

  std::mt19937_64 rng(static_cast<uint64_t>(flag["seed"]));
  std::uniform_real_distribution<double> unit(0, 1);
  std::exponential_distribution<double> next_arrival(length);  // one per unit per second
  std::vector<double> rating(n), arrival(n), done(n, -1), gaps;
  double t = 0;
  for (int i = 0; i < n; ++i) {
    t += next_arrival(rng);
    arrival[i] = t;
    rating[i] = unit(rng) * length;
  }
  // Relative position of b seen from a, on the circle.
  auto offset = [&](double a, double b) {
    double d = b - a;
    if (d > length / 2) d -= length;
    if (d < -length / 2) d += length;
    return d;
  };

  std::mt19937_64 futures(12345);
  std::exponential_distribution<double> next_local(2 * reach);
  std::vector<Waiting> pool;  // by rating
  int decisions = 0, changed = 0;
  auto measured = [n](int i) { return i >= n / 10 && i < n * 9 / 10; };
  for (int i = 0; i < n; ++i) {
    const double now = arrival[i], y = rating[i];
    auto at = std::lower_bound(pool.begin(), pool.end(), y,
                               [](const Waiting& w, double r) { return w.rating < r; });
    const int size = static_cast<int>(pool.size());
    const int pos = static_cast<int>(at - pool.begin());
    const int left = size > 0 ? (pos - 1 + size) % size : -1;
    const int right = size > 0 ? pos % size : -1;
    const double to_left = left >= 0 ? std::fabs(offset(y, pool[left].rating)) : 1e18;
    const double to_right = right >= 0 ? std::fabs(offset(y, pool[right].rating)) : 1e18;
    int base = -1;  // the base rule's partner (index in pool), -1: wait
    if (std::min(to_left, to_right) <= window) base = to_left <= to_right ? left : right;

    int partner = base;
    std::pair<int, int> meet = {-1, -1};  // two waiting tickets that meet instead
    if (rollout) {
      // The waiting tickets within reach and the newcomer (index -1), by rating.
      std::vector<std::pair<double, int>> local;
      for (int k = 0; k < size; ++k) {
        const double d = offset(y, pool[k].rating);
        if (std::fabs(d) <= reach) local.push_back({d, k});
      }
      local.push_back({0, -1});
      std::sort(local.begin(), local.end());
      const int me = static_cast<int>(
          std::find_if(local.begin(), local.end(), [](const auto& l) { return l.second == -1; }) -
          local.begin());
      std::vector<std::pair<int, int>> actions;  // adjacent pairs in `local`
      const int span = pairs ? 2 : 1;
      for (int k = std::max(0, me - span); k + 1 < static_cast<int>(local.size()) && k < me + span;
           ++k) {
        if (!pairs && k != me && k + 1 != me) continue;
        if (local[k + 1].first - local[k].first <= max_gap) actions.push_back({k, k + 1});
      }
      if (!actions.empty()) {
        std::vector<double> total(actions.size() + 1, 0);  // [0]: nobody meets now
        std::vector<double> all, rest;
        for (const auto& l : local) all.push_back(l.first);
        std::vector<Arrival> future;
        for (int m = 0; m < samples; ++m) {
          future.clear();
          for (double s = next_local(futures); s <= horizon; s += next_local(futures)) {
            future.push_back({s, (2 * unit(futures) - 1) * reach});
          }
          total[0] += BaseCost(all, future, horizon, window, wait_cost, flag["terminal"]);
          for (size_t a = 0; a < actions.size(); ++a) {
            rest.clear();
            for (int k = 0; k < static_cast<int>(local.size()); ++k) {
              if (k != actions[a].first && k != actions[a].second) rest.push_back(local[k].first);
            }
            total[a + 1] += local[actions[a].second].first - local[actions[a].first].first +
                            BaseCost(rest, future, horizon, window, wait_cost, flag["terminal"]);
          }
        }
        const size_t best = std::min_element(total.begin(), total.end()) - total.begin();
        partner = -1;
        if (best > 0) {
          const int p = local[actions[best - 1].first].second;
          const int q = local[actions[best - 1].second].second;
          if (p == -1 || q == -1) {
            partner = p == -1 ? q : p;
          } else {
            meet = {p, q};
          }
        }
        ++decisions;
        if (partner != base || meet.first >= 0) ++changed;
      }
    }
    auto erase = [&](int k, int also = -1) {
      if (also > k) std::swap(k, also);
      pool.erase(pool.begin() + k);
      if (also >= 0) pool.erase(pool.begin() + also);
    };
    if (meet.first >= 0) {
      done[pool[meet.first].index] = done[pool[meet.second].index] = now;
      if (measured(std::min(pool[meet.first].index, pool[meet.second].index))) {
        gaps.push_back(std::fabs(offset(pool[meet.first].rating, pool[meet.second].rating)));
      }
      erase(meet.first, meet.second);
    }
    if (partner >= 0) {
      done[i] = done[pool[partner].index] = now;
      if (measured(pool[partner].index)) gaps.push_back(std::fabs(offset(y, pool[partner].rating)));
      erase(partner);
    } else {
      at = std::lower_bound(pool.begin(), pool.end(), y,
                            [](const Waiting& w, double r) { return w.rating < r; });
      pool.insert(at, Waiting{y, i});
    }
  }

  std::vector<double> waits;
  double wait_sum = 0, gap_sum = 0;
  for (int j = 0; j < n; ++j) {
    if (!measured(j) || done[j] < 0) continue;
    waits.push_back(done[j] - arrival[j]);
    wait_sum += waits.back();
  }
  for (double g : gaps) gap_sum += g;
  std::sort(waits.begin(), waits.end());
  const double mean_gap = gap_sum / gaps.size(), mean_wait = wait_sum / waits.size();
  const double kappa = mean_gap * mean_wait;
  std::printf(
      "cost %.4f gap %.3f wait %.3f p99 %.2f kappa %.4f K~%.0f decisions %d changed %d\n",
      mean_gap + 2 * wait_cost * mean_wait, mean_gap, mean_wait, waits[waits.size() * 99 / 100],
      kappa, kappa * 1755, decisions, changed);
  return 0;
}
