#include "matcher/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace matchd::matcher {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Groups with at most this many tickets get an exact team split; the search is
// at most a few ten thousand leaves there (12 solos into 4 teams of 3).
constexpr size_t kExactSplitMaxTickets = 12;

// Node budget of one packing-feasibility search. Real queues (parties of a
// few players) never come close; the budget only bounds pathological rules,
// where running out makes the ticket look unpackable rather than stall the
// event loop.
constexpr int kPackSearchBudget = 20000;

// Acceptance times further out than this are not refined to the nanosecond:
// every ticket expires long before.
constexpr double kMaxRefinedDelaySeconds = 1e9;

bool IsFiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

double QueueRules::WindowAt(absl::Duration wait) const {
  if (!rated) return kInfinity;
  double window = initial_window;
  // Tested separately so that an infinite wait with no widening is not NaN.
  if (widen_per_second > 0 && wait > absl::ZeroDuration()) {
    window += widen_per_second * absl::ToDoubleSeconds(wait);
  }
  if (max_window != 0) window = std::min(window, max_window);
  return window;
}

double QueueRules::LatencyLimitAt(absl::Duration wait) const {
  double limit = max_latency_ms;
  if (latency_widen_per_second > 0 && wait > absl::ZeroDuration()) {
    limit += latency_widen_per_second * absl::ToDoubleSeconds(wait);
  }
  if (latency_cap_ms != 0) limit = std::min(limit, latency_cap_ms);
  return limit;
}

absl::Status ValidateRules(const QueueRules& rules) {
  auto invalid = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (rules.team_count < 1) {
    return invalid("team_count must be >= 1, got ", rules.team_count);
  }
  if (rules.team_size < 1) {
    return invalid("team_size must be >= 1, got ", rules.team_size);
  }
  // In 64 bits: the int product of two large counts could overflow.
  const int64_t players = int64_t{rules.team_count} * rules.team_size;
  if (players > QueueRules::kMaxPlayersPerMatch) {
    return invalid("team_count * team_size must be <= ", QueueRules::kMaxPlayersPerMatch, ", got ",
                   players);
  }
  if (rules.max_party_size < 1 || rules.max_party_size > rules.team_size) {
    return invalid("max_party_size must be in 1..team_size (", rules.team_size, "), got ",
                   rules.max_party_size);
  }
  if (!IsFiniteNonNegative(rules.initial_window)) {
    return invalid("initial_window must be finite and >= 0, got ", rules.initial_window);
  }
  if (!IsFiniteNonNegative(rules.widen_per_second)) {
    return invalid("widen_per_second must be finite and >= 0, got ", rules.widen_per_second);
  }
  if (!IsFiniteNonNegative(rules.max_window)) {
    return invalid("max_window must be finite and >= 0, got ", rules.max_window);
  }
  if (rules.max_window != 0 && rules.max_window < rules.initial_window) {
    return invalid("max_window must be 0 (no cap) or >= initial_window (", rules.initial_window,
                   "), got ", rules.max_window);
  }
  if (rules.max_wait <= absl::ZeroDuration()) {
    return invalid("max_wait must be > 0, got ", absl::FormatDuration(rules.max_wait));
  }
  if (rules.min_players != 0) {
    // At least two players, and at least one per team in a team mode.
    const int least = rules.team_size == 1 ? 2 : rules.team_count;
    if (rules.min_players < least || rules.min_players >= rules.players_per_match()) {
      return invalid("min_players must be 0 (full matches only) or in ", least, "..",
                     rules.players_per_match() - 1, ", got ", rules.min_players);
    }
    if (rules.partial_after < absl::ZeroDuration()) {
      return invalid("partial_after must be >= 0, got ", absl::FormatDuration(rules.partial_after));
    }
  }
  if (rules.region_count < 0 || rules.region_count > QueueRules::kMaxRegions) {
    return invalid("region_count must be in 0..", QueueRules::kMaxRegions, ", got ",
                   rules.region_count);
  }
  if (rules.region_count > 0) {
    if (!(IsFiniteNonNegative(rules.max_latency_ms) && rules.max_latency_ms > 0)) {
      return invalid("max_latency_ms must be finite and > 0, got ", rules.max_latency_ms);
    }
    if (!IsFiniteNonNegative(rules.latency_widen_per_second)) {
      return invalid("latency_widen_per_second must be finite and >= 0, got ",
                     rules.latency_widen_per_second);
    }
    if (!IsFiniteNonNegative(rules.latency_cap_ms) ||
        (rules.latency_cap_ms != 0 && rules.latency_cap_ms < rules.max_latency_ms)) {
      return invalid("latency_cap_ms must be 0 (no cap) or >= max_latency_ms (",
                     rules.max_latency_ms, "), got ", rules.latency_cap_ms);
    }
  }
  return absl::OkStatus();
}

struct Pool::Impl {
  // A place in by_rating: partitions apart, then by rating.
  using RatingPos = std::tuple<uint64_t, double, TicketKey>;
  static RatingPos PosOf(const TicketSpec& spec) { return {spec.partition, spec.rating, spec.key}; }

  struct Ticket {
    TicketSpec spec;
    // Generation of the ticket's live entry in `due`; 0 if it has none.
    uint64_t due_gen = 0;
    absl::Time due_at = absl::InfiniteFuture();
  };

  // An entry of the due heap. Entries are never removed early: one whose
  // ticket is gone or whose generation is not the ticket's is skipped.
  struct DueEntry {
    absl::Time retry_at;
    absl::Time enqueued_at;
    TicketKey key;
    uint64_t gen;
  };
  // The heap comparator: true if `a` is processed after `b`.
  static bool DueAfter(const DueEntry& a, const DueEntry& b) {
    return std::tie(a.retry_at, a.enqueued_at, a.key, a.gen) >
           std::tie(b.retry_at, b.enqueued_at, b.key, b.gen);
  }

  // A ticket of the candidate group, copied so that it survives the ticket's
  // removal while a match is committed.
  struct Member {
    TicketKey key;
    int party_size;
    double rating;
    absl::Time enqueued_at;
    int bin;  // team in the feasibility packing; parties of 2+ only
    uint16_t latency;  // in the evaluated region; 0 without latency rules
    const TicketSpec* spec;  // valid while the group is evaluated
  };

