// matchd: the matchmaking server. Flags -> ServerOptions -> Start -> wait for
// SIGTERM/SIGINT -> drain (readiness off, delay, end waiting calls with
// jitter) -> Shutdown(deadline) -> exit 0.
#include <time.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/command_line.h"
#include "service/config.h"
#include "service/log.h"
#include "service/server.h"
#include "service/version.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "Address to serve gRPC on: host:port (port 0: any free one) or unix:PATH.");
ABSL_FLAG(std::string, config, "",
          "Queue configuration file (JSON, schema matchd.config.v1.ServerConfig); empty means "
          "the embedded default (queues duel, squad, ffa, casual).");
ABSL_FLAG(int, threads, 0, "Event loops, one thread each; 0 means one per core.");
ABSL_FLAG(absl::Duration, heartbeat, absl::Seconds(5),
          "Interval between `searching` events of a waiting ticket.");
ABSL_FLAG(absl::Duration, queued_delay, absl::Milliseconds(50),
          "How long a FindMatch ticket waits before its `queued` event; a ticket matched "
          "sooner gets `matched` alone (one message instead of two). 0 sends `queued` at once. "
          "At most --heartbeat.");
ABSL_FLAG(absl::Duration, ticket_retention, absl::Seconds(60),
          "How long a finished ticket still answers GetTicket and WatchTicket.");
ABSL_FLAG(int64_t, max_waiting_tickets, 1000000,
          "Most tickets waiting in all queues together (RESOURCE_EXHAUSTED beyond).");
ABSL_FLAG(int64_t, max_waiting_bytes, int64_t{1} << 30,
          "And at most this many bytes of waiting parties in all queues together "
          "(serialized size, doubled; a ticket keeps its party, up to ~130 KiB counted; at "
          "least 1 MiB; RESOURCE_EXHAUSTED beyond).");
ABSL_FLAG(int64_t, max_retained_tickets, 100000,
          "Most finished tickets kept per queue for GetTicket/WatchTicket (the oldest go "
          "before --ticket_retention ends beyond it): bounds memory at any ticket rate.");
ABSL_FLAG(int64_t, max_retained_bytes, int64_t{512} << 20,
          "And at most about this many bytes of finished tickets in all queues together "
          "(each queue an equal share; a ticket keeps its party, up to ~66 KiB).");
ABSL_FLAG(int, max_receive_message_bytes, 4 * 1024 * 1024,
          "Largest request gRPC accepts (RESOURCE_EXHAUSTED beyond); matchd's own limit on "
          "a ticket request is 64 KiB (INVALID_ARGUMENT).");
ABSL_FLAG(absl::Duration, drain_delay, absl::Seconds(5),
          "On SIGTERM/SIGINT: readiness turns NOT_SERVING at once; waiting calls keep waiting "
          "this long (so load balancers stop sending callers here) before they are ended.");
ABSL_FLAG(absl::Duration, drain_spread, absl::Seconds(5),
          "Waiting calls are ended with UNAVAILABLE at random moments within this window, so "
          "callers do not reconnect elsewhere in one burst.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "Then gRPC stops; calls still in flight get this long before they are cancelled.");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Seconds(30),
          "Ping each connection this often; a caller that does not answer loses its tickets.");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(10),
          "A connection whose ping is not answered within this is closed.");
ABSL_FLAG(absl::Duration, min_client_ping_interval, absl::Seconds(10),
          "Clients that ping more often than this are disconnected (GOAWAY too_many_pings).");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Minutes(5),
          "Close connections without calls after this long.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Minutes(30),
          "Ask callers to reconnect after this long (they then re-resolve and rebalance).");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::Seconds(60),
          "Calls on an aged connection get this long before they are cancelled.");
ABSL_FLAG(int64_t, memory_quota, 0,
          "gRPC memory quota in bytes (0: none); keep it below the container's memory limit.");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain; with --tls_key enables TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(absl::Duration, tls_refresh, absl::Seconds(60),
          "How often the TLS files are read again, so that a renewed certificate (a Secret "
          "updated in place) serves new connections without a restart; whole seconds, 1s..1h; 0: "
          "read once, at start.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present a certificate it signed (mTLS).");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics on this host:port at /metrics (e.g. 0.0.0.0:9090); empty: "
          "off.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound port is written to this file once serving (useful with port 0).");
ABSL_FLAG(bool, print_default_config, false, "Print the embedded default config and exit.");
ABSL_FLAG(bool, check_config, false,
          "Check the configuration (--config, or the embedded default) and exit: 0 and its "
          "queues on stdout if it is valid, 2 and the problem on stderr if not. Binds no port.");

