#include "matcher/pool.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"
#include "matcher/arrival_density.h"
#include "matcher/node_pool.h"

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

// Exact wait arithmetic in integers (see Pool::Impl::Waits). absl::Duration
// counts quarter nanoseconds ("ticks"); its arithmetic is out of line and
// 128-bit, which the hot path of the pool cannot afford.
constexpr int64_t kTicksPerNanosecond = 4;
constexpr int64_t kTicksPerSecond = 4'000'000'000;
// A time that is not a whole number of nanoseconds (see WholeUnixNanos).
constexpr int64_t kNotWholeNanos = std::numeric_limits<int64_t>::min();
// Waits up to this take the integer path: a sum over a whole match
// (<= kMaxPlayersPerMatch tickets) stays below 2^53 ticks.
constexpr uint64_t kMaxIntegerWaitNanos = uint64_t{1} << 45;  // 9.8 hours
// Below 2^53 ticks, absl::ToDoubleSeconds is exactly ticks / kTicksPerSecond
// (its seconds-and-ticks form converts to double without rounding).
constexpr int64_t kMaxExactTicks = int64_t{1} << 53;

bool IsFiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

// `t` in nanoseconds since the Unix epoch if that is exact (absl::Time has a
// resolution of a quarter nanosecond), else kNotWholeNanos. Times from a
// real clock always are.
int64_t WholeUnixNanos(absl::Time t) {
  const int64_t nanos = absl::ToUnixNanos(t);  // saturates far out
  return nanos != kNotWholeNanos && absl::FromUnixNanos(nanos) == t ? nanos : kNotWholeNanos;
}

// The wait from `from` to `to` in nanoseconds (both from WholeUnixNanos) if
// the integer path takes it: both whole, 0 <= wait <= kMaxIntegerWaitNanos.
// Else -1.
int64_t IntegerWaitNanos(int64_t from, int64_t to) {
  if (from == kNotWholeNanos || to == kNotWholeNanos || from > to) return -1;
  // Unsigned: the difference is exact whenever it is not negative.
  const uint64_t wait = static_cast<uint64_t>(to) - static_cast<uint64_t>(from);
  return wait <= kMaxIntegerWaitNanos ? static_cast<int64_t>(wait) : -1;
}

// The widening per second of a group whose initial window is `initial`
// (QueueRules::widen_time).
double WidenFor(const QueueRules& rules, double initial) {
  if (rules.widen_time <= absl::ZeroDuration()) return rules.widen_per_second;
  return rules.widen_per_second + initial / absl::ToDoubleSeconds(rules.widen_time);
}

// QueueRules::WindowAt and LatencyLimitAt for a wait that is positive or not
// (`waited`) and lasts `wait_seconds`: the one formula for the Duration and
// the integer callers.
// `initial` is the group's initial window: rules.initial_window, or with
// wait_cost the mean of its members'.
double WindowFor(const QueueRules& rules, double initial, bool waited, double wait_seconds) {
  if (!rules.rated) return kInfinity;
  double window = initial;
  // Tested separately so that an infinite wait with no widening is not NaN.
  const double widen = WidenFor(rules, initial);
  if (widen > 0 && waited) window += widen * wait_seconds;
  if (rules.max_window != 0) window = std::min(window, rules.max_window);
  return window;
}

double LatencyLimitFor(const QueueRules& rules, bool waited, double wait_seconds) {
  double limit = rules.max_latency_ms;
  if (rules.latency_widen_per_second > 0 && waited) {
    limit += rules.latency_widen_per_second * wait_seconds;
  }
  if (rules.latency_cap_ms != 0) limit = std::min(limit, rules.latency_cap_ms);
  return limit;
}

// A wait in ticks (0 <= ticks < kMaxExactTicks) as the two arguments above.
bool TicksWaited(int64_t ticks) { return ticks > 0; }
double TicksSeconds(int64_t ticks) {
  return static_cast<double>(ticks) / kTicksPerSecond;  // see kMaxExactTicks
}

}  // namespace

double QueueRules::WindowAt(absl::Duration wait) const {
  const bool waited = wait > absl::ZeroDuration();
  return WindowFor(*this, initial_window, waited,
                   waited && WidenFor(*this, initial_window) > 0 ? absl::ToDoubleSeconds(wait) : 0);
}

