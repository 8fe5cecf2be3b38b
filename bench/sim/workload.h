// A seeded, deterministic ticket stream for the match-quality simulator
// (matchsim): Poisson arrivals (optionally following a daily curve), ratings
// from a normal distribution or resampled from a user's file, party sizes,
// per-region latency and abandonment. Every algorithm is run on the same
// stream.
#ifndef MATCHD_BENCH_SIM_WORKLOAD_H_
#define MATCHD_BENCH_SIM_WORKLOAD_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace matchd::sim {

struct WorkloadOptions {
  uint64_t seed = 1;
  // Mean ticket arrivals per second (a Poisson process).
  double rate = 10;
  // Arrivals are generated over [0, duration_s).
  double duration_s = 3600;
  // With a daily curve the rate at time t is
  //   rate * (1 + daily_amplitude * sin(2*pi*t / daily_period_s)),
  // amplitude in [0, 1); 0 keeps the rate flat.
  double daily_amplitude = 0;
  double daily_period_s = 86400;
  // Ratings: N(rating_mean, rating_sd), or resampled uniformly from
  // `ratings` when it is not empty (see LoadRatings).
  double rating_mean = 1500;
  double rating_sd = 350;
  std::vector<double> ratings;
  // Share of tickets by party size: party_mix[i] is the weight of size i+1.
  // Members of a party are within +-party_rating_radius of its centre.
  std::vector<double> party_mix = {1};
  double party_rating_radius = 100;
  // Regions: each player lives near one region (chosen by region_weights)
  // and has a round-trip time to every region (see GenerateWorkload).
  std::vector<std::string> regions;
  std::vector<double> region_weights;
  // Mean patience of players who give up: each ticket abandons after an
  // exponential time with this mean; infinity for nobody.
  double abandon_mean_s = std::numeric_limits<double>::infinity();
};

struct SimTicket {
  uint64_t key = 0;      // 1, 2, ... in arrival order
  double arrival_s = 0;
  // When the ticket gives up if still waiting; +inf if never.
  double abandon_s = std::numeric_limits<double>::infinity();
  std::vector<double> member_ratings;  // party_size entries
  double rating = 0;                   // the party's rating: mean of its members
  // Round-trip ms per region (WorkloadOptions::regions order): the worst of
  // the party's members.
  std::vector<double> latency_ms;
  int party_size() const { return static_cast<int>(member_ratings.size()); }
};

// INVALID_ARGUMENT naming the offending option, or the stream sorted by arrival.
absl::StatusOr<std::vector<SimTicket>> GenerateWorkload(const WorkloadOptions& options);

// Reads ratings from a text file: one number per line, or CSV whose first row
// may be a header; `column` picks the CSV column (by header name, or 0-based
// index as a string; empty: the first column that parses as a number). Blank
// lines and lines starting with '#' are skipped.
absl::StatusOr<std::vector<double>> LoadRatings(const std::string& path, const std::string& column);
// The same, from text in memory.
absl::StatusOr<std::vector<double>> ParseRatings(const std::string& text, const std::string& column);

}  // namespace matchd::sim

#endif  // MATCHD_BENCH_SIM_WORKLOAD_H_
