#include "service/server.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <utility>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/calls.h"
#include "service/command_line.h"
#include "service/log.h"
#include "service/queue_runtime.h"

namespace matchd {

namespace {

constexpr char kServiceName[] = "matchmaking.v1.Matchmaker";
constexpr char kLivenessName[] = "liveness";
constexpr absl::Duration kLagProbeInterval = absl::Seconds(1);
constexpr int kMaxThreads = 256;
constexpr int64_t kMinMemoryQuotaBytes = 1 << 20;

int Millis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), INT32_MAX));
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert_file.empty() && options.tls_key_file.empty()) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("a TLS client CA needs a server certificate and key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  // Read once here, so that a missing or malformed file stops the start with
  // its name.
  const bool mutual = !options.tls_client_ca_file.empty();
  absl::StatusOr<std::string> cert = ReadPemFile("tls_cert", options.tls_cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile("tls_key", options.tls_key_file);
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> ca = std::string();
  if (mutual) ca = ReadPemFile("tls_client_ca", options.tls_client_ca_file);
  if (!ca.ok()) return ca.status();
  if (options.tls_refresh == absl::ZeroDuration()) {  // these contents until a restart
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (mutual) {
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    return grpc::SslServerCredentials(ssl);
  }
  // gRPC's watcher reads the files again every tls_refresh. New connections
  // get what it read last: a renewed pair that does not load (a key that
  // does not match its certificate) fails their handshakes, logged, until
  // the files are right again.
  const auto refresh = static_cast<unsigned int>(absl::ToInt64Seconds(options.tls_refresh));
  auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.tls_key_file, options.tls_cert_file, options.tls_client_ca_file, refresh);
  grpc::experimental::TlsServerCredentialsOptions tls(files);
  tls.watch_identity_key_cert_pairs();
  if (mutual) {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

// host:port with a port in 0..65535 (0: any free port), or unix:path.
absl::Status CheckAddress(const char* what, const std::string& address, bool unix_allowed) {
  if (unix_allowed && absl::StartsWith(address, "unix:")) return absl::OkStatus();
  const size_t colon = address.rfind(':');
  const std::string port = colon == std::string::npos ? "" : address.substr(colon + 1);
  int value = 0;
  if (colon == 0 || port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(port, &value) || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be host:port with a port in 0..65535 (0: any free port)",
                     unix_allowed ? " or unix:PATH" : "", ", got \"", address, "\""));
  }
  return absl::OkStatus();
}

absl::Status CheckOptions(const ServerOptions& options) {
  if (options.queues.empty()) return absl::InvalidArgumentError("at least one queue is required");
  if (absl::Status st = CheckAddress("listen address", options.listen_address,
                                     /*unix_allowed=*/true);
      !st.ok()) {
    return st;
  }
  if (!options.metrics_listen.empty()) {
    if (absl::StartsWith(options.metrics_listen, "unix:")) {
      return absl::InvalidArgumentError("metrics address must be host:port, not a unix socket");
    }
    if (absl::Status st = CheckAddress("metrics address", options.metrics_listen,
                                       /*unix_allowed=*/false);
        !st.ok()) {
      return st;
    }
  }
  if (options.threads < 0 || options.threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be in 0..", kMaxThreads, " (0: one per core), got ",
                     options.threads));
  }
  if (options.heartbeat_interval < absl::Milliseconds(100) ||
      options.heartbeat_interval > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("heartbeat interval must be in [100ms, 1h], got ",
                     absl::FormatDuration(options.heartbeat_interval)));
  }
  if (options.queued_delay < absl::ZeroDuration() ||
      options.queued_delay > options.heartbeat_interval) {
    return absl::InvalidArgumentError("queued delay must be in [0, heartbeat interval]");
  }
  if (options.ticket_retention < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ticket retention must be >= 0");
  }
  if (options.max_waiting_tickets < 1) {
    return absl::InvalidArgumentError("max waiting tickets must be >= 1");
  }
  if (options.max_waiting_bytes < kMinWaitingBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max waiting bytes must be >= ", kMinWaitingBytes,
        " (1 MiB: room for the largest valid ticket), got ", options.max_waiting_bytes));
  }
  const std::pair<const char*, absl::Duration> durations[] = {
      {"keepalive_time", options.keepalive_time},
      {"keepalive_timeout", options.keepalive_timeout},
      {"min_client_ping_interval", options.min_client_ping_interval},
      {"max_connection_idle", options.max_connection_idle},
      {"max_connection_age", options.max_connection_age},
      {"max_connection_age_grace", options.max_connection_age_grace}};
  for (const auto& [name, d] : durations) {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be > 0, got ", absl::FormatDuration(d)));
    }
  }
  if (options.max_retained_tickets < 0) {
    return absl::InvalidArgumentError("max retained tickets must be >= 0");
  }
  if (options.max_retained_bytes < 0) {
    return absl::InvalidArgumentError("max retained bytes must be >= 0");
  }
  if ((options.tls_refresh != absl::ZeroDuration() && options.tls_refresh < absl::Seconds(1)) ||
      options.tls_refresh > absl::Hours(1) ||
      options.tls_refresh != absl::Seconds(absl::ToInt64Seconds(options.tls_refresh))) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_refresh must be 0 (read once) or whole seconds from 1s to 1h, got ",
                     absl::FormatDuration(options.tls_refresh)));
  }
  if (options.max_receive_message_bytes < 1024) {
    return absl::InvalidArgumentError("max receive message size must be >= 1024 bytes");
  }
  if (options.memory_quota_bytes < 0 ||
      (options.memory_quota_bytes > 0 && options.memory_quota_bytes < kMinMemoryQuotaBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory quota must be 0 (none) or at least ", kMinMemoryQuotaBytes,
        " bytes (gRPC cannot serve a call below that), got ", options.memory_quota_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

QueueRuntime* Runtime::FindQueue(const std::string& name) const {
  auto it = queue_index.find(name);
  return it == queue_index.end() ? nullptr : queues[it->second].get();
}

void Runtime::CallDestroyed() {
  if (live_calls.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_cv_.notify_all();
  }
}

bool Runtime::WaitForNoCalls(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(calls_mu_);
  return calls_cv_.wait_until(lock, absl::ToChronoTime(deadline),
                              [this] { return live_calls.load() == 0; });
}

absl::StatusOr<std::unique_ptr<MatchmakerServer>> MatchmakerServer::Start(
    ServerOptions options) {
  if (absl::Status st = CheckOptions(options); !st.ok()) return st;
  auto credentials = MakeCredentials(options);
  if (!credentials.ok()) return credentials.status();
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  std::unique_ptr<MatchmakerServer> server(new MatchmakerServer());
  server->runtime_ = std::make_unique<Runtime>();
  Runtime& rt = *server->runtime_;
  rt.clock = options.clock != nullptr ? options.clock : RealClock::Get();
  rt.limits.heartbeat_interval = options.heartbeat_interval;
  rt.limits.queued_delay = options.queued_delay;
  rt.limits.ticket_retention = options.ticket_retention;
  rt.limits.max_waiting_tickets = options.max_waiting_tickets;
  rt.limits.max_retained_tickets = options.max_retained_tickets;
  rt.limits.max_retained_bytes_per_queue =
      options.max_retained_bytes / static_cast<int64_t>(options.queues.size());
  rt.limits.stalled_write_after = options.keepalive_time + options.keepalive_timeout;
  std::vector<std::string> queue_names;
  for (const QueueSettings& q : options.queues) queue_names.push_back(q.name);
  rt.metrics =
      std::make_shared<Metrics>(std::move(queue_names), threads, options.max_waiting_bytes);

  if (!options.metrics_listen.empty()) {
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", options.metrics_listen, ": ", e.what()));
    }
    server->exposer_->RegisterCollectable(rt.metrics);
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    server->metrics_port_ = ports.empty() ? 0 : ports.front();
  }

  // Health is served on our own loops (calls.cc): gRPC's default health
  // service runs on the callback API, whose extra polling threads took about
  // half of the server's CPU per ticket in docs/PERFORMANCE.md.
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, *credentials, &server->port_);
  // gRPC sets SO_REUSEPORT by default: a second matchd on the same port would
  // start and take half the connections to a pool of its own.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&rt.service);
  builder.RegisterService(&rt.health_service);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(options.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(options.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             Millis(options.min_client_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             Millis(options.max_connection_idle));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, Millis(options.max_connection_age));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             Millis(options.max_connection_age_grace));
  if (options.memory_quota_bytes > 0) {
    grpc::ResourceQuota quota("matchd");
    quota.Resize(static_cast<size_t>(options.memory_quota_bytes));
    builder.SetResourceQuota(quota);
  }
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (int i = 0; i < threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    if (server->server_ != nullptr) {
      // Started without the port: stop it before its queues go.
      server->server_->Shutdown(std::chrono::system_clock::now());
      for (auto& cq : cqs) {
        cq->Shutdown();
        void* tag;
        bool ok;
        while (cq->Next(&tag, &ok)) {
        }
      }
      server->server_.reset();
    }
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        options.tls_cert_file.empty()
            ? " (address in use, or not an address of this host?)"
            : " (address in use, not an address of this host, or a TLS certificate and key "
              "that gRPC refused: see its log line above)"));
  }
  for (int i = 0; i < threads; ++i) {
    rt.loops.push_back(std::make_unique<EventLoop>(i, std::move(cqs[i]), rt.clock));
  }
  // Each queue belongs to one loop, round robin.
  for (size_t i = 0; i < options.queues.size(); ++i) {
    EventLoop* owner = rt.loops[i % rt.loops.size()].get();
    rt.queue_index[options.queues[i].name] = static_cast<int>(i);
    rt.queues.push_back(std::make_unique<QueueRuntime>(static_cast<int>(i),
                                                       std::move(options.queues[i]), &rt, owner));
  }
  rt.streams.assign(rt.loops.size(), nullptr);
  for (auto& loop : rt.loops) StartAcceptingCalls(&rt, loop.get());
  for (auto& loop : rt.loops) loop->Start();
  for (auto& loop : rt.loops) server->StartLagProbe(loop.get());
  for (auto& loop : rt.loops) server->StartStreamSweep(loop.get());

  rt.health.Set(kServiceName, true);
  rt.health.Set(kLivenessName, true);
  rt.health.Set("", true);
  return server;
}