  enum class Outcome { kNoGroup, kRejected, kAccepted };
  struct Evaluation {
    Outcome outcome = Outcome::kNoGroup;
    Blocker blocker = Blocker::kNotEnoughPlayers;  // for kNoGroup and kRejected
    double spread = 0;
    double penalty = 0;  // the custom rule's, added to the spread when judged
    // The group's lowest and highest places in rating order.
    RatingPos lowest;
    RatingPos highest;
    absl::Duration mean_wait;
    std::optional<absl::Time> acceptable_at;  // for kRejected
    // Latency rules: the region evaluated (-1 if none), the group's worst
    // latency there and the anchor's own limit now.
    int region = -1;
    double worst_latency = 0;
    double latency_limit = 0;
    // When a ticket that the latency limit keeps out now gets in; the group
    // may change then. InfiniteFuture if none.
    absl::Time admit_at = absl::InfiniteFuture();
    // When Process should look again if this is not accepted.
    std::optional<absl::Time> RetryAt() const {
      absl::Time at = admit_at;
      if (acceptable_at.has_value()) at = std::min(at, *acceptable_at);
      if (at == absl::InfiniteFuture()) return std::nullopt;
      return at;
    }
  };

  Impl(const QueueRules& r, PoolListener* l)
      : rules(r),
        listener(l),
        full_need(r.players_per_match()),
        teams(r.team_count),
        team_size(r.team_size),
        need(full_need) {}

  // Pool helpers.
  void Erase(TicketKey key);
  void EraseAndMark(TicketKey key);
  void MarkDue(Ticket& ticket, absl::Time at);
  void MarkChanged(RatingPos first, RatingPos last, const TicketSpec* changed);
  bool ShareARegion(const TicketSpec& a, const TicketSpec& b) const;
  absl::Time LatencyAdmitAt(double latency, absl::Time enqueued_at, absl::Time now) const;
  void PruneDueTop();
  bool IsLive(const DueEntry& entry) const;
  int LivePlayersAt(absl::Time now) const;

  // Candidate group.
  // The anchor's best group now: a full match, else (QueueRules::min_players)
  // the largest acceptable partial lobby. Leaves the group and its shape in
  // the scratch state for Commit.
  Evaluation Evaluate(const Ticket& anchor, absl::Time now, int live_players);
  void SetShape(int shape_teams, int shape_size);
  // The best group of the current shape over the regions.
  Evaluation EvaluateRegions(const Ticket& anchor, absl::Time now, int live_players);
  // The anchor's group among the tickets that can play in `region` within
  // `limit` ms (-1: no latency rules).
  Evaluation EvaluateIn(const Ticket& anchor, absl::Time now, int live_players, int region,
                        double limit);
  static bool Better(const Evaluation& a, const Evaluation& b);
  void ResetGroup();
  bool TryAdd(const TicketSpec& spec);
  bool PackSearch(size_t item, int* budget);
  // The wait that the window is taken at is basis_sum / divisor (see
  // QueueRules::WaitBasis): the sum of the members' waits over their count, or
  // the shortest wait over 1. Both grow by exactly `nanos` per nanosecond.
  std::optional<absl::Time> AcceptableAt(double spread, double latency, absl::Duration basis_sum,
                                         int64_t divisor, absl::Time now) const;
  bool AcceptedAt(double spread, double latency, absl::Duration basis_sum, int64_t divisor,
                  int64_t nanos) const;
  template <typename Test>
  static std::optional<int64_t> FirstNanosecond(double delay_seconds, Test accepted);

  // Committing a match.
  void Commit(absl::Time now, const Evaluation& evaluation);
  void SplitTeams();
  void SplitExact(size_t index);
  void SplitGreedy();
  void SplitFromPacking(bool by_rating_sum);
  double TeamGap(const std::vector<int>& assignment);

  const QueueRules rules;
  PoolListener* const listener;
  const int full_need;  // players in a full match
  // The shape of the match being gathered: the full one, or a partial lobby
  // (QueueRules::min_players). Set by Evaluate; Commit uses it.
  int teams;
  int team_size;
  int need;  // teams * team_size

  // unordered_map nodes are stable, so the indexes may point into it.
  std::unordered_map<TicketKey, Ticket> tickets;
  // Every index orders by partition first, so a partition's tickets are
  // contiguous and a walk never leaves its own.
  std::map<RatingPos, const Ticket*> by_rating;  // rated
  std::map<std::tuple<uint64_t, absl::Time, TicketKey>, const Ticket*> by_enqueue;
  // Unrated: the same order per party size.
  std::set<std::tuple<uint64_t, int, absl::Time, TicketKey>> by_size_enqueue;
  // Tickets with a finite expiry, soonest first (ties by key).
  std::set<std::pair<absl::Time, TicketKey>> expiry;
  std::vector<DueEntry> due;  // min-heap under DueAfter
  uint64_t next_gen = 1;
  int players = 0;

  // Scratch, reused across evaluations so that the hot path does not
  // allocate. Explain() uses it too: it is state of no single call.
  std::vector<Member> group;
  int group_players = 0;
  int eval_region = -1;  // the region of the group being gathered; -1 if none
  std::vector<int> bin_load;      // loads of the packing, parties of 2+
  std::vector<char> size_failed;  // party sizes refused since the last add
  bool any_size_failed = false;
  std::vector<int> pack_items;  // group indexes, largest party first
  std::vector<int> pack_bins;   // bin per pack_items entry
  std::vector<int> pack_loads;
  std::vector<int> split_order;   // group indexes in placement order
  std::vector<int> split_assign;  // team per group index
  std::vector<int> split_best;
  std::vector<int> team_load;
  std::vector<double> team_sum;
  double split_best_gap = 0;
  std::vector<TicketKey> withdrawn;
  std::vector<const TicketSpec*> group_specs;  // for CustomRule::Penalty
  FormedMatch match;
};

