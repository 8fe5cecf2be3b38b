// Service tests: a real server on 127.0.0.1 port 0 (manual clock) and real
// gRPC clients. No sleeps: tests wait for events or for a state to show.
#include <gmock/gmock.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <google/protobuf/unknown_field_set.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "service/config.h"
#include "service/events.h"
#include "service/queue_runtime.h"
#include "tests/testing/test_server.h"

namespace matchd::testing {
namespace {

namespace mm = ::matchmaking::v1;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

std::set<std::string> PlayerIds(const mm::Team& team) {
  std::set<std::string> ids;
  for (const auto& p : team.players()) ids.insert(p.id());
  return ids;
}

grpc::Status FindError(mm::Matchmaker::Stub& stub, const std::string& queue,
                       std::vector<mm::Player> players) {
  auto stream = EventStream::Find(stub, queue, std::move(players));
  return stream->Finish();
}

grpc::Status CreateTicket(mm::Matchmaker::Stub& stub, const std::string& queue,
                          std::vector<mm::Player> players, mm::Ticket* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mm::CreateTicketRequest request;
  request.set_queue(queue);
  for (auto& p : players) *request.add_players() = std::move(p);
  return stub.CreateTicket(&ctx, request, out);
}

grpc::Status CancelTicket(mm::Matchmaker::Stub& stub, const std::string& id, mm::Ticket* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mm::CancelTicketRequest request;
  request.set_ticket_id(id);
  return stub.CancelTicket(&ctx, request, out);
}

TEST(ServerTest, DuelPairIsMatchedOnTheirOpenCalls) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  mm::MatchEvent a1 = alice->Expect();
  ASSERT_TRUE(a1.has_queued());
  EXPECT_EQ(a1.seq(), 1u);
  EXPECT_EQ(a1.queued().queue(), "duel");
  EXPECT_EQ(a1.ticket_id().size(), 32u);

  // Bob completes the match on arrival: his first event is `matched` (seq
  // 1), with no `queued` before it.
  auto bob = EventStream::Find(ts.stub(), "duel", {MakePlayer("bob", 1550)});
  mm::MatchEvent b1 = bob->Expect();
  ASSERT_TRUE(b1.has_matched()) << b1.DebugString();
  EXPECT_EQ(b1.seq(), 1u);
  EXPECT_EQ(b1.ticket_id().size(), 32u);
  mm::MatchEvent a2 = alice->Expect();
  ASSERT_TRUE(a2.has_matched());
  EXPECT_EQ(a2.seq(), 2u);
  EXPECT_EQ(a2.ticket_id(), a1.ticket_id());
  const mm::Match& m = a2.matched().match();
  EXPECT_EQ(m.match_id(), b1.matched().match().match_id());
  EXPECT_THAT(m.match_id(), ::testing::MatchesRegex("m-[0-9a-f]{24}"));
  // The queue's index (duel is the first), the ticket's key, 48 random bits.
  EXPECT_THAT(a1.ticket_id(), ::testing::MatchesRegex("0000[0-9a-f]{28}"));
  EXPECT_NE(a1.ticket_id().substr(4, 16), b1.ticket_id().substr(4, 16));
  EXPECT_EQ(m.queue(), "duel");
  ASSERT_EQ(m.teams_size(), 2);
  std::set<std::string> all;
  for (const auto& team : m.teams()) {
    ASSERT_EQ(team.players_size(), 1);
    all.insert(team.players(0).id());
  }
  EXPECT_THAT(all, UnorderedElementsAre("alice", "bob"));
  EXPECT_THAT(m.ticket_ids(), UnorderedElementsAre(a1.ticket_id(), b1.ticket_id()));
  EXPECT_DOUBLE_EQ(m.quality().rating_spread(), 50);
  // Elo: 1550 vs 1500 -> the stronger side wins with 1 / (1 + 10^(-50/400)).
  ASSERT_EQ(m.quality().win_probability_size(), 2);
  const double strong = 1 / (1 + std::pow(10.0, -50.0 / 400));
  const int bob_team = m.teams(0).players(0).id() == "bob" ? 0 : 1;
  EXPECT_NEAR(m.quality().win_probability(bob_team), strong, 1e-9);
  EXPECT_NEAR(m.quality().win_probability(1 - bob_team), 1 - strong, 1e-9);
  EXPECT_TRUE(alice->Finish().ok());
  EXPECT_TRUE(bob->Finish().ok());
  EXPECT_EQ(bob->events().size(), 1u);
  const mm::Ticket alice_ticket = ts.GetTicket(a1.ticket_id());
  EXPECT_EQ(alice_ticket.state(), mm::Ticket::MATCHED);
  ASSERT_EQ(alice_ticket.players_size(), 1);
  EXPECT_EQ(alice_ticket.players(0).id(), "alice");
  EXPECT_EQ(alice_ticket.match().match_id(), m.match_id());
  EXPECT_EQ(ts.GetTicket(b1.ticket_id()).state(), mm::Ticket::MATCHED);
  // Matched players are free to queue again.
  auto again = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  ASSERT_TRUE(again->Expect().has_queued());
}

// The `matched` event is assembled from a per-member header and the match's
// bytes written once: it must parse as the event a client expects, small
// (one-byte lengths) or large (multi-byte lengths).
TEST(EventsTest, MatchedEventBytesParseAsTheWholeEvent) {
  for (int players : {1, 100}) {
    mm::Match match;
    match.set_match_id("m-0123456789abcdef01234567");
    match.set_queue("duel");
    for (int team = 0; team < 2; ++team) {
      mm::Team* t = match.add_teams();
      for (int i = 0; i < players; ++i) *t->add_players() = MakePlayer(absl::StrCat("p", team, i));
      t->set_mean_rating(1500 + team);
    }
    match.mutable_quality()->set_rating_spread(12.5);
    const auto shared = MakeSharedMatch(match);
    const absl::Time at = absl::FromUnixNanos(1'700'000'000'123'456'789);
    grpc::ByteBuffer bytes = MatchedEventBytes("0000abcdef", 3, at, shared);
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(bytes.Dump(&slices).ok());
    std::string wire;
    for (const grpc::Slice& s : slices)
      wire.append(reinterpret_cast<const char*>(s.begin()), s.size());
    mm::MatchEvent event;
    ASSERT_TRUE(event.ParseFromString(wire)) << players;
    EXPECT_EQ(event.ticket_id(), "0000abcdef");
    EXPECT_EQ(event.seq(), 3u);
    EXPECT_EQ(event.time().seconds(), 1'700'000'000);
    EXPECT_EQ(event.time().nanos(), 123'456'789);
    ASSERT_TRUE(event.has_matched());
    EXPECT_EQ(event.matched().match().SerializeAsString(), match.SerializeAsString()) << players;
    // What GetTicket shows of a matched ticket is parsed back from those bytes.
    EXPECT_EQ(shared.Parse().SerializeAsString(), match.SerializeAsString()) << players;
  }
}

TEST(WinProbabilityTest, EloLogisticGeneralisedToManyTeams) {
  const TeamValues even = WinProbabilities({1500, 1500, 1500, 1500});
  for (double p : even) EXPECT_DOUBLE_EQ(p, 0.25);
  // 400 points apart: ten times as likely (Elo's scale).
  const TeamValues two = WinProbabilities({1900, 1500});
  EXPECT_NEAR(two[0], 10.0 / 11, 1e-12);
  EXPECT_NEAR(two[1], 1.0 / 11, 1e-12);
  // Far apart: no overflow, still a distribution.
  const TeamValues far = WinProbabilities({-100000, 100000});
  EXPECT_EQ(far[0], 0);
  EXPECT_EQ(far[1], 1);
}

TEST(ServerTest, SquadWithPartiesKeepsEachPartyOnOneTeam) {
  TestServer ts;
  // Parties of 3, 2, 2, 1, 1, 1: ten players, one match.
  std::vector<std::vector<std::string>> parties = {
      {"p1", "p2", "p3"}, {"q1", "q2"}, {"r1", "r2"}, {"s1"}, {"t1"}, {"u1"}};
  std::vector<std::unique_ptr<EventStream>> streams;
  for (const auto& party : parties) {
    std::vector<mm::Player> players;
    for (const auto& id : party) players.push_back(MakePlayer(id, 1400 + streams.size() * 20));
    streams.push_back(EventStream::Find(ts.stub(), "squad", players));
    // The last party completes the match: its first event is the match.
    if (streams.size() < parties.size()) {
      ASSERT_TRUE(streams.back()->Expect().has_queued());
    }
  }
  std::string match_id;
  for (size_t i = 0; i < streams.size(); ++i) {
    mm::MatchEvent ev = streams[i]->Expect();
    ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
    const mm::Match& m = ev.matched().match();
    if (match_id.empty()) match_id = m.match_id();
    EXPECT_EQ(m.match_id(), match_id);
    ASSERT_EQ(m.teams_size(), 2);
    int on_one_team = 0;
    for (const auto& team : m.teams()) {
      EXPECT_EQ(team.players_size(), 5);
      std::set<std::string> ids = PlayerIds(team);
      int here = 0;
      for (const auto& id : parties[i]) here += ids.count(id);
      if (here == static_cast<int>(parties[i].size()))
        ++on_one_team;
      else
        EXPECT_EQ(here, 0) << "party " << i << " was split";
    }
    EXPECT_EQ(on_one_team, 1);
    EXPECT_TRUE(streams[i]->Finish().ok());
    // The ticket still lists its own party, in order.
    const mm::Ticket ticket = ts.GetTicket(ev.ticket_id());
    std::vector<std::string> party;
    for (const mm::Player& p : ticket.players()) party.push_back(p.id());
    EXPECT_EQ(party, parties[i]);
  }
}

TEST(ServerTest, CancelledCallLeavesThePoolAndIsNeverMatched) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "race", {MakePlayer("alice")});
  const std::string id = alice->Expect().ticket_id();
  alice->Cancel();
  EXPECT_EQ(alice->Finish().error_code(), grpc::StatusCode::CANCELLED);
  mm::Ticket t = ts.WaitUntilNot(id, mm::Ticket::QUEUED);
  EXPECT_EQ(t.state(), mm::Ticket::CANCELLED);  // "race" has no re-attach grace