double QueueRules::LatencyLimitAt(absl::Duration wait) const {
  const bool waited = wait > absl::ZeroDuration();
  return LatencyLimitFor(*this, waited,
                         waited && latency_widen_per_second > 0 ? absl::ToDoubleSeconds(wait) : 0);
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
  if (!IsFiniteNonNegative(rules.wait_cost)) {
    return invalid("wait_cost must be finite and >= 0, got ", rules.wait_cost);
  }
  if (rules.wait_cost > 0 && !rules.rated) {
    return invalid("wait_cost needs a rated queue");
  }
  if (rules.wait_cost > 0 && rules.wait_basis != QueueRules::WaitBasis::kMeanWait) {
    return invalid("wait_cost needs the mean-wait basis");
  }
  if (rules.widen_time < absl::ZeroDuration() || rules.widen_time == absl::InfiniteDuration()) {
    return invalid("widen_time must be finite and >= 0, got ",
                   absl::FormatDuration(rules.widen_time));
  }
  if (rules.widen_time > absl::ZeroDuration() && !(rules.wait_cost > 0)) {
    return invalid("widen_time needs wait_cost");
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
    if (least >= rules.players_per_match()) {
      return invalid("min_players must be 0: a match of ", rules.players_per_match(),
                     " players has no partial lobby, got ", rules.min_players);
    }
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

  // Node-based containers whose nodes come from `nodes` (see below).
  template <typename K, typename V>
  using Map = std::map<K, V, std::less<K>, NodePoolAllocator<std::pair<const K, V>>>;
  template <typename K>
  using Set = std::set<K, std::less<K>, NodePoolAllocator<K>>;

  struct Ticket;
  using RatingIndex = Map<RatingPos, Ticket*>;
  using ExpiryIndex = Set<std::pair<absl::Time, TicketKey>>;

  // Not in a due heap (see DueHeap).
  static constexpr size_t kNotDue = std::numeric_limits<size_t>::max();

  struct Ticket {
    TicketSpec spec;
    // Rated queues: the tickets next to this one in by_rating order within
    // its partition (null at either end of it), for the walks outwards from
    // a ticket. Next to `spec`, which the walks read too.
    Ticket* lower = nullptr;
    Ticket* higher = nullptr;
    int64_t enqueued_nanos = kNotWholeNanos;  // WholeUnixNanos(spec.enqueued_at)
    // Its initial rating window: rules.initial_window, or with wait_cost the
    // one its arrival rate sets (fixed when it is added).
    double initial_window = 0;
    // The ticket's entries in due_now and due_later, or kNotDue.
    size_t now_pos = kNotDue;
    size_t later_pos = kNotDue;
    // The ticket's own entries, so that an erase need not search for them:
    // in by_rating (rated queues) and in expiry (finite expires_at only).
    RatingIndex::iterator in_rating;
    ExpiryIndex::iterator in_expiry;
  };

  // A binary min-heap under Entry::Before whose entries know their place:
  // the ticket of an entry holds its index (Entry::Pos), so that a ticket's
  // entry is found, moved or removed at once. A ticket has at most one entry.
  template <typename Entry>
  class DueHeap {
   public:
    bool empty() const { return heap_.empty(); }
    const Entry& top() const { return heap_.front(); }
    // The ticket's entry, or null.
    const Entry* Find(const Ticket& ticket) const {
      const size_t pos = Entry::Pos(ticket);
      return pos == kNotDue ? nullptr : &heap_[pos];
    }
    // Inserts `entry`, or replaces its ticket's entry with it.
    void Set(const Entry& entry) {
      const size_t pos = Entry::Pos(*entry.ticket);
      if (pos == kNotDue) {
        heap_.emplace_back();  // the hole to sift up from
        SiftUp(heap_.size() - 1, entry);
      } else {
        Refill(pos, entry);
      }
    }
    // Removes the ticket's entry, if it has one.
    void Remove(Ticket& ticket) {
      const size_t pos = Entry::Pos(ticket);
      if (pos == kNotDue) return;
      Entry::Pos(ticket) = kNotDue;
      const Entry last = heap_.back();
      heap_.pop_back();
      if (pos < heap_.size()) Refill(pos, last);
    }
    // Removes the first entry and returns its ticket. Not empty.
    Ticket& Pop() {
      Ticket& ticket = *heap_.front().ticket;
      Remove(ticket);
      return ticket;
    }

   private:
    // Puts `entry` into the slot `pos`, whose old content is gone, moving it
    // up or down from there as the order requires.
    void Refill(size_t pos, const Entry& entry) {
      if (pos > 0 && Entry::Before(entry, heap_[(pos - 1) / 2])) {
        SiftUp(pos, entry);
      } else {
        SiftDown(pos, entry);
      }
    }
    // By value: `entry` may be a copy of a slot they overwrite.
    void SiftUp(size_t pos, Entry entry) {
      while (pos > 0) {
        const size_t parent = (pos - 1) / 2;
        if (!Entry::Before(entry, heap_[parent])) break;
        Place(pos, heap_[parent]);
        pos = parent;
      }
      Place(pos, entry);
    }
    void SiftDown(size_t pos, Entry entry) {
      const size_t size = heap_.size();
      for (;;) {
        size_t child = 2 * pos + 1;
        if (child >= size) break;
        if (child + 1 < size && Entry::Before(heap_[child + 1], heap_[child])) ++child;
        if (!Entry::Before(heap_[child], entry)) break;
        Place(pos, heap_[child]);
        pos = child;
      }
      Place(pos, entry);
    }
    void Place(size_t pos, const Entry& entry) {
      heap_[pos] = entry;
      Entry::Pos(*entry.ticket) = pos;
    }

    std::vector<Entry> heap_;
  };

  // Tickets to evaluate at the next Process whatever its time (due at
  // InfinitePast), oldest first, then by key.
  struct NowEntry {
    absl::Time enqueued_at;
    TicketKey key;
    Ticket* ticket;
    static size_t& Pos(Ticket& t) { return t.now_pos; }
    static size_t Pos(const Ticket& t) { return t.now_pos; }
    static bool Before(const NowEntry& a, const NowEntry& b) {
      if (a.enqueued_at != b.enqueued_at) return a.enqueued_at < b.enqueued_at;
      return a.key < b.key;
    }
  };
  // Tickets to evaluate at the first Process at or after `at`: soonest first,
  // then oldest, then by key.
  struct LaterEntry {
    absl::Time at;
    absl::Time enqueued_at;
    TicketKey key;
    Ticket* ticket;
    static size_t& Pos(Ticket& t) { return t.later_pos; }
    static size_t Pos(const Ticket& t) { return t.later_pos; }
    static bool Before(const LaterEntry& a, const LaterEntry& b) {
      if (a.at != b.at) return a.at < b.at;
      if (a.enqueued_at != b.enqueued_at) return a.enqueued_at < b.enqueued_at;
      return a.key < b.key;
    }
  };

  // A ticket of the candidate group, copied so that it survives the ticket's
  // removal while a match is committed.
  struct Member {
    TicketKey key;
    int party_size;
    double rating;
    absl::Time enqueued_at;
    int64_t enqueued_nanos;  // Ticket::enqueued_nanos
    double initial_window;   // Ticket::initial_window
    int bin;                 // team in the feasibility packing; parties of 2+ only
    uint16_t latency;        // in the evaluated region; 0 without latency rules
    const TicketSpec* spec;  // valid while the group is evaluated
  };

  // The waits of the candidate group at the time of its evaluation. The
  // window (and latency limit) is taken at basis_sum / divisor (see
  // QueueRules::WaitBasis): the sum of the members' waits over their count,
  // or the shortest wait over 1; both grow by exactly one nanosecond per
  // nanosecond.
  struct Waits {
    absl::Duration sum;  // of all the members' waits
    int64_t count = 1;   // members
    absl::Duration basis_sum;
    int64_t divisor = 1;
    // basis_sum / divisor in ticks when the evaluation could work in whole
    // nanoseconds (every time whole, every wait in 0..kMaxIntegerWaitNanos);
    // else -1, and the acceptance tests use Duration arithmetic. The two give
    // bit-identical results.
    int64_t basis_ticks = -1;
    // The group's initial window (see WindowFor).
    double initial_window = 0;
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
    // The sum of the group's waits and its size (FormedMatch::mean_wait).
    absl::Duration wait_sum;
    int64_t members = 0;
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
        mark_depth(r.max_party_size == 1 && r.custom_rule == nullptr && r.region_count == 0
                       ? full_need - 1
                       : full_need),
        teams(r.team_count),
        team_size(r.team_size),
        need(full_need),
        tickets(/*bucket_count=*/0, std::hash<TicketKey>(), std::equal_to<TicketKey>(), &nodes),
        by_rating(&nodes),
        by_enqueue(&nodes),
        by_size_enqueue(&nodes),
        expiry(&nodes),
        size_failed(r.max_party_size + 1, 0) {}

  // Pool helpers.
  void Erase(TicketKey key);
  void EraseAndMark(TicketKey key);
  void MarkDue(Ticket& ticket, absl::Time at);
  void MarkChanged(RatingPos first, RatingPos last, const TicketSpec* changed);
  bool ShareARegion(const TicketSpec& a, const TicketSpec& b) const;
  absl::Time LatencyAdmitAt(double latency, const Ticket& ticket, absl::Time now);
  int64_t NowNanos(absl::Time now);
  int LivePlayersAt(absl::Time now) const;
  int PlayersInReach(const Ticket& anchor, absl::Time now, int up_to, int* region) const;
  Ticket* PopDue(absl::Time now);
  void SetRetry(Ticket& anchor, std::optional<absl::Time> at);

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
  bool TryAdd(const Ticket& ticket);
  bool PlaceParty(int size);
  bool PackSearch(size_t item, int* budget);
  Waits GroupWaits(absl::Time now);
  // The basis wait (see Waits) as WindowFor's arguments.
  static void BasisWait(const Waits& waits, bool* waited, double* seconds);
  std::optional<absl::Time> AcceptableAt(double spread, double latency, const Waits& waits,
                                         absl::Time now) const;
  bool AcceptedAt(double spread, double latency, const Waits& waits, int64_t nanos) const;
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
  // How many tickets on each side of a changed ticket MarkChanged marks (see
  // there).
  const int mark_depth;
  // The shape of the match being gathered: the full one, or a partial lobby
  // (QueueRules::min_players). Set by Evaluate; Commit uses it.
  int teams;
  int team_size;
  int need;  // teams * team_size

  // The containers below take their nodes from here, so that a pool whose
  // size is steady does not allocate per ticket. Declared before them: it
  // must outlive them.
  NodePool nodes;
  // Recent arrivals, with wait_cost.
  ArrivalDensity density;

  // unordered_map nodes are stable, so the indexes may point into it. Its
  // bucket array grows with the high-water mark (from operator new).
  std::unordered_map<TicketKey, Ticket, std::hash<TicketKey>, std::equal_to<TicketKey>,
                     NodePoolAllocator<std::pair<const TicketKey, Ticket>>>
      tickets;
  // Every index orders by partition first, so a partition's tickets are
  // contiguous and a walk never leaves its own.
  RatingIndex by_rating;  // rated
  Map<std::tuple<uint64_t, absl::Time, TicketKey>, const Ticket*> by_enqueue;
  // Unrated: the same order per party size.
  Set<std::tuple<uint64_t, int, absl::Time, TicketKey>> by_size_enqueue;
  // Tickets with a finite expiry, soonest first (ties by key).
  ExpiryIndex expiry;
  // When tickets are due for evaluation: one queue ordered by (due time,
  // enqueued_at, key), kept in two heaps. Most evaluations follow a change
  // next to the ticket (MarkChanged) rather than a timer, and most of those
  // end with the retry time the ticket had: so a ticket marked for the next
  // Process goes to due_now and keeps its due_later entry. That entry is
  // void while the ticket is in due_now and while it is evaluated after
  // leaving it (due_now is always drained first, so it never fires); then
  // SetRetry sets it to the retry, often where it already is. A ticket in
  // due_later only is due at that entry's time.
  DueHeap<NowEntry> due_now;
  DueHeap<LaterEntry> due_later;
  int players = 0;

  // Scratch, reused across evaluations so that the hot path does not
  // allocate. Explain() uses it too: it is state of no single call.
  std::vector<Member> group;
  int group_players = 0;
  int eval_region = -1;  // the region of the group being gathered; -1 if none
  // NowNanos's cache: WholeUnixNanos(cached_now).
  absl::Time cached_now = absl::InfinitePast();
  int64_t cached_now_nanos = kNotWholeNanos;
  std::vector<int> bin_load;      // loads of the packing, parties of 2+
  std::vector<char> size_failed;  // party sizes refused since the last add
  // Whether size_failed has a 1 anywhere (ResetGroup clears it only then).
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
  Ticket& ticket = it->second;
  const TicketSpec& spec = ticket.spec;
  if (rules.rated) {
    if (ticket.lower != nullptr) ticket.lower->higher = ticket.higher;
    if (ticket.higher != nullptr) ticket.higher->lower = ticket.lower;
    by_rating.erase(ticket.in_rating);
  } else {
    by_enqueue.erase({spec.partition, spec.enqueued_at, key});
    by_size_enqueue.erase({spec.partition, spec.party_size, spec.enqueued_at, key});
  }
  if (spec.expires_at != absl::InfiniteFuture()) expiry.erase(ticket.in_expiry);
  due_now.Remove(ticket);
  due_later.Remove(ticket);
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
  if (due_now.Find(ticket) != nullptr) return;
  if (at == absl::InfinitePast()) {
    due_now.Set({ticket.spec.enqueued_at, ticket.spec.key, &ticket});
    return;
  }
  const LaterEntry* later = due_later.Find(ticket);
  if (later != nullptr && later->at <= at) return;
  due_later.Set({at, ticket.spec.enqueued_at, ticket.spec.key, &ticket});
}

// Removes and returns the first ticket due by `now`, or null.
Pool::Impl::Ticket* Pool::Impl::PopDue(absl::Time now) {
  if (!due_now.empty()) return &due_now.Pop();  // its due_later entry, if any, is void
  if (!due_later.empty() && due_later.top().at <= now) return &due_later.Pop();
  return nullptr;
}

// After `anchor` was evaluated (and not matched): due again at `at`, or only
// after a change if nullopt. Replaces a void due_later entry in place.
void Pool::Impl::SetRetry(Ticket& anchor, std::optional<absl::Time> at) {
  if (!at.has_value()) {
    due_later.Remove(anchor);
  } else if (*at == absl::InfinitePast()) {
    due_now.Set({anchor.spec.enqueued_at, anchor.spec.key, &anchor});
  } else {
    due_later.Set({*at, anchor.spec.enqueued_at, anchor.spec.key, &anchor});
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
           it != by_size_enqueue.end() && std::get<0>(*it) == partition && std::get<1>(*it) == size;
           ++it) {
        Ticket& ticket = tickets.at(std::get<3>(*it));
        MarkDue(ticket, next_process);
        if (!by_region || ShareARegion(ticket.spec, *changed)) break;
      }
    }
    return;
  }
  // A walk from an anchor on the far side of mark_depth tickets that it
  // surely takes before the changed one never reaches it. Without latency
  // rules every ticket counts; with them, per region, the tickets with no
  // more latency there than the changed ticket's (an anchor whose limit
  // admits the changed ticket admits them too). Without regions, solo
  // tickets with no custom rule always join the group they are walked to,
  // so need - 1 of them fill any anchor's group; otherwise a party that does
  // not fit, a ticket a custom rule keeps apart, or one the latency limit
  // keeps out (it still sets when the anchor looks again) is passed over,
  // and the walk counts full_need.
  std::array<int, QueueRules::kMaxRegions> passed{};
  // Marks `ticket`; true when the walk has gone far enough.
  auto visit = [&](Ticket& ticket) {
    MarkDue(ticket, next_process);
    if (!by_region) return ++passed[0] >= mark_depth;
    bool done = true;
    for (int r = 0; r < rules.region_count; ++r) {
      const uint16_t own = changed->latency_ms[r];
      if (own == TicketSpec::kUnreachable) continue;
      if (ticket.spec.latency_ms[r] <= own) ++passed[r];
      done = done && passed[r] >= mark_depth;
    }
    return done;
  };
  // The walks follow the neighbour links, which end at the partition's ends;
  // only the first step may land in another partition.
  const auto start = by_rating.lower_bound(first);
  Ticket* down = start == by_rating.begin() ? nullptr : std::prev(start)->second;
  if (down != nullptr && down->spec.partition != partition) down = nullptr;
  for (; down != nullptr; down = down->lower) {
    if (visit(*down)) break;
  }
  Ticket* up = start == by_rating.end() ? nullptr : start->second;
  if (up != nullptr && up->spec.partition != partition) up = nullptr;
  for (; up != nullptr && PosOf(up->spec) <= last; up = up->higher) MarkDue(*up, next_process);
  passed.fill(0);
  for (; up != nullptr; up = up->higher) {
    if (visit(*up)) break;
  }
}