namespace {

// Waits for SIGTERM/SIGINT for at most `timeout` (forever if infinite).
// True if a signal came.
bool WaitForSignal(const sigset_t& signals, absl::Duration timeout, int* sig) {
  if (timeout == absl::InfiniteDuration()) return sigwait(&signals, sig) == 0;
  const timespec ts = absl::ToTimespec(timeout);
  const int got = sigtimedwait(&signals, nullptr, &ts);
  if (got < 0) return false;
  *sig = got;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const matchd::CommandLine command_line = matchd::ParseFlags(argc, argv);
  if (command_line.help) {
    std::cout << "usage: matchd [--flag=value ...]: a streaming matchmaking server\nflags:\n";
    matchd::PrintFlags(std::cout);
    return 0;
  }
  if (command_line.version) {  // like --help: wins over anything after it
    std::cout << matchd::VersionLine("matchd") << "\n";
    return 0;
  }
  if (!command_line.error.empty()) {
    matchd::Log(matchd::LogLevel::kError, command_line.error + "; matchd --help lists the flags");
    return 2;
  }
  if (!command_line.positional.empty()) {
    matchd::Log(matchd::LogLevel::kError,
                "unexpected argument \"" + command_line.positional[0] +
                    "\"; matchd takes flags only (the configuration file goes in --config)");
    return 2;
  }
  // Debian builds abseil without NDEBUG, which turns on absl::Mutex's deadlock
  // detection: a global graph updated on every lock gRPC takes. A server
  // has no use for it (debug builds of the tests keep it).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (absl::GetFlag(FLAGS_print_default_config)) {
    std::cout << matchd::DefaultConfigJson();
    return 0;
  }
  matchd::LogLevel level;
  if (!matchd::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    matchd::Log(matchd::LogLevel::kError, "bad --log_level; use debug, info, warning or error");
    return 2;
  }
  matchd::SetLogLevel(level);
  matchd::RouteGrpcLogs();
  const absl::Duration drain_delay = absl::GetFlag(FLAGS_drain_delay);
  const absl::Duration drain_spread = absl::GetFlag(FLAGS_drain_spread);
  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  for (const auto& [name, d] : {std::pair<const char*, absl::Duration>{"drain_delay", drain_delay},
                                {"drain_spread", drain_spread},
                                {"drain_timeout", drain_timeout}}) {
    if (d < absl::ZeroDuration() || d > absl::Hours(1)) {
      matchd::Log(matchd::LogLevel::kError,
                  std::string("bad --") + name + "; it must be in [0s, 1h]",
                  {{"got", absl::FormatDuration(d)}});
      return 2;
    }
  }

  // Signals are taken by sigwait below, so block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string config_path = absl::GetFlag(FLAGS_config);
  auto queues = matchd::LoadConfig(config_path);
  if (!queues.ok()) {
    matchd::Log(matchd::LogLevel::kError, "bad configuration",
                {{"error", queues.status().message()}});
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << (config_path.empty() ? "embedded default" : config_path) << ": valid, "
              << queues->size() << (queues->size() == 1 ? " queue:" : " queues:");
    for (const matchd::QueueSettings& q : *queues) std::cout << " " << q.name;
    std::cout << "\n";
    return 0;
  }
  matchd::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.queues = *std::move(queues);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat);
  options.queued_delay = absl::GetFlag(FLAGS_queued_delay);
  options.ticket_retention = absl::GetFlag(FLAGS_ticket_retention);
  options.max_waiting_tickets = absl::GetFlag(FLAGS_max_waiting_tickets);
  options.max_waiting_bytes = absl::GetFlag(FLAGS_max_waiting_bytes);
  options.max_retained_tickets = absl::GetFlag(FLAGS_max_retained_tickets);
  options.max_retained_bytes = absl::GetFlag(FLAGS_max_retained_bytes);
  options.max_receive_message_bytes = absl::GetFlag(FLAGS_max_receive_message_bytes);
  options.keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  options.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  options.min_client_ping_interval = absl::GetFlag(FLAGS_min_client_ping_interval);
  options.max_connection_idle = absl::GetFlag(FLAGS_max_connection_idle);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.max_connection_age_grace = absl::GetFlag(FLAGS_max_connection_age_grace);
  options.memory_quota_bytes = absl::GetFlag(FLAGS_memory_quota);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls_refresh = absl::GetFlag(FLAGS_tls_refresh);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  const size_t queue_count = options.queues.size();
  const bool tls = !options.tls_cert_file.empty();
  const bool mtls = !options.tls_client_ca_file.empty();

  auto started = matchd::MatchmakerServer::Start(std::move(options));
  if (!started.ok()) {
    matchd::Log(matchd::LogLevel::kError, "cannot start", {{"error", started.status().message()}});
    // A bad flag value is bad usage; anything else (an address in use) is not.
    return started.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  matchd::MatchmakerServer& server = **started;
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    bool written;
    {
      std::ofstream out(tmp);
      out << server.port() << "\n";
      out.close();
      written = static_cast<bool>(out);
    }
    // Renamed into place: readers never see a partial file.
    if (!written || std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      matchd::Log(matchd::LogLevel::kError, "cannot write --port_file",
                  {{"path", port_file}, {"error", std::strerror(errno)}});
      std::remove(tmp.c_str());
      server.Shutdown(absl::ZeroDuration());
      return 1;
    }
  }
  matchd::Log(matchd::LogLevel::kInfo, "serving",
              {{"version", matchd::Version()},
               {"grpc", matchd::GrpcVersion() + " from " + matchd::GrpcSource()},
               {"port", server.port()},
               {"metrics_port", server.metrics_port()},
               {"queues", static_cast<int64_t>(queue_count)},
               {"config", config_path.empty() ? "embedded default" : config_path},
               {"tls", tls ? (mtls ? "mtls" : "tls") : "off"}});

  int sig = 0;
  WaitForSignal(signals, absl::InfiniteDuration(), &sig);
  matchd::Log(matchd::LogLevel::kInfo, "signal received; draining",
              {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  server.Drain();
  // A second signal skips the remaining waits, the grace of calls in flight
  // included.
  bool hurry = WaitForSignal(signals, drain_delay, &sig);
  const absl::Duration spread = hurry ? absl::ZeroDuration() : drain_spread;
  server.EndWaitingCalls(spread);
  if (!hurry) hurry = WaitForSignal(signals, spread, &sig);
  server.Shutdown(hurry ? absl::ZeroDuration() : drain_timeout);
  if (!port_file.empty()) std::remove(port_file.c_str());  // it names a port no longer served
  matchd::Log(matchd::LogLevel::kInfo, "stopped");
  return 0;
}