  auto bob = EventStream::Find(ts.stub(), "race", {MakePlayer("bob")});
  const std::string bob_id = bob->Expect().ticket_id();
  EXPECT_EQ(ts.GetTicket(bob_id).state(), mm::Ticket::QUEUED);
  // The same player may queue again once the cancelled ticket is gone.
  auto alice2 = EventStream::Find(ts.stub(), "race", {MakePlayer("alice")});
  EXPECT_TRUE(alice2->Expect().has_matched());
  EXPECT_TRUE(bob->Expect().has_matched());
}

// The cancel of one member races the arrival of the member that completes
// the match. Whatever wins, the server's record and what the clients saw
// agree: a match has all its members, a cancelled ticket is in no match, and
// no ticket is in two matches.
TEST(ServerTest, CancelRacingMatchNeverSplitsAMatch) {
  TestServer ts;
  auto stub_a = ts.NewStub();
  auto stub_b = ts.NewStub();
  std::set<std::string> matched_tickets;
  int matched = 0, cancelled = 0;
  for (int i = 0; i < 150; ++i) {
    auto a = EventStream::Find(*stub_a, "race", {MakePlayer("a" + std::to_string(i))});
    const std::string a_id = a->Expect().ticket_id();
    std::unique_ptr<EventStream> b;
    std::thread arrive(
        [&] { b = EventStream::Find(*stub_b, "race", {MakePlayer("b" + std::to_string(i))}); });
    a->Cancel();
    arrive.join();
    // b's first event: the match if it met a on arrival, else `queued`.
    mm::MatchEvent b_first = b->Expect();
    const std::string b_id = b_first.ticket_id();
    a->Finish();
    const mm::Ticket a_final = ts.WaitUntilNot(a_id, mm::Ticket::QUEUED);
    if (a_final.state() == mm::Ticket::MATCHED) {
      ++matched;
      ASSERT_TRUE(b_first.has_matched()) << b_first.DebugString();
      EXPECT_EQ(b_first.matched().match().match_id(), a_final.match().match_id());
      EXPECT_THAT(a_final.match().ticket_ids(), UnorderedElementsAre(a_id, b_id));
      EXPECT_TRUE(b->Finish().ok());
      EXPECT_TRUE(matched_tickets.insert(a_id).second);
      EXPECT_TRUE(matched_tickets.insert(b_id).second);
    } else {
      ++cancelled;
      EXPECT_TRUE(b_first.has_queued()) << b_first.DebugString();
      EXPECT_EQ(a_final.state(), mm::Ticket::CANCELLED);
      EXPECT_FALSE(a_final.has_match());
      // b must still be waiting, unmatched; cancelling it is then certain.
      mm::Ticket b_ticket;
      ASSERT_TRUE(CancelTicket(ts.stub(), b_id, &b_ticket).ok());
      EXPECT_EQ(b_ticket.state(), mm::Ticket::CANCELLED);
      EXPECT_EQ(b->Finish().error_code(), grpc::StatusCode::CANCELLED);
      for (const auto& ev : b->events()) EXPECT_FALSE(ev.has_matched());
    }
  }
  std::cout << "cancel-vs-match outcomes: " << matched << " matched, " << cancelled
            << " cancelled\n";
}

TEST(ServerTest, TicketExpiresAtTheQueuesMaximumWait) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice")});
  const std::string id = alice->Expect().ticket_id();
  ts.Advance(absl::Seconds(61));
  grpc::Status status = alice->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), HasSubstr("maximum wait of 1m"));
  mm::Ticket t = ts.GetTicket(id);
  EXPECT_EQ(t.state(), mm::Ticket::EXPIRED);
  // An expired player can queue again.
  auto again = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice")});
  EXPECT_TRUE(again->Expect().has_queued());
}

TEST(ServerTest, CallersOwnDeadlineEndsTheTicket) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice")}, absl::Milliseconds(300));
  const std::string id = alice->Expect().ticket_id();
  EXPECT_EQ(alice->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(ts.WaitUntilNot(id, mm::Ticket::QUEUED).state(), mm::Ticket::EXPIRED);
}

TEST(ServerTest, SearchingHeartbeatsExplainTheWaitAndWindowWidens) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1000)});
  ASSERT_TRUE(alice->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent hb = alice->Expect();
  ASSERT_TRUE(hb.has_searching());
  EXPECT_EQ(hb.seq(), 2u);
  EXPECT_EQ(hb.searching().blocked_by(), mm::Searching::NOT_ENOUGH_PLAYERS);
  EXPECT_EQ(hb.searching().waited().seconds(), 5);
  EXPECT_DOUBLE_EQ(hb.searching().rating_window(), 150);  // 100 + 10/s * 5 s

  // Bob is 400 away: accepted when 100 + 10 * mean wait >= 400.
  auto bob = EventStream::Find(ts.stub(), "duel", {MakePlayer("bob", 1400)});
  ASSERT_TRUE(bob->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  hb = alice->Expect();
  ASSERT_TRUE(hb.has_searching());
  EXPECT_EQ(hb.searching().blocked_by(), mm::Searching::RATING_SPREAD);
  EXPECT_THAT(hb.searching().reason(), HasSubstr("spans 400"));
  EXPECT_THAT(hb.searching().reason(), HasSubstr("in about 23s"));
  // Mean wait is 7.5 s now; 30 s are needed: 22.5 s to go.
  EXPECT_EQ(hb.searching().expected_wait().seconds(), 22);
  ASSERT_TRUE(bob->Expect().has_searching());
  const std::string alice_id = hb.ticket_id();
  ts.Advance(absl::Seconds(22));  // t = 32 s: one heartbeat catches up; no match yet
  ASSERT_TRUE(alice->Expect().has_searching());
  EXPECT_EQ(ts.GetTicket(alice_id).state(), mm::Ticket::QUEUED);
  ts.Advance(absl::Seconds(1));  // t = 33 s, past the 32.5 s at which 400 is covered
  mm::MatchEvent ev = alice->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  EXPECT_DOUBLE_EQ(ev.matched().match().quality().rating_spread(), 400);
}

TEST(ServerTest, InvalidArgumentsAreRejectedWithActionableMessages) {
  TestServer ts;
  auto& stub = ts.stub();
  auto expect_invalid = [&](const std::string& queue, std::vector<mm::Player> players,
                            const std::string& message_part) {
    grpc::Status s = FindError(stub, queue, players);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << message_part;
    EXPECT_THAT(s.error_message(), HasSubstr(message_part));
  };
  expect_invalid("duel", {}, "at least one player");
  expect_invalid("duel", {MakePlayer("")}, "players[0].id must be 1..128 bytes");
  expect_invalid("duel", {MakePlayer(std::string(129, 'x'))}, "players[0].id");
  expect_invalid("duel", {MakePlayer("has space")}, "printable");
  expect_invalid("squad", {MakePlayer("a"), MakePlayer("a")}, "appears twice");
  expect_invalid("duel", {MakePlayer("a"), MakePlayer("b")}, "maximum party size of 1");
  expect_invalid("duel", {MakePlayer("a", std::nan(""))}, "rating must be a finite number");
  expect_invalid("duel", {MakePlayer("a", HUGE_VAL)}, "rating must be a finite number");
  mm::Player far = MakePlayer("a");
  (*far.mutable_latency_ms())["eu"] = 10001;
  expect_invalid("duel", {far}, "0..10000 ms");
  mm::Player attrs = MakePlayer("a");
  for (int i = 0; i < 17; ++i) (*attrs.mutable_attributes())["k" + std::to_string(i)] = "v";
  expect_invalid("duel", {attrs}, "more than 16 entries");
  mm::Player big = MakePlayer("a");
  for (int i = 0; i < 16; ++i) {
    (*big.mutable_attributes())["k" + std::to_string(i)] = std::string(256, 'v');
  }
  std::vector<mm::Player> many(16, big);
  for (int i = 0; i < 16; ++i) many[i].set_id("p" + std::to_string(i));
  grpc::Status s = FindError(stub, "squad", many);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("the limit is 65536"));

  // The same rules on the polling way, and for ticket ids.
  mm::Ticket t;
  EXPECT_EQ(CreateTicket(stub, "duel", {MakePlayer("")}, &t).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status bad_id = CancelTicket(stub, "not-a-ticket", &t);
  EXPECT_EQ(bad_id.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad_id.error_message(), HasSubstr("32 lowercase hex digits"));
}

TEST(ServerTest, UnknownQueueAndTicketAreNotFound) {
  TestServer ts;
  grpc::Status s = FindError(ts.stub(), "nope", {MakePlayer("a")});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("unknown queue \"nope\""));
  mm::Ticket t;
  EXPECT_EQ(CreateTicket(ts.stub(), "nope", {MakePlayer("a")}, &t).error_code(),
            grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx;
  mm::GetTicketRequest get;
  get.set_ticket_id(std::string(32, '0'));
  EXPECT_EQ(ts.stub().GetTicket(&ctx, get, &t).error_code(), grpc::StatusCode::NOT_FOUND);
  auto watch = EventStream::Watch(ts.stub(), "0000ffffffffffffffff000000000000", 0);
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(ServerTest, PlayerAlreadyWaitingIsAlreadyExists) {
  TestServer ts;
  auto first = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice")});
  const std::string id = first->Expect().ticket_id();
  grpc::Status s = FindError(ts.stub(), "duel", {MakePlayer("alice")});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(s.error_message(), HasSubstr(id));
  mm::Ticket t;
  EXPECT_EQ(CreateTicket(ts.stub(), "duel", {MakePlayer("alice")}, &t).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Another queue is fine.
  auto other = EventStream::Find(ts.stub(), "race", {MakePlayer("alice")});
  EXPECT_TRUE(other->Expect().has_queued());
}

TEST(ServerTest, FullQueueAndFullServerAreResourceExhausted) {
  {
    TestServer ts;
    auto a = EventStream::Find(ts.stub(), "tiny", {MakePlayer("a", 1000)});
    auto b = EventStream::Find(ts.stub(), "tiny", {MakePlayer("b", 2000)});
    ASSERT_TRUE(a->Expect().has_queued());
    ASSERT_TRUE(b->Expect().has_queued());
    grpc::Status s = FindError(ts.stub(), "tiny", {MakePlayer("c", 3000)});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("queue \"tiny\" is full (2 tickets,"));
    // A dropped call's ticket, held for re-attach, still counts; the message
    // says so, as ListQueues does not count it waiting.
    const std::string dropped = a->events().front().ticket_id();
    a->Cancel();
    a->Finish();
    ASSERT_EQ(ts.WaitUntilNot(dropped, mm::Ticket::QUEUED).state(), mm::Ticket::DETACHED);
    s = FindError(ts.stub(), "tiny", {MakePlayer("c", 3000)});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("1 of them detached, held for re-attach"));
  }
  {
    TestServerOptions options;
    options.max_waiting_tickets = 2;
    TestServer ts(options);
    auto a = EventStream::Find(ts.stub(), "duel", {MakePlayer("a", 1000)});
    auto b = EventStream::Find(ts.stub(), "race", {MakePlayer("b")});
    ASSERT_TRUE(a->Expect().has_queued());
    ASSERT_TRUE(b->Expect().has_queued());
    grpc::Status s = FindError(ts.stub(), "squad", {MakePlayer("c")});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("capacity of 2 waiting tickets"));
  }
}

