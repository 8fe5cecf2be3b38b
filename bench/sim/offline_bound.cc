// The offline optimum for 1v1 queues (see offline_bound.h).
//
// Solver. LEMON's MaxWeightedPerfectMatching (Edmonds' blossom algorithm,
// O(nm log n)) on a sparse candidate graph, with weight -cost per edge: every
// perfect matching has the same number of edges, so maximising -cost is
// minimising cost, and no "BIG - cost" offset is needed.
//
// Integer weights. MaxWeightedPerfectMatching accepts double weights
// (dualScale is 1 for them), but lemon/matching.h compares them with no
// tolerance at all (exact <, == against the heaps' priorities), so rounding
// in the dual updates could pick wrong events or leave blossom duals slightly
// negative. With an integer value type everything is exact (the duals come
// scaled by dualScale = 4). So each cost is rounded to the grid 1/scale
// Elo, scale a power of two <= 2^20 (about 1e-6 Elo), lowered for huge inputs
// so that 4 * n * (largest possible cost) * scale < 2^62: no int64 overflow
// in weights, potentials or dual sums. The rounding costs at most 1/(2 scale)
// per pair, hence the interval [lower_bound, total_cost] in OfflineSolution.
//
// Sparse graph, and why it loses nothing. The cost is an L1 distance between
// the points (r, c*t). Each ticket gets edges to its k nearest tickets by that
// distance (within the optional time horizon) and to its neighbours in arrival
// order; the arrival path alone has a perfect matching (the count is even),
// so one always exists. Such a graph is not provably enough by itself: no
// simple "long edges are never used" rule is valid for min-cost perfect
// matching (a pair that is far apart can be forced by everyone else's
// choices; an exchange argument only bounds an optimal edge by l * L for an
// alternating cycle of length 2l and a matching whose longest edge is L).
// So instead of a pruning rule, each solution is checked with LP duality:
//
//   LEMON returns, with the matching, a dual solution of the matching LP over
//   the candidate graph: node potentials y_u and blossom values z_B >= 0
//   (odd sets B), feasible on every candidate edge,
//       y_u + y_v + sum_{B contains u, v} z_B >= 4 w_uv,        (w = -cost)
//   and with dual objective sum y_u + sum z_B (|B|-1)/2 equal to 4 w(M).
//   That LP has the same constraints for every pair, present in the graph or
//   not. If the same (y, z) satisfies the inequality for all n(n-1)/2 pairs,
//   it is a feasible dual of the dense problem with objective 4 w(M), and by
//   weak duality no perfect matching of the dense graph costs less than M.
//
// Checking all pairs is cheap because z >= 0 only helps: with p_u = -y_u a
// pair can only violate if 4 C_uv < p_u + p_v <= 2 max(p_u, p_v), i.e. it lies
// within grid cost p_u / 2 of the endpoint with the larger potential. For each
// u with p_u > 0, the tickets within that L1 radius are enumerated (sorted by
// rating or by arrival, whichever window is smaller) and tested exactly, with
// the blossom terms included. Any violating pair is added to the graph and the
// matching solved again; the loop ends because each round adds a pair, at
// worst with the dense graph. The strong-duality equation is recomputed here
// too, so the answer does not rest on trusting LEMON: a mismatch aborts.
//
// In practice (ratings N(1500, 350^2), Poisson arrivals, 5k-20k tickets,
// c = 0.1..10) the first graph (k = 16) holds an optimum or comes within
// 1e-4 of it; the check then adds 1-10 pairs, mostly between tickets in the
// rating tails whose forced partners are far away, and the second run passes.
// The check also fails duals that are merely not unique (the first graph's
// matching already optimal), which costs one more run but no accuracy.
#include "bench/sim/offline_bound.h"

#include <lemon/core.h>
#include <lemon/matching.h>
#include <lemon/smart_graph.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <queue>
#include <utility>
#include <vector>

namespace matchd::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "OfflineOptimum1v1: %s\n", what);
    std::abort();
  }
}

