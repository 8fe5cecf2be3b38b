#include "bench/sim/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace matchd::sim {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Latency model: ~8 ms of access network plus ~16 ms per 1000 km, with a few
// ms of jitter. A player lives 0..1500 km from their home region; regions are
// 3000 km apart plus 1500 km per step in the configured order (a line of
// regions, like data centres around the world).
constexpr double kBaseMs = 8;
constexpr double kMsPerKm = 16.0 / 1000;
constexpr double kJitterSdMs = 3;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(std::string(what));
}

}  // namespace

absl::StatusOr<std::vector<SimTicket>> GenerateWorkload(const WorkloadOptions& o) {
  if (!(o.rate > 0) || !std::isfinite(o.rate)) return Invalid("rate must be > 0");
  if (!(o.duration_s > 0) || !std::isfinite(o.duration_s)) return Invalid("duration must be > 0");
  if (!(o.daily_amplitude >= 0 && o.daily_amplitude < 1)) {
    return Invalid("daily_amplitude must be in [0, 1)");
  }
  if (!(o.daily_period_s > 0)) return Invalid("daily_period must be > 0");
  if (o.ratings.empty() && !(o.rating_sd >= 0)) return Invalid("rating_sd must be >= 0");
  if (o.party_mix.empty() || o.party_mix.size() > 200) {
    return Invalid("party_mix needs 1..200 weights");
  }
  for (double w : o.party_mix) {
    if (!(w >= 0) || !std::isfinite(w)) return Invalid("party_mix weights must be finite and >= 0");
  }
  if (std::accumulate(o.party_mix.begin(), o.party_mix.end(), 0.0) <= 0) {
    return Invalid("party_mix needs a positive weight");
  }
  if (!o.region_weights.empty() && o.region_weights.size() != o.regions.size()) {
    return Invalid("region_weights needs one weight per region");
  }
  if (!(o.abandon_mean_s > 0)) return Invalid("abandon_mean must be > 0");

  std::mt19937_64 rng(o.seed);
  std::exponential_distribution<double> gap(o.rate * (1 + o.daily_amplitude));
  std::uniform_real_distribution<double> unit(0, 1);
  std::normal_distribution<double> rating(o.rating_mean, o.rating_sd);
  std::uniform_int_distribution<size_t> pick_rating(0, o.ratings.empty() ? 0 : o.ratings.size() - 1);
  std::uniform_real_distribution<double> member_offset(-o.party_rating_radius,
                                                       o.party_rating_radius);
  std::discrete_distribution<int> party_size(o.party_mix.begin(), o.party_mix.end());
  std::vector<double> weights = o.region_weights;
  if (weights.empty()) weights.assign(o.regions.size(), 1);
  std::discrete_distribution<int> home(weights.begin(), weights.end());
  std::uniform_real_distribution<double> local_km(0, 1500);
  std::normal_distribution<double> jitter(0, kJitterSdMs);
  std::exponential_distribution<double> patience(
      std::isfinite(o.abandon_mean_s) ? 1 / o.abandon_mean_s : 1);

  std::vector<SimTicket> out;
  const double peak = o.rate * (1 + o.daily_amplitude);
  double t = 0;
  while (true) {
    t += gap(rng);
    if (t >= o.duration_s) break;
    // Thinning: keep an arrival of the peak-rate process with probability
    // rate(t) / peak.
    if (o.daily_amplitude > 0) {
      const double rate_t = o.rate * (1 + o.daily_amplitude * std::sin(2 * kPi * t / o.daily_period_s));
      if (unit(rng) * peak > rate_t) continue;
    }
    SimTicket ticket;
    ticket.key = out.size() + 1;
    ticket.arrival_s = t;
    const double centre = o.ratings.empty() ? rating(rng) : o.ratings[pick_rating(rng)];
    const int size = party_size(rng) + 1;
    for (int i = 0; i < size; ++i) {
      ticket.member_ratings.push_back(size == 1 ? centre : centre + member_offset(rng));
    }
    ticket.rating =
        std::accumulate(ticket.member_ratings.begin(), ticket.member_ratings.end(), 0.0) / size;
    ticket.latency_ms.assign(o.regions.size(), 0);
    for (int i = 0; i < size && !o.regions.empty(); ++i) {
      const int h = home(rng);
      const double km = local_km(rng);
      for (size_t r = 0; r < o.regions.size(); ++r) {
        const int steps = std::abs(static_cast<int>(r) - h);
        const double distance = km + (steps == 0 ? 0 : 3000 + 1500.0 * steps);
        const double ms = std::max(1.0, kBaseMs + kMsPerKm * distance + jitter(rng));
        ticket.latency_ms[r] = std::max(ticket.latency_ms[r], std::round(ms));
      }
    }
    if (std::isfinite(o.abandon_mean_s)) ticket.abandon_s = t + patience(rng);
    out.push_back(std::move(ticket));
  }
  return out;
}

absl::StatusOr<std::vector<double>> ParseRatings(const std::string& text,
                                                 const std::string& column) {
  std::vector<double> out;
  int index = -1;  // CSV column; -1: the first numeric field
  if (!column.empty() && !absl::SimpleAtoi(column, &index)) index = -2;  // a header name
  bool first_row = true;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    for (auto& f : fields) f = absl::StripAsciiWhitespace(absl::StripPrefix(absl::StripSuffix(f, "\""), "\""));
    if (first_row) {
      first_row = false;
      if (index == -2) {
        auto it = std::find(fields.begin(), fields.end(), column);
        if (it == fields.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat("ratings: no column named \"", column, "\" in the header"));
        }
        index = static_cast<int>(it - fields.begin());
        continue;
      }
      // A header row: nothing in it parses as a number.
      double unused;
      if (std::none_of(fields.begin(), fields.end(),
                       [&](absl::string_view f) { return absl::SimpleAtod(f, &unused); })) {
        continue;
      }
    }
    double value = 0;
    bool ok = false;
    if (index >= 0) {
      ok = index < static_cast<int>(fields.size()) && absl::SimpleAtod(fields[index], &value);
    } else {
      for (absl::string_view f : fields) {
        if (absl::SimpleAtod(f, &value)) {
          ok = true;
          break;
        }
      }
    }
    if (!ok || !std::isfinite(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ratings: line ", line_number, " has no rating: \"", line, "\""));
    }
    out.push_back(value);
  }
  if (out.empty()) return absl::InvalidArgumentError("ratings: no ratings found");
  return out;
}

absl::StatusOr<std::vector<double>> LoadRatings(const std::string& path, const std::string& column) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("ratings: cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseRatings(text.str(), column);
}

}  // namespace matchd::sim
