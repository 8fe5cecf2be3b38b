// matchsim: measures matching algorithms on the same seeded ticket stream in
// virtual time. matchd's own algorithm is the production matcher::Pool; the
// baselines (expanding window with both windows, a fixed batch interval,
// FIFO) are the same Pool under other rules, and for 1v1 the offline optimum
// (min-cost perfect matching, knowing the future) is the lower bound.
//
//   matchsim --team_size=1 --rate=10                 # one run, a table
//   matchsim --team_size=5 --rate=20 --party_mix=65,20,5,3,7
//   matchsim --sweep --csv=frontier.csv --svg=frontier.svg
//
// See docs/QUALITY.md for what the figures mean and the recorded results.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench/sim/offline_bound.h"
#include "bench/sim/plot.h"
#include "bench/sim/simulate.h"
#include "bench/sim/workload.h"

ABSL_FLAG(uint64_t, seed, 1, "Seed of the ticket stream.");
ABSL_FLAG(double, rate, 10, "Ticket arrivals per second (Poisson).");
ABSL_FLAG(double, duration, 3600, "Seconds of arrivals to simulate.");
ABSL_FLAG(double, warmup, 0.1,
          "Share of the run at its start, and again at its end, whose tickets are not measured.");
ABSL_FLAG(double, daily_amplitude, 0, "Daily curve: the rate swings by this share, in [0, 1).");
ABSL_FLAG(double, daily_period, 86400, "Period of the daily curve, seconds.");
ABSL_FLAG(double, rating_mean, 1500, "Mean of the normal rating distribution.");
ABSL_FLAG(double, rating_sd, 350, "Standard deviation of the normal rating distribution.");
ABSL_FLAG(std::string, ratings_file, "",
          "Resample ratings from this file (one per line, or CSV) instead of the normal.");
ABSL_FLAG(std::string, ratings_column, "", "CSV column of --ratings_file (header name or index).");
ABSL_FLAG(std::string, party_mix, "1",
          "Comma-separated weights of party sizes 1, 2, ..., e.g. 65,20,5,3,7.");
ABSL_FLAG(double, abandon_mean, 0, "Mean patience of players who give up, seconds; 0: nobody does.");
ABSL_FLAG(std::string, regions, "",
          "Comma-separated regions (e.g. eu,us,ap): players get a latency to each and matches "
          "are placed within --max_latency.");
ABSL_FLAG(std::string, region_weights, "", "Share of players living near each region.");
ABSL_FLAG(double, max_latency, 80, "Latency limit at zero wait, ms (with --regions).");
ABSL_FLAG(double, latency_widen, 2, "Latency limit widening per second of wait, ms.");
ABSL_FLAG(double, latency_cap, 200, "Cap of the latency limit, ms; 0: none.");
ABSL_FLAG(int, team_count, 2, "Teams per match.");
ABSL_FLAG(int, team_size, 1, "Players per team.");
ABSL_FLAG(double, initial_window, 0, "Rating window at zero wait.");
ABSL_FLAG(double, widen, 5, "Rating window widening per second of wait.");
ABSL_FLAG(double, max_window, 0, "Cap of the rating window; 0: none.");
ABSL_FLAG(double, wait_cost, 0,
          "Rating points one second of wait is worth: > 0 sets each ticket's initial window from "
          "the arrival rate near its rating (the queue's waitCost).");
ABSL_FLAG(double, widen_time, 0,
          "With --wait_cost: a group's window also grows by its own initial window every this "
          "many seconds (the queue's widenTime); 0: off.");
ABSL_FLAG(double, max_wait, 600, "Longest wait before a ticket expires, seconds.");
ABSL_FLAG(double, batch_interval, 15, "Interval of the batch baseline, seconds.");
ABSL_FLAG(double, offline_cost, 2,
          "Offline optimum: cost of one second of wait in rating points (1v1 only).");
ABSL_FLAG(std::string, algorithms, "matchd,both-windows,batch,fifo,offline",
          "Which algorithms to run.");
ABSL_FLAG(bool, sweep, false,
          "Trace each algorithm's wait-vs-quality frontier over its knob instead of one run.");
ABSL_FLAG(std::string, csv, "", "Write the results as CSV to this file.");
ABSL_FLAG(std::string, svg, "", "Sweep: write the frontier chart as SVG to this file.");
ABSL_FLAG(bool, fingerprint, false, "Print a hash of each algorithm's matches (determinism).");

