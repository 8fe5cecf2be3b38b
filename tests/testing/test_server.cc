#include "tests/testing/test_server.h"

#include <chrono>

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "service/config.h"

namespace matchd::testing {

namespace mm = ::matchmaking::v1;

const char kTestConfig[] = R"json({
  "queues": [
    {"name": "duel", "teamCount": 2, "teamSize": 1,
     "rating": {"initialWindow": 100, "widenPerSecond": 10, "maxWindow": 1000},
     "maxWait": "60s", "pollTtl": "30s", "reattachGrace": "10s"},
    {"name": "race", "description": "unrated 1v1, no re-attach grace",
     "teamCount": 2, "teamSize": 1, "maxWait": "600s", "reattachGrace": "0s"},
    {"name": "squad", "teamCount": 2, "teamSize": 5, "maxPartySize": 5,
     "rating": {"initialWindow": 5000}, "maxWait": "60s"},
    {"name": "tiny", "teamCount": 2, "teamSize": 1, "maxWaitingTickets": 2,
     "rating": {"initialWindow": 0}, "maxWait": "60s"},
    {"name": "regional", "teamCount": 2, "teamSize": 2, "maxPartySize": 2,
     "rating": {"initialWindow": 1000}, "maxWait": "60s",
     "latency": {"regions": ["eu", "us"], "maxMs": 50, "widenMsPerSecond": 5, "capMs": 150},
     "matchAttributes": ["mode"]},
    {"name": "brawl", "teamCount": 4, "teamSize": 1, "maxWait": "60s",
     "minPlayers": 2, "partialAfter": "10s"},
    {"name": "cross", "teamCount": 2, "teamSize": 1, "maxWait": "60s",
     "rating": {"initialWindow": 50, "widenPerSecond": 10},
     "customRule": {"name": "crossplay", "params": {"penalty": "150"}}}
  ]
})json";

TestServer::TestServer(TestServerOptions options) {
  auto queues = ParseConfig(options.config_json);
  EXPECT_TRUE(queues.ok()) << queues.status();
  ServerOptions server_options;
  server_options.listen_address = "127.0.0.1:0";
  server_options.queues = *std::move(queues);
  server_options.threads = options.threads;
  server_options.heartbeat_interval = options.heartbeat;
  server_options.queued_delay = options.queued_delay;
  server_options.max_waiting_tickets = options.max_waiting_tickets;
  server_options.max_waiting_bytes = options.max_waiting_bytes;
  server_options.max_retained_tickets = options.max_retained_tickets;
  server_options.max_retained_bytes = options.max_retained_bytes;
  server_options.clock = &clock_;
  server_options.keepalive_time = options.keepalive_time;
  server_options.keepalive_timeout = options.keepalive_timeout;
  server_options.tls_cert_file = options.tls_cert_file;
  server_options.tls_key_file = options.tls_key_file;
  server_options.tls_client_ca_file = options.tls_client_ca_file;
  server_options.tls_refresh = options.tls_refresh;
  server_options.metrics_listen = options.metrics_listen;
  auto server = MatchmakerServer::Start(std::move(server_options));
  EXPECT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  grpc::ChannelArguments args;
  // Test certificates name "localhost".
  args.SetSslTargetNameOverride("localhost");
  channel_ = grpc::CreateCustomChannel(
      address(),
      options.channel_credentials ? options.channel_credentials
                                  : grpc::InsecureChannelCredentials(),
      args);
  stub_ = mm::Matchmaker::NewStub(channel_);
}

TestServer::~TestServer() { server_->Shutdown(absl::ZeroDuration()); }

std::unique_ptr<mm::Matchmaker::Stub> TestServer::NewStub() const {
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection of its own
  return mm::Matchmaker::NewStub(
      grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args));
}

void TestServer::Advance(absl::Duration d) {
  clock_.Advance(d);
  server_->WakeLoops();
}

mm::Ticket TestServer::GetTicket(const std::string& ticket_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mm::GetTicketRequest request;
  request.set_ticket_id(ticket_id);
  mm::Ticket ticket;
  grpc::Status status = stub_->GetTicket(&ctx, request, &ticket);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  return ticket;
}

int TestServer::HealthStatus(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (!stub->Check(&ctx, request, &response).ok()) return -1;
  return response.status();
}

mm::Ticket TestServer::WaitUntilNot(const std::string& ticket_id, mm::Ticket::State from) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  mm::Ticket ticket;
  do {
    ticket = GetTicket(ticket_id);
  } while (ticket.state() == from && std::chrono::steady_clock::now() < give_up);
  return ticket;
}

mm::Player MakePlayer(const std::string& id, double rating) {
  mm::Player p;
  p.set_id(id);
  p.set_rating(rating);
  return p;
}

std::unique_ptr<EventStream> EventStream::Find(mm::Matchmaker::Stub& stub,
                                               const std::string& queue,
                                               std::vector<mm::Player> players,
                                               absl::Duration deadline) {
  auto stream = std::make_unique<EventStream>();
  stream->ctx_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  mm::FindMatchRequest request;
  request.set_queue(queue);
  for (auto& p : players) *request.add_players() = std::move(p);
  stream->reader_ = stub.FindMatch(&stream->ctx_, request);
  return stream;
}

std::unique_ptr<EventStream> EventStream::Watch(mm::Matchmaker::Stub& stub,
                                                const std::string& ticket_id,
                                                uint64_t after_seq) {
  auto stream = std::make_unique<EventStream>();
  stream->ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
  mm::WatchTicketRequest request;
  request.set_ticket_id(ticket_id);
  request.set_after_seq(after_seq);
  stream->reader_ = stub.WatchTicket(&stream->ctx_, request);
  return stream;
}

bool EventStream::Next(mm::MatchEvent* event) {
  if (finished_) return false;
  if (!reader_->Read(event)) return false;
  events_.push_back(*event);
  return true;
}

mm::MatchEvent EventStream::Expect() {
  mm::MatchEvent event;
  if (!Next(&event)) {
    grpc::Status status = Finish();
    ADD_FAILURE() << "stream ended instead of sending an event: " << status.error_code() << " "
                  << status.error_message();
  }
  return event;
}

grpc::Status EventStream::Finish() {
  if (finished_) return status_;
  mm::MatchEvent event;
  while (reader_->Read(&event)) events_.push_back(event);
  status_ = reader_->Finish();
  finished_ = true;
  return status_;
}

}  // namespace matchd::testing
