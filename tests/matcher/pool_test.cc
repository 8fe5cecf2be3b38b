#include "matcher/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "matcher/custom_rule.h"
#include "matcher/rules/crossplay_rule.h"

namespace matchd::matcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

class RecordingListener : public PoolListener {
 public:
  bool StillWaiting(TicketKey key) override { return !gone.count(key); }
  void OnMatched(const FormedMatch& match) override { matches.push_back(match); }
  void OnExpired(TicketKey key) override { expired.push_back(key); }
  void OnWithdrawn(TicketKey key) override { withdrawn.push_back(key); }

  std::set<TicketKey> gone;
  std::vector<FormedMatch> matches;
  std::vector<TicketKey> expired;
  std::vector<TicketKey> withdrawn;
};

TicketSpec Ticket(TicketKey key, double rating, absl::Time enqueued_at, int party_size = 1,
                  absl::Time expires_at = absl::InfiniteFuture()) {
  TicketSpec spec;
  spec.key = key;
  spec.rating = rating;
  spec.enqueued_at = enqueued_at;
  spec.party_size = party_size;
  spec.expires_at = expires_at;
  return spec;
}

TicketSpec InPartition(TicketSpec spec, uint64_t partition) {
  spec.partition = partition;
  return spec;
}

QueueRules Rated(int team_count, int team_size, int max_party_size, double initial_window,
                 double widen_per_second, double max_window = 0) {
  QueueRules rules;
  rules.team_count = team_count;
  rules.team_size = team_size;
  rules.max_party_size = max_party_size;
  rules.rated = true;
  rules.initial_window = initial_window;
  rules.widen_per_second = widen_per_second;
  rules.max_window = max_window;
  return rules;
}

QueueRules Unrated(int team_count, int team_size, int max_party_size) {
  QueueRules rules;
  rules.team_count = team_count;
  rules.team_size = team_size;
  rules.max_party_size = max_party_size;
  return rules;
}

QueueRules WithWaitCost(QueueRules rules, double wait_cost) {
  rules.wait_cost = wait_cost;
  return rules;
}

QueueRules WithWidenTime(QueueRules rules, absl::Duration widen_time) {
  rules.widen_time = widen_time;
  return rules;
}

QueueRules Partial(QueueRules rules, int min_players, absl::Duration after) {
  rules.min_players = min_players;
  rules.partial_after = after;
  return rules;
}

// Sorted keys of every team, teams sorted: compares matches regardless of
// team order.
std::vector<std::vector<TicketKey>> Normalized(const FormedMatch& match) {
  std::vector<std::vector<TicketKey>> teams = match.teams;
  for (auto& team : teams) std::sort(team.begin(), team.end());
  std::sort(teams.begin(), teams.end());
  return teams;
}

std::vector<TicketKey> AllKeys(const FormedMatch& match) {
  std::vector<TicketKey> keys;
  for (const auto& team : match.teams) {
    keys.insert(keys.end(), team.begin(), team.end());
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

TEST(QueueRulesTest, WindowAt) {
  QueueRules rules = Rated(2, 1, 1, 100, 10, 250);
  EXPECT_EQ(rules.WindowAt(absl::ZeroDuration()), 100);
  EXPECT_EQ(rules.WindowAt(absl::Seconds(-5)), 100);
  EXPECT_EQ(rules.WindowAt(absl::Seconds(5)), 150);
  EXPECT_EQ(rules.WindowAt(absl::Seconds(100)), 250);
  rules.max_window = 0;
  EXPECT_EQ(rules.WindowAt(absl::Seconds(100)), 1100);
  rules.widen_per_second = 0;
  EXPECT_EQ(rules.WindowAt(absl::InfiniteDuration()), 100);
  EXPECT_TRUE(std::isinf(Unrated(2, 1, 1).WindowAt(absl::ZeroDuration())));
}

TEST(ValidateRulesTest, AcceptsValidRules) {
  EXPECT_TRUE(ValidateRules(QueueRules()).ok());
  EXPECT_TRUE(ValidateRules(Rated(2, 5, 5, 50, 5, 400)).ok());
  EXPECT_TRUE(ValidateRules(Rated(200, 1, 1, 0, 0, 0)).ok());
}

TEST(ValidateRulesTest, NamesTheOffendingField) {
  struct Case {
    QueueRules rules;
    std::string field;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<Case> cases = {
      {Rated(0, 1, 1, 0, 0), "team_count"},
      {Rated(2, 0, 1, 0, 0), "team_size"},
      {Rated(2, 101, 1, 0, 0), "team_count * team_size"},
      {Rated(1 << 20, 1 << 20, 1, 0, 0), "team_count * team_size"},
      {Rated(2, 5, 0, 0, 0), "max_party_size"},
      {Rated(2, 5, 6, 0, 0), "max_party_size"},
      {Rated(2, 1, 1, -1, 0), "initial_window"},
      {Rated(2, 1, 1, nan, 0), "initial_window"},
      {Rated(2, 1, 1, inf, 0), "initial_window"},
      {Rated(2, 1, 1, 0, -1), "widen_per_second"},
      {Rated(2, 1, 1, 0, nan), "widen_per_second"},
      {Rated(2, 1, 1, 0, 0, -1), "max_window"},
      {Rated(2, 1, 1, 0, 0, inf), "max_window"},
      {Rated(2, 1, 1, 100, 0, 50), "max_window"},
  };
  QueueRules no_wait = Rated(2, 1, 1, 0, 0);
  no_wait.max_wait = absl::ZeroDuration();
  cases.push_back({no_wait, "max_wait"});
  cases.push_back({Partial(Rated(8, 1, 1, 0, 0), 1, absl::ZeroDuration()), "min_players"});
  cases.push_back({Partial(Rated(2, 5, 5, 0, 0), 10, absl::ZeroDuration()), "min_players"});
  cases.push_back({Partial(Rated(2, 5, 5, 0, 0), 8, absl::Seconds(-1)), "partial_after"});
  QueueRules regions = Rated(2, 1, 1, 0, 0);
  regions.region_count = QueueRules::kMaxRegions + 1;
  cases.push_back({regions, "region_count"});
  regions.region_count = 2;
  cases.push_back({regions, "max_latency_ms"});  // 0 at zero wait
  regions.max_latency_ms = 50;
  regions.latency_widen_per_second = -1;
  cases.push_back({regions, "latency_widen_per_second"});
  regions.latency_widen_per_second = 1;
  regions.latency_cap_ms = 40;
  cases.push_back({regions, "latency_cap_ms"});
  QueueRules cost = Rated(2, 1, 1, 0, 1);
  cost.wait_cost = -1;
  cases.push_back({cost, "wait_cost"});
  cost.wait_cost = std::numeric_limits<double>::infinity();
  cases.push_back({cost, "wait_cost"});
  cost.wait_cost = 4;
  cost.wait_basis = QueueRules::WaitBasis::kYoungestWait;
  cases.push_back({cost, "wait_cost"});
  QueueRules widen = Rated(2, 1, 1, 0, 1);
  widen.widen_time = absl::Seconds(10);  // without wait_cost
  cases.push_back({widen, "widen_time"});
  widen.wait_cost = 4;
  widen.widen_time = absl::Seconds(-1);
  cases.push_back({widen, "widen_time"});
  QueueRules unrated_cost = Unrated(2, 1, 1);
  unrated_cost.wait_cost = 4;
  cases.push_back({unrated_cost, "wait_cost"});
  for (const Case& c : cases) {
    const absl::Status status = ValidateRules(c.rules);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

TEST(PoolTest, AddErrors) {
  RecordingListener listener;
  Pool pool(Rated(2, 5, 3, 100, 10), &listener);
  EXPECT_EQ(pool.Add(Ticket(1, 1000, kT0, 0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Add(Ticket(1, 1000, kT0, 4)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Add(Ticket(1, std::nan(""), kT0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(pool.Contains(1));
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0, 3)).ok());
  EXPECT_EQ(pool.Add(Ticket(1, 1200, kT0, 1)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(pool.tickets_waiting(), 1u);
  EXPECT_EQ(pool.players_waiting(), 3);
  EXPECT_TRUE(pool.Remove(1));
  EXPECT_TRUE(pool.Add(Ticket(1, 1200, kT0, 1)).ok());
  EXPECT_EQ(pool.players_waiting(), 1);
}

TEST(PoolTest, PairWithinInitialWindowMatchesAtOnce) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1050, kT0)).ok());
  EXPECT_LE(pool.NextWakeup(), kT0);  // due at the next Process
  EXPECT_EQ(pool.Explain(1, kT0).blocker, Blocker::kNone);
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  EXPECT_THAT(Normalized(match), ElementsAre(ElementsAre(1), ElementsAre(2)));
  EXPECT_EQ(match.rating_spread, 50);
  EXPECT_EQ(match.team_gap, 50);
  EXPECT_EQ(match.mean_wait, absl::ZeroDuration());
  EXPECT_EQ(match.formed_at, kT0);
  EXPECT_EQ(pool.tickets_waiting(), 0u);
  EXPECT_EQ(pool.players_waiting(), 0);
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
}

TEST(PoolTest, PairOutsideWindowMatchesExactlyWhenWindowCoversIt) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1150, kT0)).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const absl::Time widened = kT0 + absl::Seconds(5);  // 100 + 10 * 5 = 150
  EXPECT_EQ(pool.NextWakeup(), widened);

  const Explanation explanation = pool.Explain(2, kT0 + absl::Seconds(1));
  EXPECT_EQ(explanation.blocker, Blocker::kRatingSpread);
  EXPECT_EQ(explanation.best_spread, 150);
  EXPECT_EQ(explanation.acceptable_at, widened);
  EXPECT_EQ(explanation.window, 110);
  EXPECT_EQ(explanation.waited, absl::Seconds(1));
  EXPECT_EQ(explanation.players_waiting, 2);
  EXPECT_EQ(explanation.players_needed, 2);

  pool.Process(widened - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.NextWakeup(), widened);
  pool.Process(widened);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].rating_spread, 150);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(5));
  EXPECT_EQ(listener.matches[0].formed_at, widened);
}