void MatchmakerServer::StartLagProbe(EventLoop* loop) {
  // A timer that re-arms itself; how late it runs is the loop's lag.
  struct Probe {
    static void Arm(EventLoop* loop, Metrics* metrics) {
      const absl::Time due = loop->clock().Now() + kLagProbeInterval;
      loop->RunAt(due, [loop, metrics, due] {
        metrics->RecordLoopLag(loop->index(), loop->clock().Now() - due);
        Arm(loop, metrics);
      });
    }
  };
  Metrics* metrics = runtime_->metrics.get();
  loop->Post([loop, metrics] { Probe::Arm(loop, metrics); });
}

void MatchmakerServer::StartStreamSweep(EventLoop* loop) {
  struct Sweeper {
    static void Arm(EventLoop* loop, Runtime* runtime) {
      loop->RunAt(loop->clock().Now() + runtime->limits.stalled_write_after / 2, [loop, runtime] {
        StreamCall::Sweep(runtime, loop);
        Arm(loop, runtime);
      });
    }
  };
  Runtime* runtime = runtime_.get();
  loop->Post([loop, runtime] { Sweeper::Arm(loop, runtime); });
}

MatchmakerServer::~MatchmakerServer() { Shutdown(absl::ZeroDuration()); }

void MatchmakerServer::Drain() {
  if (runtime_ == nullptr || runtime_->draining.exchange(true)) return;
  Log(LogLevel::kInfo, "draining: readiness NOT_SERVING, new tickets refused");
  runtime_->health.Set(kServiceName, false);
  runtime_->health.Set("", false);
}