bool Pool::Impl::ShareARegion(const TicketSpec& a, const TicketSpec& b) const {
  if (rules.region_count == 0) return true;
  for (int r = 0; r < rules.region_count; ++r) {
    if (a.latency_ms[r] != TicketSpec::kUnreachable &&
        b.latency_ms[r] != TicketSpec::kUnreachable) {
      return true;
    }
  }
  return false;
}

// The first nanosecond at which the latency limit of `ticket` covers
// `latency` (`now` if it already does); InfiniteFuture if never.
absl::Time Pool::Impl::LatencyAdmitAt(double latency, const Ticket& ticket, absl::Time now) {
  const int64_t wait_nanos = IntegerWaitNanos(ticket.enqueued_nanos, NowNanos(now));
  // The ticket's limit `nanos` (>= 0) after `now`: in ticks when that is
  // exact (as in AcceptedAt), else in Duration arithmetic; the same value.
  auto limit_after = [&](int64_t nanos) {
    if (wait_nanos >= 0 && nanos < kMaxExactTicks / kTicksPerNanosecond) {
      const int64_t ticks = (wait_nanos + nanos) * kTicksPerNanosecond;
      if (ticks < kMaxExactTicks) {
        return LatencyLimitFor(rules, TicksWaited(ticks), TicksSeconds(ticks));
      }
    }
    return rules.LatencyLimitAt(now - ticket.spec.enqueued_at + absl::Nanoseconds(nanos));
  };
  if (latency <= limit_after(0)) return now;
  if (!(rules.latency_widen_per_second > 0)) return absl::InfiniteFuture();
  if (rules.latency_cap_ms != 0 && latency > rules.latency_cap_ms) return absl::InfiniteFuture();
  const double waited = wait_nanos >= 0 ? TicksSeconds(wait_nanos * kTicksPerNanosecond)
                                        : absl::ToDoubleSeconds(now - ticket.spec.enqueued_at);
  const double delay = (latency - rules.max_latency_ms) / rules.latency_widen_per_second - waited;
  if (!(delay < kMaxRefinedDelaySeconds)) return absl::InfiniteFuture();
  const std::optional<int64_t> at =
      FirstNanosecond(delay, [&](int64_t nanos) { return latency <= limit_after(nanos); });
  return at.has_value() ? now + absl::Nanoseconds(*at) : absl::InfiniteFuture();
}