void Pool::Impl::Erase(TicketKey key) {
  auto it = tickets.find(key);
  if (it == tickets.end()) return;
  const TicketSpec& spec = it->second.spec;
  if (rules.rated) {
    by_rating.erase(PosOf(spec));
  } else {
    by_enqueue.erase({spec.partition, spec.enqueued_at, key});
    by_size_enqueue.erase({spec.partition, spec.party_size, spec.enqueued_at, key});
  }
  expiry.erase({spec.expires_at, key});
  players -= spec.party_size;
  tickets.erase(it);
}

// Erase for a ticket leaving with a group. With latency rules its region
// neighbours are marked one by one (MarkChanged over the group's span alone
// does not know whose latencies left).
void Pool::Impl::EraseAndMark(TicketKey key) {
  if (rules.region_count == 0) {
    Erase(key);
    return;
  }
  const TicketSpec spec = tickets.at(key).spec;
  Erase(key);
  MarkChanged(PosOf(spec), PosOf(spec), &spec);
}

void Pool::Impl::MarkDue(Ticket& ticket, absl::Time at) {
  // An earlier pending entry covers this one: the evaluation it triggers
  // pushes whatever retry is needed then.
  if (ticket.due_gen != 0 && ticket.due_at <= at) return;
  ticket.due_gen = next_gen++;
  ticket.due_at = at;
  due.push_back({at, ticket.spec.enqueued_at, ticket.spec.key, ticket.due_gen});
  std::push_heap(due.begin(), due.end(), DueAfter);
  // Superseded and removed tickets leave stale entries behind; drop them in
  // bulk once they outnumber the live ones, keeping the heap O(tickets).
  if (due.size() > 2 * tickets.size() + 64) {
    due.erase(
        std::remove_if(due.begin(), due.end(), [this](const DueEntry& e) { return !IsLive(e); }),
        due.end());
    std::make_heap(due.begin(), due.end(), DueAfter);
  }
}

// Marks due at the next Process every ticket whose group may have changed
// because tickets between `first` and `last` in rating order (one partition)
// arrived or left: for rated queues the tickets still in that span (ones a
// group walk skipped) and the `need` nearest on either side that can share a
// region with `changed` (any ticket if null). Unrated groups are the anchor
// plus the oldest tickets that fit, so they differ mostly by the anchor's
// party size: mark the oldest ticket of each size (and, with regions, the
// oldest that can share one with `changed`).
// Departures count too: they can let a ticket in that did not fit or was
// further away, and so make a group possible or acceptable sooner.
void Pool::Impl::MarkChanged(RatingPos first, RatingPos last, const TicketSpec* changed) {
  const absl::Time next_process = absl::InfinitePast();
  const uint64_t partition = std::get<0>(first);
  const bool by_region = changed != nullptr && rules.region_count > 0;
  if (!rules.rated) {
    for (int size = 1; size <= rules.max_party_size; ++size) {
      for (auto it = by_size_enqueue.lower_bound({partition, size, absl::InfinitePast(), 0});
           it != by_size_enqueue.end() && std::get<0>(*it) == partition &&
           std::get<1>(*it) == size;
           ++it) {
        Ticket& ticket = tickets.at(std::get<3>(*it));
        MarkDue(ticket, next_process);
        if (!by_region || ShareARegion(ticket.spec, *changed)) break;
      }
    }
    return;
  }
  // A walk from an anchor on the far side of `need` tickets that it surely
  // takes before the changed one never reaches it. Without latency rules
  // every ticket counts; with them, per region, the tickets with no more
  // latency there than the changed ticket's (an anchor whose limit admits
  // the changed ticket admits them too).
  std::array<int, QueueRules::kMaxRegions> passed{};
  // Marks the ticket at `it`; true when the walk has gone far enough.
  auto visit = [&](const auto& entry) {
    MarkDue(tickets.at(std::get<2>(entry.first)), next_process);
    if (!by_region) return ++passed[0] >= full_need;
    bool done = true;
    for (int r = 0; r < rules.region_count; ++r) {
      const uint16_t own = changed->latency_ms[r];
      if (own == TicketSpec::kUnreachable) continue;
      if (entry.second->spec.latency_ms[r] <= own) ++passed[r];
      done = done && passed[r] >= full_need;
    }
    return done;
  };
  auto start = by_rating.lower_bound(first);
  for (auto down = start; down != by_rating.begin();) {
    --down;
    if (std::get<0>(down->first) != partition || visit(*down)) break;
  }
  auto up = start;
  for (; up != by_rating.end() && up->first <= last; ++up) {
    MarkDue(tickets.at(std::get<2>(up->first)), next_process);
  }
  passed.fill(0);
  for (; up != by_rating.end(); ++up) {
    if (std::get<0>(up->first) != partition || visit(*up)) break;
  }
}

bool Pool::Impl::ShareARegion(const TicketSpec& a, const TicketSpec& b) const {
  if (rules.region_count == 0) return true;
  for (int r = 0; r < rules.region_count; ++r) {
    if (a.latency_ms[r] != TicketSpec::kUnreachable && b.latency_ms[r] != TicketSpec::kUnreachable) {
      return true;
    }
  }
  return false;
}

// The first nanosecond at which the latency limit of a ticket enqueued at
// `enqueued_at` covers `latency` (`now` if it already does); InfiniteFuture
// if never.
absl::Time Pool::Impl::LatencyAdmitAt(double latency, absl::Time enqueued_at,
                                      absl::Time now) const {
  const absl::Duration waited = now - enqueued_at;
  if (latency <= rules.LatencyLimitAt(waited)) return now;
  if (!(rules.latency_widen_per_second > 0)) return absl::InfiniteFuture();
  if (rules.latency_cap_ms != 0 && latency > rules.latency_cap_ms) return absl::InfiniteFuture();
  const double delay = (latency - rules.max_latency_ms) / rules.latency_widen_per_second -
                       absl::ToDoubleSeconds(waited);
  if (!(delay < kMaxRefinedDelaySeconds)) return absl::InfiniteFuture();
  const std::optional<int64_t> at = FirstNanosecond(delay, [&](int64_t nanos) {
    return latency <= rules.LatencyLimitAt(waited + absl::Nanoseconds(nanos));
  });
  return at.has_value() ? now + absl::Nanoseconds(*at) : absl::InfiniteFuture();
}