namespace matchd::sim {
namespace {

struct Row {
  std::string algorithm;
  std::string knob;
  double knob_value = 0;
  Summary summary;
  uint64_t fingerprint = 0;
};

bool Is1v1(int team_count, int team_size) { return team_count == 2 && team_size == 1; }

SimResult SimulateOffline(const std::vector<SimTicket>& tickets, double cost_per_second) {
  std::vector<OfflineTicket> input;
  input.reserve(tickets.size());
  for (const SimTicket& t : tickets) input.push_back({t.arrival_s, t.rating});
  OfflineOptions options;
  options.wait_cost_per_second = cost_per_second;
  SimResult result;
  result.outcome.assign(tickets.size(), Outcome::kWaiting);
  result.done_s.assign(tickets.size(), std::numeric_limits<double>::infinity());
  for (const OfflinePair& pair : OfflineOptimum1v1(input, options)) {
    SimMatch m;
    m.formed_s = std::max(tickets[pair.first].arrival_s, tickets[pair.second].arrival_s);
    m.teams = {{pair.first}, {pair.second}};
    for (int i : {pair.first, pair.second}) {
      result.outcome[i] = Outcome::kMatched;
      result.done_s[i] = m.formed_s;
    }
    result.matches.push_back(std::move(m));
  }
  return result;
}

matcher::QueueRules BaseRules() {
  matcher::QueueRules rules;
  rules.team_count = absl::GetFlag(FLAGS_team_count);
  rules.team_size = absl::GetFlag(FLAGS_team_size);
  rules.rated = true;
  rules.initial_window = absl::GetFlag(FLAGS_initial_window);
  rules.widen_per_second = absl::GetFlag(FLAGS_widen);
  rules.max_window = absl::GetFlag(FLAGS_max_window);
  rules.wait_cost = absl::GetFlag(FLAGS_wait_cost);
  rules.widen_time = absl::Seconds(absl::GetFlag(FLAGS_widen_time));
  rules.max_wait = absl::Seconds(absl::GetFlag(FLAGS_max_wait));
  if (!absl::GetFlag(FLAGS_regions).empty()) {
    rules.region_count =
        static_cast<int>(std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_regions), ',')).size());
    rules.max_latency_ms = absl::GetFlag(FLAGS_max_latency);
    rules.latency_widen_per_second = absl::GetFlag(FLAGS_latency_widen);
    rules.latency_cap_ms = absl::GetFlag(FLAGS_latency_cap);
  }
  return rules;
}

// The algorithm `name` with its knob set to `knob` (NaN: the flags' value).
absl::StatusOr<AlgorithmSpec> MakeAlgorithm(const std::string& name, double knob, int max_party) {
  AlgorithmSpec spec;
  spec.name = name;
  spec.rules = BaseRules();
  spec.rules.max_party_size = max_party;
  if (name == "matchd" || name == "both-windows") {
    if (!std::isnan(knob)) spec.rules.widen_per_second = knob;
    if (name == "both-windows") {
      spec.rules.wait_basis = matcher::QueueRules::WaitBasis::kYoungestWait;
      spec.rules.wait_cost = 0;
      spec.rules.widen_time = absl::ZeroDuration();
    }
  } else if (name == "matchd-cost") {
    // matchd with windows from the arrival rate, swept over wait_cost.
    if (!std::isnan(knob)) spec.rules.wait_cost = knob;
  } else if (name == "batch") {
    spec.interval_s = std::isnan(knob) ? absl::GetFlag(FLAGS_batch_interval) : knob;
    // No window: every group of nearest ratings is taken at the tick.
    spec.rules.initial_window = 1e12;
    spec.rules.widen_per_second = 0;
    spec.rules.max_window = 0;
  } else if (name == "fifo") {
    spec.rules.rated = false;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown algorithm \"", name, "\""));
  }
  if (absl::Status s = matcher::ValidateRules(spec.rules); !s.ok()) return s;
  return spec;
}

std::string KnobName(const std::string& algorithm) {
  if (algorithm == "batch") return "interval_s";
  if (algorithm == "offline" || algorithm == "matchd-cost") return "wait_cost";
  if (algorithm == "fifo") return "-";
  return "widen_per_s";
}

std::vector<double> SweepKnobs(const std::string& algorithm) {
  if (algorithm == "batch") return {1, 2, 5, 10, 15, 30, 60};
  if (algorithm == "offline") return {0.25, 0.5, 1, 2, 4, 8, 16, 32};
  if (algorithm == "fifo") return {std::nan("")};
  if (algorithm == "matchd-cost") return {0.5, 1, 2, 4, 8, 16, 32, 64};
  return {0.25, 0.5, 1, 2, 4, 8, 16, 32, 64};
}