// WholeUnixNanos(now), computed once per distinct `now`.
int64_t Pool::Impl::NowNanos(absl::Time now) {
  if (now != cached_now) {
    cached_now = now;
    cached_now_nanos = WholeUnixNanos(now);
  }
  return cached_now_nanos;
}

int Pool::Impl::LivePlayersAt(absl::Time now) const {
  int live = players;
  for (auto it = expiry.begin(); it != expiry.end() && it->first <= now; ++it) {
    live -= tickets.at(it->second).spec.party_size;
  }
  return live;
}

// The players `anchor` could ever be matched with, itself included, counted
// up to `up_to`: the tickets of its partition that have not expired by `now`,
// that the custom rule allows and, with latency rules, that can play in one
// region with it, however far the limit widens: in the region where most
// can, which `*region` names (-1 without latency rules).
int Pool::Impl::PlayersInReach(const Ticket& anchor, absl::Time now, int up_to,
                               int* region) const {
  std::array<int, QueueRules::kMaxRegions> in_region{};
  const int regions = std::max(rules.region_count, 1);
  int most = 0;
  *region = -1;
  auto count = [&](int r, int players) {
    in_region[r] += players;
    if (in_region[r] > most) {
      most = in_region[r];
      if (rules.region_count > 0) *region = r;
    }
  };
  for (int r = 0; r < regions; ++r) {
    if (rules.region_count == 0 || anchor.spec.latency_ms[r] != TicketSpec::kUnreachable) {
      count(r, anchor.spec.party_size);
    }
  }
  auto visit = [&](const Ticket& ticket) {
    const TicketSpec& spec = ticket.spec;
    if (&ticket == &anchor || spec.expires_at <= now) return;
    if (rules.custom_rule != nullptr && !rules.custom_rule->Compatible(anchor.spec, spec)) return;
    for (int r = 0; r < regions; ++r) {
      if (rules.region_count > 0 && (anchor.spec.latency_ms[r] == TicketSpec::kUnreachable ||
                                     spec.latency_ms[r] == TicketSpec::kUnreachable)) {
        continue;
      }
      count(r, spec.party_size);
    }
  };
  // A partition's tickets, in whichever index the queue keeps them.
  const uint64_t partition = anchor.spec.partition;
  if (rules.rated) {
    for (auto it = by_rating.lower_bound({partition, -kInfinity, 0});
         most < up_to && it != by_rating.end() && std::get<0>(it->first) == partition; ++it) {
      visit(*it->second);
    }
  } else {
    for (auto it = by_enqueue.lower_bound({partition, absl::InfinitePast(), 0});
         most < up_to && it != by_enqueue.end() && std::get<0>(it->first) == partition; ++it) {
      visit(*it->second);
    }
  }
  return std::min(most, up_to);
}

