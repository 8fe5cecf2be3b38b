// noop_server: the floor matchd is measured against (see docs/PERFORMANCE.md).
//
// It serves matchmaking.v1.Matchmaker with no matchmaking logic at all:
//
//  * FindMatch: the call stays silent until a second call for the same queue
//    name arrives; then both get one `matched` event (a match holding the two
//    parties, one team each) and end with OK. One waiting call per queue name.
//    Ratings, regions and party sizes are ignored. A waiting call that the
//    caller cancels leaves its slot.
//  * CreateTicket / GetTicket: the same pairing for the polling way. GetTicket
//    answers QUEUED until the ticket is paired, then MATCHED once, after which
//    the ticket is forgotten (the baseline keeps no retention).
//  * ListQueues answers an empty list (load tools use it as a round trip);
//    CancelTicket and WatchTicket answer UNIMPLEMENTED.
//  * --default_health_service adds gRPC's default health service, only to
//    measure what it costs (docs/PERFORMANCE.md); off by default.
//
// Threads: --threads event loops, each one completion queue polled by one
// thread. Every call object belongs to the loop it was requested on, except
// that the loop pairing two calls issues the final write of both (gRPC allows
// starting an operation from any thread; its completion still arrives on the
// call's own queue). The pairing slots are one map behind one mutex: with the
// thread counts used here that is the cheapest correct thing.
//
//   noop_server --listen 127.0.0.1:0 --port_file /tmp/port --threads 1
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "matchmaking/v1/matchmaking.grpc.pb.h"
#include "service/completion.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "Address to serve on (host:port; port 0 = any).");
ABSL_FLAG(std::string, port_file, "", "If set, the bound port is written here once serving.");
ABSL_FLAG(int, threads, 1, "Event loops: one completion queue and one thread each.");
ABSL_FLAG(bool, default_health_service, false,
          "Also serve gRPC's default health service (as matchd does), to measure its cost: it "
          "is built on the callback API, whose completion queue brings its own polling threads.");

namespace {

namespace mm = ::matchmaking::v1;
using Service = mm::Matchmaker::AsyncService;

// Completion-queue tags: the same types as matchd's (service/completion.h).
using Tag = matchd::Completion;
template <typename T>
using MemberTag = matchd::MemberCompletion<T>;

class FindMatchCall;

// A polling ticket.
struct PollTicket {
  std::string queue;
  google::protobuf::RepeatedPtrField<mm::Player> players;
  bool matched = false;
  mm::Match match;
};

// All pairing state, shared by the loops.
struct State {
  Service service;
  std::atomic<uint64_t> next_match{1};

  std::mutex mu;
  // The FindMatch call waiting in each queue (at most one).
  std::unordered_map<std::string, FindMatchCall*> waiting_calls;
  // Polling tickets by id, and the ticket waiting in each queue.
  std::unordered_map<std::string, PollTicket> tickets;
  std::unordered_map<std::string, std::string> waiting_tickets;
  uint64_t next_ticket = 1;
};

// A match of two parties, one team each.
mm::Match MakeMatch(State* state, const std::string& queue,
                    const google::protobuf::RepeatedPtrField<mm::Player>& first,
                    const google::protobuf::RepeatedPtrField<mm::Player>& second) {
  mm::Match match;
  match.set_match_id(absl::StrCat("m-", state->next_match.fetch_add(1)));
  match.set_queue(queue);
  *match.add_teams()->mutable_players() = first;
  *match.add_teams()->mutable_players() = second;
  return match;
}

// FindMatch. States: requested -> waiting (in its queue's slot) or paired ->
// final write issued -> freed once gRPC reported the call done and, if a final
// write was issued, that write completed. `paired_` is guarded by State::mu
// (the pairing loop sets it); everything else is touched by the owning loop
// only, because all of the call's completions arrive on its own queue.
class FindMatchCall {
 public:
  static void Request(State* state, grpc::ServerCompletionQueue* cq) {
    auto* call = new FindMatchCall(state, cq);
    call->ctx_.AsyncNotifyWhenDone(&call->done_tag_);
    state->service.RequestFindMatch(&call->ctx_, &call->request_, &call->writer_, cq, cq,
                                    &call->requested_tag_);
  }

 private:
  FindMatchCall(State* state, grpc::ServerCompletionQueue* cq) : state_(state), cq_(cq) {}