// absl::Time counts quarter nanoseconds; the pool's integer arithmetic on
// waits only takes whole ones, and must not change a result otherwise.
TEST(PoolTest, SubNanosecondTimesMatchExactlyWhenWindowCoversThem) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  const absl::Duration quarter = absl::Nanoseconds(1) / 4;
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0 + quarter)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1150, kT0 + 3 * quarter)).ok());
  pool.Process(kT0 + absl::Seconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  // The mean wait reaches 5 s half a nanosecond after kT0 + 5 s.
  const absl::Time widened = kT0 + absl::Seconds(5) + absl::Nanoseconds(1);
  EXPECT_EQ(pool.NextWakeup(), widened);
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(2)).acceptable_at, widened);
  pool.Process(widened - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(widened);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(5) + 2 * quarter);
}

// The same for the youngest-wait basis: the newcomer's own wait decides.
TEST(PoolTest, YoungestWaitBasisIsExactWithSubNanosecondTimes) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 100, 10);
  rules.wait_basis = QueueRules::WaitBasis::kYoungestWait;
  Pool pool(rules, &listener);
  const absl::Duration quarter = absl::Nanoseconds(1) / 4;
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0 + quarter)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1250, kT0 + absl::Seconds(10) + 3 * quarter)).ok());
  pool.Process(kT0 + absl::Seconds(11));
  EXPECT_THAT(listener.matches, IsEmpty());
  // The newcomer has waited 15 s a quarter nanosecond before kT0 + 25 s + 1 ns.
  const absl::Time acceptable = kT0 + absl::Seconds(25) + absl::Nanoseconds(1);
  EXPECT_EQ(pool.NextWakeup(), acceptable);
  EXPECT_EQ(pool.Explain(2, kT0 + absl::Seconds(20)).acceptable_at, acceptable);
  pool.Process(acceptable - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(acceptable);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(20) + 2 * quarter);
}

TEST(PoolTest, AcceptanceUsesTheMeanWaitOfTheGroup) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  pool.Process(kT0);
  const absl::Time later = kT0 + absl::Seconds(10);
  ASSERT_TRUE(pool.Add(Ticket(2, 1250, later)).ok());
  pool.Process(later);
  EXPECT_THAT(listener.matches, IsEmpty());
  // The old ticket alone would accept 250 at 15s; the pair's mean wait
  // reaches 15s only at 20s (20s and 10s).
  const absl::Time acceptable = kT0 + absl::Seconds(20);
  EXPECT_EQ(pool.NextWakeup(), acceptable);
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(15)).blocker, Blocker::kRatingSpread);
  pool.Process(kT0 + absl::Seconds(15));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(acceptable - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(acceptable);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(15));
}

// Feeds `pool` 512 arrivals in partition 1, 100 ms apart, from kT0: three
// quarters of them in [1400, 1600), a quarter spread over [1600, 2400).
// Returns the time after the last.
absl::Time FeedSkewedArrivals(Pool& pool) {
  absl::Time now = kT0;
  for (int i = 0; i < 512; ++i) {
    const double rating =
        i % 4 == 3 ? 1600 + 800.0 * ((i * 7) % 128) / 128 : 1400 + 200.0 * ((i * 7) % 384) / 384;
    EXPECT_TRUE(pool.Add(InPartition(Ticket(i + 1, rating, now), 1)).ok());
    pool.Process(now);
    now += absl::Milliseconds(100);
  }
  return now;
}

TEST(PoolTest, WaitCostWidensTheWindowWherePlayersAreRare) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 0, 0);  // no window but the arrival rate's
  rules.wait_cost = 4;
  Pool pool(rules, &listener);
  // Partition 1 sets the arrival rate.
  const absl::Time now = FeedSkewedArrivals(pool);
  const size_t warmup_matches = listener.matches.size();
  // The same gap near 1500 (dense) and near 2000 (12x sparser), each pair in
  // a partition of its own.
  TicketSpec dense = InPartition(Ticket(1001, 1500, now), 2);
  TicketSpec sparse = InPartition(Ticket(2001, 2000, now), 3);
  ASSERT_TRUE(pool.Add(dense).ok());
  ASSERT_TRUE(pool.Add(sparse).ok());
  const double dense_window = pool.Explain(1001, now).initial_window;
  const double sparse_window = pool.Explain(2001, now).initial_window;
  EXPECT_GT(dense_window, 0);
  EXPECT_NEAR(sparse_window / dense_window, std::sqrt(12.0), 0.7);
  EXPECT_EQ(pool.Explain(2001, now).window, sparse_window);
  const double gap = 2 * dense_window;
  dense.key = 1002;
  dense.rating += gap;
  sparse.key = 2002;
  sparse.rating += gap;
  ASSERT_TRUE(pool.Add(dense).ok());
  ASSERT_TRUE(pool.Add(sparse).ok());
  pool.Process(now);
  ASSERT_EQ(listener.matches.size(), warmup_matches + 1);
  EXPECT_THAT(AllKeys(listener.matches.back()), ElementsAre(2001, 2002));
  // Without widening the dense pair waits for a closer partner.
  EXPECT_TRUE(pool.Contains(1001));
  EXPECT_EQ(pool.Explain(1001, now + absl::Hours(1)).blocker, Blocker::kRatingSpread);
}

TEST(PoolTest, WidenTimeWidensEachGroupByItsOwnInitialWindow) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 0, 0);
  rules.wait_cost = 4;
  rules.widen_time = absl::Seconds(10);
  Pool pool(rules, &listener);
  const absl::Time now = FeedSkewedArrivals(pool);
  ASSERT_TRUE(pool.Add(InPartition(Ticket(1001, 1500, now), 2)).ok());
  ASSERT_TRUE(pool.Add(InPartition(Ticket(2001, 2000, now), 3)).ok());
  // After widen_time every ticket's window is twice its initial one: the
  // sparse one, wider from the start, also widens faster.
  for (TicketKey key : {1001, 2001}) {
    const Explanation later = pool.Explain(key, now + absl::Seconds(10));
    EXPECT_GT(later.initial_window, 0);
    EXPECT_DOUBLE_EQ(later.window, 2 * later.initial_window) << key;
  }
  EXPECT_GT(pool.Explain(2001, now).initial_window, 3 * pool.Explain(1001, now).initial_window);
  // A partner three initial windows away: the pair's mean window covers the
  // gap once it has tripled, after 2 x widen_time.
  const double dense = pool.Explain(1001, now).initial_window;
  ASSERT_TRUE(pool.Add(InPartition(Ticket(1002, 1500 + 3 * dense, now), 2)).ok());
  pool.Process(now);
  const Explanation pair = pool.Explain(1001, now);
  ASSERT_EQ(pair.blocker, Blocker::kRatingSpread);
  const double mean_initial = (dense + pool.Explain(1002, now).initial_window) / 2;
  const double expected = 10 * (3 * dense / mean_initial - 1);
  ASSERT_TRUE(pair.acceptable_at.has_value());
  EXPECT_NEAR(absl::ToDoubleSeconds(*pair.acceptable_at - now), expected, 1e-6);
  EXPECT_LE(pool.NextWakeup(), *pair.acceptable_at);
  pool.Process(*pair.acceptable_at - absl::Nanoseconds(1));
  EXPECT_TRUE(pool.Contains(1001));
  pool.Process(*pair.acceptable_at);
  ASSERT_FALSE(listener.matches.empty());
  EXPECT_THAT(AllKeys(listener.matches.back()), ElementsAre(1001, 1002));
}

TEST(PoolTest, YoungestWaitBasisNeedsEveryMembersOwnWindow) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 100, 10);
  rules.wait_basis = QueueRules::WaitBasis::kYoungestWait;
  Pool pool(rules, &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  pool.Process(kT0);
  const absl::Time later = kT0 + absl::Seconds(10);
  ASSERT_TRUE(pool.Add(Ticket(2, 1250, later)).ok());
  pool.Process(later);
  // The mean wait reaches 15s at 20s, but the newcomer's own window covers
  // 250 only after it has waited 15s itself: at 25s.
  const absl::Time acceptable = kT0 + absl::Seconds(25);
  EXPECT_EQ(pool.NextWakeup(), acceptable);
  pool.Process(kT0 + absl::Seconds(20));
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.Explain(2, kT0 + absl::Seconds(20)).acceptable_at, acceptable);
  pool.Process(acceptable - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(acceptable);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(20));
}

// Latency per region for a 3-region queue; absent regions are unreachable.
TicketSpec InRegions(TicketSpec spec, std::vector<int> latency_ms) {
  for (size_t r = 0; r < latency_ms.size(); ++r) {
    if (latency_ms[r] >= 0) spec.latency_ms[r] = static_cast<uint16_t>(latency_ms[r]);
  }
  return spec;
}

QueueRules WithRegions(QueueRules rules, double max_ms, double widen, double cap = 0) {
  rules.region_count = 3;
  rules.max_latency_ms = max_ms;
  rules.latency_widen_per_second = widen;
  rules.latency_cap_ms = cap;
  return rules;
}