void Pool::Impl::ResetGroup() {
  group.clear();
  group_players = 0;
  // The shape's team count; no allocation once grown.
  bin_load.resize(teams);
  std::fill(bin_load.begin(), bin_load.end(), 0);
  if (any_size_failed) {
    std::fill(size_failed.begin(), size_failed.end(), 0);
    any_size_failed = false;
  }
}

// Adds `ticket` to the group if its party fits the remaining slots and the
// group's parties can still be packed into the teams. Solo players never
// need a search: they fill whatever slots the parties leave.
inline bool Pool::Impl::TryAdd(const Ticket& ticket) {
  const TicketSpec& spec = ticket.spec;
  const int size = spec.party_size;
  if (size > need - group_players || size_failed[size]) return false;
  // Field by field: a braced temporary is copied through the stack with loads
  // wider than its stores, which stalls on store forwarding.
  Member& member = group.emplace_back();
  member.key = spec.key;
  member.party_size = size;
  member.rating = spec.rating;
  member.enqueued_at = spec.enqueued_at;
  member.enqueued_nanos = ticket.enqueued_nanos;
  member.initial_window = ticket.initial_window;
  member.bin = -1;
  member.latency = eval_region >= 0 ? spec.latency_ms[eval_region] : uint16_t{0};
  member.spec = &spec;
  if (size > 1 && !PlaceParty(size)) return false;
  group_players += size;
  if (any_size_failed) {
    std::fill(size_failed.begin(), size_failed.end(), 0);
    any_size_failed = false;
  }
  return true;
}