TEST(ServerTest, PollingFlowCreateGetCancel) {
  TestServer ts;
  mm::Ticket a, b;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("alice", 1500)}, &a).ok());
  EXPECT_EQ(a.state(), mm::Ticket::QUEUED);
  EXPECT_EQ(ts.GetTicket(a.ticket_id()).state(), mm::Ticket::QUEUED);
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("bob", 1510)}, &b).ok());
  // Bob completes the match on arrival, and his reply says so.
  EXPECT_EQ(b.state(), mm::Ticket::MATCHED);
  mm::Ticket ga = ts.GetTicket(a.ticket_id());
  mm::Ticket gb = ts.GetTicket(b.ticket_id());
  ASSERT_EQ(ga.state(), mm::Ticket::MATCHED);
  ASSERT_EQ(gb.state(), mm::Ticket::MATCHED);
  EXPECT_EQ(ga.match().match_id(), gb.match().match_id());
  EXPECT_EQ(b.match().match_id(), ga.match().match_id());
  mm::Ticket t;
  grpc::Status late = CancelTicket(ts.stub(), a.ticket_id(), &t);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(late.error_message(), HasSubstr("already MATCHED"));
  EXPECT_THAT(late.error_message(), HasSubstr(ga.match().match_id()));

  mm::Ticket c;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("carol", 3000)}, &c).ok());
  ASSERT_TRUE(CancelTicket(ts.stub(), c.ticket_id(), &t).ok());
  EXPECT_EQ(t.state(), mm::Ticket::CANCELLED);
  EXPECT_EQ(ts.GetTicket(c.ticket_id()).state(), mm::Ticket::CANCELLED);
  grpc::Status again = CancelTicket(ts.stub(), c.ticket_id(), &t);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(again.error_message(), HasSubstr("already CANCELLED"));
  // Cancelled players are free again: carol queues and is not matched with the cancelled one.
  mm::Ticket c2;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("carol", 3000)}, &c2).ok());
  EXPECT_EQ(ts.GetTicket(c2.ticket_id()).state(), mm::Ticket::QUEUED);
}

// A 2v2 queue with a fixed window: no timer ever runs its pool.
TestServerOptions PairsOptions() {
  TestServerOptions options;
  options.config_json = R"json({"queues": [
      {"name": "pairs", "teamCount": 2, "teamSize": 2, "maxPartySize": 2,
       "rating": {"initialWindow": 164}, "maxWait": "60s"}]})json";
  return options;
}

// A polling ticket in "pairs"; then a second passes (an order of arrival).
std::string CreateAndStep(TestServer& ts, std::vector<mm::Player> party) {
  mm::Ticket t;
  EXPECT_TRUE(CreateTicket(ts.stub(), "pairs", std::move(party), &t).ok());
  ts.Advance(absl::Seconds(1));
  return t.ticket_id();
}

// The walk around an anchor takes the nearest tickets that fit, so a solo
// ticket can keep two duos that fit each other apart. When it leaves, they
// match at once, not at the next arrival (the queue has no widening timer).
TEST(ServerTest, ATicketThatLeavesLetsTheOthersMatchAtOnce) {
  TestServer ts(PairsOptions());
  auto create = [&](std::vector<mm::Player> party) { return CreateAndStep(ts, party); };
  const std::string solo = create({MakePlayer("s1", 1042)});
  const std::string duo1 = create({MakePlayer("a1", 1048), MakePlayer("a2", 1048)});
  create({MakePlayer("s2", 1214)});
  const std::string duo2 = create({MakePlayer("b1", 1041), MakePlayer("b2", 1041)});
  // Every group the walk finds takes the solo at 1042 and then s2 at 1214:
  // 172 Elo or more, over the window.
  EXPECT_EQ(ts.GetTicket(duo1).state(), mm::Ticket::QUEUED);
  EXPECT_EQ(ts.GetTicket(duo2).state(), mm::Ticket::QUEUED);
  mm::Ticket t;
  ASSERT_TRUE(CancelTicket(ts.stub(), solo, &t).ok());
  const mm::Ticket matched = ts.WaitUntilNot(duo1, mm::Ticket::QUEUED);
  EXPECT_EQ(matched.state(), mm::Ticket::MATCHED);
  EXPECT_EQ(ts.GetTicket(duo2).state(), mm::Ticket::MATCHED);
  EXPECT_EQ(matched.match().quality().rating_spread(), 7) << matched.DebugString();
}

// The same when the solo's FindMatch call is dropped (the ticket detaches).
TEST(ServerTest, ADroppedCallLetsTheOthersMatchAtOnce) {
  TestServer ts(PairsOptions());
  auto solo = EventStream::Find(ts.stub(), "pairs", {MakePlayer("s1", 1042)});
  ASSERT_TRUE(solo->Expect().has_queued());
  ts.Advance(absl::Seconds(1));
  auto create = [&](std::vector<mm::Player> party) { return CreateAndStep(ts, party); };
  const std::string duo1 = create({MakePlayer("a1", 1048), MakePlayer("a2", 1048)});
  create({MakePlayer("s2", 1214)});
  const std::string duo2 = create({MakePlayer("b1", 1041), MakePlayer("b2", 1041)});
  EXPECT_EQ(ts.GetTicket(duo1).state(), mm::Ticket::QUEUED);
  solo->Cancel();
  solo->Finish();
  EXPECT_EQ(ts.WaitUntilNot(duo1, mm::Ticket::QUEUED).state(), mm::Ticket::MATCHED);
  EXPECT_EQ(ts.GetTicket(duo2).state(), mm::Ticket::MATCHED);
}

// A searching event names the partial lobby that starts before the full
// group's window allows it, and says when.
TEST(ServerTest, SearchingNamesAPartialLobbyBeforeAWideFullGroup) {
  TestServerOptions options;
  options.config_json = R"json({"queues": [
      {"name": "ffa", "teamCount": 4, "teamSize": 1, "minPlayers": 2, "partialAfter": "2s",
       "rating": {"initialWindow": 50, "widenPerSecond": 10}, "maxWait": "60s"}]})json";
  TestServer ts(options);
  std::string first;
  for (double rating : {1500, 1510, 1900, 2300}) {
    mm::Ticket t;
    ASSERT_TRUE(
        CreateTicket(ts.stub(), "ffa", {MakePlayer(absl::StrCat("p", rating), rating)}, &t).ok());
    if (first.empty()) first = t.ticket_id();
  }
  auto watch = EventStream::Watch(ts.stub(), first, 1);
  const mm::MatchEvent ev = watch->Expect();
  ASSERT_TRUE(ev.has_searching()) << ev.DebugString();
  EXPECT_EQ(ev.searching().blocked_by(), mm::Searching::RATING_SPREAD);
  EXPECT_EQ(ev.searching().expected_wait().seconds(), 2);
  EXPECT_EQ(ev.searching().reason(),
            "the closest full group spans 800 rating; a lobby of 2 can start in about 2s");
  ts.Advance(absl::Seconds(2));
  EXPECT_TRUE(watch->Finish().ok());
  EXPECT_TRUE(watch->events().back().has_matched());
  EXPECT_EQ(watch->events().back().matched().match().teams_size(), 2);
}

// A ticket counts, in its searching reason, only the players it can play
// with: here the other one wants another mode.
TEST(ServerTest, SearchingCountsOnlyThePlayersATicketCanMeet) {
  TestServerOptions options;
  options.config_json = R"json({"queues": [
      {"name": "modes", "teamCount": 2, "teamSize": 1, "matchAttributes": ["mode"],
       "maxWait": "60s"}]})json";
  TestServer ts(options);
  std::string first;
  for (const char* mode : {"ranked", "casual"}) {
    mm::Player p = MakePlayer(mode);
    (*p.mutable_attributes())["mode"] = mode;
    mm::Ticket t;
    ASSERT_TRUE(CreateTicket(ts.stub(), "modes", {p}, &t).ok());
    if (first.empty()) first = t.ticket_id();
  }
  auto watch = EventStream::Watch(ts.stub(), first, 1);
  const mm::MatchEvent ev = watch->Expect();
  ASSERT_TRUE(ev.has_searching()) << ev.DebugString();
  EXPECT_EQ(ev.searching().blocked_by(), mm::Searching::NOT_ENOUGH_PLAYERS);
  EXPECT_EQ(ev.searching().players_waiting(), 2u);
  EXPECT_EQ(ev.searching().reason(),
            "waiting for players: 1 of the 2 a match needs can play with this ticket (2 in the "
            "queue)");
  watch->Cancel();
}

