// A real matchd server on 127.0.0.1 port 0 with a manual clock, and small
// helpers for talking to it with real gRPC clients.
#ifndef MATCHD_TESTS_TESTING_TEST_SERVER_H_
#define MATCHD_TESTS_TESTING_TEST_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "matcher/clock.h"
#include "matchmaking/v1/matchmaking.grpc.pb.h"
#include "service/server.h"

namespace matchd::testing {

// Queues used by the service tests (see the .cc for their rules).
extern const char kTestConfig[];

struct TestServerOptions {
  std::string config_json = kTestConfig;
  int threads = 2;  // more than one, so hand-offs between loops are exercised
  absl::Duration heartbeat = absl::Seconds(5);
  // 0 here (matchd's default is 50 ms): most tests want `queued` at once.
  absl::Duration queued_delay = absl::ZeroDuration();
  int64_t max_waiting_tickets = 10000;
  int64_t max_waiting_bytes = int64_t{1} << 30;
  int64_t max_retained_tickets = 100000;
  int64_t max_retained_bytes = int64_t{512} << 20;
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  absl::Duration tls_refresh = absl::Seconds(60);
  // Credentials of the test's own channel; plaintext if null.
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
  std::string metrics_listen;
};

class TestServer {
 public:
  explicit TestServer(TestServerOptions options = {});
  ~TestServer();

  MatchmakerServer& server() { return *server_; }
  ManualClock& clock() { return clock_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  matchmaking::v1::Matchmaker::Stub& stub() { return *stub_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  // A stub on its own connection.
  std::unique_ptr<matchmaking::v1::Matchmaker::Stub> NewStub() const;

  // Advances the manual clock and lets every loop run what became due.
  void Advance(absl::Duration d);

  // GetTicket with a deadline; fails the test on error.
  matchmaking::v1::Ticket GetTicket(const std::string& ticket_id);
  // grpc.health.v1.Health/Check for `service`: 1 SERVING, 2 NOT_SERVING;
  // -1 if the call failed.
  int HealthStatus(const std::string& service);
  // Polls GetTicket until the state differs from `from` (bounded: 10 s).
  matchmaking::v1::Ticket WaitUntilNot(const std::string& ticket_id,
                                       matchmaking::v1::Ticket::State from);

 private:
  ManualClock clock_;
  std::unique_ptr<MatchmakerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<matchmaking::v1::Matchmaker::Stub> stub_;
};

// A player "id:rating".
matchmaking::v1::Player MakePlayer(const std::string& id, double rating = 1500);

// One open FindMatch or WatchTicket call.
class EventStream {
 public:
  static std::unique_ptr<EventStream> Find(matchmaking::v1::Matchmaker::Stub& stub,
                                           const std::string& queue,
                                           std::vector<matchmaking::v1::Player> players,
                                           absl::Duration deadline = absl::Seconds(300));
  static std::unique_ptr<EventStream> Watch(matchmaking::v1::Matchmaker::Stub& stub,
                                            const std::string& ticket_id, uint64_t after_seq);

  // Reads the next event; false when the stream ended (then call Finish).
  bool Next(matchmaking::v1::MatchEvent* event);
  // Reads the next event and expects one; fails the test otherwise.
  matchmaking::v1::MatchEvent Expect();
  // Reads to the end and returns the status; events read meanwhile are kept.
  grpc::Status Finish();
  void Cancel() { ctx_.TryCancel(); }
  const std::vector<matchmaking::v1::MatchEvent>& events() const { return events_; }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<matchmaking::v1::MatchEvent>> reader_;
  std::vector<matchmaking::v1::MatchEvent> events_;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace matchd::testing

#endif  // MATCHD_TESTS_TESTING_TEST_SERVER_H_