// TryAdd for a party of 2+, the group's last member: finds it a team, or
// removes it from the group and returns false.
bool Pool::Impl::PlaceParty(int size) {
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
    return true;
  }
  // Repack every party from scratch, largest first.
  pack_items.clear();
  for (size_t i = 0; i < group.size(); ++i) {
    if (group[i].party_size > 1) pack_items.push_back(static_cast<int>(i));
  }
  // Ties keep group order (std::stable_sort would allocate).
  std::sort(pack_items.begin(), pack_items.end(), [&](int a, int b) {
    return group[a].party_size != group[b].party_size ? group[a].party_size > group[b].party_size
                                                      : a < b;
  });
  pack_bins.assign(pack_items.size(), -1);
  pack_loads.assign(teams, 0);
  int budget = kPackSearchBudget;
  if (!PackSearch(0, &budget)) {
    group.pop_back();
    // The group is unchanged, so every later party of this size would fail
    // the same way.
    size_failed[size] = 1;
    any_size_failed = true;
    return false;
  }
  for (size_t i = 0; i < pack_items.size(); ++i) {
    group[pack_items[i]].bin = pack_bins[i];
  }
  bin_load = pack_loads;
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
  // Full matches only: returned as is, with no copy.
  if (rules.min_players == 0) return EvaluateRegions(anchor, now, live_players);
  Evaluation full = EvaluateRegions(anchor, now, live_players);
  if (full.outcome == Outcome::kAccepted) return full;
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
    // Teams too small for the anchor's own party: every smaller shape is too.
    if (anchor.spec.party_size > shape_size) break;
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
      const absl::Time at = LatencyAdmitAt(own, anchor, now);
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
  // Always fits a full match (party_size <= team_size), but may not fit a
  // partial lobby's smaller teams: the walk then gathers a group without it.
  const bool anchor_in = TryAdd(anchor);
  // The walk goes on until the group is full or the partition ends. It does
  // not stop when too few players are left in the whole pool to fill the
  // group: what it meets on the way (a ticket the latency limit keeps out
  // now) decides when to look again, and that must not depend on tickets
  // outside the anchor's reach.
  // Players seen who could meet the anchor (of its partition, allowed by the
  // custom rule, able to play in the region), and how many of them the
  // latency limit keeps out now.
  int seen = anchor.spec.party_size;
  int kept_out = 0;
  double nearest_kept_out = kInfinity;  // the lowest latency kept out
  // Returns true when the walk should stop. Inlined into both walks (GCC
  // would call it: a call per candidate is ~5 % of a 5v5 queue's time).
  auto visit = [&](const Ticket& ticket) ABSL_ATTRIBUTE_ALWAYS_INLINE {
    const TicketSpec& spec = ticket.spec;
    // Only Explain() can meet such a ticket: Process() expires it first.
    if (spec.expires_at <= now) return false;
    if (rules.custom_rule != nullptr && !rules.custom_rule->Compatible(anchor.spec, spec)) {
      // Kept apart by the studio's rule: as if not there.
    } else if (region >= 0 && spec.latency_ms[region] == TicketSpec::kUnreachable) {
      // Never plays there, however far the limit widens: as if not there.
    } else if (region >= 0 && spec.latency_ms[region] > limit) {
      seen += spec.party_size;
      kept_out += spec.party_size;
      nearest_kept_out = std::min<double>(nearest_kept_out, spec.latency_ms[region]);
    } else {
      seen += spec.party_size;
      TryAdd(ticket);
    }
    return group_players == need;
  };

  // Rated: the members taken on either side of the anchor, first and last.
  // Each side is walked away from the anchor in rating order, so the last
  // member taken on a side is the group's extreme there.
  const TicketSpec* lo_first = nullptr;
  const TicketSpec* lo_last = nullptr;
  const TicketSpec* hi_first = nullptr;
  const TicketSpec* hi_last = nullptr;
  if (rules.rated) {
    const double center = anchor.spec.rating;
    // The nearest candidates not yet taken on either side; the links end at
    // the partition's ends.
    const Ticket* lo = anchor.lower;
    const Ticket* hi = anchor.higher;
    while (group_players < need && (lo != nullptr || hi != nullptr)) {
      bool take_lo = lo != nullptr;
      if (lo != nullptr && hi != nullptr) {
        const TicketSpec& l = lo->spec;
        const TicketSpec& h = hi->spec;
        const double d_lo = center - l.rating;
        const double d_hi = h.rating - center;
        take_lo = d_lo != d_hi ? d_lo < d_hi
                               : std::tie(l.enqueued_at, l.key) < std::tie(h.enqueued_at, h.key);
      }
      const Ticket* next;
      if (take_lo) {
        next = lo;
        lo = lo->lower;
      } else {
        next = hi;
        hi = hi->higher;
      }
      const size_t members = group.size();
      const bool stop = visit(*next);
      if (group.size() > members) {
        const TicketSpec*& first = take_lo ? lo_first : hi_first;
        if (first == nullptr) first = &next->spec;
        (take_lo ? lo_last : hi_last) = &next->spec;
      }
      if (stop) break;
    }
  } else {
    for (auto it = by_enqueue.lower_bound({partition, absl::InfinitePast(), 0});
         it != by_enqueue.end() && std::get<0>(it->first) == partition; ++it) {
      if (it->second == &anchor) continue;
      if (visit(*it->second)) break;
    }
  }
  if (kept_out > 0) {
    result.admit_at = LatencyAdmitAt(nearest_kept_out, anchor, now);
  }

  if (group_players < need) {
    // Why not: too few players who may meet at all, the latency limit, or
    // the parties' sizes.
    result.blocker = seen < need    ? Blocker::kNotEnoughPlayers
                     : kept_out > 0 ? Blocker::kLatency
                                    : Blocker::kTeamPacking;
    // The latency that keeps the group from forming.
    if (result.blocker == Blocker::kLatency) result.worst_latency = nearest_kept_out;
    return result;
  }

  if (rules.rated) {
    // Without the anchor, a side with no member has its extreme on the other
    // side: the member nearest the anchor there.
    const TicketSpec* low = lo_last != nullptr ? lo_last : anchor_in ? &anchor.spec : hi_first;
    const TicketSpec* high = hi_last != nullptr ? hi_last : anchor_in ? &anchor.spec : lo_first;
    result.lowest = PosOf(*low);
    result.highest = PosOf(*high);
  } else {
    result.lowest = result.highest = {partition, group[0].rating, group[0].key};
    for (const Member& m : group) {
      result.lowest = std::min(result.lowest, {partition, m.rating, m.key});
      result.highest = std::max(result.highest, {partition, m.rating, m.key});
    }
  }
  if (region >= 0) {  // else every member's latency is 0, as worst_latency
    for (const Member& m : group) {
      result.worst_latency = std::max<double>(result.worst_latency, m.latency);
    }
  }
  result.spread = rules.rated ? std::get<1>(result.highest) - std::get<1>(result.lowest) : 0;
  if (rules.rated && rules.custom_rule != nullptr) {
    group_specs.clear();
    for (const Member& m : group) group_specs.push_back(m.spec);
    result.penalty = rules.custom_rule->Penalty(group_specs);
    if (!(result.penalty >= 0) || !std::isfinite(result.penalty)) result.penalty = 0;
  }
  const double judged = result.spread + result.penalty;
  const Waits waits = GroupWaits(now);
  result.wait_sum = waits.sum;
  result.members = waits.count;
  if (AcceptedAt(judged, result.worst_latency, waits, 0)) {
    result.outcome = Outcome::kAccepted;
  } else {
    result.outcome = Outcome::kRejected;
    bool waited;
    double seconds;
    BasisWait(waits, &waited, &seconds);
    const double window = WindowFor(rules, waits.initial_window, waited, seconds);
    result.blocker = result.spread > window ? Blocker::kRatingSpread
                     : judged > window      ? Blocker::kCustomRule
                                            : Blocker::kLatency;
    result.acceptable_at = AcceptableAt(judged, result.worst_latency, waits, now);
  }
  return result;
}