bool Pool::Impl::IsLive(const DueEntry& entry) const {
  auto it = tickets.find(entry.key);
  return it != tickets.end() && it->second.due_gen == entry.gen;
}

void Pool::Impl::PruneDueTop() {
  while (!due.empty() && !IsLive(due.front())) {
    std::pop_heap(due.begin(), due.end(), DueAfter);
    due.pop_back();
  }
}

int Pool::Impl::LivePlayersAt(absl::Time now) const {
  int live = players;
  for (auto it = expiry.begin(); it != expiry.end() && it->first <= now; ++it) {
    live -= tickets.at(it->second).spec.party_size;
  }
  return live;
}

void Pool::Impl::ResetGroup() {
  group.clear();
  group_players = 0;
  bin_load.assign(teams, 0);
  size_failed.assign(rules.max_party_size + 1, 0);
  any_size_failed = false;
}

// Adds `spec` to the group if its party fits the remaining slots and the
// group's parties can still be packed into the teams. Solo players never
// need a search: they fill whatever slots the parties leave.
bool Pool::Impl::TryAdd(const TicketSpec& spec) {
  const int size = spec.party_size;
  if (size > need - group_players || size_failed[size]) return false;
  group.push_back({spec.key, size, spec.rating, spec.enqueued_at, -1,
                   eval_region >= 0 ? spec.latency_ms[eval_region] : uint16_t{0}, &spec});
  if (size > 1) {
    // Fast path: best fit into the current packing.
    int best = -1;
    for (int b = 0; b < teams; ++b) {
      if (bin_load[b] + size <= team_size && (best < 0 || bin_load[b] > bin_load[best])) {
        best = b;
      }
    }
    if (best >= 0) {
      bin_load[best] += size;
      group.back().bin = best;
    } else {
      // Repack every party from scratch, largest first.
      pack_items.clear();
      for (size_t i = 0; i < group.size(); ++i) {
        if (group[i].party_size > 1) pack_items.push_back(static_cast<int>(i));
      }
      std::stable_sort(pack_items.begin(), pack_items.end(),
                       [&](int a, int b) { return group[a].party_size > group[b].party_size; });
      pack_bins.assign(pack_items.size(), -1);
      pack_loads.assign(teams, 0);
      int budget = kPackSearchBudget;
      if (!PackSearch(0, &budget)) {
        group.pop_back();
        // The group is unchanged, so every later party of this size would
        // fail the same way.
        size_failed[size] = 1;
        any_size_failed = true;
        return false;
      }
      for (size_t i = 0; i < pack_items.size(); ++i) {
        group[pack_items[i]].bin = pack_bins[i];
      }
      bin_load = pack_loads;
    }
  }
  group_players += size;
  if (any_size_failed) {
    std::fill(size_failed.begin(), size_failed.end(), 0);
    any_size_failed = false;
  }
  return true;
}

bool Pool::Impl::PackSearch(size_t item, int* budget) {
  if (item == pack_items.size()) return true;
  if (--*budget < 0) return false;
  const int size = group[pack_items[item]].party_size;
  for (int b = 0; b < teams; ++b) {
    const int load = pack_loads[b];
    if (load + size > team_size) continue;
    // Teams with equal loads are interchangeable for the rest of the search
    // (items come largest first), so try only the first of them.
    bool seen = false;
    for (int c = 0; c < b && !seen; ++c) seen = pack_loads[c] == load;
    if (seen) continue;
    pack_loads[b] += size;
    pack_bins[item] = b;
    if (PackSearch(item + 1, budget)) return true;
    pack_loads[b] -= size;
    if (*budget < 0) return false;
  }
  return false;
}

Pool::Impl::Evaluation Pool::Impl::Evaluate(const Ticket& anchor, absl::Time now,
                                            int live_players) {
  SetShape(rules.team_count, rules.team_size);
  Evaluation full = EvaluateRegions(anchor, now, live_players);
  if (full.outcome == Outcome::kAccepted || rules.min_players == 0) return full;
  // Partial lobbies, once the anchor has waited long enough: the largest
  // smaller shape that is acceptable now.
  const absl::Time partial_from = anchor.spec.enqueued_at + rules.partial_after;
  if (now < partial_from) {
    full.admit_at = std::min(full.admit_at, partial_from);
    return full;
  }
  absl::Time soonest = absl::InfiniteFuture();
  const bool fewer_teams = rules.team_size == 1;
  for (int k = (fewer_teams ? rules.team_count : rules.team_size) - 1; k >= 1; --k) {
    const int shape_teams = fewer_teams ? k : rules.team_count;
    const int shape_size = fewer_teams ? 1 : k;
    if (shape_teams * shape_size < rules.min_players) break;
    SetShape(shape_teams, shape_size);
    Evaluation partial = EvaluateRegions(anchor, now, live_players);
    if (partial.outcome == Outcome::kAccepted) return partial;
    soonest = std::min(soonest, partial.RetryAt().value_or(absl::InfiniteFuture()));
  }
  SetShape(rules.team_count, rules.team_size);
  full.admit_at = std::min(full.admit_at, soonest);
  return full;
}

void Pool::Impl::SetShape(int shape_teams, int shape_size) {
  teams = shape_teams;
  team_size = shape_size;
  need = shape_teams * shape_size;
}

