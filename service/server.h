// The matchd server: options in, a running gRPC server out.
//
//   ServerOptions options;
//   options.queues = *LoadConfig("");
//   auto server = MatchmakerServer::Start(std::move(options));
//   ...
//   (*server)->Shutdown(absl::Seconds(10));
#ifndef MATCHD_SERVICE_SERVER_H_
#define MATCHD_SERVICE_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "matcher/clock.h"
#include "service/config.h"
#include "service/runtime.h"

namespace matchd {

struct ServerOptions {
  // host:port; port 0 picks a free port (see MatchmakerServer::port()).
  std::string listen_address = "0.0.0.0:50051";
  // The queues; at least one.
  std::vector<QueueSettings> queues;
  // Event loops (threads with a completion queue each); 0 means one per core.
  int threads = 0;
  // Between two `searching` events of a ticket.
  absl::Duration heartbeat_interval = absl::Seconds(5);
  // How long a ticket in a terminal state still answers GetTicket/WatchTicket.
  absl::Duration ticket_retention = absl::Seconds(60);
  // Most tickets waiting in all queues together; beyond it RESOURCE_EXHAUSTED.
  int64_t max_waiting_tickets = 1'000'000;
  // Largest request message accepted by gRPC (RESOURCE_EXHAUSTED beyond);
  // matchd's own limit (INVALID_ARGUMENT) is lower, see validation.h.
  int max_receive_message_bytes = 4 * 1024 * 1024;
  // Not owned; nullptr means the real clock. Tests pass a ManualClock and call
  // WakeLoops() after advancing it.
  const Clock* clock = nullptr;
};

class MatchmakerServer final {
 public:
  // Builds, binds and starts the server. INVALID_ARGUMENT for bad options,
  // UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MatchmakerServer>> Start(ServerOptions options);

  MatchmakerServer(const MatchmakerServer&) = delete;
  MatchmakerServer& operator=(const MatchmakerServer&) = delete;
  // Shuts down (without grace) if Shutdown was not called.
  ~MatchmakerServer();

  // The bound port.
  int port() const { return port_; }

  // Starts draining: health turns NOT_SERVING, new tickets get UNAVAILABLE and
  // every waiting call ends with UNAVAILABLE "server is draining".
  // Idempotent; thread-safe.
  void Drain();

  // Drain(), then stops gRPC, giving in-flight calls up to `grace` before they
  // are cancelled, and stops the loops. Idempotent. Not from a loop thread.
  void Shutdown(absl::Duration grace);

  // Wakes every loop so that timers due by a manual clock run.
  void WakeLoops();

 private:
  MatchmakerServer() = default;

  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_SERVER_H_
