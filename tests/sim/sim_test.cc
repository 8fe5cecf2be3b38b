// Tests of matchsim's engine: the workload generator, the simulation driver
// around the production Pool, and the metrics.
#include <cmath>
#include <set>
#include <vector>

#include "bench/sim/simulate.h"
#include "bench/sim/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace matchd::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

SimTicket Solo(uint64_t key, double arrival_s, double rating,
               double abandon_s = std::numeric_limits<double>::infinity()) {
  SimTicket t;
  t.key = key;
  t.arrival_s = arrival_s;
  t.abandon_s = abandon_s;
  t.member_ratings = {rating};
  t.rating = rating;
  return t;
}

AlgorithmSpec OneVersusOne(double initial_window, double widen) {
  AlgorithmSpec spec;
  spec.name = "test";
  spec.rules.team_count = 2;
  spec.rules.team_size = 1;
  spec.rules.rated = true;
  spec.rules.initial_window = initial_window;
  spec.rules.widen_per_second = widen;
  spec.rules.max_wait = absl::Seconds(600);
  return spec;
}

TEST(WorkloadTest, SameSeedSameStreamAndOtherSeedsDiffer) {
  WorkloadOptions options;
  options.rate = 5;
  options.duration_s = 200;
  options.party_mix = {65, 20, 5, 3, 7};
  options.regions = {"eu", "us"};
  options.abandon_mean_s = 30;
  auto a = GenerateWorkload(options);
  auto b = GenerateWorkload(options);
  options.seed = 2;
  auto c = GenerateWorkload(options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].arrival_s, (*b)[i].arrival_s);
    EXPECT_EQ((*a)[i].member_ratings, (*b)[i].member_ratings);
    EXPECT_EQ((*a)[i].latency_ms, (*b)[i].latency_ms);
    EXPECT_EQ((*a)[i].abandon_s, (*b)[i].abandon_s);
  }
  EXPECT_FALSE(a->size() == c->size() && (*a)[0].arrival_s == (*c)[0].arrival_s);
}

TEST(WorkloadTest, TicketsAreOrderedAndWellFormed) {
  WorkloadOptions options;
  options.rate = 20;
  options.duration_s = 100;
  options.party_mix = {0, 0, 1};  // only parties of three
  options.party_rating_radius = 50;
  options.regions = {"a", "b", "c"};
  auto stream = GenerateWorkload(options);
  ASSERT_TRUE(stream.ok());
  ASSERT_FALSE(stream->empty());
  double last = 0;
  for (size_t i = 0; i < stream->size(); ++i) {
    const SimTicket& t = (*stream)[i];
    EXPECT_EQ(t.key, i + 1);
    EXPECT_GE(t.arrival_s, last);
    EXPECT_LT(t.arrival_s, 100);
    last = t.arrival_s;
    ASSERT_EQ(t.party_size(), 3);
    const double mean = (t.member_ratings[0] + t.member_ratings[1] + t.member_ratings[2]) / 3;
    EXPECT_NEAR(t.rating, mean, 1e-9);
    for (double r : t.member_ratings) EXPECT_LE(std::abs(r - mean), 100);
    ASSERT_EQ(t.latency_ms.size(), 3u);
    for (double ms : t.latency_ms) EXPECT_GE(ms, 1);
    EXPECT_TRUE(std::isinf(t.abandon_s));
  }
}

TEST(WorkloadTest, DailyCurveShapesTheRate) {
  WorkloadOptions options;
  options.rate = 50;
  options.duration_s = 1000;
  options.daily_amplitude = 0.9;
  options.daily_period_s = 1000;
  auto stream = GenerateWorkload(options);
  ASSERT_TRUE(stream.ok());
  // The first half of the period runs at up to 1.9x the rate, the second at
  // down to 0.1x: the halves' counts are about 1.57 : 0.43.
  int first = 0, second = 0;
  for (const SimTicket& t : *stream) (t.arrival_s < 500 ? first : second)++;
  EXPECT_GT(first, 2 * second);
}