// The tickets being matched (the input minus a left-out last arrival), with
// the pair cost, on the integer grid too, and the tickets sorted by rating and
// by arrival for neighbour searches.
class Instance {
 public:
  Instance(std::vector<double> rating, std::vector<double> arrival, double c)
      : r_(std::move(rating)), t_(std::move(arrival)), c_(c) {
    const int n = size();
    SortedView(r_, by_r_, r_sorted_, pos_r_);
    SortedView(t_, by_t_, t_sorted_, pos_t_);
    double largest = 0;  // no pair costs more
    if (n > 0) {
      largest =
          (r_sorted_.back() - r_sorted_.front()) + c_ * (t_sorted_.back() - t_sorted_.front());
    }
    Check(std::isfinite(largest), "the cost range overflows a double");
    // scale = 2^e <= 2^20 with 4 * n * largest * scale < 2^62.
    scale_ = std::ldexp(1.0, 20);
    const double limit = std::ldexp(1.0, 60) / std::max(1, n);
    while (largest * scale_ >= limit) scale_ /= 2;
  }

  int size() const { return static_cast<int>(r_.size()); }
  double scale() const { return scale_; }
  const std::vector<int>& by_arrival() const { return by_t_; }
  double arrival(int u) const { return t_[u]; }

  double Cost(int u, int v) const {
    return std::fabs(r_[u] - r_[v]) + c_ * std::fabs(t_[u] - t_[v]);
  }
  int64_t GridCost(int u, int v) const { return std::llround(Cost(u, v) * scale_); }

  enum class Axis { kRating, kArrival };

  // Calls visit(v) for tickets v != u, nearest first along one axis, while
  // |r_v - r_u| <= reach() and (c|t_v - t_u| <= reach() and |t_v - t_u| <=
  // horizon) still allow more; reach() may shrink as the scan goes, and
  // visit(v) returning false stops it. The axis is the one whose window, at
  // the first reach(), holds fewer tickets. visit also sees tickets outside
  // that box, along the other axis: it has to check what it needs.
  template <typename Reach, typename Visit>
  void ScanBox(int u, double horizon, Reach reach, Visit visit) const {
    const double rr = reach();
    const bool by_rating =
        Count(r_sorted_, r_[u], rr) <= Count(t_sorted_, t_[u], TimeReach(rr, horizon));
    ScanAxis(by_rating ? Axis::kRating : Axis::kArrival, u, horizon, reach, visit);
  }

  // The same along a given axis.
  template <typename Reach, typename Visit>
  void ScanAxis(Axis axis, int u, double horizon, Reach reach, Visit visit) const {
    if (axis == Axis::kRating) {
      Outward(by_r_, r_sorted_, pos_r_[u], reach, visit);
    } else {
      Outward(
          by_t_, t_sorted_, pos_t_[u], [&] { return TimeReach(reach(), horizon); }, visit);
    }
  }

 private:
  static void SortedView(const std::vector<double>& key, std::vector<int>& order,
                         std::vector<double>& sorted, std::vector<int>& pos) {
    const int n = static_cast<int>(key.size());
    order.resize(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return key[a] != key[b] ? key[a] < key[b] : a < b; });
    sorted.resize(n);
    pos.resize(n);
    for (int i = 0; i < n; ++i) {
      sorted[i] = key[order[i]];
      pos[order[i]] = i;
    }
  }

  double TimeReach(double reach, double horizon) const {
    return std::min(c_ > 0 ? reach / c_ : kInf, horizon);
  }

  static int64_t Count(const std::vector<double>& sorted, double x, double half_width) {
    if (std::isinf(half_width)) return static_cast<int64_t>(sorted.size());
    return std::upper_bound(sorted.begin(), sorted.end(), x + half_width) -
           std::lower_bound(sorted.begin(), sorted.end(), x - half_width);
  }

  template <typename Reach, typename Visit>
  static void Outward(const std::vector<int>& order, const std::vector<double>& sorted, int pos,
                      Reach reach, Visit visit) {
    const double x = sorted[pos];
    const int n = static_cast<int>(sorted.size());
    int lo = pos - 1;
    int hi = pos + 1;
    while (true) {
      const double w = reach();
      const bool lo_ok = lo >= 0 && x - sorted[lo] <= w;
      const bool hi_ok = hi < n && sorted[hi] - x <= w;
      if (!lo_ok && !hi_ok) return;
      const int next = (lo_ok && (!hi_ok || x - sorted[lo] <= sorted[hi] - x)) ? lo-- : hi++;
      if (!visit(order[next])) return;
    }
  }

  std::vector<double> r_, t_;
  double c_;
  double scale_ = 1;
  std::vector<int> by_r_, by_t_;
  std::vector<double> r_sorted_, t_sorted_;
  std::vector<int> pos_r_, pos_t_;
};