TEST(PoolTest, PartitionsNeverMeet) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 1000, 0), &listener);
  ASSERT_TRUE(pool.Add(InPartition(Ticket(1, 1500, kT0), 1)).ok());
  ASSERT_TRUE(pool.Add(InPartition(Ticket(2, 1500, kT0), 2)).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.Explain(1, kT0).blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
  // Further away in rating, but the same partition.
  ASSERT_TRUE(pool.Add(InPartition(Ticket(3, 1900, kT0 + absl::Seconds(1)), 2)).ok());
  pool.Process(kT0 + absl::Seconds(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(2, 3));
  EXPECT_TRUE(pool.Contains(1));
}

TEST(PoolTest, UnratedPartitionsNeverMeet) {
  RecordingListener listener;
  Pool pool(Unrated(2, 1, 1), &listener);
  for (TicketKey key = 1; key <= 3; ++key) {
    TicketSpec t = Ticket(key, 0, kT0 + absl::Seconds(key));
    t.partition = key == 2 ? 7 : 8;
    ASSERT_TRUE(pool.Add(t).ok());
  }
  pool.Process(kT0 + absl::Seconds(3));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 3));
}

TEST(PoolTest, MatchIsPlacedInARegionWithinTheLimit) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 0), &listener);
  // 1 and 2 share no region within 60 ms; 1 and 3 share eu (index 0).
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {30, 150, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {200, 40, -1})).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.Explain(1, kT0).blocker, Blocker::kLatency);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(3, 1700, kT0), {45, -1, -1})).ok());
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 3));
  EXPECT_EQ(listener.matches[0].region, 0);
  EXPECT_EQ(listener.matches[0].max_latency_ms, 45);
}

TEST(PoolTest, ExplainTellsALoneTicketOverTheLatencyLimitItWaitsForPlayers) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10), &listener);
  // Its own latency is over the limit until 4 s, but nobody else is here:
  // the limit covering it would not make a match.
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {100, -1, -1})).ok());
  pool.Process(kT0);
  const Explanation e = pool.Explain(1, kT0 + absl::Seconds(1));
  EXPECT_EQ(e.blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(e.acceptable_at, std::nullopt);
  EXPECT_EQ(e.players_in_reach, 1);
  // A player who shares no region with it changes nothing.
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {-1, 20, -1})).ok());
  pool.Process(kT0);
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(1)).blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(1)).players_waiting, 2);
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(1)).players_in_reach, 1);
  // One who can play there: now the limit is what it waits for.
  ASSERT_TRUE(pool.Add(InRegions(Ticket(3, 1500, kT0), {20, -1, -1})).ok());
  pool.Process(kT0);
  const Explanation latency = pool.Explain(1, kT0 + absl::Seconds(1));
  EXPECT_EQ(latency.blocker, Blocker::kLatency);
  EXPECT_EQ(latency.acceptable_at, kT0 + absl::Seconds(4));
}

TEST(PoolTest, ExplainNamesTheLatencyWhenOnlyAFarRegionHasThePlayers) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10), &listener);
  // Ticket 1 is within the limit in region 1, where nobody else plays, and
  // over it (100 ms) in region 0, where ticket 2 does: the limit covers it
  // there at 4 s.
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {100, 30, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {20, -1, -1})).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const Explanation e = pool.Explain(1, kT0 + absl::Seconds(1));
  EXPECT_EQ(e.blocker, Blocker::kLatency);
  EXPECT_EQ(e.region, 0);
  EXPECT_EQ(e.worst_latency_ms, 100);
  EXPECT_EQ(e.acceptable_at, kT0 + absl::Seconds(4));
  pool.Process(kT0 + absl::Seconds(4));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].region, 0);
}

TEST(PoolTest, ExplainInAPartialLobbyQueueCountsAgainstTheSmallestLobby) {
  RecordingListener listener;
  // 8 players, or a lobby of 4 after 1 s; 50 ms widening 5 ms/s.
  Pool pool(WithRegions(Partial(Rated(8, 1, 1, 1000, 0), 4, absl::Seconds(1)), 50, 5), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {100, -1, -1})).ok());
  for (TicketKey key : {2, 3, 4}) {
    ASSERT_TRUE(pool.Add(InRegions(Ticket(key, 1500, kT0), {10, -1, -1})).ok());
  }
  pool.Process(kT0);
  // Too few for 8, enough for a lobby of 4 once the limit covers ticket 1
  // (100 ms at 10 s): the latency, not the player count, is what it waits for.
  const Explanation e = pool.Explain(1, kT0 + absl::Seconds(2));
  EXPECT_EQ(e.blocker, Blocker::kLatency);
  EXPECT_EQ(e.acceptable_at, kT0 + absl::Seconds(10));
  pool.Process(kT0 + absl::Seconds(10));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 2, 3, 4));
}

TEST(PoolTest, ExplainCountsOnlyThePlayersATicketCanMeet) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 1000, 0), &listener);
  TicketSpec lone = Ticket(1, 1500, kT0);
  lone.partition = 7;
  ASSERT_TRUE(pool.Add(lone).ok());
  TicketSpec other = Ticket(2, 1500, kT0);
  other.partition = 8;
  ASSERT_TRUE(pool.Add(other).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const Explanation e = pool.Explain(1, kT0);
  EXPECT_EQ(e.blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(e.players_waiting, 2);
  EXPECT_EQ(e.players_in_reach, 1);
}

TEST(PoolTest, PrefersTheRegionWithTheLowestWorstLatency) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 0), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {30, 20, 50})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {35, 25, 10})).ok());
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].region, 1);
  EXPECT_EQ(listener.matches[0].max_latency_ms, 25);
}

TEST(PoolTest, LatencyLimitWidensWithTheGroupsMeanWait) {
  RecordingListener listener;
  // 60 ms at zero wait, +10 ms per second: 100 ms after a mean wait of 4 s.
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {100, -1, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {50, -1, -1})).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const Explanation e = pool.Explain(2, kT0 + absl::Seconds(1));
  EXPECT_EQ(e.blocker, Blocker::kLatency);
  EXPECT_EQ(e.region, 0);
  EXPECT_EQ(e.worst_latency_ms, 100);  // the ticket the limit keeps out
  EXPECT_EQ(e.latency_limit_ms, 70);
  const absl::Time wake = kT0 + absl::Seconds(4);
  EXPECT_EQ(e.acceptable_at, wake);
  EXPECT_EQ(pool.NextWakeup(), wake);
  pool.Process(wake - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(wake);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].max_latency_ms, 100);
}

// A widening latency limit with times that are not whole nanoseconds: a
// ticket's own limit (who may take part) and the group's (acceptance).
TEST(PoolTest, LatencyWideningIsExactWithSubNanosecondTimes) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10), &listener);
  const absl::Duration quarter = absl::Nanoseconds(1) / 4;
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0 + quarter), {100, -1, -1})).ok());
  const absl::Time later = kT0 + absl::Seconds(2) + 3 * quarter;
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, later), {50, -1, -1})).ok());
  pool.Process(kT0 + absl::Seconds(3));
  EXPECT_THAT(listener.matches, IsEmpty());
  // Ticket 1's own limit reaches 100 ms once it has waited 4 s.
  EXPECT_EQ(pool.NextWakeup(), kT0 + absl::Seconds(4) + absl::Nanoseconds(1));
  // Ticket 2's limit lets ticket 1 in once ticket 2 has waited 4 s.
  const Explanation e = pool.Explain(2, kT0 + absl::Seconds(3));
  EXPECT_EQ(e.blocker, Blocker::kLatency);
  EXPECT_EQ(e.acceptable_at, kT0 + absl::Seconds(6) + absl::Nanoseconds(1));
  pool.Process(kT0 + absl::Seconds(4) + absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  // The pair's mean wait reaches 4 s half a nanosecond before kT0 + 5 s + 1 ns.
  const absl::Time wake = kT0 + absl::Seconds(5) + absl::Nanoseconds(1);
  EXPECT_EQ(pool.NextWakeup(), wake);
  pool.Process(wake - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(wake);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Seconds(4) + 2 * quarter);
  EXPECT_EQ(listener.matches[0].max_latency_ms, 100);
}

TEST(PoolTest, LatencyRetryDoesNotDependOnTicketsOutOfReach) {
  RecordingListener listener;
  // 2v2, one region: limit 50 ms, widening 10 ms/s.
  Pool pool(WithRegions(Rated(2, 2, 1, 1000, 0), 50, 10), &listener);
  auto add = [&](TicketKey key, double rating, uint16_t latency, uint64_t partition) {
    TicketSpec spec = Ticket(key, rating, kT0);
    spec.latency_ms[0] = latency;
    spec.partition = partition;
    ASSERT_TRUE(pool.Add(spec).ok());
  };
  // From ticket 1 outwards: 2 is in, 3 is kept out until 5 s, 4 until 3 s.
  add(1, 1000, 10, 1);
  add(2, 1001, 10, 1);
  add(3, 1002, 100, 1);
  add(4, 1003, 80, 1);
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  Explanation explanation = pool.Explain(1, kT0);
  EXPECT_EQ(explanation.blocker, Blocker::kLatency);
  EXPECT_EQ(explanation.acceptable_at, kT0 + absl::Seconds(3));
  EXPECT_LE(pool.NextWakeup(), kT0 + absl::Seconds(3));
  // A ticket in another partition changes nothing for ticket 1.
  add(5, 1000, 10, 2);
  pool.Process(kT0);
  EXPECT_EQ(pool.Explain(1, kT0).acceptable_at, kT0 + absl::Seconds(3));
  // At 5 s everyone is in.
  pool.Process(kT0 + absl::Seconds(5));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 2, 3, 4));
}