void MatchmakerServer::EndWaitingCalls(absl::Duration spread) {
  if (runtime_ == nullptr || shut_down_) return;
  Drain();
  // The window starts now, not when each loop gets to it.
  const absl::Time start = runtime_->clock->Now();
  for (auto& queue : runtime_->queues) {
    QueueRuntime* q = queue.get();
    q->loop()->Post([q, start, spread] { q->EndWaiting(start, spread); });
  }
}

void MatchmakerServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || runtime_ == nullptr) return;
  if (server_ == nullptr) {
    // Start failed before gRPC served (an address in use): nothing runs yet.
    shut_down_ = true;
    exposer_.reset();
    return;
  }
  EndWaitingCalls(absl::ZeroDuration());
  shut_down_ = true;
  runtime_->health.Shutdown();  // ends health watches, which never end on their own
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  // Every call is now finished or cancelled, and every pending request has
  // failed; the loops still run so that the call objects complete their last
  // operations and free themselves. Only then may the queues shut down.
  if (!runtime_->WaitForNoCalls(absl::Now() + absl::Seconds(10))) {
    Log(LogLevel::kError, "call objects still alive 10s after shutdown");
  }
  for (auto& loop : runtime_->loops) loop->StopAndJoin();
  exposer_.reset();
}

size_t MatchmakerServer::timers_armed() const {
  size_t armed = 0;
  for (const auto& loop : runtime_->loops) armed += loop->timers_armed();
  return armed;
}

void MatchmakerServer::WakeLoops() {
  for (auto& loop : runtime_->loops) loop->Post([] {});
}

}  // namespace matchd