Pool::Impl::Evaluation Pool::Impl::EvaluateRegions(const Ticket& anchor, absl::Time now,
                                                   int live_players) {
  if (rules.region_count == 0) return EvaluateIn(anchor, now, live_players, -1, 0);
  // One group per region the anchor can play in now; the best is gathered
  // again at the end, so that the scratch group is the one returned.
  const double limit = rules.LatencyLimitAt(now - anchor.spec.enqueued_at);
  Evaluation best;
  best.blocker = Blocker::kLatency;
  int best_region = -1;
  int last_gathered = -1;  // the region whose group the scratch state holds
  // The soonest any region's group may change or become acceptable: the
  // anchor looks again then, whichever region wins now.
  absl::Time soonest = absl::InfiniteFuture();
  for (int r = 0; r < rules.region_count; ++r) {
    const uint16_t own = anchor.spec.latency_ms[r];
    if (own == TicketSpec::kUnreachable) continue;
    if (own > limit) {
      // Not even the anchor itself is within the limit there yet.
      const absl::Time at = LatencyAdmitAt(own, anchor.spec.enqueued_at, now);
      soonest = std::min(soonest, at);
      if (best_region < 0 && at < best.admit_at) {
        best.admit_at = at;
        best.region = r;
        best.worst_latency = own;
        best.latency_limit = limit;
      }
      continue;
    }
    Evaluation e = EvaluateIn(anchor, now, live_players, r, limit);
    last_gathered = r;
    soonest = std::min(soonest, e.RetryAt().value_or(absl::InfiniteFuture()));
    if (best_region < 0 || Better(e, best)) {
      best = e;
      best_region = r;
    }
  }
  if (best_region >= 0 && best_region != last_gathered) {
    best = EvaluateIn(anchor, now, live_players, best_region, limit);
  }
  best.admit_at = std::min(best.admit_at, soonest);
  return best;
}

// Accepted groups first, by worst latency (the best region), then spread;
// then rejected ones by how soon they could be accepted; then empty-handed
// ones by how soon a ticket gets in.
bool Pool::Impl::Better(const Evaluation& a, const Evaluation& b) {
  auto rank = [](const Evaluation& e) {
    return e.outcome == Outcome::kAccepted ? 0 : e.outcome == Outcome::kRejected ? 1 : 2;
  };
  if (rank(a) != rank(b)) return rank(a) < rank(b);
  if (a.outcome == Outcome::kAccepted) {
    return std::tie(a.worst_latency, a.spread) < std::tie(b.worst_latency, b.spread);
  }
  const absl::Time a_at = a.RetryAt().value_or(absl::InfiniteFuture());
  const absl::Time b_at = b.RetryAt().value_or(absl::InfiniteFuture());
  if (a_at != b_at) return a_at < b_at;
  return std::tie(a.worst_latency, a.spread) < std::tie(b.worst_latency, b.spread);
}

Pool::Impl::Evaluation Pool::Impl::EvaluateIn(const Ticket& anchor, absl::Time now,
                                              int live_players, int region, double limit) {
  Evaluation result;
  result.region = region;
  result.latency_limit = limit;
  eval_region = region;
  ResetGroup();
  if (live_players < need) {
    result.blocker = Blocker::kNotEnoughPlayers;
    return result;
  }
  const uint64_t partition = anchor.spec.partition;
  TryAdd(anchor.spec);  // always fits: party_size <= team_size
  // Players not yet visited; once fewer than the open slots, stop walking.
  int unvisited = live_players - anchor.spec.party_size;
  // Players of the partition seen, and how many the latency limit kept out.
  int seen = anchor.spec.party_size;
  int kept_out = 0;
  double nearest_kept_out = kInfinity;  // the lowest latency kept out
  bool stopped_early = false;
  // Returns true when the walk should stop.
  auto visit = [&](const TicketSpec& spec) {
    // Only Explain() can meet such a ticket: Process() expires it first.
    if (spec.expires_at <= now) return false;
    unvisited -= spec.party_size;
    seen += spec.party_size;
    if (rules.custom_rule != nullptr && !rules.custom_rule->Compatible(anchor.spec, spec)) {
      // Kept apart by the studio's rule: as if not there.
    } else if (region >= 0 && spec.latency_ms[region] > limit) {
      if (spec.latency_ms[region] != TicketSpec::kUnreachable) {
        kept_out += spec.party_size;
        nearest_kept_out = std::min<double>(nearest_kept_out, spec.latency_ms[region]);
      }
    } else {
      TryAdd(spec);
    }
    stopped_early = group_players == need || unvisited < need - group_players;
    return stopped_early;
  };

  if (rules.rated) {
    const double center = anchor.spec.rating;
    auto anchor_it = by_rating.find(PosOf(anchor.spec));
    auto down = anchor_it;  // the next lower candidate is std::prev(down)
    auto up = std::next(anchor_it);
    if (up != by_rating.end() && std::get<0>(up->first) != partition) up = by_rating.end();
    while (group_players < need) {
      bool has_down = down != by_rating.begin();
      if (has_down && std::get<0>(std::prev(down)->first) != partition) {
        down = by_rating.begin();
        has_down = false;
      }
      const bool has_up = up != by_rating.end();
      if (!has_down && !has_up) break;
      bool take_down = has_down;
      if (has_down && has_up) {
        const TicketSpec& lo = std::prev(down)->second->spec;
        const TicketSpec& hi = up->second->spec;
        const double d_lo = center - lo.rating;
        const double d_hi = hi.rating - center;
        take_down = d_lo != d_hi
                        ? d_lo < d_hi
                        : std::tie(lo.enqueued_at, lo.key) < std::tie(hi.enqueued_at, hi.key);
      }
      const Ticket* next = take_down ? (--down)->second : (up++)->second;
      if (up != by_rating.end() && std::get<0>(up->first) != partition) up = by_rating.end();
      if (visit(next->spec)) break;
    }
  } else {
    for (auto it = by_enqueue.lower_bound({partition, absl::InfinitePast(), 0});
         it != by_enqueue.end() && std::get<0>(it->first) == partition; ++it) {
      if (it->second == &anchor) continue;
      if (visit(it->second->spec)) break;
    }
  }
  if (kept_out > 0) {
    result.admit_at = LatencyAdmitAt(nearest_kept_out, anchor.spec.enqueued_at, now);
  }

  if (group_players < need) {
    // Why not: too few players who may meet at all, the latency limit, or
    // the parties' sizes.
    result.blocker = !stopped_early && seen < need ? Blocker::kNotEnoughPlayers
                     : kept_out > 0               ? Blocker::kLatency
                                                  : Blocker::kTeamPacking;
    // The latency that keeps the group from forming.
    if (result.blocker == Blocker::kLatency) result.worst_latency = nearest_kept_out;
    return result;
  }

  absl::Duration sum_wait;
  absl::Duration min_wait = absl::InfiniteDuration();
  result.lowest = result.highest = {partition, group[0].rating, group[0].key};
  for (const Member& m : group) {
    sum_wait += now - m.enqueued_at;
    min_wait = std::min(min_wait, now - m.enqueued_at);
    result.lowest = std::min(result.lowest, {partition, m.rating, m.key});
    result.highest = std::max(result.highest, {partition, m.rating, m.key});
    result.worst_latency = std::max<double>(result.worst_latency, m.latency);
  }
  result.spread = rules.rated ? std::get<1>(result.highest) - std::get<1>(result.lowest) : 0;
  if (rules.rated && rules.custom_rule != nullptr) {
    group_specs.clear();
    for (const Member& m : group) group_specs.push_back(m.spec);
    result.penalty = rules.custom_rule->Penalty(group_specs);
    if (!(result.penalty >= 0) || !std::isfinite(result.penalty)) result.penalty = 0;
  }
  const double judged = result.spread + result.penalty;
  result.mean_wait = sum_wait / static_cast<int64_t>(group.size());
  const bool by_mean = rules.wait_basis == QueueRules::WaitBasis::kMeanWait;
  const absl::Duration basis_sum = by_mean ? sum_wait : min_wait;
  const int64_t divisor = by_mean ? static_cast<int64_t>(group.size()) : 1;
  if (AcceptedAt(judged, result.worst_latency, basis_sum, divisor, 0)) {
    result.outcome = Outcome::kAccepted;
  } else {
    result.outcome = Outcome::kRejected;
    const double window = rules.WindowAt(basis_sum / divisor);
    result.blocker = result.spread > window ? Blocker::kRatingSpread
                     : judged > window      ? Blocker::kCustomRule
                                            : Blocker::kLatency;
    result.acceptable_at = AcceptableAt(judged, result.worst_latency, basis_sum, divisor, now);
  }
  return result;
}