TEST(PoolTest, LatencyCapIsNeverExceeded) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10, /*cap=*/90), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {100, -1, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {50, -1, -1})).ok());
  pool.Process(kT0);
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
  pool.Process(kT0 + absl::Hours(1));
  EXPECT_THAT(listener.matches, IsEmpty());
}

// A ticket that gave no latency for a region never plays there, however far
// the limit has widened (its "unreachable" is stored as a latency of 65535).
TEST(PoolTest, NoLimitAdmitsATicketToARegionItCannotReach) {
  RecordingListener listener;
  // From 70 s at zero wait, widening without a cap.
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 70000, 1000), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {10, -1, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {-1, 10, -1})).ok());
  pool.Process(kT0);
  pool.Process(kT0 + absl::Hours(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(3, 1700, kT0 + absl::Hours(1)), {-1, 9000, -1})).ok());
  pool.Process(kT0 + absl::Hours(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(2, 3));
  EXPECT_EQ(listener.matches[0].region, 1);
  EXPECT_EQ(listener.matches[0].max_latency_ms, 9000);
}

// Tickets that can never meet (no region in common) are not players "here"
// that merely fail to pack into teams.
TEST(PoolTest, TicketsWithNoRegionInCommonAreNotEnoughPlayers) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 1000, 0), 60, 10, /*cap=*/150), &listener);
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {10, -1, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 1500, kT0), {-1, 10, -1})).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  for (TicketKey key : {1, 2}) {
    const Explanation e = pool.Explain(key, kT0 + absl::Seconds(1));
    EXPECT_EQ(e.blocker, Blocker::kNotEnoughPlayers) << key;
    EXPECT_FALSE(e.acceptable_at.has_value()) << key;
  }
}

TEST(PoolTest, TicketWithoutAReachableRegionIsRefused) {
  RecordingListener listener;
  Pool pool(WithRegions(Rated(2, 1, 1, 100, 0), 60, 0), &listener);
  EXPECT_EQ(pool.Add(Ticket(1, 1500, kT0)).code(), absl::StatusCode::kInvalidArgument);
  // A region beyond the queue's region_count does not count.
  EXPECT_EQ(pool.Add(InRegions(Ticket(1, 1500, kT0), {-1, -1, -1, 20})).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(pool.Add(InRegions(Ticket(1, 1500, kT0), {-1, -1, 20})).ok());
}

TEST(PoolTest, FreeForAllWithRegionsFillsFromOneRegion) {
  RecordingListener listener;
  Pool pool(WithRegions(Unrated(4, 1, 1), 80, 0), &listener);
  // Oldest first, but only tickets that can play in the anchor's region.
  ASSERT_TRUE(pool.Add(InRegions(Ticket(1, 0, kT0), {20, 90, -1})).ok());
  ASSERT_TRUE(pool.Add(InRegions(Ticket(2, 0, kT0 + absl::Seconds(1)), {-1, 30, -1})).ok());
  for (TicketKey key = 3; key <= 5; ++key) {
    ASSERT_TRUE(pool.Add(InRegions(Ticket(key, 0, kT0 + absl::Seconds(key)), {40, 40, -1})).ok());
  }
  pool.Process(kT0 + absl::Seconds(5));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 3, 4, 5));
  EXPECT_EQ(listener.matches[0].region, 0);
}

// A full group held back by its rating spread: the partial lobby that
// starts sooner is what the ticket can expect.
TEST(PoolTest, ExplainNamesThePartialLobbyWhenTheFullGroupIsTooWide) {
  RecordingListener listener;
  // Free-for-all of 4; window 50 + 10/s; a lobby of 2 after 2 s.
  Pool pool(Partial(Rated(4, 1, 1, 50, 10), 2, absl::Seconds(2)), &listener);
  TicketKey key = 1;
  for (double rating : {1500, 1510, 1900, 2300}) {
    ASSERT_TRUE(pool.Add(Ticket(key++, rating, kT0)).ok());
  }
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const Explanation e = pool.Explain(1, kT0 + absl::Milliseconds(500));
  EXPECT_EQ(e.blocker, Blocker::kRatingSpread);  // of the full group
  EXPECT_EQ(e.acceptable_at, kT0 + absl::Seconds(2));
  EXPECT_EQ(e.partial_players, 2);
  pool.Process(kT0 + absl::Seconds(2));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 2));
}

TEST(PoolTest, FreeForAllStartsWithFewerTeamsAfterPartialAfter) {
  RecordingListener listener;
  Pool pool(Partial(Unrated(8, 1, 1), 4, absl::Seconds(30)), &listener);
  for (TicketKey key = 1; key <= 5; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 0, kT0 + absl::Seconds(key))).ok());
  }
  pool.Process(kT0 + absl::Seconds(5));
  EXPECT_THAT(listener.matches, IsEmpty());
  // The oldest ticket's partial_after ends first; it says so.
  EXPECT_EQ(pool.NextWakeup(), kT0 + absl::Seconds(31));
  Explanation oldest = pool.Explain(1, kT0 + absl::Seconds(5));
  EXPECT_EQ(oldest.blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(oldest.acceptable_at, kT0 + absl::Seconds(31));
  EXPECT_EQ(oldest.partial_players, 5);
  // The youngest's own partial_after ends at 35 s, but the oldest takes it
  // along at 31 s.
  Explanation youngest = pool.Explain(5, kT0 + absl::Seconds(5));
  EXPECT_EQ(youngest.acceptable_at, kT0 + absl::Seconds(31));
  EXPECT_EQ(youngest.partial_players, 5);
  // A ticket that expires before then expects nothing of it.
  ASSERT_TRUE(pool.Add(Ticket(9, 0, kT0 + absl::Seconds(5), 1, kT0 + absl::Seconds(20))).ok());
  EXPECT_EQ(pool.Explain(9, kT0 + absl::Seconds(5)).acceptable_at, std::nullopt);
  ASSERT_TRUE(pool.Remove(9));
  pool.Process(kT0 + absl::Seconds(31) - absl::Nanoseconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(kT0 + absl::Seconds(31));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(listener.matches[0].teams.size(), 5u);
  EXPECT_EQ(AllKeys(listener.matches[0]).size(), 5u);
}

TEST(PoolTest, TeamModeStartsWithEqualTeamsShortOfPlayers) {
  RecordingListener listener;
  // 5v5 that may start as 4v4 (min 8 players) after 20 s.
  Pool pool(Partial(Rated(2, 5, 5, 1000, 0), 8, absl::Seconds(20)), &listener);
  for (TicketKey key = 1; key <= 9; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1500 + key, kT0)).ok());
  }
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.Explain(1, kT0).blocker, Blocker::kNotEnoughPlayers);
  pool.Process(kT0 + absl::Seconds(20));
  ASSERT_EQ(listener.matches.size(), 1u);
  ASSERT_EQ(listener.matches[0].teams.size(), 2u);
  EXPECT_EQ(listener.matches[0].teams[0].size(), 4u);
  EXPECT_EQ(listener.matches[0].teams[1].size(), 4u);
  EXPECT_EQ(pool.tickets_waiting(), 1u);
}

TEST(PoolTest, PartialLobbyNeverLeavesOutItsAnchor) {
  RecordingListener listener;
  // 5v5 that may start as small as 2v2 after 10 s: a party of 5 fits no smaller shape.
  Pool pool(Partial(Rated(2, 5, 5, 1000, 0), 4, absl::Seconds(10)), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1500, kT0, /*party_size=*/5)).ok());
  for (TicketKey key = 2; key <= 5; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1500, kT0 + absl::Seconds(1))).ok());
  }
  // The party's partial_after ends at 10 s, but it cannot anchor a 2v2 it is
  // not in; the solos' own partial_after ends at 11 s.
  pool.Process(kT0 + absl::Seconds(10));
  EXPECT_THAT(listener.matches, IsEmpty());
  pool.Process(kT0 + absl::Seconds(11));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(2, 3, 4, 5));
  EXPECT_TRUE(pool.Contains(1));
}

TEST(PoolTest, FullMatchIsPreferredOverAPartialOne) {
  RecordingListener listener;
  Pool pool(Partial(Rated(2, 5, 5, 1000, 0), 6, absl::ZeroDuration()), &listener);
  for (TicketKey key = 1; key <= 9; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1500, kT0)).ok());
  }
  ASSERT_TRUE(pool.Add(Ticket(10, 1500, kT0)).ok());
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_EQ(AllKeys(listener.matches[0]).size(), 10u);
}

std::shared_ptr<const CustomRule> Crossplay(std::map<std::string, std::string> params) {
  auto rule = CustomRuleRegistry::Global().Make("crossplay", params);
  EXPECT_TRUE(rule.ok()) << rule.status();
  return rule.ok() ? *rule : nullptr;
}

TicketSpec WithInput(TicketSpec spec, const CustomRule& rule, std::vector<std::string> inputs) {
  std::vector<PlayerAttributes> party;
  for (const std::string& input : inputs) party.push_back({{"input", input}});
  spec.custom = *rule.TicketData(party);
  spec.party_size = static_cast<int>(inputs.size());
  return spec;
}

TEST(CustomRuleTest, RegistryMakesKnownRulesAndNamesTheProblem) {
  CustomRuleRegistry& registry = CustomRuleRegistry::Global();
  EXPECT_THAT(registry.Names(), ::testing::Contains("crossplay"));
  auto unknown = registry.Make("nope", {});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("crossplay"));
  EXPECT_THAT(registry.Make("crossplay", {{"penalty", "-1"}}).status().message(),
              HasSubstr("penalty must be a number >= 0"));
  EXPECT_THAT(registry.Make("crossplay", {{"colour", "red"}}).status().message(),
              HasSubstr("unknown parameter \"colour\""));
}