using Edge = std::pair<int, int>;  // first < second

Edge MakeEdge(int u, int v) { return u < v ? Edge(u, v) : Edge(v, u); }

// The first candidate graph: k nearest by cost within the horizon, plus the
// arrival path. Sorted, without duplicates.
std::vector<Edge> CandidateEdges(const Instance& inst, int k, double horizon) {
  const int n = inst.size();
  k = std::min(k, n - 1);
  std::vector<Edge> edges;
  edges.reserve(static_cast<size_t>(n) * (k + 1));
  const std::vector<int>& by_arrival = inst.by_arrival();
  for (int i = 0; i + 1 < n; ++i) edges.push_back(MakeEdge(by_arrival[i], by_arrival[i + 1]));

  std::vector<int> seeds;
  std::vector<double> seed_costs;
  using Near = std::pair<double, int>;  // (cost, ticket)
  std::priority_queue<Near> nearest;    // the k best so far, worst on top
  for (int u = 0; u < n && k > 0; ++u) {
    const auto in_horizon = [&](int v) {
      return std::fabs(inst.arrival(v) - inst.arrival(u)) <= horizon;
    };
    // An upper bound on the k-th nearest cost: the k-th best among the k
    // nearest along each axis.
    seeds.clear();
    for (const auto axis : {Instance::Axis::kRating, Instance::Axis::kArrival}) {
      int taken = 0;
      inst.ScanAxis(
          axis, u, kInf, [] { return kInf; },
          [&](int v) {
            seeds.push_back(v);
            return ++taken < k;
          });
    }
    std::sort(seeds.begin(), seeds.end());
    seeds.erase(std::unique(seeds.begin(), seeds.end()), seeds.end());
    seed_costs.clear();
    for (int v : seeds) {
      if (in_horizon(v)) seed_costs.push_back(inst.Cost(u, v));
    }
    double bound = kInf;
    if (static_cast<int>(seed_costs.size()) >= k) {
      std::nth_element(seed_costs.begin(), seed_costs.begin() + (k - 1), seed_costs.end());
      bound = seed_costs[k - 1];
    }
    // The k nearest: all lie within `bound` on both axes.
    nearest = {};
    inst.ScanBox(
        u, horizon,
        [&] { return static_cast<int>(nearest.size()) == k ? nearest.top().first : bound; },
        [&](int v) {
          if (!in_horizon(v)) return true;
          const double cost = inst.Cost(u, v);
          if (static_cast<int>(nearest.size()) < k) {
            nearest.emplace(cost, v);
          } else if (cost < nearest.top().first) {
            nearest.pop();
            nearest.emplace(cost, v);
          }
          return true;
        });
    for (; !nearest.empty(); nearest.pop()) edges.push_back(MakeEdge(u, nearest.top().second));
  }
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  return edges;
}

// One matching run on a candidate graph, with its dual solution.
struct Round {
  std::vector<int> mate;
  int64_t grid_cost = 0;        // sum of GridCost over the pairs
  std::vector<int64_t> p;       // p_u = -y_u (LEMON's scale: 4 per grid unit)
  std::vector<int64_t> z;       // blossom values z_B >= 0
  std::vector<int> blossom_at;  // CSR: node u's blossoms, increasing index,
  std::vector<int> blossoms;    // are blossoms[blossom_at[u] .. blossom_at[u+1])