// Whether the group is acceptable `nanos` after the time at which its basis
// waits sum to `basis_sum`. Exactly the test Process applies then: the sum
// grows by divisor * nanos with no rounding. `latency` is the group's worst
// latency in its region (0 without latency rules).
bool Pool::Impl::AcceptedAt(double spread, double latency, absl::Duration basis_sum,
                            int64_t divisor, int64_t nanos) const {
  const absl::Duration wait = (basis_sum + absl::Nanoseconds(nanos) * divisor) / divisor;
  return spread <= rules.WindowAt(wait) &&
         (rules.region_count == 0 || latency <= rules.LatencyLimitAt(wait));
}

// The first nanosecond after `now` at which the group becomes acceptable, or
// nullopt if never. The closed form gives a first guess; the answer is then
// pinned with AcceptedAt itself so that a Process at the returned time always
// matches and one a nanosecond earlier never does, whatever the rounding.
std::optional<absl::Time> Pool::Impl::AcceptableAt(double spread, double latency,
                                                   absl::Duration basis_sum, int64_t divisor,
                                                   absl::Time now) const {
  const absl::Duration wait_now = basis_sum / divisor;
  const double waited = absl::ToDoubleSeconds(wait_now);
  double delay = 0;
  if (spread > rules.WindowAt(wait_now)) {
    if (!(rules.widen_per_second > 0) || !std::isfinite(spread)) return std::nullopt;
    if (rules.max_window != 0 && spread > rules.max_window) return std::nullopt;
    delay = (spread - rules.initial_window) / rules.widen_per_second - waited;
  }
  if (rules.region_count > 0 && latency > rules.LatencyLimitAt(wait_now)) {
    if (!(rules.latency_widen_per_second > 0)) return std::nullopt;
    if (rules.latency_cap_ms != 0 && latency > rules.latency_cap_ms) return std::nullopt;
    delay = std::max(
        delay, (latency - rules.max_latency_ms) / rules.latency_widen_per_second - waited);
  }
  if (delay > kMaxRefinedDelaySeconds) {
    // A second early, so that rounding can never make the wakeup late.
    return now + absl::Seconds(delay) - absl::Seconds(1);
  }

  const std::optional<int64_t> at = FirstNanosecond(delay, [&](int64_t nanos) {
    return AcceptedAt(spread, latency, basis_sum, divisor, nanos);
  });
  if (!at.has_value()) return std::nullopt;
  return now + absl::Nanoseconds(*at);
}