TEST(CustomRuleTest, CrossplayTicketDataNamesKindsAndRefusesMissingAttribute) {
  auto rule = Crossplay({});
  std::vector<PlayerAttributes> mixed = {{{"input", "mouse"}}, {{"input", "controller"}}};
  EXPECT_EQ(*rule->TicketData(mixed), CrossplayRule::kFirstKind | CrossplayRule::kOtherKind);
  std::vector<PlayerAttributes> missing = {{{"input", "mouse"}}, {{"lang", "en"}}};
  EXPECT_THAT(rule->TicketData(missing).status().message(),
              HasSubstr("players[1].attributes: this queue needs \"input\""));
  auto strict = Crossplay({{"allow_mixed", "false"}});
  EXPECT_EQ(strict->TicketData(mixed).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PoolTest, CustomRulePenaltyDelaysMixedGroupsUntilTheWindowCoversIt) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 50, 10);
  rules.custom_rule = Crossplay({{"penalty", "100"}});
  Pool pool(rules, &listener);
  ASSERT_TRUE(pool.Add(WithInput(Ticket(1, 1500, kT0), *rules.custom_rule, {"mouse"})).ok());
  ASSERT_TRUE(pool.Add(WithInput(Ticket(2, 1500, kT0), *rules.custom_rule, {"controller"})).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  const Explanation e = pool.Explain(1, kT0 + absl::Seconds(1));
  EXPECT_EQ(e.blocker, Blocker::kCustomRule);
  EXPECT_EQ(e.best_spread, 0);
  EXPECT_EQ(e.penalty, 100);
  // 50 + 10/s covers 0 + 100 at a mean wait of 5 s.
  EXPECT_EQ(pool.NextWakeup(), kT0 + absl::Seconds(5));
  // Same-kind players 40 apart match at once meanwhile.
  ASSERT_TRUE(pool.Add(WithInput(Ticket(3, 1540, kT0 + absl::Seconds(1)), *rules.custom_rule,
                                 {"controller"}))
                  .ok());
  pool.Process(kT0 + absl::Seconds(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(2, 3));
  EXPECT_EQ(listener.matches[0].rating_spread, 40);  // the penalty is not a spread
  ASSERT_TRUE(pool.Add(WithInput(Ticket(4, 1500, kT0 + absl::Seconds(2)), *rules.custom_rule,
                                 {"controller"}))
                  .ok());
  pool.Process(kT0 + absl::Seconds(2));
  EXPECT_EQ(listener.matches.size(), 1u);
  // Mean wait of 1 and 4 reaches 5 s at 6 s.
  pool.Process(kT0 + absl::Seconds(6));
  ASSERT_EQ(listener.matches.size(), 2u);
  EXPECT_THAT(AllKeys(listener.matches[1]), ::testing::UnorderedElementsAre(1, 4));
}

TEST(PoolTest, CustomRuleCanKeepTicketsApart) {
  RecordingListener listener;
  QueueRules rules = Rated(2, 1, 1, 1000, 0);
  rules.custom_rule = Crossplay({{"allow_mixed", "false"}});
  Pool pool(rules, &listener);
  ASSERT_TRUE(pool.Add(WithInput(Ticket(1, 1500, kT0), *rules.custom_rule, {"mouse"})).ok());
  ASSERT_TRUE(pool.Add(WithInput(Ticket(2, 1500, kT0), *rules.custom_rule, {"controller"})).ok());
  pool.Process(kT0 + absl::Hours(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  ASSERT_TRUE(pool.Add(WithInput(Ticket(3, 1900, kT0), *rules.custom_rule, {"mouse"})).ok());
  pool.Process(kT0 + absl::Hours(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ::testing::UnorderedElementsAre(1, 3));
}

TEST(PoolTest, OldestAnchorPicksItsNearestPartnerFirst) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 1000, 0), &listener);
  // All pairs are acceptable. 10, if processed first, would take 20 (90
  // away, against 100 to 30); but 30 is the oldest (keys are not in age
  // order), takes its nearest (20, 10 away) and 10 waits.
  ASSERT_TRUE(pool.Add(Ticket(10, 1100, kT0 + absl::Seconds(1))).ok());
  ASSERT_TRUE(pool.Add(Ticket(20, 1010, kT0 + absl::Seconds(2))).ok());
  ASSERT_TRUE(pool.Add(Ticket(30, 1000, kT0)).ok());
  pool.Process(kT0 + absl::Seconds(2));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(20, 30));
  EXPECT_TRUE(pool.Contains(10));
}

TEST(PoolTest, GroupGrowsTowardsTheNearerSideThenTheOlder) {
  {
    RecordingListener listener;
    Pool pool(Rated(2, 1, 1, 1000, 0), &listener);
    ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
    ASSERT_TRUE(pool.Add(Ticket(2, 900, kT0 + absl::Seconds(1))).ok());
    ASSERT_TRUE(pool.Add(Ticket(3, 1050, kT0 + absl::Seconds(2))).ok());
    pool.Process(kT0 + absl::Seconds(2));
    ASSERT_EQ(listener.matches.size(), 1u);
    EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 3));
  }
  {
    // Equally near: the older one.
    RecordingListener listener;
    Pool pool(Rated(2, 1, 1, 1000, 0), &listener);
    ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
    ASSERT_TRUE(pool.Add(Ticket(2, 950, kT0 + absl::Seconds(2))).ok());
    ASSERT_TRUE(pool.Add(Ticket(3, 1050, kT0 + absl::Seconds(1))).ok());
    pool.Process(kT0 + absl::Seconds(2));
    ASSERT_EQ(listener.matches.size(), 1u);
    EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 3));
  }
  {
    // Four of five around 1000: the closest three join the anchor.
    RecordingListener listener;
    Pool pool(Rated(4, 1, 1, 1000, 0), &listener);
    ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
    ASSERT_TRUE(pool.Add(Ticket(2, 1030, kT0 + absl::Seconds(1))).ok());
    ASSERT_TRUE(pool.Add(Ticket(3, 960, kT0 + absl::Seconds(1))).ok());
    ASSERT_TRUE(pool.Add(Ticket(4, 1041, kT0 + absl::Seconds(1))).ok());
    ASSERT_TRUE(pool.Add(Ticket(5, 980, kT0 + absl::Seconds(1))).ok());
    pool.Process(kT0 + absl::Seconds(1));
    ASSERT_EQ(listener.matches.size(), 1u);
    EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 2, 3, 5));
    EXPECT_EQ(listener.matches[0].rating_spread, 70);
  }
}

TEST(PoolTest, NewcomerLetsAnOlderTicketFormItsBestGroup) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 150, 0), &listener);
  // 200 apart: never acceptable, so neither has a retry pending.
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1200, kT0 + absl::Seconds(1))).ok());
  pool.Process(kT0 + absl::Seconds(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
  // 3 is nearest to 2 (70), but 1 (older, 130 away) is re-evaluated first.
  ASSERT_TRUE(pool.Add(Ticket(3, 1130, kT0 + absl::Seconds(2))).ok());
  pool.Process(kT0 + absl::Seconds(2));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 3));
}

// A newcomer re-evaluates every anchor whose group could now take it: in a
// solo queue without regions, the need - 1 tickets on each side. Here (2v2,
// ratings A 0, B 25, C 60, X 90, F 110, window 100) no group is acceptable
// until X comes; then A's group {A, B, C, X} is, and so is C's {B, C, X, F}.
// A is three tickets below X and the oldest, so it is evaluated first and
// takes its group; had the re-evaluation stopped two tickets away, C would
// have taken {B, C, X, F} first.
TEST(PoolTest, NewcomerReEvaluatesAnAnchorNeedMinusOneTicketsAway) {
  RecordingListener listener;
  Pool pool(Rated(2, 2, 1, 100, 0), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());                     // A
  ASSERT_TRUE(pool.Add(Ticket(3, 1060, kT0 + absl::Seconds(1))).ok());  // C
  ASSERT_TRUE(pool.Add(Ticket(2, 1025, kT0 + absl::Seconds(2))).ok());  // B
  ASSERT_TRUE(pool.Add(Ticket(5, 1110, kT0 + absl::Seconds(3))).ok());  // F
  pool.Process(kT0 + absl::Seconds(3));
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
  ASSERT_TRUE(pool.Add(Ticket(4, 1090, kT0 + absl::Seconds(4))).ok());  // X
  pool.Process(kT0 + absl::Seconds(4));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(1, 2, 3, 4));
}

TEST(PoolTest, FiveVersusFiveKeepsPartiesTogether) {
  RecordingListener listener;
  Pool pool(Rated(2, 5, 5, 1000, 0), &listener);
  const std::map<TicketKey, int> party = {{1, 3}, {2, 2}, {3, 2}, {4, 1}, {5, 1}, {6, 1}};
  for (const auto& [key, size] : party) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1000 + 10 * key, kT0, size)).ok());
  }
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  ASSERT_EQ(match.teams.size(), 2u);
  for (const auto& team : match.teams) {
    int players = 0;
    for (TicketKey key : team) players += party.at(key);
    EXPECT_EQ(players, 5);
  }
  EXPECT_THAT(AllKeys(match), ElementsAre(1, 2, 3, 4, 5, 6));
  // Inside a team: larger parties first, then by key.
  for (const auto& team : match.teams) {
    for (size_t i = 1; i < team.size(); ++i) {
      const auto prev = std::make_pair(-party.at(team[i - 1]), team[i - 1]);
      const auto cur = std::make_pair(-party.at(team[i]), team[i]);
      EXPECT_LT(prev, cur);
    }
  }
}

