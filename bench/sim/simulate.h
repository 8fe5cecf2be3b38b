// The simulator's engine: runs a matching algorithm over a ticket stream in
// virtual time and measures the result.
//
// Every online algorithm here is matchd's production matcher::Pool, driven the
// way the server drives it (Add + Process on each arrival, Process again at
// NextWakeup), with different rules:
//   matchd        the configured rules: window at the group's mean wait.
//   both-windows  the classic expanding window: every member's own window
//                 must cover the spread (QueueRules::WaitBasis::kYoungestWait).
//   batch         no window; Process runs only every `interval_s` (like a
//                 fixed matchmaking interval), grouping nearest by rating.
//   fifo          unrated: oldest tickets first, no skill at all.
// The offline optimum (bench/sim/offline_bound.h) is measured with the same
// Summarize().
#ifndef MATCHD_BENCH_SIM_SIMULATE_H_
#define MATCHD_BENCH_SIM_SIMULATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "bench/sim/workload.h"
#include "matcher/pool.h"

namespace matchd::sim {

struct AlgorithmSpec {
  std::string name;
  matcher::QueueRules rules;
  // > 0: Process only at multiples of this (a batch interval); 0: event-driven.
  double interval_s = 0;
};

enum class Outcome : uint8_t { kWaiting, kMatched, kAbandoned, kExpired };

// One formed match; ticket indexes into the stream.
struct SimMatch {
  double formed_s = 0;
  std::vector<std::vector<int>> teams;
  int region = -1;  // with latency rules: where the match is placed
};

struct SimResult {
  std::vector<SimMatch> matches;
  std::vector<Outcome> outcome;   // per ticket
  std::vector<double> done_s;     // per ticket: when it left the pool
};

// Runs `algorithm` over `tickets` (sorted by arrival). Tickets wait at most
// rules.max_wait. Runs until every ticket has left or can never match.
SimResult Simulate(const std::vector<SimTicket>& tickets, const AlgorithmSpec& algorithm);

// What one run measured. Waits are per player of the measured tickets (those
// that arrived in [measure_from_s, measure_to_s)); match figures are over the
// matches whose first ticket is measured.
struct Summary {
  int tickets = 0;
  int players = 0;
  double matched_share = 0;    // of measured tickets
  double abandoned_share = 0;
  double expired_share = 0;
  // Waits of matched and expired players, seconds (an expired player counts
  // with its whole wait).
  double wait_mean = 0, wait_p50 = 0, wait_p90 = 0, wait_p99 = 0, wait_max = 0;
  int matches = 0;
  // Two-team matches: the gap between team mean ratings (1v1: |Δrating|).
  double gap_mean = 0, gap_p99 = 0;
  double gap_within_5 = 0;     // share of matches with gap <= 5
  // Highest minus lowest player rating in the match.
  double spread_mean = 0, spread_p99 = 0;
  // Two teams: |i-th best of team A - i-th best of team B|, mean over slots,
  // then mean over matches; and p99 over matches of the largest slot delta.
  double slot_delta_mean = 0, slot_delta_max_p99 = 0;
  // Two teams: share of matches whose favourite's predicted chance (Elo
  // logistic, 400 scale) is <= 55 %, i.e. within 45–55 %.
  double fair_share = 0;
  // Player arrivals per second over the measured window.
  double players_per_s = 0;
  // K = mean quality × mean wait × players/s, quality being the gap for 1v1
  // and the spread for larger matches (see docs/QUALITY.md).
  double k = 0;
  // p50 and p99 wait of matched and expired players by party size (index = size - 1).
  std::vector<double> wait_p50_by_party, wait_p99_by_party;
  // p99 wait of the 1 % highest and 1 % lowest rated measured players.
  double wait_p99_top1 = 0, wait_p99_bottom1 = 0;
  // Placed matches: each player's latency in the match's region (ms), and
  // the share of players whose region there is their best one.
  double latency_mean = 0, latency_p99 = 0;
  double best_region_share = 0;
};

Summary Summarize(const std::vector<SimTicket>& tickets, const SimResult& result,
                  double measure_from_s, double measure_to_s);

// The value at quantile q (0..1) of `values` (sorted in place); 0 if empty.
double Quantile(std::vector<double>& values, double q);

// An order-sensitive hash of the matches (teams, members, times), for
// determinism checks.
uint64_t Fingerprint(const SimResult& result);

}  // namespace matchd::sim

#endif  // MATCHD_BENCH_SIM_SIMULATE_H_