// The first nanosecond n >= 1 at which `accepted(n)` holds, for a monotone
// test (false, then true for ever), starting from a guess of `delay_seconds`;
// nullopt if not within 2^61 ns. Pinned with the test itself, so that the
// answer never depends on how the closed-form guess rounds.
template <typename Test>
std::optional<int64_t> Pool::Impl::FirstNanosecond(double delay_seconds, Test accepted) {
  // Invariant: not accepted at `lo`, accepted at `hi` (in ns after now).
  int64_t guess = std::max<int64_t>(1, std::llround(std::ceil(delay_seconds * 1e9)));
  int64_t lo = 0;
  int64_t hi = guess;
  if (accepted(guess)) {
    for (int64_t step = 1; guess - step > 0; step *= 2) {
      if (!accepted(guess - step)) {
        lo = guess - step;
        break;
      }
      hi = guess - step;
    }
  } else {
    lo = guess;
    for (int64_t step = 1;; step *= 2) {
      if (step > (int64_t{1} << 61)) return std::nullopt;
      if (accepted(guess + step)) {
        hi = guess + step;
        break;
      }
      lo = guess + step;
    }
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (accepted(mid)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

void Pool::Impl::Commit(absl::Time now, const Evaluation& evaluation) {
  withdrawn.clear();
  for (const Member& m : group) {
    if (!listener->StillWaiting(m.key)) withdrawn.push_back(m.key);
  }
  if (!withdrawn.empty()) {
    for (TicketKey key : withdrawn) {
      EraseAndMark(key);
      listener->OnWithdrawn(key);
    }
    // The others lose nothing: they keep their enqueue times and are
    // re-evaluated within this same Process.
    for (const Member& m : group) {
      auto it = tickets.find(m.key);
      if (it != tickets.end()) MarkDue(it->second, absl::InfinitePast());
    }
    MarkChanged(evaluation.lowest, evaluation.highest, nullptr);
    return;
  }

  SplitTeams();
  match.teams.resize(teams);
  for (auto& team : match.teams) team.clear();
  // Order inside a team: larger parties first, then by key.
  split_order.resize(group.size());
  for (size_t i = 0; i < group.size(); ++i) split_order[i] = static_cast<int>(i);
  std::sort(split_order.begin(), split_order.end(), [&](int a, int b) {
    return std::make_pair(-group[a].party_size, group[a].key) <
           std::make_pair(-group[b].party_size, group[b].key);
  });
  for (int i : split_order) match.teams[split_assign[i]].push_back(group[i].key);
  match.rating_spread = evaluation.spread;
  match.team_gap = rules.rated ? TeamGap(split_assign) : 0;
  match.mean_wait = evaluation.mean_wait;
  match.formed_at = now;
  match.region = evaluation.region;
  match.max_latency_ms = evaluation.region >= 0 ? evaluation.worst_latency : 0;
  for (const Member& m : group) EraseAndMark(m.key);
  MarkChanged(evaluation.lowest, evaluation.highest, nullptr);
  listener->OnMatched(match);
}

// Highest minus lowest team mean rating under `assignment` (team per group
// index).
double Pool::Impl::TeamGap(const std::vector<int>& assignment) {
  team_sum.assign(teams, 0);
  for (size_t i = 0; i < group.size(); ++i) {
    team_sum[assignment[i]] += group[i].rating * group[i].party_size;
  }
  const auto [lo, hi] = std::minmax_element(team_sum.begin(), team_sum.end());
  return (*hi - *lo) / team_size;
}

// Fills split_assign with a team per group member.
void Pool::Impl::SplitTeams() {
  split_assign.assign(group.size(), -1);
  if (teams == 1) {
    std::fill(split_assign.begin(), split_assign.end(), 0);
    return;
  }
  if (!rules.rated) {
    SplitFromPacking(/*by_rating_sum=*/false);
    return;
  }
  // Placement order for both searches: big parties constrain most, and high
  // ratings first lets the greedy balance with the small ones.
  split_order.resize(group.size());
  for (size_t i = 0; i < group.size(); ++i) split_order[i] = static_cast<int>(i);
  std::sort(split_order.begin(), split_order.end(), [&](int a, int b) {
    const Member& x = group[a];
    const Member& y = group[b];
    if (x.party_size != y.party_size) return x.party_size > y.party_size;
    if (x.rating != y.rating) return x.rating > y.rating;
    return x.key < y.key;
  });
  if (group.size() <= kExactSplitMaxTickets) {
    team_load.assign(teams, 0);
    split_best_gap = kInfinity;
    SplitExact(0);
    split_assign = split_best;
  } else {
    SplitGreedy();
  }
}

void Pool::Impl::SplitExact(size_t index) {
  if (index == split_order.size()) {
    const double gap = TeamGap(split_assign);
    if (gap < split_best_gap) {
      split_best_gap = gap;
      split_best = split_assign;
    }
    return;
  }
  if (split_best_gap == 0) return;
  const Member& m = group[split_order[index]];
  bool tried_empty = false;
  for (int t = 0; t < teams; ++t) {
    if (team_load[t] + m.party_size > team_size) continue;
    // Empty teams are interchangeable: trying one covers them all.
    if (team_load[t] == 0) {
      if (tried_empty) continue;
      tried_empty = true;
    }
    team_load[t] += m.party_size;
    split_assign[split_order[index]] = t;
    SplitExact(index + 1);
    team_load[t] -= m.party_size;
  }
}

void Pool::Impl::SplitGreedy() {
  team_load.assign(teams, 0);
  team_sum.assign(teams, 0);
  for (int i : split_order) {
    const Member& m = group[i];
    int best = -1;
    for (int t = 0; t < teams; ++t) {
      if (team_load[t] + m.party_size <= team_size &&
          (best < 0 || team_sum[t] < team_sum[best])) {
        best = t;
      }
    }
    if (best < 0) {
      // The greedy painted itself into a corner; the packing found while
      // gathering the group always works.
      SplitFromPacking(/*by_rating_sum=*/true);
      return;
    }
    team_load[best] += m.party_size;
    team_sum[best] += m.rating * m.party_size;
    split_assign[i] = best;
  }
}

// Parties of 2+ go where the gathering packing put them; solo players then
// fill the open slots: into the lowest rating sum if `by_rating_sum` (highest
// rating first), else the first team with room in group order.
void Pool::Impl::SplitFromPacking(bool by_rating_sum) {
  team_load.assign(teams, 0);
  team_sum.assign(teams, 0);
  for (size_t i = 0; i < group.size(); ++i) {
    const Member& m = group[i];
    if (m.party_size == 1) continue;
    split_assign[i] = m.bin;
    team_load[m.bin] += m.party_size;
    team_sum[m.bin] += m.rating * m.party_size;
  }
  split_order.clear();
  for (size_t i = 0; i < group.size(); ++i) {
    if (group[i].party_size == 1) split_order.push_back(static_cast<int>(i));
  }
  if (by_rating_sum) {
    std::stable_sort(split_order.begin(), split_order.end(),
                     [&](int a, int b) { return group[a].rating > group[b].rating; });
  }
  for (int i : split_order) {
    int best = -1;
    for (int t = 0; t < teams; ++t) {
      if (team_load[t] >= team_size) continue;
      if (best < 0) {
        best = t;
        if (!by_rating_sum) break;
      } else if (team_sum[t] < team_sum[best]) {
        best = t;
      }
    }
    split_assign[i] = best;
    team_load[best] += 1;
    team_sum[best] += group[i].rating;
  }
}

Pool::Pool(QueueRules rules, PoolListener* listener)
    : rules_(rules), impl_(std::make_unique<Impl>(rules_, listener)) {}

Pool::~Pool() = default;

absl::Status Pool::Add(const TicketSpec& ticket) {
  if (ticket.party_size < 1 || ticket.party_size > rules_.max_party_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "party_size must be in 1..", rules_.max_party_size, ", got ", ticket.party_size));
  }
  // A NaN would break the rating order; an infinite enqueue time the waits.
  if (rules_.rated && !std::isfinite(ticket.rating)) {
    return absl::InvalidArgumentError(absl::StrCat("rating must be finite, got ", ticket.rating));
  }
  if (ticket.enqueued_at == absl::InfinitePast() || ticket.enqueued_at == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("enqueued_at must be finite");
  }
  if (rules_.region_count > 0 &&
      std::all_of(ticket.latency_ms.begin(), ticket.latency_ms.begin() + rules_.region_count,
                  [](uint16_t ms) { return ms == TicketSpec::kUnreachable; })) {
    return absl::InvalidArgumentError("the ticket has a latency to none of the queue's regions");
  }
  Impl& impl = *impl_;
  auto [it, inserted] = impl.tickets.try_emplace(ticket.key);
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("ticket ", ticket.key, " is already waiting"));
  }
  Impl::Ticket& added = it->second;
  added.spec = ticket;
  impl.players += ticket.party_size;
  if (ticket.expires_at != absl::InfiniteFuture()) {
    impl.expiry.insert({ticket.expires_at, ticket.key});
  }
  if (rules_.rated) {
    impl.by_rating.emplace(Impl::PosOf(ticket), &added);
  } else {
    impl.by_enqueue.emplace(std::make_tuple(ticket.partition, ticket.enqueued_at, ticket.key),
                            &added);
    impl.by_size_enqueue.emplace(ticket.partition, ticket.party_size, ticket.enqueued_at,
                                 ticket.key);
  }
  // InfinitePast: due at the next Process, whatever its time.
  impl.MarkDue(added, absl::InfinitePast());
  // Older tickets may now form a better group with the newcomer than the
  // one they were waiting on; they are evaluated first, being older.
  impl.MarkChanged(Impl::PosOf(ticket), Impl::PosOf(ticket), &added.spec);
  return absl::OkStatus();
}

