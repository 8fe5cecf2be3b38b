// threshold_model: a stand-alone model of a 1v1 pool, for trying threshold
// rules faster than through the production pool (docs/QUALITY.md, "Why the
// efficiency targets are not met"). Not matchd's code: its plain rule
// reproduces the pool's K (266 and 290; see docs/QUALITY.md), and that is
// all it is trusted for.
//
// Poisson arrivals (seed 1) with ratings N(1500, 350²). Waiting tickets are
// kept sorted by rating; a newcomer takes its nearer acceptable neighbour, and
// two waiting neighbours meet at the exact moment their window covers them.
// A pair is acceptable when its gap is within
//   max(x, initial_window + widen * (rate factor) * mean wait)
// where x, the larger of the two tickets' own windows, is
//   sqrt(wait_cost / (2 rho_c)) * (rho_c / rho)^exponent
// from the true arrival density rho at the ticket's rating (rho_c at the
// mean): exponent 0.5 is matchd's waitCost rule.
//
//   threshold_model [--flag=value ...]
//     --rate=10            players per second
//     --tickets=200000
//     --wait_cost=0        0: no window from the arrival rate
//     --widen=4            per second of mean wait
//     --initial_window=0
//     --exponent=0.5       of rho in x
//     --pair_factor=1      two waiting tickets meet within pair_factor * x
//     --spacing_exponent=0 a newcomer's window scaled by (spacing of its two
//                          neighbours / 2.9 x)^spacing_exponent
//     --widen_exponent=0   widening scaled by (rho_c / rho)^widen_exponent
//
// Prints mean gap, mean wait per player, wait p50/p99/max, the share of
// matches within 55 % and K = mean gap x mean wait x rate, over the tickets
// that arrived in the middle 80 % of the run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench/sim/model_flags.h"

namespace {

double Density(double rating) {
  const double z = (rating - 1500) / 350;
  return std::exp(-z * z / 2) / (350 * std::sqrt(2 * M_PI));
}

struct Waiting {
  double rating;
  double arrival;
  double window;  // x
  int index;
};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, double> flag = {
      {"rate", 10},       {"tickets", 200000},     {"wait_cost", 0},
      {"widen", 4},       {"initial_window", 0},   {"exponent", 0.5},
      {"pair_factor", 1}, {"spacing_exponent", 0}, {"widen_exponent", 0}};
  if (!matchd::sim::ParseModelFlags(argc, argv, "threshold_model", &flag)) return 2;
  const double rate = flag["rate"], cost = flag["wait_cost"], widen = flag["widen"];
  const double initial = flag["initial_window"];
  const int n = static_cast<int>(flag["tickets"]);
  if (!(flag["tickets"] >= 100 && flag["tickets"] <= 1e8) || !(rate > 0)) {
    std::fprintf(stderr, "threshold_model: --tickets must be in [100, 1e8] and --rate > 0\n");
    return 2;
  }
  const double center = rate * Density(1500);

  std::mt19937_64 rng(1);
  std::normal_distribution<double> ratings(1500, 350);
  std::exponential_distribution<double> gaps(rate);
  std::vector<double> rating(n), arrival(n);
  double t = 0;
  for (int i = 0; i < n; ++i) {
    t += gaps(rng);
    arrival[i] = t;
    rating[i] = ratings(rng);
  }

  std::vector<double> done(n, -1), match_gaps;
  std::vector<Waiting> pool;  // by rating
  auto widen_of = [&](const Waiting& a, const Waiting& b) {
    if (flag["widen_exponent"] == 0) return widen;
    return widen *
           std::pow(Density(1500) / Density((a.rating + b.rating) / 2), flag["widen_exponent"]);
  };
  auto window = [&](const Waiting& a, const Waiting& b, double now) {
    const double mean_wait = ((now - a.arrival) + (now - b.arrival)) / 2;
    return std::max(std::max(a.window, b.window), initial + widen_of(a, b) * mean_wait);
  };
  auto match = [&](int i, int j, double now) {
    done[pool[i].index] = done[pool[j].index] = now;
    match_gaps.push_back(std::fabs(pool[i].rating - pool[j].rating));
    if (i > j) std::swap(i, j);
    pool.erase(pool.begin() + j);
    pool.erase(pool.begin() + i);
  };
  // When two waiting neighbours become acceptable (now at the earliest).
  auto crossing = [&](const Waiting& a, const Waiting& b, double now) {
    const double gap = std::fabs(a.rating - b.rating);
    if (gap <= std::max(a.window, b.window) * flag["pair_factor"]) return now;
    const double w = widen_of(a, b);
    if (w <= 0) return 1e18;
    return std::max(((gap - initial) / w * 2 + a.arrival + b.arrival) / 2, now);
  };

  double now = 0;
  for (int i = 0; i < n;) {
    double first = 1e18;
    int at = -1;
    for (size_t p = 0; p + 1 < pool.size(); ++p) {
      const double when = crossing(pool[p], pool[p + 1], now);
      if (when < first) {
        first = when;
        at = static_cast<int>(p);
      }
    }
    if (at >= 0 && first <= arrival[i]) {
      now = first;
      match(at, at + 1, now);
      continue;
    }
    now = arrival[i];
    Waiting x{rating[i], now, 0, i};
    if (cost > 0) {
      x.window = std::sqrt(cost / (2 * center)) *
                 std::pow(center / (rate * Density(x.rating)), flag["exponent"]);
    }
    auto it = std::lower_bound(pool.begin(), pool.end(), x, [](const Waiting& a, const Waiting& b) {
      return a.rating < b.rating;
    });
    const int pos = static_cast<int>(it - pool.begin());
    pool.insert(it, x);
    const int size = static_cast<int>(pool.size());
    double factor = 1;
    if (flag["spacing_exponent"] != 0) {
      const double spacing =
          pos - 1 >= 0 && pos + 1 < size ? pool[pos + 1].rating - pool[pos - 1].rating : 1e9;
      factor = std::pow(std::min(spacing / (2.9 * x.window), 10.0), flag["spacing_exponent"]);
    }
    int partner = -1;
    double nearest = 1e18;
    for (int q : {pos - 1, pos + 1}) {
      if (q < 0 || q >= size) continue;
      const double gap = std::fabs(pool[q].rating - x.rating);
      if (gap <= window(pool[q], x, now) * factor && gap < nearest) {
        nearest = gap;
        partner = q;
      }
    }
    if (partner >= 0) match(pos, partner, now);
    ++i;
  }

  std::vector<double> waits;
  double wait_sum = 0;
  for (int j = n / 10; j < n * 9 / 10; ++j) {
    if (done[j] < 0) continue;
    waits.push_back(done[j] - arrival[j]);
    wait_sum += waits.back();
  }
  std::sort(waits.begin(), waits.end());
  double gap_sum = 0;
  int fair = 0;
  for (double g : match_gaps) {
    gap_sum += g;
    if (g <= 34.86) ++fair;  // favourite's chance <= 55 % on the Elo scale
  }
  const double mean_wait = wait_sum / waits.size();
  const double mean_gap = gap_sum / match_gaps.size();
  std::printf("gap %.2f wait %.3f p50 %.2f p99 %.2f max %.1f fair %.1f%% K %.1f\n", mean_gap,
              mean_wait, waits[waits.size() / 2], waits[waits.size() * 99 / 100], waits.back(),
              100.0 * fair / match_gaps.size(), mean_gap * mean_wait * rate);
  return 0;
}