  // sum of z_B over the blossoms holding both u and v.
  int64_t SharedBlossoms(int u, int v) const {
    int64_t sum = 0;
    int i = blossom_at[u];
    int j = blossom_at[v];
    while (i < blossom_at[u + 1] && j < blossom_at[v + 1]) {
      if (blossoms[i] < blossoms[j]) {
        ++i;
      } else if (blossoms[j] < blossoms[i]) {
        ++j;
      } else {
        sum += z[blossoms[i]];
        ++i;
        ++j;
      }
    }
    return sum;
  }
};

Round Solve(const Instance& inst, const std::vector<Edge>& edges) {
  using Graph = lemon::SmartGraph;
  using WeightMap = Graph::EdgeMap<int64_t>;
  using Matching = lemon::MaxWeightedPerfectMatching<Graph, WeightMap>;
  static_assert(Matching::dualScale == 4, "integer weights: duals scaled by 4");
  const int n = inst.size();
  Graph g;
  g.reserveNode(n);
  g.reserveEdge(static_cast<int>(edges.size()));
  for (int i = 0; i < n; ++i) g.addNode();  // ids 0..n-1
  for (const Edge& e : edges) g.addEdge(g.nodeFromId(e.first), g.nodeFromId(e.second));
  WeightMap weight(g);
  for (Graph::EdgeIt e(g); e != lemon::INVALID; ++e) {
    weight[e] = -inst.GridCost(g.id(g.u(e)), g.id(g.v(e)));
  }
  Matching mwpm(g, weight);
  Check(mwpm.run(), "no perfect matching in the candidate graph");

  Round round;
  round.mate.resize(n);
  round.p.resize(n);
  int64_t dual = 0;  // the dual objective, recomputed
  for (int u = 0; u < n; ++u) {
    const Graph::Node node = g.nodeFromId(u);
    round.mate[u] = g.id(mwpm.mate(node));
    round.p[u] = -mwpm.nodeValue(node);
    dual -= round.p[u];
  }
  const int num_blossoms = mwpm.blossomNum();
  round.z.resize(num_blossoms);
  round.blossom_at.assign(n + 1, 0);
  for (int b = 0; b < num_blossoms; ++b) {
    round.z[b] = mwpm.blossomValue(b);
    Check(round.z[b] >= 0, "negative blossom dual");
    dual += round.z[b] * (mwpm.blossomSize(b) / 2);
    for (Matching::BlossomIt it(mwpm, b); it != lemon::INVALID; ++it) {
      ++round.blossom_at[g.id(it) + 1];
    }
  }
  for (int u = 0; u < n; ++u) round.blossom_at[u + 1] += round.blossom_at[u];
  round.blossoms.resize(round.blossom_at[n]);
  std::vector<int> fill(round.blossom_at.begin(), round.blossom_at.end() - 1);
  for (int b = 0; b < num_blossoms; ++b) {
    for (Matching::BlossomIt it(mwpm, b); it != lemon::INVALID; ++it) {
      round.blossoms[fill[g.id(it)]++] = b;
    }
  }
  for (int u = 0; u < n; ++u) {
    const int v = round.mate[u];
    Check(v >= 0 && v < n && v != u && round.mate[v] == u, "not a perfect matching");
    if (u < v) round.grid_cost += inst.GridCost(u, v);
  }
  // Strong duality: the dual objective equals 4 times the matching's weight.
  Check(dual == -4 * round.grid_cost, "dual objective differs from the matching's weight");
  return round;
}

// The pairs, among all n(n-1)/2, whose dual constraint fails (see the top of
// the file). Sorted.
std::vector<Edge> Violations(const Instance& inst, const Round& round) {
  std::vector<Edge> found;
  const int n = inst.size();
  for (int u = 0; u < n; ++u) {
    const int64_t pu = round.p[u];
    if (pu <= 0) continue;
    // Every v with 4 C_uv < 2 p_u has scale * L1 <= C_uv + 1/2 < p_u / 2 + 1/2;
    // widened a little against rounding in the distance itself.
    const double radius = (static_cast<double>(pu) / 2 + 0.5) / inst.scale() * (1 + 1e-9);
    inst.ScanBox(
        u, kInf, [&] { return radius; },
        [&](int v) {
          const int64_t four_c = 4 * inst.GridCost(u, v);
          const int64_t pv = round.p[v];
          if (four_c < pu + pv && four_c < pu + pv - round.SharedBlossoms(u, v)) {
            found.push_back(MakeEdge(u, v));
          }
          return true;
        });
  }
  std::sort(found.begin(), found.end());
  found.erase(std::unique(found.begin(), found.end()), found.end());
  return found;
}

}  // namespace