TEST(PoolTest, UnpackablePartiesWaitUntilTheRightTicketArrives) {
  RecordingListener listener;
  Pool pool(Rated(2, 5, 5, 1000, 0), &listener);
  // 10 players, but no team of 5 holds two 3-stacks.
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0, 3)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1010, kT0, 3)).ok());
  ASSERT_TRUE(pool.Add(Ticket(3, 1020, kT0, 3)).ok());
  ASSERT_TRUE(pool.Add(Ticket(4, 1030, kT0, 1)).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  Explanation explanation = pool.Explain(1, kT0);
  EXPECT_EQ(explanation.blocker, Blocker::kTeamPacking);
  EXPECT_EQ(explanation.players_waiting, 10);
  EXPECT_EQ(explanation.players_needed, 10);
  // No retry until something changes.
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());

  // No single ticket completes {3,3,3,1}; a 2-stack and then a solo do:
  // (3,2) against (3,1,1).
  ASSERT_TRUE(pool.Add(Ticket(5, 1040, kT0, 2)).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_EQ(pool.Explain(5, kT0).blocker, Blocker::kTeamPacking);
  ASSERT_TRUE(pool.Add(Ticket(6, 1050, kT0, 1)).ok());
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const std::vector<TicketKey> keys = AllKeys(listener.matches[0]);
  ASSERT_EQ(keys.size(), 5u);
  EXPECT_THAT(std::vector<TicketKey>(keys.begin() + 2, keys.end()), ElementsAre(4, 5, 6));
  EXPECT_EQ(pool.tickets_waiting(), 1u);
}

// The smallest team gap over every split of `ratings` (solo players) into
// two teams of equal size.
double BruteForceGap(const std::vector<double>& ratings) {
  const int n = static_cast<int>(ratings.size());
  double best = std::numeric_limits<double>::infinity();
  for (int mask = 0; mask < (1 << n); ++mask) {
    if (__builtin_popcount(mask) != n / 2 || !(mask & 1)) continue;
    double a = 0;
    double b = 0;
    for (int i = 0; i < n; ++i) ((mask >> i) & 1 ? a : b) += ratings[i];
    best = std::min(best, std::abs(a - b) / (n / 2));
  }
  return best;
}

TEST(PoolTest, TeamSplitIsOptimalForSmallGroups) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> rating(1000, 2000);
  for (int round = 0; round < 20; ++round) {
    RecordingListener listener;
    Pool pool(Rated(2, 5, 1, 10000, 0), &listener);
    std::vector<double> ratings;
    std::map<TicketKey, double> by_key;
    for (TicketKey key = 1; key <= 10; ++key) {
      ratings.push_back(std::round(rating(rng)));
      by_key[key] = ratings.back();
      ASSERT_TRUE(pool.Add(Ticket(key, ratings.back(), kT0)).ok());
    }
    pool.Process(kT0);
    ASSERT_EQ(listener.matches.size(), 1u);
    const FormedMatch& match = listener.matches[0];
    // 126 splits (the first player on the first team).
    EXPECT_NEAR(match.team_gap, BruteForceGap(ratings), 1e-9) << round;
    // And the reported gap is the one of the reported teams.
    ASSERT_EQ(match.teams.size(), 2u);
    double sums[2] = {0, 0};
    for (int t = 0; t < 2; ++t) {
      ASSERT_EQ(match.teams[t].size(), 5u);
      for (TicketKey key : match.teams[t]) sums[t] += by_key[key];
    }
    EXPECT_NEAR(match.team_gap, std::abs(sums[0] - sums[1]) / 5, 1e-9);
  }
}

TEST(PoolTest, TeamSplitWithPartiesIsOptimal) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> rating(1000, 2000);
  for (int round = 0; round < 20; ++round) {
    RecordingListener listener;
    Pool pool(Rated(2, 6, 3, 10000, 0), &listener);
    std::vector<std::pair<int, double>> tickets;  // party size, rating
    int players = 0;
    while (players < 12) {
      const int size = std::min(12 - players, std::uniform_int_distribution<int>(1, 3)(rng));
      tickets.push_back({size, std::round(rating(rng))});
      players += size;
    }
    for (size_t i = 0; i < tickets.size(); ++i) {
      ASSERT_TRUE(pool.Add(Ticket(i, tickets[i].second, kT0, tickets[i].first)).ok());
    }
    pool.Process(kT0);
    if (listener.matches.empty()) continue;  // an unpackable draw
    const int n = static_cast<int>(tickets.size());
    double best = std::numeric_limits<double>::infinity();
    for (int mask = 0; mask < (1 << n); ++mask) {
      int size_a = 0;
      double sum_a = 0;
      double sum_b = 0;
      for (int i = 0; i < n; ++i) {
        const double weighted = tickets[i].first * tickets[i].second;
        if ((mask >> i) & 1) {
          size_a += tickets[i].first;
          sum_a += weighted;
        } else {
          sum_b += weighted;
        }
      }
      if (size_a == 6) best = std::min(best, std::abs(sum_a - sum_b) / 6);
    }
    ASSERT_EQ(listener.matches.size(), 1u);
    EXPECT_NEAR(listener.matches[0].team_gap, best, 1e-9) << round;
  }
}

TEST(PoolTest, LargeGroupsGetABalancedGreedySplit) {
  RecordingListener listener;
  Pool pool(Rated(2, 10, 1, 10000, 0), &listener);
  for (TicketKey key = 0; key < 20; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1000 + 10 * key, kT0)).ok());
  }
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  ASSERT_EQ(match.teams.size(), 2u);
  EXPECT_EQ(match.teams[0].size(), 10u);
  EXPECT_EQ(match.teams[1].size(), 10u);
  // Sums 10 apart at most: one rating step, spread over ten players.
  EXPECT_LE(match.team_gap, 1.0);
}

TEST(PoolTest, GreedySplitFallsBackToAFeasiblePacking) {
  RecordingListener listener;
  Pool pool(Rated(2, 16, 3, 10000, 0), &listener);
  // Six 3-stacks and seven 2-stacks: filling the lower team first strands a
  // 2-stack, yet (3,3,3,3,2,2) against (3,3,2,2,2,2,2) exists.
  std::map<TicketKey, int> party;
  for (TicketKey key = 0; key < 13; ++key) {
    party[key] = key < 6 ? 3 : 2;
    ASSERT_TRUE(pool.Add(Ticket(key, 1000, kT0, party[key])).ok());
  }
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  ASSERT_EQ(match.teams.size(), 2u);
  for (const auto& team : match.teams) {
    int players = 0;
    for (TicketKey key : team) players += party.at(key);
    EXPECT_EQ(players, 16);
  }
  EXPECT_EQ(AllKeys(match).size(), 13u);
  EXPECT_EQ(match.team_gap, 0);
}

TEST(PoolTest, UnratedFillsOldestFirst) {
  RecordingListener listener;
  Pool pool(Unrated(2, 2, 2), &listener);
  // Added newest first so that insertion order does not pass for age order.
  ASSERT_TRUE(pool.Add(Ticket(5, 0, kT0 + absl::Seconds(5), 2)).ok());
  ASSERT_TRUE(pool.Add(Ticket(4, 0, kT0 + absl::Seconds(4))).ok());
  ASSERT_TRUE(pool.Add(Ticket(3, 0, kT0 + absl::Seconds(3))).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 0, kT0 + absl::Seconds(2))).ok());
  ASSERT_TRUE(pool.Add(Ticket(1, 0, kT0 + absl::Seconds(1), 2)).ok());
  pool.Process(kT0 + absl::Seconds(5));
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  EXPECT_THAT(Normalized(match), ElementsAre(ElementsAre(1), ElementsAre(2, 3)));
  EXPECT_EQ(match.rating_spread, 0);
  EXPECT_EQ(match.team_gap, 0);
  EXPECT_EQ(match.mean_wait, absl::Seconds(3));  // 4s, 3s, 2s
  EXPECT_TRUE(pool.Contains(4));
  EXPECT_TRUE(pool.Contains(5));
  EXPECT_EQ(pool.Explain(4, kT0 + absl::Seconds(5)).blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(pool.Explain(4, kT0 + absl::Seconds(5)).window, 0);
}

TEST(PoolTest, FreeForAllOfEight) {
  RecordingListener listener;
  Pool pool(Rated(8, 1, 1, 100, 0), &listener);
  for (TicketKey key = 1; key <= 8; ++key) {
    ASSERT_TRUE(pool.Add(Ticket(key, 1000 + 10 * key, kT0)).ok());
  }
  ASSERT_TRUE(pool.Add(Ticket(9, 2000, kT0)).ok());
  pool.Process(kT0);
  ASSERT_EQ(listener.matches.size(), 1u);
  const FormedMatch& match = listener.matches[0];
  ASSERT_EQ(match.teams.size(), 8u);
  for (const auto& team : match.teams) EXPECT_EQ(team.size(), 1u);
  EXPECT_THAT(AllKeys(match), ElementsAre(1, 2, 3, 4, 5, 6, 7, 8));
  EXPECT_EQ(match.rating_spread, 70);
  EXPECT_EQ(match.team_gap, 70);
  EXPECT_TRUE(pool.Contains(9));
}