void PrintTable(const std::vector<Row>& rows, bool one_v_one, double bound_k) {
  std::printf("%-13s %-13s %7s %7s %7s %7s %7s %7s %8s %8s %8s %7s %7s %9s %6s %7s %7s %7s\n",
              "algorithm", "knob", "matched", "w_p50", "w_p90", "w_p99", "w_max", "gap", "gap_p99",
              "spread", "sprd_p99", "slot_d", "fair%", "K", "K/bnd", "top1%", "bot1%", "aband%");
  for (const Row& r : rows) {
    const Summary& s = r.summary;
    std::printf(
        "%-13s %-13s %6.1f%% %7.2f %7.2f %7.2f %7.1f %7.1f %8.1f %8.1f %8.1f %7.1f %6.1f%% %9.0f "
        "%6s %7.1f %7.1f %6.1f%%\n",
        r.algorithm.c_str(), r.knob.c_str(), 100 * s.matched_share, s.wait_p50, s.wait_p90,
        s.wait_p99, s.wait_max, s.gap_mean, s.gap_p99, s.spread_mean, s.spread_p99,
        s.slot_delta_mean,
        100 * s.fair_share, s.k,
        bound_k > 0 ? absl::StrFormat("%.2f", s.k / bound_k).c_str() : "-", s.wait_p99_top1,
        s.wait_p99_bottom1, 100 * s.abandoned_share);
    if (r.fingerprint != 0) std::printf("  fingerprint %016llx\n", (unsigned long long)r.fingerprint);
  }
  bool parties = false;
  for (const Row& r : rows) parties = parties || r.summary.wait_p99_by_party.size() > 1;
  if (parties) {
    std::printf("%-13s %-13s  wait p50 / p99 by party size (s)\n", "algorithm", "knob");
    for (const Row& r : rows) {
      std::string line;
      for (size_t i = 0; i < r.summary.wait_p99_by_party.size(); ++i) {
        absl::StrAppendFormat(&line, "  %zu: %.1f / %.1f", i + 1, r.summary.wait_p50_by_party[i],
                              r.summary.wait_p99_by_party[i]);
      }
      std::printf("%-13s %-13s %s\n", r.algorithm.c_str(), r.knob.c_str(), line.c_str());
    }
  }
  bool placed = false;
  for (const Row& r : rows) placed = placed || r.summary.latency_mean > 0;
  if (placed) {
    std::printf("%-13s %-13s %9s %9s %12s\n", "algorithm", "knob", "lat_mean", "lat_p99",
                "best_region");
    for (const Row& r : rows) {
      std::printf("%-13s %-13s %9.1f %9.1f %11.1f%%\n", r.algorithm.c_str(), r.knob.c_str(),
                  r.summary.latency_mean, r.summary.latency_p99, 100 * r.summary.best_region_share);
    }
  }
  std::printf("(waits in s over matched and expired players; gap = team-mean gap%s; K = %s x mean wait x "
              "players/s%s)\n",
              one_v_one ? " = |rating difference|" : "", one_v_one ? "mean gap" : "mean spread",
              bound_k > 0 ? absl::StrFormat("; bound K = %.0f (offline optimum)", bound_k).c_str()
                          : "");
}

int Usage(const std::string& message) {
  std::cerr << "matchsim: " << message << "\n";
  return 2;
}

// Opened before the run, so that an unwritable path fails at once.
bool OpenOutput(const std::string& flag, const std::string& path, std::ofstream* out) {
  if (path.empty()) return true;
  out->open(path);
  if (*out) return true;
  std::cerr << "matchsim: --" << flag << ": cannot write " << path << "\n";
  return false;
}

