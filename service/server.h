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
#include <prometheus/exposer.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "matcher/clock.h"
#include "service/config.h"
#include "service/runtime.h"

namespace matchd {

// The least ServerOptions::max_waiting_bytes: the largest valid ticket (a
// 64 KiB request, counted twice) fits several times over.
inline constexpr int64_t kMinWaitingBytes = int64_t{1} << 20;

struct ServerOptions {
  // host:port; port 0 picks a free port (see MatchmakerServer::port()).
  std::string listen_address = "0.0.0.0:50051";
  // The queues; at least one.
  std::vector<QueueSettings> queues;
  // Event loops (threads with a completion queue each); 0 means one per core.
  int threads = 0;
  // Between two `searching` events of a ticket.
  absl::Duration heartbeat_interval = absl::Seconds(5);
  // How long a FindMatch ticket waits before it is told `queued`; a ticket
  // matched sooner gets `matched` alone. 0: at once. At most the heartbeat.
  // Under load up to 1 ms later (one timer serves a millisecond's tickets).
  absl::Duration queued_delay = absl::Milliseconds(50);
  // How long a ticket in a terminal state still answers GetTicket/WatchTicket.
  absl::Duration ticket_retention = absl::Seconds(60);
  // Most tickets waiting in all queues together; beyond it RESOURCE_EXHAUSTED.
  // (max_waiting_bytes below bounds their parties' size.)
  int64_t max_waiting_tickets = 1'000'000;
  // Most finished tickets kept per queue for GetTicket/WatchTicket; the
  // oldest go early beyond it, which bounds memory at any ticket rate.
  int64_t max_retained_tickets = 100'000;
  // And at most about this many bytes of finished tickets in all queues
  // together (each queue an equal share): a ticket keeps its party, up to
  // ~66 KiB, so the count alone does not bound their memory.
  int64_t max_retained_bytes = int64_t{512} << 20;
  // Most bytes of parties in waiting tickets (QUEUED or DETACHED), all queues
  // together; beyond it RESOURCE_EXHAUSTED. A waiting ticket keeps its party
  // as sent (up to the 64 KiB request limit), so max_waiting_tickets alone
  // does not bound their memory. Counted as the parties' serialized size,
  // doubled for protobuf's objects. At least kMinWaitingBytes.
  int64_t max_waiting_bytes = int64_t{1} << 30;
  // Largest request message accepted by gRPC (RESOURCE_EXHAUSTED beyond);
  // matchd's own limit (INVALID_ARGUMENT) is lower, see validation.h.
  int max_receive_message_bytes = 4 * 1024 * 1024;
  // Not owned; nullptr means the real clock. Tests pass a ManualClock and call
  // WakeLoops() after advancing it.
  const Clock* clock = nullptr;

  // Connection management. The server pings every `keepalive_time` and drops
  // a connection whose ping is not answered within `keepalive_timeout`: that
  // is how a frozen or vanished caller's tickets leave the pool. Clients must
  // not ping more often than `min_client_ping_interval`.
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  absl::Duration max_connection_idle = absl::Minutes(5);
  // Connections are closed (GOAWAY) after this age so callers re-resolve and
  // spread over new replicas; streams get `max_connection_age_grace` to end.
  absl::Duration max_connection_age = absl::Minutes(30);
  absl::Duration max_connection_age_grace = absl::Seconds(60);
  // gRPC's memory quota for this server (bytes); 0: none. Keep it below the
  // container's memory limit.
  int64_t memory_quota_bytes = 0;

  // TLS: PEM files. Without a certificate the server is plaintext. With a
  // client CA, clients must present a certificate it signed (mTLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // How often the TLS files are read again: a renewed certificate (a
  // Kubernetes Secret updated in place, cert-manager's renewal) is served to
  // new connections without a restart. Whole seconds, 1 s to 1 h; 0 reads
  // them once, at start.
  absl::Duration tls_refresh = absl::Seconds(60);

  // Prometheus endpoint (host:port, path /metrics); empty: none. Port 0 picks
  // a free port (see metrics_port()).
  std::string metrics_listen;
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
  // The bound metrics port; 0 without a metrics endpoint.
  int metrics_port() const { return metrics_port_; }

  // Starts draining: readiness (health service "matchmaking.v1.Matchmaker"
  // and "") turns NOT_SERVING and new tickets get UNAVAILABLE. Waiting
  // tickets keep waiting (and may still be matched) until EndWaitingCalls.
  // Liveness (service "liveness") stays SERVING. Idempotent; thread-safe.
  void Drain();

  // Drain(), then ends every waiting ticket (its call with UNAVAILABLE
  // "server is draining"), each at a random moment within `spread` so that
  // callers do not reconnect elsewhere in one burst. Thread-safe.
  void EndWaitingCalls(absl::Duration spread);

  // EndWaitingCalls(0), then stops gRPC, giving in-flight calls up to `grace`
  // before they are cancelled, and stops the loops. Idempotent. Not from a
  // loop thread.
  void Shutdown(absl::Duration grace);

  // Wakes every loop so that timers due by a manual clock run.
  void WakeLoops();

  // Timers armed on all loops (EventLoop::timers_armed).
  size_t timers_armed() const;

 private:
  MatchmakerServer() = default;

  void StartLagProbe(EventLoop* loop);
  void StartStreamSweep(EventLoop* loop);

  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_SERVER_H_