TEST(PoolTest, ExpiresAtExpiryAndNotBefore) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  const absl::Time expiry = kT0 + absl::Seconds(10);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0, 1, expiry)).ok());
  pool.Process(kT0);
  EXPECT_EQ(pool.NextWakeup(), expiry);
  pool.Process(expiry - absl::Nanoseconds(1));
  EXPECT_THAT(listener.expired, IsEmpty());
  EXPECT_TRUE(pool.Contains(1));
  pool.Process(expiry);
  EXPECT_THAT(listener.expired, ElementsAre(1));
  EXPECT_FALSE(pool.Contains(1));
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
}

TEST(PoolTest, ExpiredTicketIsNeverMatched) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  // They would match at 5s; 1 expires at 4s.
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0, 1, kT0 + absl::Seconds(4))).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1150, kT0, 1, kT0 + absl::Seconds(60))).ok());
  ASSERT_TRUE(pool.Add(Ticket(3, 1300, kT0, 1, kT0 + absl::Seconds(60))).ok());
  pool.Process(kT0);
  EXPECT_EQ(pool.NextWakeup(), kT0 + absl::Seconds(4));
  // Explain, like Process, leaves out what expires by `now`.
  const Explanation explanation = pool.Explain(2, kT0 + absl::Seconds(6));
  EXPECT_EQ(explanation.players_waiting, 2);
  EXPECT_EQ(explanation.blocker, Blocker::kNone);
  // A late Process: 1 expires first although its group is acceptable by
  // now, and 2 and 3 match without it.
  pool.Process(kT0 + absl::Seconds(6));
  EXPECT_THAT(listener.expired, ElementsAre(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(2, 3));
}

TEST(PoolTest, WithdrawnTicketLeavesAndTheOthersKeepTheirPlace) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 0), &listener);
  listener.gone.insert(1);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1010, kT0)).ok());
  pool.Process(kT0);
  EXPECT_THAT(listener.withdrawn, ElementsAre(1));
  EXPECT_THAT(listener.matches, IsEmpty());
  EXPECT_FALSE(pool.Contains(1));
  EXPECT_TRUE(pool.Contains(2));

  const absl::Time later = kT0 + absl::Seconds(7);
  EXPECT_EQ(pool.Explain(2, later).waited, absl::Seconds(7));
  ASSERT_TRUE(pool.Add(Ticket(3, 1020, later)).ok());
  pool.Process(later);
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(2, 3));
  EXPECT_EQ(listener.matches[0].mean_wait, absl::Milliseconds(3500));
}

TEST(PoolTest, AfterAWithdrawalTheRestMatchInTheSameProcess) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 0), &listener);
  listener.gone.insert(1);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1010, kT0 + absl::Seconds(1))).ok());
  ASSERT_TRUE(pool.Add(Ticket(3, 1050, kT0 + absl::Seconds(2))).ok());
  pool.Process(kT0 + absl::Seconds(2));
  EXPECT_THAT(listener.withdrawn, ElementsAre(1));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(2, 3));
  EXPECT_EQ(pool.tickets_waiting(), 0u);
}

TEST(PoolTest, RemovedTicketIsNeverMatched) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  ASSERT_TRUE(pool.Add(Ticket(2, 1010, kT0)).ok());
  EXPECT_TRUE(pool.Remove(1));
  EXPECT_FALSE(pool.Remove(1));
  EXPECT_FALSE(pool.Contains(1));
  pool.Process(kT0);
  EXPECT_THAT(listener.matches, IsEmpty());

  // A removed ticket's pending retry is dropped too.
  ASSERT_TRUE(pool.Add(Ticket(3, 1500, kT0)).ok());
  pool.Process(kT0);
  EXPECT_EQ(pool.NextWakeup(), kT0 + absl::Seconds(39));  // 490 = 100 + 39*10
  EXPECT_TRUE(pool.Remove(3));
  pool.Process(kT0 + absl::Seconds(60));
  EXPECT_THAT(listener.matches, IsEmpty());

  ASSERT_TRUE(pool.Add(Ticket(4, 1020, kT0 + absl::Seconds(60))).ok());
  pool.Process(kT0 + absl::Seconds(60));
  ASSERT_EQ(listener.matches.size(), 1u);
  EXPECT_THAT(AllKeys(listener.matches[0]), ElementsAre(2, 4));
}

TEST(PoolTest, ExplainBlockers) {
  RecordingListener listener;
  Pool pool(Rated(2, 1, 1, 100, 10, 300), &listener);
  ASSERT_TRUE(pool.Add(Ticket(1, 1000, kT0)).ok());
  Explanation explanation = pool.Explain(1, kT0 + absl::Seconds(3));
  EXPECT_EQ(explanation.blocker, Blocker::kNotEnoughPlayers);
  EXPECT_EQ(explanation.players_waiting, 1);
  EXPECT_EQ(explanation.players_needed, 2);
  EXPECT_EQ(explanation.window, 130);
  EXPECT_EQ(explanation.acceptable_at, std::nullopt);

  ASSERT_TRUE(pool.Add(Ticket(2, 1200, kT0 + absl::Seconds(2))).ok());
  explanation = pool.Explain(1, kT0 + absl::Seconds(3));
  EXPECT_EQ(explanation.blocker, Blocker::kRatingSpread);
  EXPECT_EQ(explanation.best_spread, 200);
  // Mean wait 10s: 11s and 9s.
  EXPECT_EQ(explanation.acceptable_at, kT0 + absl::Seconds(11));
  EXPECT_EQ(pool.Explain(1, kT0 + absl::Seconds(11)).blocker, Blocker::kNone);

  // Beyond max_window: never acceptable.
  ASSERT_TRUE(pool.Remove(2));
  ASSERT_TRUE(pool.Add(Ticket(3, 1400, kT0)).ok());
  explanation = pool.Explain(1, kT0 + absl::Seconds(1000));
  EXPECT_EQ(explanation.blocker, Blocker::kRatingSpread);
  EXPECT_EQ(explanation.best_spread, 400);
  EXPECT_EQ(explanation.acceptable_at, std::nullopt);
  pool.Process(kT0);
  EXPECT_EQ(pool.NextWakeup(), absl::InfiniteFuture());
}

// A random workload against one set of rules, checking every callback.
class Simulation : public PoolListener {
 public:
  Simulation(QueueRules rules, uint32_t seed) : rules_(rules), pool_(rules, this), rng_(seed) {}

  bool StillWaiting(TicketKey key) override {
    EXPECT_TRUE(pool_.Contains(key)) << key;
    return !gone_.count(key);
  }
  void OnMatched(const FormedMatch& match) override {
    EXPECT_EQ(match.formed_at, now_);
    // A full match, or a partial lobby: fewer teams of one, or equal teams.
    const bool fewer_teams = rules_.team_size == 1 && rules_.min_players > 0;
    if (!fewer_teams) {
      EXPECT_EQ(static_cast<int>(match.teams.size()), rules_.team_count);
    }
    EXPECT_LE(static_cast<int>(match.teams.size()), rules_.team_count);
    int team_players = -1;
    double lo = std::numeric_limits<double>::infinity();
    double hi = -lo;
    absl::Duration sum_wait;
    int tickets = 0;
    for (const auto& team : match.teams) {
      int players = 0;
      for (TicketKey key : team) {
        EXPECT_TRUE(waiting_.count(key)) << "not waiting: " << key;
        EXPECT_FALSE(gone_.count(key)) << "gone: " << key;
        EXPECT_FALSE(pool_.Contains(key)) << "still in the pool: " << key;
        const TicketSpec& spec = specs_.at(key);
        players += spec.party_size;
        lo = std::min(lo, spec.rating);
        hi = std::max(hi, spec.rating);
        sum_wait += now_ - spec.enqueued_at;
        ++tickets;
        waiting_.erase(key);
        EXPECT_TRUE(matched_.insert(key).second) << "matched twice: " << key;
      }
      if (rules_.min_players == 0) {
        EXPECT_EQ(players, rules_.team_size);
      }
      if (team_players >= 0) {
        EXPECT_EQ(players, team_players);
      }
      team_players = players;
    }
    EXPECT_GE(team_players * static_cast<int>(match.teams.size()),
              rules_.min_players > 0 ? rules_.min_players : rules_.players_per_match());
    EXPECT_EQ(match.mean_wait, sum_wait / tickets);
    // One partition; with regions, every member within the limit there.
    const uint64_t partition = specs_.at(match.teams[0][0]).partition;
    double worst = 0;
    for (const auto& team : match.teams) {
      for (TicketKey key : team) {
        const TicketSpec& spec = specs_.at(key);
        EXPECT_EQ(spec.partition, partition) << key;
        if (rules_.region_count > 0) {
          EXPECT_GE(match.region, 0);
          EXPECT_LT(match.region, rules_.region_count);
          worst = std::max<double>(worst, spec.latency_ms[match.region]);
        }
      }
    }
    if (rules_.region_count > 0) {
      EXPECT_EQ(match.max_latency_ms, worst);
      EXPECT_LE(worst, rules_.LatencyLimitAt(match.mean_wait));
    } else {
      EXPECT_EQ(match.region, -1);
    }
    if (rules_.rated) {
      EXPECT_EQ(match.rating_spread, hi - lo);
      // The group's initial window is its members' mean (QueueRules::wait_cost).
      QueueRules group_rules = rules_;
      double initial_sum = 0;
      for (const auto& team : match.teams) {
        for (TicketKey key : team) initial_sum += initial_.at(key);
      }
      group_rules.initial_window = initial_sum / tickets;
      EXPECT_LE(match.rating_spread, group_rules.WindowAt(match.mean_wait) + 1e-9);
      if (rules_.max_window != 0) {
        EXPECT_LE(match.rating_spread, rules_.max_window);
      }
      EXPECT_GE(match.team_gap, 0);
    } else {
      EXPECT_EQ(match.rating_spread, 0);
      EXPECT_EQ(match.team_gap, 0);
    }
    log_.push_back(match);
  }
  void OnExpired(TicketKey key) override {
    EXPECT_TRUE(waiting_.erase(key)) << key;
    EXPECT_LE(specs_.at(key).expires_at, now_);
    ++expired_;
  }
  void OnWithdrawn(TicketKey key) override {
    EXPECT_TRUE(waiting_.erase(key)) << key;
    EXPECT_TRUE(gone_.count(key)) << key;
    ++withdrawn_;
  }

