#include "matcher/arrival_density.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace matchd::matcher {

ArrivalDensity::ArrivalDensity() { sorted_.reserve(kSamples); }

void ArrivalDensity::Record(double rating, absl::Time at) {
  if (count_ > 0) {
    const absl::Time latest = ring_at_[(next_ + kSamples - 1) % kSamples];
    if (at < latest) return;
  }
  const auto place = std::upper_bound(sorted_.begin(), sorted_.end(), rating);
  if (count_ < kSamples) {
    ++count_;
    sorted_.insert(place, rating);
  } else {
    // The oldest arrival (in the slot about to be overwritten) makes room:
    // the ratings between its place and the new one move by one.
    const auto oldest = std::lower_bound(sorted_.begin(), sorted_.end(), ring_rating_[next_]);
    if (oldest < place) {
      std::move(oldest + 1, place, oldest);
      *(place - 1) = rating;
    } else {
      std::move_backward(place, oldest, oldest + 1);
      *place = rating;
    }
  }
  ring_rating_[next_] = rating;
  ring_at_[next_] = at;
  next_ = (next_ + 1) % kSamples;
}

double ArrivalDensity::RateNear(double rating) const {
  if (count_ < kMinSamples) return 0;
  const absl::Time newest = ring_at_[(next_ + kSamples - 1) % kSamples];
  const absl::Time oldest = ring_at_[count_ == kSamples ? next_ : 0];
  const double span = absl::ToDoubleSeconds(newest - oldest);
  // The distance to the kNeighbours-th nearest recorded rating. The nearest
  // k form a run sorted_[i, i + k) next to `rating`; the best run is the
  // first whose next element above is farther than its first one is below,
  // so it is found by binary search over i.
  const int n = static_cast<int>(sorted_.size());
  const int k = kNeighbours;
  const int at =
      static_cast<int>(std::lower_bound(sorted_.begin(), sorted_.end(), rating) - sorted_.begin());
  int lo = std::max(0, at - k);
  int hi = std::min(at, n - k);  // the run starts in [lo, hi]
  while (lo < hi) {
    const int i = lo + (hi - lo) / 2;
    // Moving the run up by one swaps sorted_[i] for sorted_[i + k]: worth it
    // while the new one is nearer.
    if (sorted_[i + k] - rating < rating - sorted_[i]) {
      lo = i + 1;
    } else {
      hi = i;
    }
  }
  const double distance = std::max(rating - sorted_[lo], sorted_[lo + k - 1] - rating);
  if (!(span > 0) || !(distance > 0)) return std::numeric_limits<double>::infinity();
  // (count - 1) arrivals over the span, a share kNeighbours / count of them
  // within +-distance.
  const double per_second = (count_ - 1) / span;
  const double share_per_point = kNeighbours / (static_cast<double>(count_) * 2 * distance);
  return per_second * share_per_point;
}

double ArrivalDensity::WindowFor(double rating, double wait_cost) const {
  const double rate = RateNear(rating);
  if (rate == 0) return 0;
  return std::sqrt(wait_cost / (2 * rate));
}

}  // namespace matchd::matcher