void WriteCsv(std::ofstream& out, const std::vector<Row>& rows, double bound_k) {
  out << "algorithm,knob,knob_value,tickets,matched_share,abandoned_share,expired_share,"
         "wait_mean,wait_p50,wait_p90,wait_p99,wait_max,gap_mean,gap_p99,gap_within_5,"
         "spread_mean,spread_p99,slot_delta_mean,slot_delta_max_p99,fair_share,players_per_s,"
         "k,k_over_bound,wait_p99_top1,wait_p99_bottom1,latency_mean,latency_p99,"
         "best_region_share,wait_p99_solo,wait_p99_largest_party\n";
  for (const Row& r : rows) {
    const Summary& s = r.summary;
    out << absl::StrJoin(
               {r.algorithm, r.knob, absl::StrCat(std::isnan(r.knob_value) ? 0 : r.knob_value),
                absl::StrCat(s.tickets), absl::StrCat(s.matched_share),
                absl::StrCat(s.abandoned_share), absl::StrCat(s.expired_share),
                absl::StrCat(s.wait_mean), absl::StrCat(s.wait_p50), absl::StrCat(s.wait_p90),
                absl::StrCat(s.wait_p99), absl::StrCat(s.wait_max), absl::StrCat(s.gap_mean),
                absl::StrCat(s.gap_p99), absl::StrCat(s.gap_within_5), absl::StrCat(s.spread_mean),
                absl::StrCat(s.spread_p99), absl::StrCat(s.slot_delta_mean),
                absl::StrCat(s.slot_delta_max_p99), absl::StrCat(s.fair_share),
                absl::StrCat(s.players_per_s), absl::StrCat(s.k),
                absl::StrCat(bound_k > 0 ? s.k / bound_k : 0), absl::StrCat(s.wait_p99_top1),
                absl::StrCat(s.wait_p99_bottom1), absl::StrCat(s.latency_mean),
                absl::StrCat(s.latency_p99), absl::StrCat(s.best_region_share),
                absl::StrCat(s.wait_p99_by_party.empty() ? 0 : s.wait_p99_by_party.front()),
                absl::StrCat(s.wait_p99_by_party.empty() ? 0 : s.wait_p99_by_party.back())},
               ",")
        << "\n";
  }
}