  void Run(int ticket_count) {
    std::normal_distribution<double> rating(1500, 300);
    std::uniform_int_distribution<int> party(1, rules_.max_party_size);
    std::uniform_int_distribution<int> percent(0, 99);
    now_ = kT0;
    TicketKey next_key = 1;
    while (next_key <= static_cast<TicketKey>(ticket_count)) {
      const int action = percent(rng_);
      if (action < 50) {
        TicketSpec spec = Ticket(next_key++, std::round(rating(rng_)), now_);
        // Mostly solo players, like real queues.
        if (percent(rng_) < 30) spec.party_size = party(rng_);
        // Queues with regions also get two partitions, and each ticket a
        // latency to some of three regions (at least one).
        if (rules_.region_count > 0) {
          spec.partition = percent(rng_) < 70 ? 1 : 2;
          for (int r = 0; r < rules_.region_count; ++r) {
            if (r == 0 || percent(rng_) < 60) {
              spec.latency_ms[(r + next_key) % rules_.region_count] =
                  static_cast<uint16_t>(std::uniform_int_distribution<int>(10, 200)(rng_));
            }
          }
        }
        spec.expires_at =
            now_ + absl::Milliseconds(std::uniform_int_distribution<int>(1000, 120000)(rng_));
        ASSERT_TRUE(pool_.Add(spec).ok());
        specs_[spec.key] = spec;
        initial_[spec.key] = pool_.Explain(spec.key, now_).initial_window;
        if (rules_.rated && rules_.wait_cost == 0) {
          EXPECT_EQ(initial_[spec.key], rules_.initial_window);
        }
        if (rules_.wait_cost > 0) {
          EXPECT_GE(initial_[spec.key], rules_.initial_window);
          if (rules_.max_window != 0) {
            EXPECT_LE(initial_[spec.key], rules_.max_window);
          }
          if (initial_[spec.key] > rules_.initial_window) ++widened_;
        }
        waiting_.insert(spec.key);
        if (percent(rng_) < 5) gone_.insert(spec.key);
      } else if (action < 55 && !waiting_.empty()) {
        auto it = waiting_.begin();
        std::advance(it, std::uniform_int_distribution<size_t>(0, waiting_.size() - 1)(rng_));
        const TicketKey key = *it;
        waiting_.erase(it);
        removed_.insert(key);
        ASSERT_TRUE(pool_.Remove(key));
        ASSERT_FALSE(pool_.Contains(key));
      } else if (action < 80) {
        now_ += absl::Milliseconds(std::uniform_int_distribution<int>(0, 3000)(rng_));
        Step();
      } else if (action < 90) {
        // Jump to the pool's own wakeup when it is soon.
        const absl::Time wakeup = pool_.NextWakeup();
        if (wakeup > now_ && wakeup < now_ + absl::Seconds(30)) now_ = wakeup;
        Step();
      } else {
        Step();
      }
    }
    now_ += absl::Seconds(1000);
    Step();
    EXPECT_EQ(pool_.tickets_waiting(), 0u);
    EXPECT_TRUE(waiting_.empty());
    for (TicketKey key : removed_) EXPECT_FALSE(matched_.count(key)) << key;
    EXPECT_GT(matched_.size(), static_cast<size_t>(ticket_count) / 4);
    EXPECT_GT(withdrawn_, 0);
    EXPECT_GT(expired_, 0);
    // With wait_cost, the arrival rate set the windows of most tickets.
    if (rules_.wait_cost > 0) {
      EXPECT_GT(widened_, ticket_count / 2);
    }
  }

  const std::vector<FormedMatch>& log() const { return log_; }

 private:
  void Step() {
    pool_.Process(now_);
    // Everything due by now has happened.
    EXPECT_GT(pool_.NextWakeup(), now_);
    EXPECT_EQ(pool_.tickets_waiting(), waiting_.size());
    int players = 0;
    for (TicketKey key : waiting_) {
      EXPECT_TRUE(pool_.Contains(key)) << key;
      EXPECT_GT(specs_.at(key).expires_at, now_) << key;
      players += specs_.at(key).party_size;
    }
    EXPECT_EQ(pool_.players_waiting(), players);
    // Nothing that Process could match now is left over, and no waiting
    // group becomes acceptable before the pool's wakeup. Unrated pools only
    // re-evaluate the oldest ticket of each party size when the pool
    // changes, so only those are sure to be matched when they can be.
    const absl::Time wakeup = pool_.NextWakeup();
    std::set<int> sizes_seen;
    for (TicketKey key : waiting_) {  // keys grow with enqueue times
      const Explanation explanation = pool_.Explain(key, now_);
      const bool watched = rules_.rated || sizes_seen.insert(specs_.at(key).party_size).second;
      if (watched) {
        EXPECT_NE(explanation.blocker, Blocker::kNone) << key;
      }
      EXPECT_EQ(explanation.players_waiting, players);
      if (watched && explanation.acceptable_at.has_value()) {
        EXPECT_GT(*explanation.acceptable_at, now_);
        EXPECT_LE(wakeup, *explanation.acceptable_at) << key;
      }
    }
  }

  const QueueRules rules_;
  Pool pool_;
  std::mt19937 rng_;
  absl::Time now_;
  std::map<TicketKey, TicketSpec> specs_;
  std::map<TicketKey, double> initial_;  // each ticket's initial window
  int widened_ = 0;
  std::set<TicketKey> waiting_;
  std::set<TicketKey> gone_;
  std::set<TicketKey> removed_;
  std::set<TicketKey> matched_;
  std::vector<FormedMatch> log_;
  int expired_ = 0;
  int withdrawn_ = 0;
};

struct SimulationCase {
  std::string name;
  QueueRules rules;
};

class RandomizedTest : public ::testing::TestWithParam<SimulationCase> {};

TEST_P(RandomizedTest, InvariantsHold) {
  Simulation simulation(GetParam().rules, 20240611);
  simulation.Run(3000);
  EXPECT_FALSE(simulation.log().empty());
}

TEST_P(RandomizedTest, SameSeedSameMatches) {
  Simulation first(GetParam().rules, 99);
  first.Run(1500);
  Simulation second(GetParam().rules, 99);
  second.Run(1500);
  ASSERT_EQ(first.log().size(), second.log().size());
  for (size_t i = 0; i < first.log().size(); ++i) {
    const FormedMatch& a = first.log()[i];
    const FormedMatch& b = second.log()[i];
    EXPECT_EQ(a.teams, b.teams) << i;
    EXPECT_EQ(a.formed_at, b.formed_at) << i;
    EXPECT_EQ(a.rating_spread, b.rating_spread) << i;
    EXPECT_EQ(a.team_gap, b.team_gap) << i;
    EXPECT_EQ(a.mean_wait, b.mean_wait) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Queues, RandomizedTest,
    ::testing::Values(
        SimulationCase{"Rated1v1", Rated(2, 1, 1, 50, 5, 400)},
        SimulationCase{"Rated5v5Parties", Rated(2, 5, 5, 100, 10, 600)},
        SimulationCase{"Rated10v10Greedy", Rated(2, 10, 4, 150, 10, 0)},
        SimulationCase{"RatedFourTeamsOfThree", Rated(4, 3, 3, 200, 20, 0)},
        SimulationCase{"RatedFreeForAll8", Rated(8, 1, 1, 200, 20, 0)},
        SimulationCase{"Unrated3x4Parties", Unrated(3, 4, 3)},
        SimulationCase{"Rated5v5RegionsPartitions",
                       WithRegions(Rated(2, 5, 5, 100, 10, 600), 60, 5, 150)},
        SimulationCase{"Rated1v1RegionsPartitions",
                       WithRegions(Rated(2, 1, 1, 50, 5, 400), 40, 10)},
        SimulationCase{"UnratedRegionsPartitions", WithRegions(Unrated(4, 1, 1), 50, 5, 120)},
        SimulationCase{"RatedFreeForAll8Partial",
                       Partial(Rated(8, 1, 1, 200, 20, 0), 4, absl::Seconds(20))},
        SimulationCase{"Rated5v5PartiesPartial",
                       Partial(Rated(2, 5, 5, 100, 10, 600), 6, absl::Seconds(15))},
        SimulationCase{"Rated1v1WaitCost", WithWaitCost(Rated(2, 1, 1, 5, 2, 400), 200)},
        SimulationCase{
            "Rated1v1WaitCostWidenTime",
            WithWidenTime(WithWaitCost(Rated(2, 1, 1, 0, 0.5, 400), 200), absl::Seconds(4))},
        SimulationCase{"Rated5v5PartiesWaitCostRegions",
                       WithRegions(WithWaitCost(Rated(2, 5, 5, 20, 10, 600), 2000), 60, 5, 150)}),
    [](const ::testing::TestParamInfo<SimulationCase>& info) { return info.param.name; });

}  // namespace
}  // namespace matchd::matcher