// A ticket dropped early to keep --max_retained_tickets is not blamed on
// the retention time.
TEST(ServerTest, NotFoundNamesTheRetentionCapOnceItDroppedTickets) {
  TestServerOptions options;
  options.max_retained_tickets = 1;
  TestServer ts(options);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    mm::Ticket t;
    ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer(absl::StrCat("p", i), 1500.0 * i)},
                             &t)
                    .ok());
    ids.push_back(t.ticket_id());
    grpc::ClientContext ctx;
    mm::CancelTicketRequest request;
    request.set_ticket_id(t.ticket_id());
    ASSERT_TRUE(ts.stub().CancelTicket(&ctx, request, &t).ok());
  }
  grpc::ClientContext ctx;
  mm::GetTicketRequest request;
  request.set_ticket_id(ids[0]);
  mm::Ticket t;
  const grpc::Status s = ts.stub().GetTicket(&ctx, request, &t);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("dropped early to keep this queue within 1 of them"));
  EXPECT_EQ(ts.GetTicket(ids[2]).state(), mm::Ticket::CANCELLED);
}

// Finished tickets are also kept within a byte budget: a ticket keeps its
// party, so large parties go sooner than --max_retained_tickets says.
TEST(ServerTest, FinishedTicketsAreKeptWithinTheirByteBudget) {
  TestServerOptions options;
  // 7 queues in the test configuration: 16 KiB each.
  options.max_retained_bytes = 7 * 16 * 1024;
  TestServer ts(options);
  auto cancel = [&](const std::string& id) {
    grpc::ClientContext ctx;
    mm::CancelTicketRequest request;
    request.set_ticket_id(id);
    mm::Ticket t;
    return ts.stub().CancelTicket(&ctx, request, &t);
  };
  // ~4.5 KB of attributes each: about 9 KiB retained.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    mm::Player p = MakePlayer(absl::StrCat("big", i), 1000.0 * i);
    for (int a = 0; a < 16; ++a) (*p.mutable_attributes())[absl::StrCat("k", a)] = std::string(256, 'v');
    mm::Ticket t;
    ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {p}, &t).ok());
    ASSERT_TRUE(cancel(t.ticket_id()).ok());
    ids.push_back(t.ticket_id());
  }
  EXPECT_EQ(ts.GetTicket(ids[2]).state(), mm::Ticket::CANCELLED);
  grpc::ClientContext ctx;
  mm::GetTicketRequest request;
  request.set_ticket_id(ids[0]);
  mm::Ticket t;
  EXPECT_EQ(ts.stub().GetTicket(&ctx, request, &t).error_code(), grpc::StatusCode::NOT_FOUND);
  // Small tickets fit many times over.
  std::vector<std::string> small;
  for (int i = 0; i < 5; ++i) {
    mm::Ticket s;
    ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer(absl::StrCat("s", i), 1000.0 * i)}, &s)
                    .ok());
    ASSERT_TRUE(cancel(s.ticket_id()).ok());
    small.push_back(s.ticket_id());
  }
  for (const std::string& id : small) EXPECT_EQ(ts.GetTicket(id).state(), mm::Ticket::CANCELLED);
}

// Waiting tickets are also bounded in bytes: a ticket keeps its party, so
// large parties fill a server long before --max_waiting_tickets does.
TEST(ServerTest, WaitingPartiesAreBoundedInBytes) {
  TestServerOptions options;
  options.max_waiting_bytes = kMinWaitingBytes;
  TestServer ts(options);
  auto big = [](int i) {
    // 500 apart: too far to match, until the windows widen.
    mm::Player p = MakePlayer(absl::StrCat("big", i), 500.0 * i + 250);
    for (int a = 0; a < 16; ++a) (*p.mutable_attributes())[absl::StrCat("k", a)] = std::string(256, 'v');
    return p;
  };
  // Counted as the serialized size, doubled: about 9 KiB each.
  auto counted = [](const mm::Player& p) { return 2 * static_cast<int64_t>(p.ByteSizeLong()); };
  int fit = 0;
  int64_t held = 0;
  while (held + counted(big(fit)) <= kMinWaitingBytes) held += counted(big(fit++));
  const mm::Player small_player = MakePlayer("small", -50000);
  const mm::Player twin = MakePlayer("twin", 750);  // big1's rating
  // The room the steps below need (the test's own arithmetic, not matchd's).
  ASSERT_GE(kMinWaitingBytes - held,
            counted(small_player) + counted(big(fit)) - counted(big(0)) + counted(twin));

  std::vector<std::string> waiting;
  for (int i = 0; i < fit; ++i) {
    mm::Ticket t;
    const grpc::Status created = CreateTicket(ts.stub(), "duel", {big(i)}, &t);
    ASSERT_TRUE(created.ok()) << i << ": " << created.error_message();
    waiting.push_back(t.ticket_id());
  }
  mm::Ticket refused;
  grpc::Status s = CreateTicket(ts.stub(), "duel", {big(fit)}, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              HasSubstr(absl::StrCat("they hold ", held, " of the ", kMinWaitingBytes,
                                     " bytes --max_waiting_bytes allows, and this party counts ",
                                     counted(big(fit)))));
  EXPECT_EQ(FindError(ts.stub(), "duel", {big(fit)}).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  // The room left still takes a small ticket: it is bytes, not a count.
  mm::Ticket small;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {small_player}, &small).ok());
  waiting.push_back(small.ticket_id());
  // Every way a ticket ends gives its bytes back. A cancel:
  mm::Ticket ended;
  ASSERT_TRUE(CancelTicket(ts.stub(), waiting[0], &ended).ok());
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {big(fit)}, &ended).ok());
  waiting[0] = ended.ticket_id();
  EXPECT_EQ(CreateTicket(ts.stub(), "duel", {big(fit + 1)}, &refused).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  // A match: a small ticket at big1's rating takes it at once.
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {twin}, &ended).ok());
  ASSERT_EQ(ended.state(), mm::Ticket::MATCHED);
  waiting.erase(waiting.begin() + 1);
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {big(fit + 1)}, &ended).ok());
  waiting.push_back(ended.ticket_id());
  // The queue's maximum wait (and the matches the widened windows make
  // before it): the whole budget is free again.
  ts.Advance(absl::Seconds(61));
  for (const std::string& id : waiting) {
    ASSERT_NE(ts.WaitUntilNot(id, mm::Ticket::QUEUED).state(), mm::Ticket::QUEUED);
  }
  for (int i = 0; i < fit; ++i) {
    ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {big(i)}, &ended).ok()) << i;
  }
}

// Fields a player carries that this version does not know are not kept, so
// not forwarded to the other members of its match.
TEST(ServerTest, UnknownFieldsOfAPlayerAreNotForwarded) {
  TestServer ts;
  mm::Player padded = MakePlayer("padded", 1500);
  padded.GetReflection()->MutableUnknownFields(&padded)->AddLengthDelimited(
      99, std::string(10000, 'x'));
  mm::Ticket waiting;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {padded}, &waiting).ok());
  auto no_unknown = [](const mm::Player& p) {
    return p.GetReflection()->GetUnknownFields(p).empty();
  };
  EXPECT_TRUE(no_unknown(waiting.players(0)));
  auto other = EventStream::Find(ts.stub(), "duel", {MakePlayer("other", 1500)});
  ASSERT_TRUE(other->Finish().ok());
  const mm::Match& match = other->events().back().matched().match();
  int seen = 0;
  for (const mm::Team& team : match.teams()) {
    for (const mm::Player& p : team.players()) {
      EXPECT_TRUE(no_unknown(p)) << p.id();
      ++seen;
    }
  }
  EXPECT_EQ(seen, 2);
  EXPECT_LT(other->events().back().ByteSizeLong(), 1000u);
  EXPECT_TRUE(no_unknown(ts.GetTicket(waiting.ticket_id()).players(0)));
}

// A polling ticket that completes a match on arrival, like a FindMatch
// ticket, has `matched` as its first event, seq 1; one that waits has
// `queued` as seq 1.
TEST(ServerTest, CreateTicketMatchedOnArrivalHasMatchedAsSeqOne) {
  TestServer ts;
  mm::Ticket first;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("a", 1500)}, &first).ok());
  EXPECT_EQ(first.state(), mm::Ticket::QUEUED);
  EXPECT_EQ(first.last_seq(), 1u);
  mm::Ticket second;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("b", 1500)}, &second).ok());
  ASSERT_EQ(second.state(), mm::Ticket::MATCHED);
  EXPECT_EQ(second.last_seq(), 1u);
  auto watch = EventStream::Watch(ts.stub(), second.ticket_id(), 0);
  const mm::MatchEvent ev = watch->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  EXPECT_EQ(ev.seq(), 1u);
  EXPECT_TRUE(watch->Finish().ok());
  EXPECT_EQ(ts.GetTicket(first.ticket_id()).last_seq(), 2u);  // queued, matched
}

// The reply of the CreateTicket that completes a match carries the match,
// even when the retention cap drops the ticket as soon as it ends.
TEST(ServerTest, CreateTicketThatCompletesAMatchRepliesWithItWithoutRetention) {
  TestServerOptions options;
  options.max_retained_tickets = 0;
  TestServer ts(options);
  mm::Ticket a, b;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("a", 1500)}, &a).ok());
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("b", 1500)}, &b).ok());
  EXPECT_EQ(b.ticket_id().size(), a.ticket_id().size());
  EXPECT_NE(b.ticket_id(), a.ticket_id());
  EXPECT_EQ(b.queue(), "duel");
  EXPECT_EQ(b.state(), mm::Ticket::MATCHED);
  ASSERT_EQ(b.players_size(), 1);
  EXPECT_EQ(b.players(0).id(), "b");
  EXPECT_FALSE(b.match().match_id().empty());
  EXPECT_EQ(b.match().teams_size(), 2);
}