  void OnRequested(bool ok) {
    if (!ok) {  // shutting down: the call never started, no done tag follows
      delete this;
      return;
    }
    Request(state_, cq_);
    FindMatchCall* partner = nullptr;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      auto [it, inserted] = state_->waiting_calls.try_emplace(request_.queue(), this);
      if (!inserted) {
        partner = it->second;
        state_->waiting_calls.erase(it);
        partner->paired_ = true;
        paired_ = true;
      }
    }
    if (partner == nullptr) return;  // wait for the second caller
    mm::MatchEvent event;
    *event.mutable_matched()->mutable_match() =
        MakeMatch(state_, request_.queue(), partner->request_.players(), request_.players());
    // The message is serialized at once, so one event object serves both.
    partner->writer_.WriteAndFinish(event, grpc::WriteOptions(), grpc::Status::OK,
                                    &partner->finished_tag_);
    writer_.WriteAndFinish(event, grpc::WriteOptions(), grpc::Status::OK, &finished_tag_);
  }

  void OnFinished(bool /*ok*/) {
    finished_ = true;
    if (done_) delete this;
  }

  void OnDone(bool /*ok*/) {
    done_ = true;
    bool paired;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      paired = paired_;
      if (!paired) {  // cancelled while waiting: free the slot
        auto it = state_->waiting_calls.find(request_.queue());
        if (it != state_->waiting_calls.end() && it->second == this) {
          state_->waiting_calls.erase(it);
        }
      }
    }
    // A paired call's final write is issued (or about to be, by the pairing
    // loop) and completes on this loop; free the call then.
    if (!paired || finished_) delete this;
  }

  State* const state_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  mm::FindMatchRequest request_;
  grpc::ServerAsyncWriter<mm::MatchEvent> writer_{&ctx_};
  bool paired_ = false;  // guarded by state_->mu
  bool finished_ = false;
  bool done_ = false;
  MemberTag<FindMatchCall> requested_tag_{this, &FindMatchCall::OnRequested};
  MemberTag<FindMatchCall> finished_tag_{this, &FindMatchCall::OnFinished};
  MemberTag<FindMatchCall> done_tag_{this, &FindMatchCall::OnDone};
};

// A unary call: requested -> handled -> Finish -> freed.
template <typename Request, typename Response>
class UnaryCall final {
 public:
  using RequestMethod = void (Service::*)(grpc::ServerContext*, Request*,
                                          grpc::ServerAsyncResponseWriter<Response>*,
                                          grpc::CompletionQueue*, grpc::ServerCompletionQueue*,
                                          void*);
  // Fills the response, or returns an error status.
  using Handler = grpc::Status (*)(State*, const Request&, Response*);

  static void Listen(State* state, grpc::ServerCompletionQueue* cq, RequestMethod method,
                       Handler handler) {
    auto* call = new UnaryCall(state, cq, method, handler);
    (state->service.*method)(&call->ctx_, &call->request_, &call->responder_, cq, cq,
                             &call->requested_tag_);
  }

 private:
  UnaryCall(State* state, grpc::ServerCompletionQueue* cq, RequestMethod method, Handler handler)
      : state_(state), cq_(cq), method_(method), handler_(handler) {}

  void OnRequested(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    Listen(state_, cq_, method_, handler_);
    Response response;
    const grpc::Status status = handler_(state_, request_, &response);
    if (status.ok()) {
      responder_.Finish(response, status, &finished_tag_);
    } else {
      responder_.FinishWithError(status, &finished_tag_);
    }
  }
  void OnFinished(bool /*ok*/) { delete this; }

  State* const state_;
  grpc::ServerCompletionQueue* const cq_;
  const RequestMethod method_;
  const Handler handler_;
  grpc::ServerContext ctx_;
  Request request_;
  grpc::ServerAsyncResponseWriter<Response> responder_{&ctx_};
  MemberTag<UnaryCall> requested_tag_{this, &UnaryCall::OnRequested};
  MemberTag<UnaryCall> finished_tag_{this, &UnaryCall::OnFinished};
};

// WatchTicket: not part of the baseline; ends at once with UNIMPLEMENTED.
class WatchTicketCall final {
 public:
  static void Request(State* state, grpc::ServerCompletionQueue* cq) {
    auto* call = new WatchTicketCall(state, cq);
    state->service.RequestWatchTicket(&call->ctx_, &call->request_, &call->writer_, cq, cq,
                                      &call->requested_tag_);
  }

 private:
  WatchTicketCall(State* state, grpc::ServerCompletionQueue* cq) : state_(state), cq_(cq) {}
  void OnRequested(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    Request(state_, cq_);
    writer_.Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not in the no-op server"),
                   &finished_tag_);
  }
  void OnFinished(bool /*ok*/) { delete this; }

  State* const state_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  mm::WatchTicketRequest request_;
  grpc::ServerAsyncWriter<mm::MatchEvent> writer_{&ctx_};
  MemberTag<WatchTicketCall> requested_tag_{this, &WatchTicketCall::OnRequested};
  MemberTag<WatchTicketCall> finished_tag_{this, &WatchTicketCall::OnFinished};
};