// The group's waits at `now`: in integer nanoseconds when every time is whole
// and every wait in range (always, with a real clock), else in Duration.
Pool::Impl::Waits Pool::Impl::GroupWaits(absl::Time now) {
  Waits waits;
  const bool by_mean = rules.wait_basis == QueueRules::WaitBasis::kMeanWait;
  waits.count = static_cast<int64_t>(group.size());
  waits.divisor = by_mean ? waits.count : 1;
  waits.initial_window = rules.initial_window;
  if (rules.wait_cost > 0) {
    double sum = 0;
    for (const Member& m : group) sum += m.initial_window;
    waits.initial_window = sum / static_cast<double>(waits.count);
  }
  const int64_t now_nanos = NowNanos(now);
  if (now_nanos != kNotWholeNanos) {
    int64_t sum_nanos = 0;
    int64_t min_nanos = std::numeric_limits<int64_t>::max();
    bool whole = true;
    for (const Member& m : group) {
      const int64_t wait = IntegerWaitNanos(m.enqueued_nanos, now_nanos);
      if (wait < 0) {
        whole = false;
        break;
      }
      sum_nanos += wait;
      min_nanos = std::min(min_nanos, wait);
    }
    if (whole) {
      waits.sum = absl::Nanoseconds(sum_nanos);
      waits.basis_sum = by_mean ? waits.sum : absl::Nanoseconds(min_nanos);
      // Duration's division truncates, which for a sum >= 0 rounds down.
      waits.basis_ticks =
          by_mean ? sum_nanos * kTicksPerNanosecond / waits.count : min_nanos * kTicksPerNanosecond;
      return waits;
    }
  }
  absl::Duration min_wait = absl::InfiniteDuration();
  for (const Member& m : group) {
    waits.sum += now - m.enqueued_at;
    min_wait = std::min(min_wait, now - m.enqueued_at);
  }
  waits.basis_sum = by_mean ? waits.sum : min_wait;
  return waits;
}

void Pool::Impl::BasisWait(const Waits& waits, bool* waited, double* seconds) {
  if (waits.basis_ticks >= 0) {
    *waited = TicksWaited(waits.basis_ticks);
    *seconds = TicksSeconds(waits.basis_ticks);
  } else {
    const absl::Duration wait = waits.basis_sum / waits.divisor;
    *waited = wait > absl::ZeroDuration();
    *seconds = absl::ToDoubleSeconds(wait);
  }
}

// Whether the group is acceptable `nanos` (>= 0) after the time at which its
// waits are `waits`. Exactly the test Process applies then: the basis sum
// grows by divisor * nanos with no rounding, and the basis wait is that sum /
// divisor in Duration arithmetic. `latency` is the group's worst latency in
// its region (0 without latency rules).
bool Pool::Impl::AcceptedAt(double spread, double latency, const Waits& waits,
                            int64_t nanos) const {
  if (waits.basis_ticks >= 0 && nanos >= 0 && nanos < kMaxExactTicks / kTicksPerNanosecond) {
    // (sum + n * nanos) / n rounds down to exactly basis + nanos, as no term
    // is negative; in ticks it stays exact in a double below kMaxExactTicks.
    const int64_t ticks = waits.basis_ticks + nanos * kTicksPerNanosecond;
    if (ticks < kMaxExactTicks) {
      const bool waited = TicksWaited(ticks);
      const double seconds = TicksSeconds(ticks);
      return spread <= WindowFor(rules, waits.initial_window, waited, seconds) &&
             (rules.region_count == 0 || latency <= LatencyLimitFor(rules, waited, seconds));
    }
  }
  const absl::Duration wait =
      (waits.basis_sum + absl::Nanoseconds(nanos) * waits.divisor) / waits.divisor;
  return spread <= WindowFor(rules, waits.initial_window, wait > absl::ZeroDuration(),
                             absl::ToDoubleSeconds(wait)) &&
         (rules.region_count == 0 || latency <= rules.LatencyLimitAt(wait));
}