TEST(ServerTest, FinishedTicketsBeyondTheRetentionCapGoOldestFirst) {
  TestServerOptions options;
  options.max_retained_tickets = 2;
  TestServer ts(options);
  std::vector<std::string> ids;
  for (const char* who : {"a", "b", "c"}) {
    mm::Ticket t;
    ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer(who, 1000)}, &t).ok());
    ASSERT_TRUE(CancelTicket(ts.stub(), t.ticket_id(), &t).ok());
    ids.push_back(t.ticket_id());
  }
  grpc::ClientContext ctx;
  mm::GetTicketRequest get;
  get.set_ticket_id(ids[0]);
  mm::Ticket t;
  EXPECT_EQ(ts.stub().GetTicket(&ctx, get, &t).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ts.GetTicket(ids[1]).state(), mm::Ticket::CANCELLED);
  EXPECT_EQ(ts.GetTicket(ids[2]).state(), mm::Ticket::CANCELLED);
  // A new ticket takes the dropped one's slot in the table (a key's low 24
  // bits, the id's characters 14..19) under another key: the old id still
  // finds nothing, and the new ticket inherits nothing.
  mm::Ticket d;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("d", 1000)}, &d).ok());
  EXPECT_EQ(d.ticket_id().substr(14, 6), ids[0].substr(14, 6));
  EXPECT_NE(d.ticket_id().substr(4, 16), ids[0].substr(4, 16));
  {
    grpc::ClientContext again;
    EXPECT_EQ(ts.stub().GetTicket(&again, get, &t).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  const mm::Ticket fresh = ts.GetTicket(d.ticket_id());
  EXPECT_EQ(fresh.state(), mm::Ticket::QUEUED);
  ASSERT_EQ(fresh.players_size(), 1);
  EXPECT_EQ(fresh.players(0).id(), "d");
  EXPECT_EQ(fresh.detail(), "");
  ASSERT_TRUE(CancelTicket(ts.stub(), d.ticket_id(), &t).ok());
  // And every finished ticket goes when the retention (60 s) ends.
  ts.Advance(absl::Seconds(61));
  for (const std::string& id : {ids[1], ids[2]}) {
    grpc::ClientContext again;
    get.set_ticket_id(id);
    EXPECT_EQ(ts.stub().GetTicket(&again, get, &t).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST(ServerTest, UnpolledTicketExpiresAfterPollTtl) {
  TestServer ts;
  mm::Ticket a, polled;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("alice", 1000)}, &a).ok());
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("pat", 3000)}, &polled).ok());
  ts.Advance(absl::Seconds(20));
  EXPECT_EQ(ts.GetTicket(polled.ticket_id()).state(), mm::Ticket::QUEUED);  // keeps it alive
  ts.Advance(absl::Seconds(11));  // 31 s since alice's last poll, 11 s since pat's
  mm::Ticket t = ts.GetTicket(a.ticket_id());
  EXPECT_EQ(t.state(), mm::Ticket::EXPIRED);
  EXPECT_THAT(t.detail(), HasSubstr("poll TTL"));
  EXPECT_EQ(ts.GetTicket(polled.ticket_id()).state(), mm::Ticket::QUEUED);
}

// The deadline of a FindMatch call bounds its ticket while that call holds
// it; once the ticket is re-attached, the dropped call's deadline is gone.
TEST(ServerTest, AReattachedTicketNoLongerExpiresAtTheDroppedCallsDeadline) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)},
                                 /*deadline=*/absl::Seconds(20));
  const std::string id = alice->Expect().ticket_id();
  alice->Cancel();
  alice->Finish();
  ASSERT_EQ(ts.WaitUntilNot(id, mm::Ticket::QUEUED).state(), mm::Ticket::DETACHED);
  auto watch = EventStream::Watch(ts.stub(), id, 1);
  ASSERT_TRUE(watch->Expect().has_searching());
  ts.Advance(absl::Seconds(30));
  EXPECT_EQ(ts.GetTicket(id).state(), mm::Ticket::QUEUED);
  // The queue's maximum wait (60 s) still counts from the ticket's creation.
  ts.Advance(absl::Seconds(31));
  grpc::Status ended = watch->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(ended.error_message(), HasSubstr("maximum wait of 1m"));
  EXPECT_EQ(ts.GetTicket(id).state(), mm::Ticket::EXPIRED);
}

TEST(ServerTest, WatchTicketReattachesADroppedFindMatchAndResumesAfterSeq) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  const std::string id = alice->Expect().ticket_id();
  ts.Advance(absl::Seconds(5));
  ASSERT_EQ(alice->Expect().seq(), 2u);
  alice->Cancel();
  alice->Finish();
  mm::Ticket t = ts.WaitUntilNot(id, mm::Ticket::QUEUED);
  ASSERT_EQ(t.state(), mm::Ticket::DETACHED);
  EXPECT_TRUE(t.has_expires());
  // Detached: not matchable. Bob waits.
  auto bob = EventStream::Find(ts.stub(), "duel", {MakePlayer("bob", 1500)});
  ASSERT_TRUE(bob->Expect().has_queued());
  ts.Advance(absl::Seconds(3));

  // Bob is there: re-attaching matches at once, and `matched` is the next
  // event (no searching event that names no blocker before it).
  auto watch = EventStream::Watch(ts.stub(), id, 2);
  mm::MatchEvent first = watch->Expect();
  ASSERT_TRUE(first.has_matched()) << first.DebugString();
  EXPECT_EQ(first.seq(), 3u);
  EXPECT_TRUE(watch->Finish().ok());
  EXPECT_EQ(watch->events().size(), 1u);
  const uint64_t matched_seq = watch->events().back().seq();

  // Re-attaching after the match replays `matched` only if it was not seen.
  auto replay = EventStream::Watch(ts.stub(), id, matched_seq - 1);
  EXPECT_TRUE(replay->Expect().has_matched());
  EXPECT_TRUE(replay->Finish().ok());
  auto nothing = EventStream::Watch(ts.stub(), id, matched_seq);
  EXPECT_TRUE(nothing->Finish().ok());
  EXPECT_TRUE(nothing->events().empty());
}

// Heartbeats are served by one timer per queue, whatever they schedule while
// it runs: the count of armed timers stays flat as heartbeats go by (each
// run used to leave one more timer chain behind).
TEST(ServerTest, HeartbeatsDoNotMultiplyTimers) {
  TestServer ts;
  auto waiting = EventStream::Find(ts.stub(), "duel", {MakePlayer("alone", 1500)});
  ASSERT_TRUE(waiting->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  ASSERT_TRUE(waiting->Expect().has_searching());
  const size_t before = ts.server().timers_armed();
  for (int i = 0; i < 10; ++i) {
    ts.Advance(absl::Seconds(5));
    ASSERT_TRUE(waiting->Expect().has_searching());
  }
  // A timer or two may be between run and re-arm when read.
  EXPECT_LE(ts.server().timers_armed(), before + 2);
  waiting->Cancel();
}

// Re-attaching restarts the heartbeats: the one that was due under the old
// stream is not sent as well.
TEST(ServerTest, ReattachRestartsHeartbeatsWithoutAStaleOne) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  const std::string id = alice->Expect().ticket_id();  // queued at t = 0; heartbeat due at 5 s
  ts.Advance(absl::Seconds(3));
  alice->Cancel();
  alice->Finish();
  ASSERT_EQ(ts.WaitUntilNot(id, mm::Ticket::QUEUED).state(), mm::Ticket::DETACHED);
  auto watch = EventStream::Watch(ts.stub(), id, 1);  // t = 3 s: next heartbeat at 8 s
  ASSERT_EQ(ts.WaitUntilNot(id, mm::Ticket::DETACHED).state(), mm::Ticket::QUEUED);
  ts.Advance(absl::Seconds(2));          // t = 5 s: the old stream's heartbeat time
  ts.Advance(absl::Seconds(3));          // t = 8 s
  mm::MatchEvent now = watch->Expect();  // sent on re-attach, at 3 s
  ASSERT_TRUE(now.has_searching()) << now.DebugString();
  EXPECT_EQ(now.seq(), 2u);
  EXPECT_EQ(now.searching().waited().seconds(), 3);
  mm::MatchEvent next = watch->Expect();  // the heartbeat at 8 s, none at 5 s
  ASSERT_TRUE(next.has_searching()) << next.DebugString();
  EXPECT_EQ(next.seq(), 3u);
  EXPECT_EQ(next.searching().waited().seconds(), 8);
  ts.Advance(absl::Seconds(5));  // t = 13 s: the one after, and nothing in between
  mm::MatchEvent after = watch->Expect();
  ASSERT_TRUE(after.has_searching()) << after.DebugString();
  EXPECT_EQ(after.seq(), 4u);
  EXPECT_EQ(after.searching().waited().seconds(), 13);
  watch->Cancel();
  watch->Finish();
}

TEST(ServerTest, DetachedTicketIsCancelledAfterGrace) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice")});
  const std::string id = alice->Expect().ticket_id();
  alice->Cancel();
  alice->Finish();
  ASSERT_EQ(ts.WaitUntilNot(id, mm::Ticket::QUEUED).state(), mm::Ticket::DETACHED);
  grpc::Status held = FindError(ts.stub(), "duel", {MakePlayer("alice")});
  EXPECT_EQ(held.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(held.error_message(), HasSubstr("WatchTicket"));
  ts.Advance(absl::Seconds(11));
  EXPECT_EQ(ts.GetTicket(id).state(), mm::Ticket::CANCELLED);
  auto watch = EventStream::Watch(ts.stub(), id, 1);
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(ServerTest, SecondWatcherTakesOverTheTicket) {
  TestServer ts;
  mm::Ticket a;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("alice")}, &a).ok());
  auto w1 = EventStream::Watch(ts.stub(), a.ticket_id(), 0);
  EXPECT_TRUE(w1->Expect().has_queued());
  EXPECT_TRUE(w1->Expect().has_searching());
  auto w2 = EventStream::Watch(ts.stub(), a.ticket_id(), 2);
  EXPECT_TRUE(w2->Expect().has_searching());
  EXPECT_EQ(w1->Finish().error_code(), grpc::StatusCode::ABORTED);
  mm::Ticket t;
  ASSERT_TRUE(CancelTicket(ts.stub(), a.ticket_id(), &t).ok());
  EXPECT_EQ(w2->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// Polls ListQueues until `queue` has `tickets` waiting (bounded: 10 s).
void WaitForWaiting(TestServer& ts, const std::string& queue, uint32_t tickets) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  for (;;) {
    grpc::ClientContext ctx;
    mm::ListQueuesResponse response;
    ASSERT_TRUE(ts.stub().ListQueues(&ctx, mm::ListQueuesRequest(), &response).ok());
    for (const mm::QueueInfo& q : response.queues()) {
      if (q.name() == queue && q.tickets_waiting() == tickets) return;
    }
    ASSERT_LT(absl::Now(), give_up) << queue << " never had " << tickets << " waiting";
  }
}

