#include "service/server.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <utility>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "service/calls.h"
#include "service/queue_runtime.h"

namespace matchd {

namespace {
constexpr char kServiceName[] = "matchmaking.v1.Matchmaker";
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
  if (options.queues.empty()) return absl::InvalidArgumentError("at least one queue is required");
  if (options.threads < 0) return absl::InvalidArgumentError("threads must be >= 0");
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat interval must be > 0");
  }
  if (options.ticket_retention < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ticket retention must be >= 0");
  }
  if (options.max_waiting_tickets < 1) {
    return absl::InvalidArgumentError("max waiting tickets must be >= 1");
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  std::unique_ptr<MatchmakerServer> server(new MatchmakerServer());
  server->runtime_ = std::make_unique<Runtime>();
  Runtime& rt = *server->runtime_;
  rt.clock = options.clock != nullptr ? options.clock : RealClock::Get();
  rt.limits.heartbeat_interval = options.heartbeat_interval;
  rt.limits.ticket_retention = options.ticket_retention;
  rt.limits.max_waiting_tickets = options.max_waiting_tickets;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(&rt.service);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (int i = 0; i < threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address,
                     " (address in use, or not an address of this host?)"));
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
  for (auto& loop : rt.loops) StartAcceptingCalls(&rt, loop.get());
  for (auto& loop : rt.loops) loop->Start();

  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(true);
  return server;
}

MatchmakerServer::~MatchmakerServer() { Shutdown(absl::ZeroDuration()); }

void MatchmakerServer::Drain() {
  if (runtime_ == nullptr || runtime_->draining.exchange(true)) return;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(kServiceName, false);
    health->SetServingStatus(false);
  }
  for (auto& queue : runtime_->queues) {
    QueueRuntime* q = queue.get();
    q->loop()->Post([q] { q->Drain(); });
  }
}

void MatchmakerServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || runtime_ == nullptr) return;
  shut_down_ = true;
  Drain();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  // Every call is now finished or cancelled, and every pending request has
  // failed; the loops still run so that the call objects complete their last
  // operations and free themselves. Only then may the queues shut down.
  if (!runtime_->WaitForNoCalls(absl::Now() + absl::Seconds(10))) {
    std::fprintf(stderr, "matchd: call objects still alive 10s after shutdown\n");
  }
  for (auto& loop : runtime_->loops) loop->StopAndJoin();
}

void MatchmakerServer::WakeLoops() {
  for (auto& loop : runtime_->loops) loop->Post([] {});
}

}  // namespace matchd
