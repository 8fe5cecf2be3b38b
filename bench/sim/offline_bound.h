// The offline optimum for 1v1 queues: the lower bound every online
// matchmaking algorithm is compared against in the match-quality simulator.
//
// Given the whole ticket stream in advance, pair the tickets so that the sum
// over pairs of
//
//     |r_i - r_j| + c * |t_i - t_j|
//
// is minimal (a minimum-cost perfect matching). c (Elo per second) prices
// waiting: in a pair the later ticket waits 0, the earlier one waits
// |t_i - t_j|, and the match forms at max(t_i, t_j). An online algorithm
// cannot do better than this optimum, because it does not know the future.
//
// The solution is exact, and checked: see offline_bound.cc for how the sparse
// candidate graph is chosen and why the answer is optimal over all n(n-1)/2
// pairs nevertheless (an LP-duality certificate, re-solving with any pair that
// violates it). Costs are solved as integers (LEMON's weighted matching has no
// floating-point tolerance), on a grid of 2^-20 Elo (coarser only when the
// cost range is enormous); OfflineSolution gives the resulting interval
// [lower_bound, total_cost] for the optimum.
#ifndef MATCHD_BENCH_SIM_OFFLINE_BOUND_H_
#define MATCHD_BENCH_SIM_OFFLINE_BOUND_H_

#include <cstdint>
#include <limits>
#include <vector>

namespace matchd::sim {

struct OfflineTicket {
  double arrival_s;  // finite
  double rating;     // finite
};

// Indexes into the input. `first` arrives no later than `second` (on equal
// arrival times, the lower index is `first`).
struct OfflinePair {
  int first;
  int second;
};

struct OfflineOptions {
  // c, in Elo per second of the earlier ticket's wait. Finite, >= 0.
  double wait_cost_per_second = 0;
  // Speed knobs only: neither changes the answer (the optimality check covers
  // every pair). Each ticket starts with edges to its `rating_neighbours`
  // nearest tickets by pair cost |dr| + c|dt| (for c = 0: the nearest in
  // rating), among those arriving within `time_horizon_s` of it, and to its
  // neighbours in arrival order. >= 0 each.
  int rating_neighbours = 16;
  double time_horizon_s = std::numeric_limits<double>::infinity();
};

// Min-cost perfect matching, returned as pairs ordered by formation time, i.e.
// by the arrival of `second` (ties by its index). If the number of tickets
// is odd, the last-arriving ticket (on a tie: the highest index among the last
// arrivals) is left out. Aborts on invalid input (non-finite values, c < 0).
std::vector<OfflinePair> OfflineOptimum1v1(const std::vector<OfflineTicket>& tickets,
                                           const OfflineOptions& options);

// The same, with the proof's numbers.
struct OfflineSolution {
  std::vector<OfflinePair> pairs;
  // Sum over pairs of |dr| + c|dt|, in doubles: the cost of `pairs`.
  double total_cost = 0;
  // A proven lower bound on the optimum: costs are optimised rounded to the
  // grid 1/cost_scale, which can cost at most 1/(2 cost_scale) per pair.
  // total_cost - lower_bound <= pairs.size() / cost_scale.
  double lower_bound = 0;
  // Grid points per Elo (a power of two, at most 2^20).
  double cost_scale = 0;
  // Matching runs: 1 when the first sparse graph's solution was certified,
  // one more for each time pairs that violated the certificate were added.
  int rounds = 0;
  // The cost of the first run's matching (the first graph's optimum): equal
  // to total_cost, up to the grid, when that graph already held an optimum
  // (whether or not its duals certified it).
  double initial_cost = 0;
  int64_t initial_edges = 0;  // edges of the first candidate graph
  int64_t final_edges = 0;    // edges of the last one
};

OfflineSolution SolveOfflineOptimum1v1(const std::vector<OfflineTicket>& tickets,
                                       const OfflineOptions& options);

}  // namespace matchd::sim

#endif  // MATCHD_BENCH_SIM_OFFLINE_BOUND_H_