TEST(ServerTest, QueuedComesAfterTheDelayAndNotAtAllForATicketMatchedSooner) {
  TestServerOptions options;
  options.queued_delay = absl::Milliseconds(100);
  TestServer ts(options);
  // Matched 60 ms after alice arrived: each stream carries `matched` alone.
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  WaitForWaiting(ts, "duel", 1);
  ts.Advance(absl::Milliseconds(60));
  auto bob = EventStream::Find(ts.stub(), "duel", {MakePlayer("bob", 1510)});
  for (EventStream* s : {alice.get(), bob.get()}) {
    mm::MatchEvent ev = s->Expect();
    ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
    EXPECT_EQ(ev.seq(), 1u);
    EXPECT_TRUE(s->Finish().ok());
    EXPECT_EQ(s->events().size(), 1u);
  }
  // Still waiting when the delay ends: `queued` (seq 1), then heartbeats.
  auto carl = EventStream::Find(ts.stub(), "duel", {MakePlayer("carl", 1500)});
  WaitForWaiting(ts, "duel", 1);
  ts.Advance(absl::Milliseconds(100));
  mm::MatchEvent queued = carl->Expect();
  ASSERT_TRUE(queued.has_queued()) << queued.DebugString();
  EXPECT_EQ(queued.seq(), 1u);
  EXPECT_EQ(queued.queued().queue(), "duel");
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent searching = carl->Expect();
  ASSERT_TRUE(searching.has_searching()) << searching.DebugString();
  EXPECT_EQ(searching.seq(), 2u);
  carl->Cancel();
  EXPECT_EQ(carl->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(ServerTest, ListQueuesShowsRulesAndLiveCounts) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "squad", {MakePlayer("a1"), MakePlayer("a2")});
  ASSERT_TRUE(alice->Expect().has_queued());
  grpc::ClientContext ctx;
  mm::ListQueuesResponse response;
  ASSERT_TRUE(ts.stub().ListQueues(&ctx, mm::ListQueuesRequest(), &response).ok());
  ASSERT_EQ(response.queues_size(), 7);
  EXPECT_EQ(response.queues(6).custom_rule(), "crossplay");
  EXPECT_EQ(response.queues(5).min_players(), 2u);
  EXPECT_EQ(response.queues(5).partial_after().seconds(), 10);
  EXPECT_EQ(response.queues(2).min_players(), 0u);
  const mm::QueueInfo& squad = response.queues(2);
  EXPECT_EQ(squad.name(), "squad");
  EXPECT_EQ(squad.team_count(), 2u);
  EXPECT_EQ(squad.team_size(), 5u);
  EXPECT_TRUE(squad.rated());
  EXPECT_EQ(squad.tickets_waiting(), 1u);
  EXPECT_EQ(squad.players_waiting(), 2u);
  EXPECT_THAT(squad.regions(), ::testing::IsEmpty());
  const mm::QueueInfo& regional = response.queues(4);
  EXPECT_THAT(regional.regions(), ::testing::ElementsAre("eu", "us"));
  EXPECT_THAT(regional.match_attributes(), ::testing::ElementsAre("mode"));
}

// A player of the "regional" queue: latencies by region, and a mode.
mm::Player Regional(const std::string& id, std::map<std::string, uint32_t> latency_ms,
                    const std::string& mode = "ranked") {
  mm::Player p = MakePlayer(id);
  for (const auto& [region, ms] : latency_ms) (*p.mutable_latency_ms())[region] = ms;
  (*p.mutable_attributes())["mode"] = mode;
  return p;
}

TEST(ServerTest, MatchIsPlacedInTheBestRegionAndCarriesEachPlayersLatency) {
  TestServer ts;
  // The second party has no "us": only eu can host all four.
  auto a =
      EventStream::Find(ts.stub(), "regional",
                        {Regional("a1", {{"eu", 30}, {"us", 10}}), Regional("a2", {{"eu", 20}})});
  ASSERT_TRUE(a->Expect().has_queued());
  auto b =
      EventStream::Find(ts.stub(), "regional",
                        {Regional("b1", {{"eu", 45}, {"us", 5}}), Regional("b2", {{"eu", 40}})});
  mm::MatchEvent ev = b->Expect();
  if (ev.has_queued()) ev = b->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  const mm::MatchQuality& q = ev.matched().match().quality();
  EXPECT_EQ(q.region(), "eu");
  EXPECT_EQ(q.latency_ms().at("a1"), 30u);
  EXPECT_EQ(q.latency_ms().at("a2"), 20u);
  EXPECT_EQ(q.latency_ms().at("b1"), 45u);
  EXPECT_EQ(q.latency_ms().at("b2"), 40u);
  const std::string first_id = ev.matched().match().match_id();

  // The queue builds each match in reused storage: the next match carries its
  // own players, tickets and latencies and nothing of the first.
  auto c = EventStream::Find(ts.stub(), "regional",
                             {Regional("c1", {{"us", 12}}), Regional("c2", {{"us", 14}})});
  mm::MatchEvent c_queued = c->Expect();
  ASSERT_TRUE(c_queued.has_queued());
  auto d = EventStream::Find(ts.stub(), "regional",
                             {Regional("d1", {{"us", 16}}), Regional("d2", {{"us", 18}})});
  ev = d->Expect();
  if (ev.has_queued()) ev = d->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  const mm::Match& second = ev.matched().match();
  std::vector<std::string> players;
  for (const mm::Team& team : second.teams()) {
    for (const mm::Player& p : team.players()) players.push_back(p.id());
  }
  EXPECT_THAT(players, UnorderedElementsAre("c1", "c2", "d1", "d2"));
  EXPECT_THAT(second.ticket_ids(), UnorderedElementsAre(c_queued.ticket_id(), ev.ticket_id()));
  EXPECT_EQ(second.quality().region(), "us");
  EXPECT_EQ(second.quality().latency_ms().size(), 4u);
  EXPECT_EQ(second.quality().latency_ms().at("d2"), 18u);
  EXPECT_EQ(second.quality().win_probability_size(), 2);
  EXPECT_NE(second.match_id(), first_id);
}

