// The matching core: one queue's pool of waiting tickets and the rules that
// turn groups of them into matches.
//
// A Pool is a plain single-threaded object (no locks, no gRPC): the server
// gives each pool to exactly one event-loop thread, and the simulator drives
// it in virtual time. All times are passed in by the caller, so the pool is
// deterministic: the same calls in the same order give the same matches.
//
// Matching is event-driven. Process(now) is to be called after tickets are
// added or removed, and again at NextWakeup(): the moment a waiting group's
// widening rating window first covers it, or a ticket's expiry. There is no
// fixed matching interval.
#ifndef MATCHD_MATCHER_POOL_H_
#define MATCHD_MATCHER_POOL_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "matcher/custom_rule.h"

namespace matchd::matcher {

// Identifies a ticket inside a pool; chosen by the caller, unique per pool.
using TicketKey = uint64_t;

// The rules of one queue. Validated by the caller (see ValidateRules).
struct QueueRules {
  int team_count = 2;      // >= 1
  int team_size = 1;       // >= 1; team_count * team_size <= kMaxPlayersPerMatch
  int max_party_size = 1;  // 1..team_size
  // Rated queues group tickets by rating; unrated ones fill oldest first.
  bool rated = false;
  // window(wait) = min(initial_window + widen_per_second * wait, max_window)
  double initial_window = 0;
  double widen_per_second = 0;
  double max_window = 0;  // 0: no cap
  // > 0: each ticket's initial window comes from how often tickets arrive
  // near its rating (matcher/arrival_density.h): the window at which waiting
  // for a closer partner stops paying, when one second of waiting is worth
  // `wait_cost` rating points of gap. At least initial_window, at most
  // max_window. A group's initial window is the mean of its members'.
  // Needs kMeanWait.
  double wait_cost = 0;
  // With wait_cost, > 0: a group's window also grows by its own initial
  // window every widen_time, on top of widen_per_second. Rare ratings, whose
  // windows start wider, then widen faster too, which keeps their waits short.
  absl::Duration widen_time = absl::ZeroDuration();
  absl::Duration max_wait = absl::Seconds(120);
  // Whose wait the window is taken at when a group is judged.
  //  kMeanWait (the default; what matchd's config uses): the group's mean
  //    wait, so a ticket that has waited long lends its patience to a
  //    newcomer. It measured best in the simulator (docs/QUALITY.md).
  //  kYoungestWait: every member's own window must cover the spread, i.e. the
  //    window at the shortest wait: the classic expanding window, kept so the
  //    simulator can compare against it.
  enum class WaitBasis { kMeanWait, kYoungestWait };
  WaitBasis wait_basis = WaitBasis::kMeanWait;

  // Partial lobbies (min_players 0: full matches only). Once a ticket has
  // waited partial_after, its group may start with fewer players, at least
  // min_players: a free-for-all (team_size 1) with fewer teams, a team mode
  // with every team the same number of players short. The largest shape
  // acceptable wins.
  int min_players = 0;
  absl::Duration partial_after = absl::Seconds(30);

  // Placement by latency (region_count 0: none). A match is placed in one of
  // the regions where every ticket's latency is within
  //   limit(wait) = min(max_latency_ms + latency_widen_per_second * wait, latency_cap_ms)
  // at the group's wait (the same basis as the rating window); among those,
  // the region with the lowest worst latency wins.
  static constexpr int kMaxRegions = 16;
  int region_count = 0;  // 0..kMaxRegions
  double max_latency_ms = 0;  // > 0 when region_count > 0
  double latency_widen_per_second = 0;
  double latency_cap_ms = 0;  // 0: no cap

  // A studio's own rule (matcher/custom_rule.h); null for none.
  std::shared_ptr<const CustomRule> custom_rule;

  static constexpr int kMaxPlayersPerMatch = 200;

  int players_per_match() const { return team_count * team_size; }
  // The rating window accepted after waiting `wait` for a group whose initial
  // window is initial_window (with wait_cost, a group's may be wider).
  // Infinite for unrated queues.
  double WindowAt(absl::Duration wait) const;
  // The latency limit after waiting `wait`, ms.
  double LatencyLimitAt(absl::Duration wait) const;
};

// INVALID_ARGUMENT naming the offending field, or OK.
absl::Status ValidateRules(const QueueRules& rules);

// A ticket as the pool sees it: a party of `party_size` players that always
// lands on one team.
struct TicketSpec {
  TicketKey key = 0;
  int party_size = 1;  // 1..max_party_size
  double rating = 0;   // the party's rating (mean of its members); unused if unrated
  // The original enqueue time. A ticket put back after a failed match keeps it,
  // so it loses no priority.
  absl::Time enqueued_at;
  // When the ticket leaves through OnExpired if still waiting.
  absl::Time expires_at = absl::InfiniteFuture();
  // The custom rule's data for this ticket (CustomRule::TicketData).
  uint64_t custom = 0;
  // Tickets only ever meet tickets of the same partition. The server derives
  // it from the queue's match attributes (equal values, equal partition).
  uint64_t partition = 0;
  // Round-trip time to each of the rules' regions in ms (the worst of the
  // party's members); kUnreachable where the ticket cannot play. Only the
  // first rules.region_count entries are read.
  static constexpr uint16_t kUnreachable = 0xffff;
  std::array<uint16_t, QueueRules::kMaxRegions> latency_ms = FilledUnreachable();