TEST(WorkloadTest, ResamplesGivenRatings) {
  WorkloadOptions options;
  options.ratings = {1000, 2000};
  options.duration_s = 50;
  auto stream = GenerateWorkload(options);
  ASSERT_TRUE(stream.ok());
  std::set<double> seen;
  for (const SimTicket& t : *stream) seen.insert(t.rating);
  EXPECT_EQ(seen, (std::set<double>{1000, 2000}));
}

TEST(WorkloadTest, RejectsBadOptions) {
  WorkloadOptions options;
  options.rate = 0;
  EXPECT_THAT(GenerateWorkload(options).status().message(), HasSubstr("rate"));
  options.rate = 1;
  options.daily_amplitude = 1;
  EXPECT_THAT(GenerateWorkload(options).status().message(), HasSubstr("daily_amplitude"));
  options.daily_amplitude = 0;
  options.party_mix = {0, 0};
  EXPECT_THAT(GenerateWorkload(options).status().message(), HasSubstr("party_mix"));
  options.party_mix = {1};
  options.regions = {"a"};
  options.region_weights = {1, 2};
  EXPECT_THAT(GenerateWorkload(options).status().message(), HasSubstr("region_weights"));
}

TEST(RatingsTest, ParsesLinesAndCsv) {
  EXPECT_THAT(*ParseRatings("1500\n# comment\n\n1600.5\n", ""), ElementsAre(1500, 1600.5));
  EXPECT_THAT(*ParseRatings("player,elo\nalice,1500\nbob,1700\n", "elo"), ElementsAre(1500, 1700));
  EXPECT_THAT(*ParseRatings("id,rating\n7,1500\n8,1700\n", "1"), ElementsAre(1500, 1700));
  // No column given: the first field that is a number, header skipped.
  EXPECT_THAT(*ParseRatings("name,elo\nalice,1500\n", ""), ElementsAre(1500));
}

TEST(RatingsTest, NamesTheProblem) {
  EXPECT_THAT(ParseRatings("1500\nabc\n", "").status().message(), HasSubstr("line 2"));
  EXPECT_THAT(ParseRatings("a,b\n1,2\n", "elo").status().message(), HasSubstr("no column"));
  EXPECT_THAT(ParseRatings("# only a comment\n", "").status().message(), HasSubstr("no ratings"));
  EXPECT_EQ(LoadRatings("/nonexistent/ratings.txt", "").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SimulateTest, MeanWaitAndBothWindowsMatchWhenTheRuleSays) {
  // 100 apart, window 10/s from 0: the mean wait reaches 10 s at 10.5 s; the
  // newcomer's own wait at 11 s.
  const std::vector<SimTicket> stream = {Solo(1, 0, 1000), Solo(2, 1, 1100)};
  AlgorithmSpec mean = OneVersusOne(0, 10);
  SimResult a = Simulate(stream, mean);
  ASSERT_EQ(a.matches.size(), 1u);
  EXPECT_DOUBLE_EQ(a.matches[0].formed_s, 10.5);
  EXPECT_THAT(a.outcome, ElementsAre(Outcome::kMatched, Outcome::kMatched));

  AlgorithmSpec both = mean;
  both.rules.wait_basis = matcher::QueueRules::WaitBasis::kYoungestWait;
  SimResult b = Simulate(stream, both);
  ASSERT_EQ(b.matches.size(), 1u);
  EXPECT_DOUBLE_EQ(b.matches[0].formed_s, 11);
}

TEST(SimulateTest, AbandonedTicketIsNotMatched) {
  const std::vector<SimTicket> stream = {Solo(1, 0, 1000, /*abandon_s=*/5), Solo(2, 1, 1100),
                                         Solo(3, 20, 1100)};
  SimResult r = Simulate(stream, OneVersusOne(0, 10));
  EXPECT_THAT(r.outcome, ElementsAre(Outcome::kAbandoned, Outcome::kMatched, Outcome::kMatched));
  EXPECT_EQ(r.done_s[0], 5);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].formed_s, 20);  // 2 and 3 have equal ratings
}

TEST(SimulateTest, ExpiredTicketLeavesAtMaxWait) {
  AlgorithmSpec spec = OneVersusOne(0, 0);
  spec.rules.max_wait = absl::Seconds(30);
  SimResult r = Simulate({Solo(1, 0, 1000), Solo(2, 1, 1500)}, spec);
  EXPECT_THAT(r.outcome, ElementsAre(Outcome::kExpired, Outcome::kExpired));
  EXPECT_EQ(r.done_s[0], 30);
  EXPECT_EQ(r.done_s[1], 31);
}