int Run() {
  WorkloadOptions w;
  w.seed = absl::GetFlag(FLAGS_seed);
  w.rate = absl::GetFlag(FLAGS_rate);
  w.duration_s = absl::GetFlag(FLAGS_duration);
  w.daily_amplitude = absl::GetFlag(FLAGS_daily_amplitude);
  w.daily_period_s = absl::GetFlag(FLAGS_daily_period);
  w.rating_mean = absl::GetFlag(FLAGS_rating_mean);
  w.rating_sd = absl::GetFlag(FLAGS_rating_sd);
  if (!absl::GetFlag(FLAGS_ratings_file).empty()) {
    auto ratings = LoadRatings(absl::GetFlag(FLAGS_ratings_file), absl::GetFlag(FLAGS_ratings_column));
    if (!ratings.ok()) {
      std::cerr << "matchsim: " << ratings.status().message() << "\n";
      return 2;
    }
    w.ratings = *std::move(ratings);
  }
  w.party_mix.clear();
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_party_mix), ',')) {
    double v;
    if (!absl::SimpleAtod(part, &v)) {
      std::cerr << "matchsim: --party_mix: \"" << part << "\" is not a number\n";
      return 2;
    }
    w.party_mix.push_back(v);
  }
  if (!absl::GetFlag(FLAGS_regions).empty()) {
    w.regions = absl::StrSplit(absl::GetFlag(FLAGS_regions), ',');
    if (static_cast<int>(w.regions.size()) > matcher::QueueRules::kMaxRegions) {
      std::cerr << "matchsim: at most " << matcher::QueueRules::kMaxRegions << " regions\n";
      return 2;
    }
  }
  if (!absl::GetFlag(FLAGS_region_weights).empty()) {
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_region_weights), ',')) {
      double v;
      if (!absl::SimpleAtod(part, &v)) {
        std::cerr << "matchsim: --region_weights: \"" << part << "\" is not a number\n";
        return 2;
      }
      w.region_weights.push_back(v);
    }
  }
  const double abandon = absl::GetFlag(FLAGS_abandon_mean);
  if (!(abandon >= 0)) return Usage("--abandon_mean must be >= 0 (0: nobody gives up)");
  if (abandon > 0) w.abandon_mean_s = abandon;
  const double warmup = absl::GetFlag(FLAGS_warmup);
  if (!(warmup >= 0 && warmup < 0.5)) return Usage("--warmup must be in [0, 0.5)");
  // Below a millisecond the batch would tick billions of times an hour.
  if (!(absl::GetFlag(FLAGS_batch_interval) >= 0.001)) {
    return Usage("--batch_interval must be >= 0.001 s");
  }
  if (!(absl::GetFlag(FLAGS_offline_cost) > 0)) return Usage("--offline_cost must be > 0");
  std::ofstream csv, svg;
  if (!OpenOutput("csv", absl::GetFlag(FLAGS_csv), &csv) ||
      !OpenOutput("svg", absl::GetFlag(FLAGS_svg), &svg)) {
    return 2;
  }
  const int team_count = absl::GetFlag(FLAGS_team_count);
  const int team_size = absl::GetFlag(FLAGS_team_size);
  const int max_party = static_cast<int>(w.party_mix.size());
  if (max_party > team_size) {
    std::cerr << "matchsim: --party_mix has parties of " << max_party
              << " but --team_size is " << team_size << "\n";
    return 2;
  }
  auto stream = GenerateWorkload(w);
  if (!stream.ok()) {
    std::cerr << "matchsim: " << stream.status().message() << "\n";
    return 2;
  }
  const std::vector<SimTicket>& tickets = *stream;
  const double warm = absl::GetFlag(FLAGS_warmup) * w.duration_s;
  const double from = warm, to = w.duration_s - warm;
  const bool one_v_one = Is1v1(team_count, team_size) && max_party == 1;
  const bool sweep = absl::GetFlag(FLAGS_sweep);
  std::printf("matchsim: %zu tickets over %.0f s (rate %.2f/s, seed %llu), %dx%d, measured %.0f..%.0f s\n",
              tickets.size(), w.duration_s, w.rate, (unsigned long long)w.seed, team_count,
              team_size, from, to);

  std::vector<Row> rows;
  double bound_k = 0;
  for (absl::string_view name_view : absl::StrSplit(absl::GetFlag(FLAGS_algorithms), ',')) {
    const std::string name(name_view);
    std::vector<double> knobs = sweep ? SweepKnobs(name) : std::vector<double>{std::nan("")};
    for (double knob : knobs) {
      SimResult result;
      double value = knob;
      if (name == "offline") {
        if (!one_v_one) {
          std::fprintf(stderr, "matchsim: the offline optimum is for 1v1 solo queues; skipped\n");
          break;
        }
        if (std::isnan(value)) value = absl::GetFlag(FLAGS_offline_cost);
        result = SimulateOffline(tickets, value);
      } else {
        auto spec = MakeAlgorithm(name, knob, max_party);
        if (!spec.ok()) {
          std::cerr << "matchsim: " << spec.status().message() << "\n";
          return 2;
        }
        if (std::isnan(value)) {
          value = name == "batch" ? spec->interval_s : spec->rules.widen_per_second;
        }
        result = Simulate(tickets, *spec);
      }
      Row row;
      row.algorithm = name;
      row.knob = name == "fifo" ? "-" : absl::StrCat(KnobName(name), "=", value);
      row.knob_value = name == "fifo" ? std::nan("") : value;
      row.summary = Summarize(tickets, result, from, to);
      if (absl::GetFlag(FLAGS_fingerprint)) row.fingerprint = Fingerprint(result);
      if (name == "offline" && (bound_k == 0 || row.summary.k < bound_k)) bound_k = row.summary.k;
      rows.push_back(std::move(row));
    }
  }
  PrintTable(rows, one_v_one, bound_k);
  if (csv.is_open()) WriteCsv(csv, rows, bound_k);
  if (svg.is_open()) {
    std::vector<Series> series;
    std::map<std::string, size_t> index;
    for (const Row& r : rows) {
      if (!index.count(r.algorithm)) {
        index[r.algorithm] = series.size();
        series.push_back({r.algorithm, {}});
      }
      series[index[r.algorithm]].points.push_back(
          {r.summary.wait_mean, one_v_one ? r.summary.gap_mean : r.summary.spread_mean});
    }
    PlotOptions plot;
    plot.title = absl::StrFormat("%dx%d, %.3g tickets/s, seed %llu: wait vs quality", team_count,
                                 team_size, w.rate, (unsigned long long)w.seed);
    plot.x_label = "mean wait (s)";
    plot.y_label = one_v_one ? "mean rating gap" : "mean rating spread in match";
    const double lambda = rows.empty() ? w.rate : rows.front().summary.players_per_s;
    if (bound_k > 0) {
      plot.reference_products = {bound_k / lambda, 1.5 * bound_k / lambda};
      plot.reference_label = absl::StrFormat("K=%.0f, 1.5x", bound_k);
    }
    svg << RenderSvg(series, plot);
  }
  return 0;
}

}  // namespace
}  // namespace matchd::sim

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures matching algorithms on one seeded ticket stream in virtual time.\n"
      "  matchsim --team_size=1 --rate=10\n  matchsim --sweep --csv=f.csv --svg=f.svg");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "matchsim: unexpected argument \"" << positional[1] << "\"; flags only\n";
    return 2;
  }
  return matchd::sim::Run();
}
