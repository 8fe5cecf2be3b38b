// How often tickets arrive near a rating, estimated from the pool's recent
// arrivals. It sets the rating window at which waiting for a closer partner
// stops paying (QueueRules::wait_cost).
//
// Why: for Poisson arrivals at rho tickets per second per rating point near a
// rating, a waiting ticket that accepts any partner within x finds one after
// about 1 / (2 rho x) seconds. Minimising gap + wait_cost * wait per player
// gives x = sqrt(wait_cost / (2 rho)): wide where players are rare, narrow
// where they are many, and the same x whatever the ticket has waited. Across
// ratings this keeps gap / wait equal everywhere, which is what minimises
// mean gap × mean wait (docs/QUALITY.md, "Windows from the arrival rate").
//
// The estimate is the k-nearest-neighbour density over the last kSamples
// arrivals (k = kNeighbours) times their arrival rate. Deterministic; it
// allocates once, in its constructor.
#ifndef MATCHD_MATCHER_ARRIVAL_DENSITY_H_
#define MATCHD_MATCHER_ARRIVAL_DENSITY_H_

#include <array>
#include <vector>

#include "absl/time/time.h"

namespace matchd::matcher {

class ArrivalDensity {
 public:
  static constexpr int kSamples = 512;
  static constexpr int kNeighbours = 32;
  // Fewer recorded arrivals than this: no estimate yet.
  static constexpr int kMinSamples = 2 * kNeighbours;

  ArrivalDensity();

  // Records an arrival. Arrivals are recorded in time order; one earlier than
  // the latest recorded (a ticket put back with its old enqueue time) is
  // ignored.
  void Record(double rating, absl::Time at);

  // Arrivals per second per rating point near `rating`; 0 while fewer than
  // kMinSamples arrivals are known, infinite if they all came at one instant
  // or at one rating.
  double RateNear(double rating) const;

  // sqrt(wait_cost / (2 RateNear(rating))): the window at which a ticket at
  // `rating` should stop waiting for a closer partner. 0 without an estimate.
  double WindowFor(double rating, double wait_cost) const;

  int samples() const { return count_; }

 private:
  // Ring of the last kSamples arrivals in arrival order.
  std::array<double, kSamples> ring_rating_{};
  std::array<absl::Time, kSamples> ring_at_{};
  int count_ = 0;
  int next_ = 0;  // the ring slot the next arrival goes to
  // The ratings of the ring, sorted.
  std::vector<double> sorted_;
};

}  // namespace matchd::matcher

#endif  // MATCHD_MATCHER_ARRIVAL_DENSITY_H_