bool Pool::Remove(TicketKey key) {
  auto it = impl_->tickets.find(key);
  if (it == impl_->tickets.end()) return false;
  const TicketSpec spec = it->second.spec;
  impl_->Erase(key);
  impl_->MarkChanged(Impl::PosOf(spec), Impl::PosOf(spec), &spec);
  return true;
}

bool Pool::Contains(TicketKey key) const { return impl_->tickets.count(key); }

size_t Pool::tickets_waiting() const { return impl_->tickets.size(); }

int Pool::players_waiting() const { return impl_->players; }

void Pool::Process(absl::Time now) {
  Impl& impl = *impl_;
  while (!impl.expiry.empty() && impl.expiry.begin()->first <= now) {
    const TicketKey key = impl.expiry.begin()->second;
    const TicketSpec spec = impl.tickets.at(key).spec;
    impl.Erase(key);
    impl.MarkChanged(Impl::PosOf(spec), Impl::PosOf(spec), &spec);
    impl.listener->OnExpired(key);
  }
  // Terminates: every entry popped is gone for good, retries are pushed
  // strictly after `now`, and re-marks only follow a withdrawal or a match,
  // which shrink the pool.
  while (!impl.due.empty() && impl.due.front().retry_at <= now) {
    const Impl::DueEntry entry = impl.due.front();
    std::pop_heap(impl.due.begin(), impl.due.end(), Impl::DueAfter);
    impl.due.pop_back();
    if (!impl.IsLive(entry)) continue;
    Impl::Ticket& anchor = impl.tickets.at(entry.key);
    anchor.due_gen = 0;
    anchor.due_at = absl::InfiniteFuture();
    const Impl::Evaluation evaluation = impl.Evaluate(anchor, now, impl.players);
    switch (evaluation.outcome) {
      case Impl::Outcome::kNoGroup:
      case Impl::Outcome::kRejected:
        // Without a retry time only a change to the pool can help, and
        // MarkChanged re-marks the tickets it may help.
        if (const auto retry = evaluation.RetryAt(); retry.has_value()) {
          impl.MarkDue(anchor, std::max(*retry, now + absl::Nanoseconds(1)));
        }
        break;
      case Impl::Outcome::kAccepted:
        impl.Commit(now, evaluation);
        break;
    }
  }
}

absl::Time Pool::NextWakeup() const {
  // Dropping stale entries changes no observable state.
  impl_->PruneDueTop();
  absl::Time next = absl::InfiniteFuture();
  if (!impl_->expiry.empty()) next = impl_->expiry.begin()->first;
  if (!impl_->due.empty()) next = std::min(next, impl_->due.front().retry_at);
  return next;
}

Explanation Pool::Explain(TicketKey key, absl::Time now) const {
  Explanation explanation;
  explanation.players_needed = rules_.players_per_match();
  const int live = impl_->LivePlayersAt(now);
  explanation.players_waiting = live;
  auto it = impl_->tickets.find(key);
  if (it == impl_->tickets.end()) return explanation;
  const Impl::Ticket& ticket = it->second;
  explanation.waited = now - ticket.spec.enqueued_at;
  explanation.window = rules_.rated ? rules_.WindowAt(explanation.waited) : 0;
  explanation.latency_limit_ms =
      rules_.region_count > 0 ? rules_.LatencyLimitAt(explanation.waited) : 0;
  // Evaluate only touches scratch state.
  const Impl::Evaluation evaluation = impl_->Evaluate(ticket, now, live);
  explanation.region = evaluation.region;
  explanation.worst_latency_ms = evaluation.worst_latency;
  switch (evaluation.outcome) {
    case Impl::Outcome::kNoGroup:
      explanation.blocker = evaluation.blocker;
      if (evaluation.blocker == Blocker::kLatency &&
          evaluation.admit_at != absl::InfiniteFuture()) {
        explanation.acceptable_at = evaluation.admit_at;
      }
      break;
    case Impl::Outcome::kRejected:
      explanation.blocker = evaluation.blocker;
      explanation.best_spread = evaluation.spread;
      explanation.penalty = evaluation.penalty;
      explanation.acceptable_at = evaluation.acceptable_at;
      break;
    case Impl::Outcome::kAccepted:
      explanation.blocker = Blocker::kNone;
      break;
  }
  return explanation;
}

}  // namespace matchd::matcher
