#include "matcher/arrival_density.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace matchd::matcher {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

// Arrivals every `interval` seconds at ratings evenly spread over
// [low, low + width): a density of 1 / (interval * width) per second per point.
void RecordEven(ArrivalDensity& density, int count, double interval, double low, double width,
                absl::Time* now) {
  for (int i = 0; i < count; ++i) {
    // A stride coprime with `count` visits every slot once, out of order.
    const double rating = low + width * ((i * 37) % count + 0.5) / count;
    density.Record(rating, *now);
    *now += absl::Seconds(interval);
  }
}

TEST(ArrivalDensityTest, NoEstimateBeforeEnoughArrivals) {
  ArrivalDensity density;
  absl::Time now = kT0;
  RecordEven(density, ArrivalDensity::kMinSamples - 1, 1, 1000, 1000, &now);
  EXPECT_EQ(density.RateNear(1500), 0);
  EXPECT_EQ(density.WindowFor(1500, 10), 0);
  density.Record(1500, now);
  EXPECT_GT(density.RateNear(1500), 0);
}

TEST(ArrivalDensityTest, EstimatesAnEvenStream) {
  ArrivalDensity density;
  absl::Time now = kT0;
  // 10 arrivals per second over 1000 points: 0.01 per second per point.
  RecordEven(density, ArrivalDensity::kSamples, 0.1, 1000, 1000, &now);
  EXPECT_NEAR(density.RateNear(1500), 0.01, 0.001);
  // sqrt(8 / (2 * 0.01)) = 20.
  EXPECT_NEAR(density.WindowFor(1500, 8), 20, 1);
  // At the edge only one side has arrivals: the estimate halves, not more.
  EXPECT_NEAR(density.RateNear(1000), 0.005, 0.001);
}

TEST(ArrivalDensityTest, SparseRatingsGetWiderWindows) {
  ArrivalDensity density;
  absl::Time now = kT0;
  // Three quarters of the arrivals in [1400, 1600), a quarter in [1600, 2400).
  for (int i = 0; i < ArrivalDensity::kSamples; ++i) {
    const double rating =
        i % 4 == 3 ? 1600 + 800.0 * ((i * 7) % 128) / 128 : 1400 + 200.0 * ((i * 7) % 384) / 384;
    density.Record(rating, now);
    now += absl::Seconds(0.1);
  }
  const double dense = density.WindowFor(1500, 4);
  const double sparse = density.WindowFor(2000, 4);
  // 12x fewer arrivals per point: a sqrt(12) = 3.5x wider window.
  EXPECT_NEAR(sparse / dense, std::sqrt(12.0), 0.5);
}

TEST(ArrivalDensityTest, ForgetsOldArrivalsAndFollowsTheRate) {
  ArrivalDensity density;
  absl::Time now = kT0;
  RecordEven(density, ArrivalDensity::kSamples, 0.1, 1000, 1000, &now);
  const double fast = density.RateNear(1500);
  // The same ratings ten times slower replace every sample.
  RecordEven(density, ArrivalDensity::kSamples, 1, 1000, 1000, &now);
  EXPECT_NEAR(density.RateNear(1500) / fast, 0.1, 0.01);
  EXPECT_EQ(density.samples(), ArrivalDensity::kSamples);
}

TEST(ArrivalDensityTest, IgnoresArrivalsOlderThanTheLatest) {
  ArrivalDensity density;
  absl::Time now = kT0;
  RecordEven(density, ArrivalDensity::kSamples, 0.1, 1000, 1000, &now);
  const double before = density.RateNear(1500);
  // A ticket put back with its old enqueue time is not a new arrival.
  density.Record(1500, kT0);
  EXPECT_EQ(density.RateNear(1500), before);
}

TEST(ArrivalDensityTest, OneInstantOrOneRatingIsInfinitelyDense) {
  ArrivalDensity same_time;
  ArrivalDensity same_rating;
  absl::Time now = kT0;
  for (int i = 0; i < ArrivalDensity::kMinSamples; ++i) {
    same_time.Record(1000 + i, kT0);
    same_rating.Record(1500, now);
    now += absl::Seconds(1);
  }
  EXPECT_TRUE(std::isinf(same_time.RateNear(1010)));
  EXPECT_EQ(same_time.WindowFor(1010, 4), 0);
  EXPECT_TRUE(std::isinf(same_rating.RateNear(1500)));
  EXPECT_EQ(same_rating.WindowFor(1500, 4), 0);
}

}  // namespace
}  // namespace matchd::matcher