TEST(SimulateTest, BatchPairsSortedNeighboursAtEachTick) {
  AlgorithmSpec spec = OneVersusOne(0, 0);
  spec.interval_s = 15;
  const std::vector<SimTicket> stream = {Solo(1, 1, 1000), Solo(2, 2, 2000), Solo(3, 3, 1010),
                                         Solo(4, 4, 2020), Solo(5, 16, 1500)};
  SimResult r = Simulate(stream, spec);
  ASSERT_EQ(r.matches.size(), 2u);
  for (const SimMatch& m : r.matches) EXPECT_EQ(m.formed_s, 15);
  std::set<std::set<int>> pairs;
  for (const SimMatch& m : r.matches) pairs.insert({m.teams[0][0], m.teams[1][0]});
  EXPECT_EQ(pairs, (std::set<std::set<int>>{{0, 2}, {1, 3}}));
  EXPECT_EQ(r.outcome[4], Outcome::kExpired);  // alone until its max wait
}

TEST(SimulateTest, MatchesArePlacedAndTheirLatencyMeasured) {
  AlgorithmSpec spec = OneVersusOne(1000, 0);
  spec.rules.region_count = 2;
  spec.rules.max_latency_ms = 60;
  SimTicket a = Solo(1, 0, 1500);
  a.latency_ms = {20, 50};
  SimTicket b = Solo(2, 1, 1500);
  b.latency_ms = {90, 40};
  const std::vector<SimTicket> stream = {a, b};
  SimResult r = Simulate(stream, spec);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].region, 1);  // the only region within 60 ms for both
  const Summary s = Summarize(stream, r, 0, 10);
  EXPECT_DOUBLE_EQ(s.latency_mean, 45);
  EXPECT_DOUBLE_EQ(s.best_region_share, 0.5);  // b's best is region 1, a's is region 0
}

TEST(SimulateTest, SameSeedSameMatches) {
  WorkloadOptions options;
  options.rate = 20;
  options.duration_s = 300;
  options.party_mix = {65, 20, 5, 3, 7};
  options.abandon_mean_s = 60;
  AlgorithmSpec spec;
  spec.rules.team_count = 2;
  spec.rules.team_size = 5;
  spec.rules.max_party_size = 5;
  spec.rules.rated = true;
  spec.rules.widen_per_second = 20;
  auto one = GenerateWorkload(options);
  auto two = GenerateWorkload(options);
  options.seed = 7;
  auto other = GenerateWorkload(options);
  ASSERT_TRUE(one.ok() && two.ok() && other.ok());
  const SimResult a = Simulate(*one, spec);
  const SimResult b = Simulate(*two, spec);
  ASSERT_GT(a.matches.size(), 50u);
  EXPECT_EQ(Fingerprint(a), Fingerprint(b));
  EXPECT_EQ(a.outcome, b.outcome);
  EXPECT_NE(Fingerprint(a), Fingerprint(Simulate(*other, spec)));
}

TEST(SimulateTest, WaitCostShortensWaitsAtTheSameQuality) {
  // 1v1 at 10 players/s: windows from the arrival rate (QueueRules::wait_cost)
  // against a window that only widens with waiting, at about the same mean
  // gap.
  WorkloadOptions options;
  options.rate = 10;
  options.duration_s = 1800;
  auto tickets = GenerateWorkload(options);
  ASSERT_TRUE(tickets.ok());
  const AlgorithmSpec widening = OneVersusOne(5, 4);
  AlgorithmSpec cost = OneVersusOne(0, 1.5);
  cost.rules.wait_cost = 3;
  const Summary a = Summarize(*tickets, Simulate(*tickets, widening), 180, 1620);
  const Summary b = Summarize(*tickets, Simulate(*tickets, cost), 180, 1620);
  // Measured: gap 10.72 -> 10.36, mean wait 2.46 -> 2.28 s, K 267 -> 240.
  EXPECT_LE(b.gap_mean, a.gap_mean);
  EXPECT_LT(b.wait_mean, 0.95 * a.wait_mean);
  EXPECT_LT(b.k, 0.92 * a.k);
}

