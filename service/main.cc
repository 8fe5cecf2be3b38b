// matchd: the matchmaking server. Flags -> ServerOptions -> Start -> wait for
// SIGTERM/SIGINT -> drain -> Shutdown(deadline) -> exit 0.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/config.h"
#include "service/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "Address to serve gRPC on (host:port).");
ABSL_FLAG(std::string, config, "",
          "Queue configuration file (JSON, schema matchd.config.v1.ServerConfig); empty means "
          "the embedded default (queues duel, squad, ffa, casual).");
ABSL_FLAG(int, threads, 0, "Event loops, one thread each; 0 means one per core.");
ABSL_FLAG(absl::Duration, heartbeat, absl::Seconds(5),
          "Interval between `searching` events of a waiting ticket.");
ABSL_FLAG(absl::Duration, ticket_retention, absl::Seconds(60),
          "How long a finished ticket still answers GetTicket and WatchTicket.");
ABSL_FLAG(int64_t, max_waiting_tickets, 1000000,
          "Most tickets waiting in all queues together (RESOURCE_EXHAUSTED beyond).");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "On SIGTERM/SIGINT: how long in-flight calls get to finish before they are cancelled.");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound port is written to this file once serving (useful with port 0).");
ABSL_FLAG(bool, print_default_config, false, "Print the embedded default config and exit.");

namespace {

void Log(const std::string& level, const std::string& msg) {
  std::cerr << absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()) << " "
            << level << " " << msg << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("matchd: a streaming matchmaking server. Flags: --helpfull.");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_print_default_config)) {
    std::cout << matchd::DefaultConfigJson();
    return 0;
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
    Log("ERROR", std::string(queues.status().message()));
    return 2;
  }
  matchd::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.queues = *std::move(queues);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat);
  options.ticket_retention = absl::GetFlag(FLAGS_ticket_retention);
  options.max_waiting_tickets = absl::GetFlag(FLAGS_max_waiting_tickets);
  const size_t queue_count = options.queues.size();

  auto server = matchd::MatchmakerServer::Start(std::move(options));
  if (!server.ok()) {
    Log("ERROR", std::string(server.status().message()));
    return 1;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    std::rename(tmp.c_str(), port_file.c_str());  // readers never see a partial file
  }
  Log("INFO", absl::StrCat("matchd serving on port ", (*server)->port(), " with ", queue_count,
                           " queues from ",
                           config_path.empty() ? "the embedded default config" : config_path));

  int sig = 0;
  sigwait(&signals, &sig);
  Log("INFO", absl::StrCat("received ", sig == SIGTERM ? "SIGTERM" : "SIGINT", "; draining"));
  (*server)->Shutdown(absl::GetFlag(FLAGS_drain_timeout));
  Log("INFO", "stopped");
  return 0;
}