// The first nanosecond after `now` at which the group becomes acceptable, or
// nullopt if never. The closed form gives a first guess; the answer is then
// pinned with AcceptedAt itself so that a Process at the returned time always
// matches and one a nanosecond earlier never does, whatever the rounding.
std::optional<absl::Time> Pool::Impl::AcceptableAt(double spread, double latency,
                                                   const Waits& waits, absl::Time now) const {
  bool positive;
  double waited;
  BasisWait(waits, &positive, &waited);
  double delay = 0;
  if (spread > WindowFor(rules, waits.initial_window, positive, waited)) {
    const double widen = WidenFor(rules, waits.initial_window);
    if (!(widen > 0) || !std::isfinite(spread)) return std::nullopt;
    if (rules.max_window != 0 && spread > rules.max_window) return std::nullopt;
    delay = (spread - waits.initial_window) / widen - waited;
  }
  if (rules.region_count > 0 && latency > LatencyLimitFor(rules, positive, waited)) {
    if (!(rules.latency_widen_per_second > 0)) return std::nullopt;
    if (rules.latency_cap_ms != 0 && latency > rules.latency_cap_ms) return std::nullopt;
    delay =
        std::max(delay, (latency - rules.max_latency_ms) / rules.latency_widen_per_second - waited);
  }
  if (delay > kMaxRefinedDelaySeconds) {
    // A second early, so that rounding can never make the wakeup late.
    return now + absl::Seconds(delay) - absl::Seconds(1);
  }

  const std::optional<int64_t> at = FirstNanosecond(
      delay, [&](int64_t nanos) { return AcceptedAt(spread, latency, waits, nanos); });
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
  match.mean_wait = evaluation.wait_sum / evaluation.members;
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
      if (team_load[t] + m.party_size <= team_size && (best < 0 || team_sum[t] < team_sum[best])) {
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
    // Ties keep group order (std::stable_sort would allocate).
    std::sort(split_order.begin(), split_order.end(), [&](int a, int b) {
      return group[a].rating != group[b].rating ? group[a].rating > group[b].rating : a < b;
    });
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
  added.enqueued_nanos = WholeUnixNanos(ticket.enqueued_at);
  added.initial_window = rules_.initial_window;
  if (rules_.wait_cost > 0) {
    impl.density.Record(ticket.rating, ticket.enqueued_at);
    double window =
        std::max(rules_.initial_window, impl.density.WindowFor(ticket.rating, rules_.wait_cost));
    if (rules_.max_window != 0) window = std::min(window, rules_.max_window);
    added.initial_window = window;
  }
  impl.players += ticket.party_size;
  if (ticket.expires_at != absl::InfiniteFuture()) {
    added.in_expiry = impl.expiry.insert({ticket.expires_at, ticket.key}).first;
  }
  if (rules_.rated) {
    const auto pos = impl.by_rating.emplace(Impl::PosOf(ticket), &added).first;
    added.in_rating = pos;
    // Linked to its neighbours in its own partition only.
    if (pos != impl.by_rating.begin()) {
      Impl::Ticket* const prev = std::prev(pos)->second;
      if (prev->spec.partition == ticket.partition) {
        added.lower = prev;
        prev->higher = &added;
      }
    }
    if (std::next(pos) != impl.by_rating.end()) {
      Impl::Ticket* const next = std::next(pos)->second;
      if (next->spec.partition == ticket.partition) {
        added.higher = next;
        next->lower = &added;
      }
    }
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
  const absl::Time next_nanosecond = now + absl::Nanoseconds(1);
  // Terminates: retries are set strictly after `now`, and re-marks only
  // follow a withdrawal or a match, which shrink the pool.
  while (Impl::Ticket* const due = impl.PopDue(now)) {
    Impl::Ticket& anchor = *due;
    const Impl::Evaluation evaluation = impl.Evaluate(anchor, now, impl.players);
    switch (evaluation.outcome) {
      case Impl::Outcome::kNoGroup:
      case Impl::Outcome::kRejected: {
        // Without a retry time only a change to the pool can help, and
        // MarkChanged re-marks the tickets it may help.
        std::optional<absl::Time> retry = evaluation.RetryAt();
        if (retry.has_value()) retry = std::max(*retry, next_nanosecond);
        impl.SetRetry(anchor, retry);
        break;
      }
      case Impl::Outcome::kAccepted:
        impl.Commit(now, evaluation);
        break;
    }
  }
}

absl::Time Pool::NextWakeup() const {
  // Due at InfinitePast; and with due_now empty, no due_later entry is void.
  if (!impl_->due_now.empty()) return absl::InfinitePast();
  absl::Time next = absl::InfiniteFuture();
  if (!impl_->expiry.empty()) next = impl_->expiry.begin()->first;
  if (!impl_->due_later.empty()) next = std::min(next, impl_->due_later.top().at);
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
  if (rules_.rated) {
    const bool waited = explanation.waited > absl::ZeroDuration();
    explanation.initial_window = ticket.initial_window;
    explanation.window = WindowFor(rules_, ticket.initial_window, waited,
                                   waited ? absl::ToDoubleSeconds(explanation.waited) : 0);
  }
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
  int reach_region = -1;
  explanation.players_in_reach =
      impl_->PlayersInReach(ticket, now, explanation.players_needed, &reach_region);
  // The fewest players any match of this queue has (a partial lobby's).
  const int fewest = rules_.min_players > 0 ? rules_.min_players : explanation.players_needed;
  if (explanation.blocker != Blocker::kNone && explanation.players_in_reach < fewest) {
    // However long it waits, too few players can play with this ticket for
    // any match (a lone ticket over the latency limit is told that, not
    // when the limit covers it).
    explanation.blocker = Blocker::kNotEnoughPlayers;
    explanation.acceptable_at.reset();
    explanation.region = -1;
    explanation.worst_latency_ms = 0;
    explanation.best_spread = 0;
    explanation.penalty = 0;
  } else if (explanation.blocker == Blocker::kNotEnoughPlayers && reach_region >= 0 &&
             ticket.spec.latency_ms[reach_region] > explanation.latency_limit_ms) {
    // Enough players can play with it in a region where its own latency is
    // over the limit now (in the regions within the limit too few can): the
    // limit is what keeps it waiting, until it covers the ticket there.
    const uint16_t own = ticket.spec.latency_ms[reach_region];
    explanation.blocker = Blocker::kLatency;
    explanation.region = reach_region;
    explanation.worst_latency_ms = own;
    const absl::Time at = impl_->LatencyAdmitAt(own, ticket, now);
    if (at != absl::InfiniteFuture()) explanation.acceptable_at = at;
  }
  // No full match yet: a partial lobby may start once partial_after ends,
  // sooner than the full group (whatever blocks that one).
  const absl::Time partial_from = ticket.spec.enqueued_at + rules_.partial_after;
  if (rules_.min_players > 0 && now < partial_from && ticket.spec.expires_at > partial_from &&
      explanation.blocker != Blocker::kNone &&
      explanation.acceptable_at.value_or(absl::InfiniteFuture()) > partial_from) {
    Impl& impl = *impl_;
    if (impl.Evaluate(ticket, partial_from, impl.LivePlayersAt(partial_from)).outcome ==
        Impl::Outcome::kAccepted) {
      explanation.acceptable_at = partial_from;
      explanation.partial_players = impl.group_players;
      // An older member's partial_after ends sooner: the lobby starts then
      // if, from that member, it takes this ticket too.
      const Impl::Member* oldest = &impl.group[0];
      for (const Impl::Member& m : impl.group) {
        if (std::tie(m.enqueued_at, m.key) < std::tie(oldest->enqueued_at, oldest->key)) {
          oldest = &m;
        }
      }
      const TicketKey oldest_key = oldest->key;
      const absl::Time sooner = oldest->enqueued_at + rules_.partial_after;
      if (oldest_key != key && now < sooner && sooner < partial_from) {
        const Impl::Ticket& anchor = impl.tickets.at(oldest_key);
        const bool takes_this = impl.Evaluate(anchor, sooner, impl.LivePlayersAt(sooner)).outcome ==
                                    Impl::Outcome::kAccepted &&
                                std::any_of(impl.group.begin(), impl.group.end(),
                                            [&](const Impl::Member& m) { return m.key == key; });
        if (takes_this) {
          explanation.acceptable_at = sooner;
          explanation.partial_players = impl.group_players;
        }
      }
    }
    impl.SetShape(rules_.team_count, rules_.team_size);
  }
  return explanation;
}

}  // namespace matchd::matcher