TEST(ServerTest, MatchAttributesMustBeEqual) {
  TestServer ts;
  auto ranked = EventStream::Find(ts.stub(), "regional",
                                  {Regional("r1", {{"eu", 10}}), Regional("r2", {{"eu", 10}})});
  ASSERT_TRUE(ranked->Expect().has_queued());
  auto casual = EventStream::Find(
      ts.stub(), "regional",
      {Regional("c1", {{"eu", 10}}, "casual"), Regional("c2", {{"eu", 10}}, "casual")});
  ASSERT_TRUE(casual->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent hb = casual->Expect();
  ASSERT_TRUE(hb.has_searching()) << hb.DebugString();
  EXPECT_EQ(hb.searching().blocked_by(), mm::Searching::NOT_ENOUGH_PLAYERS);
  ASSERT_TRUE(ranked->Expect().has_searching());
  auto casual2 = EventStream::Find(
      ts.stub(), "regional",
      {Regional("c3", {{"eu", 10}}, "casual"), Regional("c4", {{"eu", 10}}, "casual")});
  mm::MatchEvent ev = casual->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  for (const mm::Team& team : ev.matched().match().teams()) {
    for (const mm::Player& p : team.players()) EXPECT_EQ(p.attributes().at("mode"), "casual");
  }
  EXPECT_EQ(ts.GetTicket(hb.ticket_id()).state(), mm::Ticket::MATCHED);
}

TEST(ServerTest, LatencyBlockerIsExplainedAndTheLimitWidens) {
  TestServer ts;
  // 100 ms is over the 50 ms limit until the mean wait reaches 10 s (5 ms/s).
  auto far = EventStream::Find(ts.stub(), "regional",
                               {Regional("f1", {{"eu", 100}}), Regional("f2", {{"eu", 20}})});
  ASSERT_TRUE(far->Expect().has_queued());
  auto near = EventStream::Find(ts.stub(), "regional",
                                {Regional("n1", {{"eu", 20}}), Regional("n2", {{"eu", 20}})});
  ASSERT_TRUE(near->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent hb = near->Expect();
  ASSERT_TRUE(hb.has_searching()) << hb.DebugString();
  EXPECT_EQ(hb.searching().blocked_by(), mm::Searching::LATENCY);
  EXPECT_THAT(hb.searching().reason(), HasSubstr("eu"));
  EXPECT_THAT(hb.searching().reason(), HasSubstr("100 ms"));
  EXPECT_EQ(hb.searching().expected_wait().seconds(), 5);
  ASSERT_TRUE(far->Expect().has_searching());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent ev = near->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
  EXPECT_EQ(ev.matched().match().quality().region(), "eu");
  EXPECT_EQ(ev.matched().match().quality().latency_ms().at("f1"), 100u);
}

TEST(ServerTest, RegionalQueueRejectsPlayersItCannotPlace) {
  TestServer ts;
  auto expect_invalid = [&](std::vector<mm::Player> players, const std::string& part) {
    grpc::Status s = FindError(ts.stub(), "regional", players);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << part;
    EXPECT_THAT(s.error_message(), HasSubstr(part));
  };
  mm::Player no_mode = Regional("a", {{"eu", 10}});
  no_mode.mutable_attributes()->clear();
  expect_invalid({no_mode}, "matches only players with equal \"mode\"");
  expect_invalid({Regional("a", {{"eu", 10}}), Regional("b", {{"eu", 10}}, "casual")},
                 "a party plays with one value of it");
  expect_invalid({Regional("a", {{"asia", 10}})}, "places matches in eu, us");
  // Each member reaches a region, but not the same one.
  expect_invalid({Regional("a", {{"eu", 10}}), Regional("b", {{"us", 10}})},
                 "at least one same region");
}

TEST(ServerTest, FreeForAllStartsPartialAfterItsWait) {
  TestServer ts;
  std::vector<std::unique_ptr<EventStream>> players;
  for (const char* id : {"p1", "p2", "p3"}) {
    players.push_back(EventStream::Find(ts.stub(), "brawl", {MakePlayer(id)}));
    ASSERT_TRUE(players.back()->Expect().has_queued());
  }
  ts.Advance(absl::Seconds(5));
  // Not enough for 4 teams, but a lobby of 3 starts when the oldest has
  // waited partialAfter (10 s); each ticket is told when.
  for (auto& p : players) {
    mm::MatchEvent ev = p->Expect();
    ASSERT_TRUE(ev.has_searching()) << ev.DebugString();
    EXPECT_EQ(ev.searching().blocked_by(), mm::Searching::NOT_ENOUGH_PLAYERS);
    EXPECT_THAT(ev.searching().reason(), HasSubstr("a lobby of 3 can start in about 5s"));
    EXPECT_EQ(ev.searching().expected_wait().seconds(), 5);
  }
  ts.Advance(absl::Seconds(5));  // partialAfter: 10s
  for (auto& p : players) {
    mm::MatchEvent ev = p->Expect();
    ASSERT_TRUE(ev.has_matched()) << ev.DebugString();
    EXPECT_EQ(ev.matched().match().teams_size(), 3);
  }
}

mm::Player WithInput(const std::string& id, const std::string& input) {
  mm::Player p = MakePlayer(id);
  (*p.mutable_attributes())["input"] = input;
  return p;
}

TEST(ServerTest, CustomRuleHoldsMixedGroupsAndExplainsItself) {
  TestServer ts;
  auto mouse = EventStream::Find(ts.stub(), "cross", {WithInput("m", "mouse")});
  ASSERT_TRUE(mouse->Expect().has_queued());
  auto pad = EventStream::Find(ts.stub(), "cross", {WithInput("c", "controller")});
  ASSERT_TRUE(pad->Expect().has_queued());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent hb = mouse->Expect();
  ASSERT_TRUE(hb.has_searching()) << hb.DebugString();
  EXPECT_EQ(hb.searching().blocked_by(), mm::Searching::CUSTOM_RULE);
  EXPECT_THAT(hb.searching().reason(), HasSubstr("the crossplay rule adds 150"));
  // 50 + 10/s covers 0 + 150 at a mean wait of 10 s.
  EXPECT_EQ(hb.searching().expected_wait().seconds(), 5);
  ASSERT_TRUE(pad->Expect().has_searching());
  ts.Advance(absl::Seconds(5));
  mm::MatchEvent ev = mouse->Expect();
  ASSERT_TRUE(ev.has_matched()) << ev.DebugString();

  grpc::Status s = FindError(ts.stub(), "cross", {MakePlayer("x")});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("this queue needs \"input\""));
}

// Values past these bounds used to load and then misbehave: a queue that
// refused every ticket (an int overflow), a player locked out for a day,
// a ListQueues reply over gRPC's message limit.
TEST(ConfigTest, LimitsAndDurationsAreBounded) {
  auto error = [](const std::string& fields) {
    auto parsed = ParseConfig(R"({"queues": [{"name": "q", "teamCount": 2, "teamSize": 2)" +
                              fields + "}]}");
    return parsed.ok() ? std::string("ok") : std::string(parsed.status().message());
  };
  EXPECT_EQ(error(R"(, "maxWaitingTickets": 100000000)"), "ok");
  EXPECT_THAT(error(R"(, "maxWaitingTickets": 4294967295)"),
              HasSubstr("maxWaitingTickets must be <= 100000000 (0: 200000), got 4294967295"));
  EXPECT_THAT(error(R"(, "reattachGrace": "100000s")"),
              HasSubstr("reattachGrace must be in [0s, 1h], got 27h46m40s"));
  EXPECT_THAT(error(R"(, "pollTtl": "7200s")"), HasSubstr("pollTtl must be in (0s, 1h], got 2h"));
  // A queue's name is quoted as given, even when it spells a field's name.
  EXPECT_THAT(std::string(ParseConfig(R"({"queues": [{"name": "team_size", "teamCount": 2}]})")
                              .status()
                              .message()),
              HasSubstr(R"(queues[0] ("team_size"): teamSize is required (>= 1))"));
  EXPECT_THAT(error(R"(, "minPlayers": 2, "partialAfter": "7200s")"),
              HasSubstr("partialAfter must be at most 1h"));
  EXPECT_THAT(error(R"(, "description": ")" + std::string(1025, 'x') + "\""),
              HasSubstr("description must be at most 1024 bytes"));
  // The numbers in the messages are the ones given.
  EXPECT_THAT(error(R"(, "maxPartySize": 4294967295)"),
              HasSubstr("maxPartySize must be <= teamSize (2), got 4294967295"));
  EXPECT_THAT(error(R"(, "minPlayers": 4294967295)"),
              HasSubstr("below a full match's 4 players, got 4294967295"));
  auto duel = ParseConfig(R"({"queues": [{"name": "q", "teamCount": 2, "teamSize": 1,
                                          "minPlayers": 1}]})");
  ASSERT_FALSE(duel.ok());
  EXPECT_THAT(std::string(duel.status().message()),
              HasSubstr("minPlayers must be 0: a match of 2 players has no partial lobby"));
}

// Queues whose ListQueues reply a client could not receive (over 4 MiB)
// are refused when the configuration loads.
TEST(ConfigTest, QueuesMustFitInAListQueuesReply) {
  auto config = [](int queues) {
    std::string json = R"({"queues": [)";
    for (int i = 0; i < queues; ++i) {
      absl::StrAppend(&json, i > 0 ? "," : "", R"({"name": "q)", i,
                      R"(", "teamCount": 2, "teamSize": 1, "description": ")",
                      std::string(1000, 'd'), "\"}");
    }
    return ParseConfig(json + "]}");
  };
  EXPECT_TRUE(config(3000).ok());
  const auto refused = config(4500);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("the 4500 queues make a ListQueues reply of up to"));
}

// protobuf's JSON parser takes the last of two equal keys, joins two lists
// and reads a single value as a list of one: a typo must not pass that way.
TEST(ConfigTest, KeysGivenTwiceAndValuesThatAreNoListAreRefused) {
  auto error = [](const std::string& json) {
    auto parsed = ParseConfig(json);
    return parsed.ok() ? std::string("ok") : std::string(parsed.status().message());
  };
  const std::string q = R"("name": "q", "teamCount": 2, "teamSize": 1)";
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(, "teamSize": 5}]})"),
            "config: queues[0] gives \"teamSize\" twice");
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(}], "queues": [{"name": "r", "teamCount": 2,
                                                               "teamSize": 1}]})"),
            "config: the file gives \"queues\" twice");
  EXPECT_EQ(error(R"({"queues": {)" + q + R"(}})"), "config: queues must be a list");
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(, "matchAttributes": "mode"}]})"),
            "config: queues[0].matchAttributes must be a list");
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(, "latency": {"regions": ["eu"], "maxMs": 5,
                                                           "maxMs": 50}}]})"),
            "config: queues[0].latency gives \"maxMs\" twice");
  // Keys and brackets inside strings are text, and snake_case names are keys too.
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(, "description": "a \"teamSize\": [{, }",
                                           "max_wait": "30s", "latency": {"regions": ["eu", "us"],
                                           "maxMs": 50}}]})"),
            "ok");
  EXPECT_EQ(error(R"({"queues": [{)" + q + R"(, "max_wait": "30s", "maxWait": "20s"}]})"),
            "config: queues[0] gives \"maxWait\" twice");
}

TEST(ConfigTest, ConfigFileMustBeARegularFileOfJson) {
  EXPECT_EQ(LoadConfig("/tmp").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(LoadConfig("/tmp").status().message()),
              HasSubstr("is not a regular file"));
  EXPECT_EQ(LoadConfig("/nonexistent/matchd.json").status().code(), absl::StatusCode::kNotFound);
  char path[] = "/tmp/matchd_config_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string bom_json =
      "\xEF\xBB\xBF{\"queues\": [{\"name\": \"q\", \"teamCount\": 2, \"teamSize\": 1}]}";
  ASSERT_EQ(write(fd, bom_json.data(), bom_json.size()), static_cast<ssize_t>(bom_json.size()));
  close(fd);
  auto loaded = LoadConfig(path);
  unlink(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->at(0).name, "q");
}

TEST(ConfigTest, LatencyAndAttributeRulesAreChecked) {
  auto error = [](const std::string& queue_json) {
    auto parsed = ParseConfig(R"({"queues": [)" + queue_json + "]}");
    return parsed.ok() ? std::string("ok") : std::string(parsed.status().message());
  };
  const std::string base = R"("name": "q", "teamCount": 2, "teamSize": 1)";
  EXPECT_EQ(error("{" + base + R"(, "latency": {"regions": ["eu"], "maxMs": 50}})"), "ok");
  EXPECT_THAT(error("{" + base + R"(, "latency": {"maxMs": 50}})"),
              HasSubstr("latency.regions must list 1..16 regions"));
  EXPECT_THAT(error("{" + base + R"(, "latency": {"regions": ["eu", "eu"], "maxMs": 50}})"),
              HasSubstr("\"eu\" is listed twice"));
  EXPECT_THAT(error("{" + base + R"(, "latency": {"regions": ["eu"]}})"),
              HasSubstr("latency.maxMs must be a finite number > 0"));
  EXPECT_THAT(error("{" + base + R"(, "latency": {"regions": ["eu"], "maxMs": 50, "capMs": 10}})"),
              HasSubstr("latency.capMs must be 0 (no cap) or >= latency.maxMs"));
  EXPECT_EQ(error(R"({"name": "q", "teamCount": 8, "teamSize": 1, "minPlayers": 4,
                      "partialAfter": "20s"})"),
            "ok");
  EXPECT_THAT(error("{" + base + R"(, "minPlayers": 2})"), HasSubstr("minPlayers must be 0"));
  EXPECT_THAT(error("{" + base + R"(, "partialAfter": "20s"})"),
              HasSubstr("partialAfter needs minPlayers"));
  EXPECT_THAT(error("{" + base + R"(, "customRule": {"name": "nope"}})"),
              HasSubstr("customRule: no custom rule named \"nope\"; this build has: crossplay"));
  EXPECT_THAT(error("{" + base + R"(, "customRule": {"name": "crossplay",
                                                     "params": {"penalty": "x"}}})"),
              HasSubstr("customRule: crossplay: penalty must be a number >= 0"));
  EXPECT_THAT(error("{" + base + R"(, "matchAttributes": ["mode", "mode"]})"),
              HasSubstr("\"mode\" is listed twice"));
  auto cost = ParseConfig(R"({"queues": [{)" + base +
                          R"(, "rating": {"widenPerSecond": 1, "waitCost": 3}}]})");
  ASSERT_TRUE(cost.ok()) << cost.status();
  EXPECT_EQ(cost->at(0).rules.wait_cost, 3);
  auto widen = ParseConfig(R"({"queues": [{)" + base +
                           R"(, "rating": {"waitCost": 2, "widenTime": "10s"}}]})");
  ASSERT_TRUE(widen.ok()) << widen.status();
  EXPECT_EQ(widen->at(0).rules.widen_time, absl::Seconds(10));
  EXPECT_THAT(error("{" + base + R"(, "rating": {"widenTime": "10s"}})"),
              HasSubstr("rating.widenTime needs rating.waitCost"));
  EXPECT_THAT(error("{" + base + R"(, "rating": {"waitCost": 2, "widenTime": "0s"}})"),
              HasSubstr("rating.widenTime must be in (0s, 1h]"));
  EXPECT_THAT(error("{" + base + R"(, "rating": {"waitCost": -1}})"),
              HasSubstr("rating.waitCost must be a finite number >= 0"));
}