void FillTicket(const std::string& id, const PollTicket& t, mm::Ticket* out) {
  out->set_ticket_id(id);
  out->set_queue(t.queue);
  out->set_state(t.matched ? mm::Ticket::MATCHED : mm::Ticket::QUEUED);
  if (t.matched) *out->mutable_match() = t.match;
}

grpc::Status CreateTicket(State* state, const mm::CreateTicketRequest& request,
                          mm::Ticket* response) {
  std::lock_guard<std::mutex> lock(state->mu);
  const std::string id = absl::StrCat("t", state->next_ticket++);
  PollTicket& mine = state->tickets[id];
  mine.queue = request.queue();
  mine.players = request.players();
  auto [it, inserted] = state->waiting_tickets.try_emplace(request.queue(), id);
  if (!inserted) {  // pair with the waiting ticket
    PollTicket& other = state->tickets.at(it->second);
    state->waiting_tickets.erase(it);
    other.match = MakeMatch(state, request.queue(), other.players, mine.players);
    other.matched = true;
    mine.match = other.match;
    mine.matched = true;
  }
  FillTicket(id, mine, response);
  if (mine.matched) state->tickets.erase(id);  // reported MATCHED: done with it
  return grpc::Status::OK;
}

grpc::Status GetTicket(State* state, const mm::GetTicketRequest& request, mm::Ticket* response) {
  std::lock_guard<std::mutex> lock(state->mu);
  auto it = state->tickets.find(request.ticket_id());
  if (it == state->tickets.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "ticket not found");
  }
  FillTicket(it->first, it->second, response);
  if (it->second.matched) state->tickets.erase(it);  // reported MATCHED: done with it
  return grpc::Status::OK;
}

grpc::Status ListQueues(State* /*state*/, const mm::ListQueuesRequest& /*request*/,
                        mm::ListQueuesResponse* /*response*/) {
  return grpc::Status::OK;
}

grpc::Status CancelTicket(State* /*state*/, const mm::CancelTicketRequest& /*request*/,
                          mm::Ticket* /*response*/) {
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not in the no-op server");
}

// Requests the first call of every method on `cq`.
void StartAccepting(State* state, grpc::ServerCompletionQueue* cq) {
  FindMatchCall::Request(state, cq);
  WatchTicketCall::Request(state, cq);
  UnaryCall<mm::CreateTicketRequest, mm::Ticket>::Listen(
      state, cq, &Service::RequestCreateTicket, &CreateTicket);
  UnaryCall<mm::GetTicketRequest, mm::Ticket>::Listen(state, cq, &Service::RequestGetTicket,
                                                        &GetTicket);
  UnaryCall<mm::CancelTicketRequest, mm::Ticket>::Listen(
      state, cq, &Service::RequestCancelTicket, &CancelTicket);
  UnaryCall<mm::ListQueuesRequest, mm::ListQueuesResponse>::Listen(
      state, cq, &Service::RequestListQueues, &ListQueues);
}

void RunLoop(grpc::ServerCompletionQueue* cq) {
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<Tag*>(tag)->OnComplete(ok);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("noop_server: a logic-free Matchmaker baseline for benchmarks.");
  absl::ParseCommandLine(argc, argv);
  // As matchd does: no absl::Mutex deadlock detection (on in Debian's abseil).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1) {
    std::cerr << "noop_server: --threads must be >= 1" << std::endl;
    return 2;
  }

  // SIGTERM/SIGINT are taken by sigwait; block them before threads start.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  State state;
  if (absl::GetFlag(FLAGS_default_health_service)) grpc::EnableDefaultHealthCheckService(true);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&state.service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (int i = 0; i < threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "noop_server: cannot listen on " << absl::GetFlag(FLAGS_listen) << std::endl;
    return 1;
  }
  std::vector<std::thread> loops;
  for (auto& cq : cqs) {
    StartAccepting(&state, cq.get());
    loops.emplace_back(RunLoop, cq.get());
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::rename(tmp.c_str(), port_file.c_str());  // readers never see a partial file
  }
  std::cerr << "noop_server serving on port " << port << " with " << threads << " threads"
            << std::endl;

  int sig = 0;
  sigwait(&signals, &sig);
  // No grace: waiting calls are cancelled, their done tags free them.
  server->Shutdown(std::chrono::system_clock::now());
  for (auto& cq : cqs) cq->Shutdown();
  for (auto& t : loops) t.join();
  return 0;
}