TEST(SummarizeTest, MeasuresWaitsGapsAndFairness) {
  // Two 1v1 matches: gap 10 (fair) and gap 200 (76 % favourite).
  const std::vector<SimTicket> stream = {Solo(1, 0, 1000), Solo(2, 2, 1010), Solo(3, 4, 1500),
                                         Solo(4, 8, 1700)};
  SimResult r;
  r.outcome.assign(4, Outcome::kMatched);
  r.done_s = {2, 2, 8, 8};
  r.matches = {{2, {{0}, {1}}}, {8, {{2}, {3}}}};
  const Summary s = Summarize(stream, r, 0, 10);
  EXPECT_EQ(s.tickets, 4);
  EXPECT_EQ(s.matches, 2);
  EXPECT_DOUBLE_EQ(s.matched_share, 1);
  EXPECT_DOUBLE_EQ(s.wait_mean, (2 + 0 + 4 + 0) / 4.0);
  EXPECT_DOUBLE_EQ(s.wait_max, 4);
  EXPECT_DOUBLE_EQ(s.gap_mean, 105);
  EXPECT_DOUBLE_EQ(s.spread_mean, 105);
  EXPECT_DOUBLE_EQ(s.fair_share, 0.5);
  EXPECT_DOUBLE_EQ(s.gap_within_5, 0);
  EXPECT_DOUBLE_EQ(s.players_per_s, 0.4);
  EXPECT_DOUBLE_EQ(s.k, 105 * 1.5 * 0.4);
  // Only the tickets that arrived in [3, 10) are measured.
  const Summary late = Summarize(stream, r, 3, 10);
  EXPECT_EQ(late.tickets, 2);
  EXPECT_EQ(late.matches, 1);
  EXPECT_DOUBLE_EQ(late.gap_mean, 200);
}

TEST(SummarizeTest, ExpiredPlayersCountWithTheirWholeWait) {
  // One match after 2 s; ticket 3 expired after 600 s; ticket 4 gave up after 5 s.
  const std::vector<SimTicket> stream = {Solo(1, 0, 1000), Solo(2, 2, 1010), Solo(3, 3, 2900),
                                         Solo(4, 4, 1500)};
  SimResult r;
  r.outcome = {Outcome::kMatched, Outcome::kMatched, Outcome::kExpired, Outcome::kAbandoned};
  r.done_s = {2, 2, 603, 9};
  r.matches = {{2, {{0}, {1}}}};
  const Summary s = Summarize(stream, r, 0, 10);
  EXPECT_DOUBLE_EQ(s.expired_share, 0.25);
  EXPECT_DOUBLE_EQ(s.wait_max, 600);
  EXPECT_DOUBLE_EQ(s.wait_mean, (2 + 0 + 600) / 3.0);
  EXPECT_DOUBLE_EQ(s.wait_p99, 600);
  EXPECT_DOUBLE_EQ(s.wait_p99_top1, 600);  // the highest rated is the expired one
  EXPECT_DOUBLE_EQ(s.gap_mean, 10);
}

TEST(SummarizeTest, TeamMatchesReportSpreadAndSlotDeltas) {
  std::vector<SimTicket> stream;
  const double ratings[] = {1000, 1400, 1100, 1300};
  for (int i = 0; i < 4; ++i) stream.push_back(Solo(i + 1, i, ratings[i]));
  SimResult r;
  r.outcome.assign(4, Outcome::kMatched);
  r.done_s.assign(4, 5);
  r.matches = {{5, {{0, 1}, {2, 3}}}};  // means 1200 and 1200
  const Summary s = Summarize(stream, r, 0, 10);
  EXPECT_DOUBLE_EQ(s.gap_mean, 0);
  EXPECT_DOUBLE_EQ(s.spread_mean, 400);
  // Slots: 1400 vs 1300, 1000 vs 1100.
  EXPECT_DOUBLE_EQ(s.slot_delta_mean, 100);
  EXPECT_DOUBLE_EQ(s.gap_within_5, 1);
  EXPECT_DOUBLE_EQ(s.k, 400 * s.wait_mean * s.players_per_s);
}

}  // namespace
}  // namespace matchd::sim