TEST(ServerTest, DrainTurnsReadinessOffThenEndsWaitingCallsWithinTheSpread) {
  TestServer ts;
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1000)});
  auto bob = EventStream::Find(ts.stub(), "squad", {MakePlayer("bob")});
  ASSERT_TRUE(alice->Expect().has_queued());
  ASSERT_TRUE(bob->Expect().has_queued());
  EXPECT_EQ(ts.HealthStatus("matchmaking.v1.Matchmaker"), 1);  // SERVING
  EXPECT_EQ(ts.HealthStatus(""), 1);
  EXPECT_EQ(ts.HealthStatus("liveness"), 1);

  ts.server().Drain();
  EXPECT_EQ(ts.HealthStatus("matchmaking.v1.Matchmaker"), 2);  // NOT_SERVING
  EXPECT_EQ(ts.HealthStatus(""), 2);
  EXPECT_EQ(ts.HealthStatus("liveness"), 1);  // the process is fine
  grpc::Status refused = FindError(ts.stub(), "duel", {MakePlayer("carol")});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.error_message(), HasSubstr("draining"));
  mm::Ticket t;
  EXPECT_EQ(CreateTicket(ts.stub(), "duel", {MakePlayer("dan")}, &t).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // Waiting tickets still wait while load balancers catch up.
  EXPECT_EQ(ts.GetTicket(alice->events()[0].ticket_id()).state(), mm::Ticket::QUEUED);

  ts.server().EndWaitingCalls(absl::Seconds(10));
  ts.Advance(absl::Seconds(10));  // every call ends at some moment within the spread
  for (EventStream* s : {alice.get(), bob.get()}) {
    grpc::Status status = s->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("draining"));
  }
}

// Draining refuses new tickets, not the tickets this replica already holds:
// they exist nowhere else, so WatchTicket still reports and follows them.
TEST(ServerTest, WatchTicketStillServesThisReplicasTicketsWhileDraining) {
  TestServer ts;
  mm::Ticket a, b, waiting;
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("a", 1500)}, &a).ok());
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("b", 1500)}, &b).ok());
  ASSERT_EQ(b.state(), mm::Ticket::MATCHED);
  ASSERT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("c", 3000)}, &waiting).ok());
  ts.server().Drain();

  auto matched = EventStream::Watch(ts.stub(), a.ticket_id(), 0);
  EXPECT_TRUE(matched->Expect().has_matched());
  EXPECT_TRUE(matched->Finish().ok());
  auto follow = EventStream::Watch(ts.stub(), waiting.ticket_id(), 0);
  EXPECT_TRUE(follow->Expect().has_queued());
  EXPECT_TRUE(follow->Expect().has_searching());
  // Until the drain ends the waiting calls.
  ts.server().EndWaitingCalls(absl::ZeroDuration());
  grpc::Status ended = follow->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(ended.error_message(), HasSubstr("draining"));
}

// With no retention every ticket that ends is dropped at once: ending them all
// must not pull the ticket table from under the loop that walks it (the
// sanitizer builds catch a use after free).
TEST(ServerTest, DrainWithoutSpreadOrRetentionEndsEveryWaitingCall) {
  TestServerOptions options;
  options.max_retained_tickets = 0;
  TestServer ts(options);
  std::vector<std::unique_ptr<EventStream>> streams;
  for (int i = 0; i < 8; ++i) {
    // 1000 Elo apart: nobody matches.
    streams.push_back(
        EventStream::Find(ts.stub(), "duel", {MakePlayer(absl::StrCat("p", i), 1000.0 * i)}));
    ASSERT_TRUE(streams.back()->Expect().has_queued());
  }
  ts.server().EndWaitingCalls(absl::ZeroDuration());
  for (auto& s : streams) {
    grpc::Status status = s->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("draining"));
  }
}

TEST(ServerTest, HealthWatchFollowsDrainAndEndsAtShutdown) {
  auto ts = std::make_unique<TestServer>();
  EXPECT_EQ(ts->HealthStatus("no-such-service"), -1);  // NOT_FOUND
  auto health = grpc::health::v1::Health::NewStub(ts->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("matchmaking.v1.Matchmaker");
  auto watch = health->Watch(&ctx, request);
  grpc::health::v1::HealthCheckResponse status;
  ASSERT_TRUE(watch->Read(&status));
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  ts->server().Drain();
  ASSERT_TRUE(watch->Read(&status));
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // Shutdown ends the watch with OK (within its grace) instead of waiting for it.
  ts->server().Shutdown(absl::Seconds(10));
  while (watch->Read(&status)) {
  }
  EXPECT_TRUE(watch->Finish().ok());
}

// `matchctl find` in a process of its own, its output on a pipe (out_fd,
// the caller's to close, so that matchctl never writes to a closed pipe).
// Its first line names the ticket ("queued    ticket <id> in ..."):
// ticket_id is empty if it did not.
struct MatchctlFind {
  pid_t pid = -1;
  int out_fd = -1;
  std::string ticket_id;
};
MatchctlFind StartMatchctlFind(const TestServer& ts, const char* queue, const char* player) {
  MatchctlFind find;
  int out[2];
  if (pipe(out) != 0) return find;
  find.pid = fork();
  if (find.pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    execl(MATCHCTL_PATH, "matchctl", "--server", ts.address().c_str(), "find", "--queue", queue,
          "--player", player, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string line;
  char c;
  find.out_fd = out[0];
  while (find.pid > 0 && read(out[0], &c, 1) == 1 && c != '\n') line.push_back(c);
  const size_t at = line.find("ticket ");
  if (at != std::string::npos) find.ticket_id = line.substr(at + 7, 32);
  return find;
}

TEST(ServerTest, FrozenClientsTicketLeavesWithinTheKeepaliveTimeout) {
  TestServerOptions options;
  options.keepalive_time = absl::Seconds(1);
  options.keepalive_timeout = absl::Seconds(1);
  TestServer ts(options);
  // A real client process that opens a FindMatch and is then frozen.
  const MatchctlFind find = StartMatchctlFind(ts, "squad", "frozen:1500");
  ASSERT_FALSE(find.ticket_id.empty());
  const pid_t child = find.pid;
  const std::string& id = find.ticket_id;
  ASSERT_EQ(kill(child, SIGSTOP), 0);
  // The server pings after 1 s and gives up 1 s later; WaitUntilNot polls for 10 s.
  const mm::Ticket ticket = ts.WaitUntilNot(id, mm::Ticket::QUEUED);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  close(find.out_fd);
  EXPECT_EQ(ticket.state(), mm::Ticket::DETACHED);
}

// Runs matchctl with `args`, its output thrown away, and returns its exit
// status (-1 if it did not exit).
int RunMatchctl(std::vector<std::string> args) {
  const pid_t child = fork();
  if (child == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    std::vector<char*> argv = {const_cast<char*>("matchctl")};
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(MATCHCTL_PATH, argv.data());
    _exit(127);
  }
  int status = 0;
  if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(ServerTest, MatchctlExitsTwoForBadUsageAndZeroForHelp) {
  TestServer ts;
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "queues"}), 0);
  EXPECT_EQ(RunMatchctl({"--help"}), 0);
  EXPECT_EQ(RunMatchctl({"--version"}), 0);
  EXPECT_EQ(RunMatchctl({"--version=yes"}), 2);
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "--bogus", "queues"}), 2);
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "--timeout=abc", "queues"}), 2);
  // A flag the command does not take.
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "--queue", "duel", "queues"}), 2);
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "--tls_ca", "/dev/null", "queues"}), 2);
  EXPECT_EQ(RunMatchctl({"--server", ts.address(), "get", "00000000000000000000000000000000"}),
            1);  // NOT_FOUND: a gRPC error
}

TEST(ServerTest, MatchctlFindWithdrawsTheTicketOnCtrlC) {
  TestServer ts;
  const MatchctlFind find = StartMatchctlFind(ts, "duel", "quitter:1500");
  ASSERT_FALSE(find.ticket_id.empty());
  const std::string& id = find.ticket_id;
  ASSERT_EQ(kill(find.pid, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(waitpid(find.pid, &status, 0), find.pid);
  close(find.out_fd);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  // Cancelled, not left detached for the re-attach grace: the player can
  // queue again at once.
  EXPECT_EQ(ts.GetTicket(id).state(), mm::Ticket::CANCELLED);
  mm::Ticket again;
  EXPECT_TRUE(CreateTicket(ts.stub(), "duel", {MakePlayer("quitter", 1500)}, &again).ok());
}

}  // namespace
}  // namespace matchd::testing