OfflineSolution SolveOfflineOptimum1v1(const std::vector<OfflineTicket>& tickets,
                                       const OfflineOptions& options) {
  const double c = options.wait_cost_per_second;
  Check(std::isfinite(c) && c >= 0, "wait_cost_per_second must be finite and >= 0");
  Check(options.rating_neighbours >= 0, "rating_neighbours must be >= 0");
  Check(options.time_horizon_s >= 0, "time_horizon_s must be >= 0");
  Check(tickets.size() < static_cast<size_t>(std::numeric_limits<int>::max() / 2),
        "too many tickets");
  const int total = static_cast<int>(tickets.size());
  int left_out = -1;  // the last arrival, when the count is odd
  for (int i = 0; i < total; ++i) {
    Check(std::isfinite(tickets[i].arrival_s) && std::isfinite(tickets[i].rating),
          "arrival_s and rating must be finite");
    if (total % 2 == 1 && (left_out < 0 || tickets[i].arrival_s >= tickets[left_out].arrival_s)) {
      left_out = i;
    }
  }
  std::vector<int> index;  // instance ticket -> input index
  std::vector<double> rating, arrival;
  index.reserve(total);
  for (int i = 0; i < total; ++i) {
    if (i == left_out) continue;
    index.push_back(i);
    rating.push_back(tickets[i].rating);
    arrival.push_back(tickets[i].arrival_s);
  }
  const Instance inst(std::move(rating), std::move(arrival), c);
  const int n = inst.size();

  OfflineSolution solution;
  solution.cost_scale = inst.scale();
  if (n == 0) return solution;

  std::vector<Edge> edges = CandidateEdges(inst, options.rating_neighbours, options.time_horizon_s);
  solution.initial_edges = static_cast<int64_t>(edges.size());
  Round round;
  while (true) {
    round = Solve(inst, edges);
    if (++solution.rounds == 1) {
      for (int u = 0; u < n; ++u) {
        if (u < round.mate[u]) solution.initial_cost += inst.Cost(u, round.mate[u]);
      }
    }
    const std::vector<Edge> missing = Violations(inst, round);
    if (missing.empty()) break;
    std::vector<Edge> merged;
    merged.reserve(edges.size() + missing.size());
    std::set_union(edges.begin(), edges.end(), missing.begin(), missing.end(),
                   std::back_inserter(merged));
    // LEMON's duals are feasible on its own graph: a violation is a new pair.
    Check(merged.size() == edges.size() + missing.size(), "dual infeasible on a candidate edge");
    edges = std::move(merged);
  }
  solution.final_edges = static_cast<int64_t>(edges.size());

  // x arrives after y, or with it and has the higher index.
  const auto later = [&](int x, int y) {
    const double tx = tickets[x].arrival_s;
    const double ty = tickets[y].arrival_s;
    return tx != ty ? tx > ty : x > y;
  };
  for (int u = 0; u < n; ++u) {
    const int v = round.mate[u];
    if (u > v) continue;
    int a = index[u];
    int b = index[v];
    if (later(a, b)) std::swap(a, b);
    solution.pairs.push_back({a, b});
    solution.total_cost += inst.Cost(u, v);
  }
  std::sort(solution.pairs.begin(), solution.pairs.end(),
            [&](const OfflinePair& x, const OfflinePair& y) {
              if (x.second != y.second) return later(y.second, x.second);
              return x.first < y.first;
            });
  solution.lower_bound =
      (static_cast<double>(round.grid_cost) - 0.5 * static_cast<double>(solution.pairs.size())) /
      inst.scale();
  return solution;
}

std::vector<OfflinePair> OfflineOptimum1v1(const std::vector<OfflineTicket>& tickets,
                                           const OfflineOptions& options) {
  return SolveOfflineOptimum1v1(tickets, options).pairs;
}

}  // namespace matchd::sim