  static constexpr std::array<uint16_t, QueueRules::kMaxRegions> FilledUnreachable() {
    std::array<uint16_t, QueueRules::kMaxRegions> a{};
    for (auto& v : a) v = kUnreachable;
    return a;
  }
};

// A match formed by the pool.
struct FormedMatch {
  // teams[i] lists the keys of the tickets on team i; each team holds exactly
  // team_size players.
  std::vector<std::vector<TicketKey>> teams;
  double rating_spread = 0;  // highest minus lowest ticket rating (0 if unrated)
  double team_gap = 0;       // highest minus lowest team mean rating (0 if unrated)
  absl::Duration mean_wait;  // mean over the tickets of (formed_at - enqueued_at)
  absl::Time formed_at;
  // With latency rules: the chosen region (index into the rules' regions)
  // and the worst ticket latency there; otherwise -1 and 0.
  int region = -1;
  double max_latency_ms = 0;
};

// Why a ticket is still waiting (for `searching` events).
enum class Blocker {
  kNone,              // a match is possible now (Process has not run yet)
  kNotEnoughPlayers,  // fewer players than a match needs
  kRatingSpread,      // enough players, but the closest group is wider than the window
  kTeamPacking,       // enough players, but the parties do not fill the teams
  kLatency,           // near in rating, but no region serves them all within the limit
  kCustomRule,        // the custom rule's penalty keeps the group over the window
};

struct Explanation {
  absl::Duration waited;
  double window = 0;         // this ticket's own window now (0 if unrated)
  double initial_window = 0; // this ticket's own initial window (see wait_cost)
  int players_waiting = 0;   // in the whole pool
  int players_needed = 0;    // players_per_match
  // The players this ticket could ever be matched with, itself included (its
  // match attributes, allowed by the custom rule, sharing a region), counted
  // up to players_needed: below it, the blocker is kNotEnoughPlayers.
  int players_in_reach = 0;
  Blocker blocker = Blocker::kNotEnoughPlayers;
  double best_spread = 0;    // kRatingSpread, kCustomRule: spread of the closest full group
  double penalty = 0;        // kCustomRule: what the rule adds to that spread
  // kLatency: the best region for the closest group, its worst latency and
  // the limit now (ms).
  int region = -1;
  double worst_latency_ms = 0;
  double latency_limit_ms = 0;
  // kRatingSpread, kLatency: when that group becomes acceptable if nothing
  // changes. kNotEnoughPlayers, kTeamPacking with partial lobbies: when the
  // anchor's partial_after ends, if a partial lobby of partial_players is
  // acceptable then.
  std::optional<absl::Time> acceptable_at;
  int partial_players = 0;
};

// Receives the pool's outcomes. Called from inside Pool::Process; the
// listener must not call back into the pool.
class PoolListener {
 public:
  virtual ~PoolListener() = default;
  // Asked for every member just before a match is committed. Return false if
  // the ticket can no longer take part (its caller left). The match is then
  // not formed: such tickets leave the pool through OnWithdrawn and the other
  // members stay queued with their original enqueue times.
  virtual bool StillWaiting(TicketKey key) = 0;
  // A match was formed; its tickets have already left the pool.
  virtual void OnMatched(const FormedMatch& match) = 0;
  // The ticket reached expires_at and left the pool.
  virtual void OnExpired(TicketKey key) = 0;
  // StillWaiting(key) returned false and the ticket left the pool.
  virtual void OnWithdrawn(TicketKey key) = 0;
};

// One queue's waiting tickets. Not thread-safe: one owner thread.
//
// Memory: the pool owns all of its state and keeps the memory of its
// high-water mark (ticket nodes are recycled, see matcher/node_pool.h), so a
// pool whose size is steady allocates nothing per ticket.
class Pool final {
 public:
  // `listener` is not owned and must outlive the pool.
  Pool(QueueRules rules, PoolListener* listener);
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool();

  // Adds a ticket. ALREADY_EXISTS if the key is waiting, INVALID_ARGUMENT if
  // the party size is outside 1..max_party_size. Matching happens at the next
  // Process().
  absl::Status Add(const TicketSpec& ticket);
  // Removes a waiting ticket without a callback. False if it is not waiting.
  bool Remove(TicketKey key);
  bool Contains(TicketKey key) const;

  // Expires the tickets whose expires_at <= now (oldest expiry first), then
  // forms every match acceptable at `now`, oldest anchor first.
  void Process(absl::Time now);
  // When Process should next run if nothing is added or removed;
  // absl::InfiniteFuture() if never.
  absl::Time NextWakeup() const;

  // Why `key` is waiting at `now`. The ticket must be waiting.
  Explanation Explain(TicketKey key, absl::Time now) const;

  const QueueRules& rules() const { return rules_; }
  size_t tickets_waiting() const;
  int players_waiting() const;

 private:
  struct Impl;
  QueueRules rules_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace matchd::matcher

#endif  // MATCHD_MATCHER_POOL_H_
