#include "service/calls.h"

#include <chrono>
#include <type_traits>
#include <utility>
#include <variant>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "service/log.h"
#include "service/queue_runtime.h"
#include "service/status_util.h"
#include "service/validation.h"

namespace matchd {
namespace {

namespace mm = ::matchmaking::v1;
namespace hv1 = ::grpc::health::v1;

const grpc::Status kDraining(grpc::StatusCode::UNAVAILABLE,
                             "server is draining; retry on another replica");

// grpc::ByteBuffer (gRPC 1.51) has no move constructor: std::move copies it,
// which allocates a new grpc_byte_buffer. This holder moves by swapping.
struct MovableByteBuffer {
  explicit MovableByteBuffer(grpc::ByteBuffer* from) { buffer.Swap(from); }
  MovableByteBuffer(MovableByteBuffer&& other) noexcept { buffer.Swap(&other.buffer); }
  MovableByteBuffer& operator=(MovableByteBuffer&& other) noexcept {
    buffer.Swap(&other.buffer);
    return *this;
  }
  grpc::ByteBuffer buffer;
};

grpc::Status UnknownQueue(const std::string& name) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("unknown queue \"", name, "\"; ListQueues shows the queues"));
}

grpc::Status TooLarge(size_t bytes) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("request is ", bytes, " bytes; the limit is ",
                                   kMaxRequestBytes));
}

// The queue that owns `ticket_id`, or an error for the caller.
QueueRuntime* QueueOfTicket(Runtime* runtime, const std::string& ticket_id,
                            grpc::Status* error) {
  if (absl::Status st = ValidateTicketId(ticket_id); !st.ok()) {
    *error = ToGrpcStatus(st);
    return nullptr;
  }
  const int index = QueueRuntime::QueueIndexOf(ticket_id);
  if (index < 0 || index >= static_cast<int>(runtime->queues.size())) {
    *error = grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("ticket ", ticket_id, " not found"));
    return nullptr;
  }
  return runtime->queues[index].get();
}

// The caller's deadline on `clock` (which may be a manual clock in tests).
absl::Time CallerDeadline(const grpc::ServerContext& ctx, const Clock& clock) {
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return clock.Now() + absl::FromChrono(deadline - std::chrono::system_clock::now());
}

// A unary call. The handler runs on the loop that accepted the call and hands
// the Responder to whichever loop owns the state; that loop calls Reply or
// Fail exactly once. Like every operation on a call, the Finish is issued on
// the call's own loop (a post back when the reply comes from another loop).
// kRaw: the method is registered raw (bytes in and out) and the call parses
// the request itself, so that a malformed one is INVALID_ARGUMENT rather
// than gRPC's INTERNAL "Unable to parse request".
template <typename Service, typename Request, typename Response, bool kRaw = false>
class UnaryCall final : public Responder<Response> {
 public:
  using WireRequest = std::conditional_t<kRaw, grpc::ByteBuffer, Request>;
  using WireResponse = std::conditional_t<kRaw, grpc::ByteBuffer, Response>;
  using RequestMethod = void (Service::*)(
      grpc::ServerContext*, WireRequest*, grpc::ServerAsyncResponseWriter<WireResponse>*,
      grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);
  using Handler = void (*)(Runtime*, const Request&, Responder<Response>*);

  static void Listen(Runtime* runtime, Service* service, EventLoop* loop, Rpc rpc,
                     RequestMethod method, Handler handler) {
    auto* call = new UnaryCall(runtime, service, loop, rpc, method, handler);
    (service->*method)(&call->ctx_, &call->wire_request_, &call->responder_, loop->cq(),
                               loop->cq(), call->requested_tag_.Arm());
  }

  void Reply(const Response& response) override {
    if (!loop_->InLoopThread()) {
      loop_->Post([this, response] { Reply(response); });
      return;
    }
    if constexpr (kRaw) {
      grpc::ByteBuffer bytes;
      bool own_buffer;
      grpc::Status serialized =
          grpc::SerializationTraits<Response>::Serialize(response, &bytes, &own_buffer);
      if (!serialized.ok()) return Fail(serialized);
      FinishOk(bytes);
    } else {
      FinishOk(response);
    }
  }
  void Fail(const grpc::Status& status) override {
    if (!loop_->InLoopThread()) {
      loop_->Post([this, status] { Fail(status); });
      return;
    }
    runtime_->metrics->RecordRpc(loop_->index(), rpc_, status.error_code());
    responder_.FinishWithError(status, finished_tag_.Arm());
  }

 private:
  UnaryCall(Runtime* runtime, Service* service, EventLoop* loop, Rpc rpc, RequestMethod method,
            Handler handler)
      : token_(runtime),
        runtime_(runtime),
        service_(service),
        loop_(loop),
        rpc_(rpc),
        method_(method),
        handler_(handler) {}

  void OnRequested(bool ok) {
    if (!ok) {  // the server is shutting down; the call never started
      delete this;
      return;
    }
    Listen(runtime_, service_, loop_, rpc_, method_, handler_);
    if constexpr (kRaw) {
      if (wire_request_.Length() > kMaxRequestBytes) return Fail(TooLarge(wire_request_.Length()));
      grpc::ProtoBufferReader reader(&wire_request_);
      const bool parsed = parsed_.ParseFromZeroCopyStream(&reader);
      wire_request_.Clear();
      if (!parsed) {
        return Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 absl::StrCat("request is not a valid ",
                                              Request::descriptor()->name())));
      }
      handler_(runtime_, parsed_, this);
    } else {
      if (wire_request_.ByteSizeLong() > kMaxRequestBytes) {
        return Fail(TooLarge(wire_request_.ByteSizeLong()));
      }
      handler_(runtime_, wire_request_, this);
    }
  }
  void OnFinished(bool /*ok*/) { delete this; }
  void FinishOk(const WireResponse& response) {
    runtime_->metrics->RecordRpc(loop_->index(), rpc_, grpc::StatusCode::OK);
    responder_.Finish(response, grpc::Status::OK, finished_tag_.Arm());
  }

  LiveCallToken token_;
  Runtime* const runtime_;
  Service* const service_;
  EventLoop* const loop_;
  const Rpc rpc_;
  const RequestMethod method_;
  const Handler handler_;
  grpc::ServerContext ctx_;
  // Raw: the bytes as received, parsed into parsed_. Else the request gRPC
  // parsed.
  WireRequest wire_request_;
  std::conditional_t<kRaw, Request, std::monostate> parsed_;
  grpc::ServerAsyncResponseWriter<WireResponse> responder_{&ctx_};
  MemberCompletion<UnaryCall> requested_tag_{this, &UnaryCall::OnRequested};
  MemberCompletion<UnaryCall> finished_tag_{this, &UnaryCall::OnFinished};
};

void HandleCreateTicket(Runtime* rt, const mm::CreateTicketRequest& request,
                        Responder<mm::Ticket>* responder) {
  if (rt->draining.load()) return responder->Fail(kDraining);
  QueueRuntime* queue = rt->FindQueue(request.queue());
  if (queue == nullptr) return responder->Fail(UnknownQueue(request.queue()));
  if (absl::Status st = ValidateParty(request.players(), queue->settings()); !st.ok()) {
    return responder->Fail(ToGrpcStatus(st));
  }
  queue->loop()->Post([queue, request, responder]() mutable {
    queue->CreateTicket(std::move(request), responder);
  });
}

void HandleGetTicket(Runtime* rt, const mm::GetTicketRequest& request,
                     Responder<mm::Ticket>* responder) {
  grpc::Status error;
  QueueRuntime* queue = QueueOfTicket(rt, request.ticket_id(), &error);
  if (queue == nullptr) return responder->Fail(error);
  queue->loop()->Post([queue, id = request.ticket_id(), responder] {
    queue->GetTicket(id, responder);
  });
}

void HandleCancelTicket(Runtime* rt, const mm::CancelTicketRequest& request,
                        Responder<mm::Ticket>* responder) {
  grpc::Status error;
  QueueRuntime* queue = QueueOfTicket(rt, request.ticket_id(), &error);
  if (queue == nullptr) return responder->Fail(error);
  queue->loop()->Post([queue, id = request.ticket_id(), responder] {
    queue->CancelTicket(id, responder);
  });
}

void HandleListQueues(Runtime* rt, const mm::ListQueuesRequest& /*request*/,
                      Responder<mm::ListQueuesResponse>* responder) {
  mm::ListQueuesResponse response;
  for (const auto& queue : rt->queues) {
    mm::QueueInfo* info = response.add_queues();
    *info = QueueInfoOf(queue->settings());
    info->set_tickets_waiting(queue->tickets_waiting());
    info->set_players_waiting(queue->players_waiting());
    info->set_matches_formed(queue->matches_formed());
  }
  responder->Reply(response);
}

using HealthAsyncService = hv1::Health::AsyncService;

void HandleHealthCheck(Runtime* rt, const hv1::HealthCheckRequest& request,
                       Responder<hv1::HealthCheckResponse>* responder) {
  const std::optional<ServingStatus> status = rt->health.Get(request.service());
  if (!status.has_value()) {
    return responder->Fail(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                        absl::StrCat("unknown service \"", request.service(),
                                                     "\"; matchd reports \"\", \"liveness\" and "
                                                     "\"matchmaking.v1.Matchmaker\"")));
  }
  hv1::HealthCheckResponse response;
  response.set_status(*status);
  responder->Reply(response);
}

// grpc.health.v1.Health/Watch: the status now, then each change, until the
// server stops (or the caller leaves). States: requested -> open (one write
// in flight, later statuses replace a queued one) -> closing (Finish) ->
// freed once the done notification has come and nothing is outstanding.
class HealthWatchCall final {
 public:
  static void Request(Runtime* runtime, EventLoop* loop) {
    auto* call = new HealthWatchCall(runtime, loop);
    call->ctx_.AsyncNotifyWhenDone(call->done_tag_.Arm());
    runtime->health_service.RequestWatch(&call->ctx_, &call->request_, &call->writer_,
                                         loop->cq(), loop->cq(), call->requested_tag_.Arm());
  }

 private:
  // The board's side; posts to the call's loop.
  class Link final : public HealthBoard::Listener, public std::enable_shared_from_this<Link> {
   public:
    Link(EventLoop* loop, HealthWatchCall* call) : loop_(loop), call_(call) {}
    void Notify(ServingStatus status) override {
      loop_->Post([self = shared_from_this(), status] {
        if (self->call_ != nullptr) self->call_->Send(status);
      });
    }
    void Close() override {
      loop_->Post([self = shared_from_this()] {
        if (self->call_ != nullptr) self->call_->Close();
      });
    }
    void Unbind() { call_ = nullptr; }  // loop thread only

   private:
    EventLoop* const loop_;
    HealthWatchCall* call_;
  };

  HealthWatchCall(Runtime* runtime, EventLoop* loop)
      : token_(runtime), runtime_(runtime), loop_(loop) {}
  ~HealthWatchCall() {
    if (link_ != nullptr) {
      runtime_->health.Unwatch(link_.get());
      link_->Unbind();
    }
  }

  void OnRequested(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    Request(runtime_, loop_);
    open_ = true;
    link_ = std::make_shared<Link>(loop_, this);
    const std::optional<ServingStatus> now = runtime_->health.Watch(request_.service(), link_);
    if (!now.has_value()) return Close();  // the server is stopping
    Send(*now);
  }
  void Send(ServingStatus status) {
    if (!open_ || closing_) return;
    pending_ = status;
    Pump();
  }
  void Close() {
    if (!open_ || closing_) return;
    closing_ = true;
    Pump();
  }
  void Pump() {
    if (in_flight_ || done_) return;
    if (pending_.has_value()) {
      if (*pending_ != last_sent_) {
        response_.set_status(*pending_);
        last_sent_ = *pending_;
        pending_.reset();
        in_flight_ = true;
        writer_.Write(response_, written_tag_.Arm());
        return;
      }
      pending_.reset();
    }
    if (closing_) {
      in_flight_ = true;
      runtime_->metrics->RecordRpc(loop_->index(), Rpc::kHealthWatch, grpc::StatusCode::OK);
      writer_.Finish(grpc::Status::OK, finished_tag_.Arm());
      finished_ = true;
    }
  }
  void OnWritten(bool ok) {
    in_flight_ = false;
    if (ok && !finished_) Pump();
    MaybeDelete();
  }
  void OnFinished(bool /*ok*/) {
    in_flight_ = false;
    MaybeDelete();
  }
  void OnDone(bool /*ok*/) {
    done_ = true;
    if (!finished_) {
      runtime_->metrics->RecordRpc(loop_->index(), Rpc::kHealthWatch,
                                   grpc::StatusCode::CANCELLED);
    }
    MaybeDelete();
  }
  void MaybeDelete() {
    if (done_ && !in_flight_) delete this;
  }

  LiveCallToken token_;
  Runtime* const runtime_;
  EventLoop* const loop_;
  grpc::ServerContext ctx_;
  hv1::HealthCheckRequest request_;
  grpc::ServerAsyncWriter<hv1::HealthCheckResponse> writer_{&ctx_};
  hv1::HealthCheckResponse response_;  // alive until its write completes
  std::shared_ptr<Link> link_;
  std::optional<ServingStatus> pending_;
  ServingStatus last_sent_ = static_cast<ServingStatus>(-1);
  bool open_ = false;
  bool closing_ = false;
  bool in_flight_ = false;
  bool finished_ = false;
  bool done_ = false;
  MemberCompletion<HealthWatchCall> requested_tag_{this, &HealthWatchCall::OnRequested};
  MemberCompletion<HealthWatchCall> written_tag_{this, &HealthWatchCall::OnWritten};
  MemberCompletion<HealthWatchCall> finished_tag_{this, &HealthWatchCall::OnFinished};
  MemberCompletion<HealthWatchCall> done_tag_{this, &HealthWatchCall::OnDone};
};

}  // namespace

// Posted even when the call's loop is the caller's: the queue finishes its
// step (timers, retention, clock reads) before the caller can see the event.
void StreamLink::Send(grpc::ByteBuffer event) {
  call_loop_->Post([self = shared_from_this(), event = MovableByteBuffer(&event)]() mutable {
    if (self->call_ != nullptr) self->call_->Send(&event.buffer);
  });
}

void StreamLink::Close(grpc::Status status, grpc::ByteBuffer* last) {
  // The status and the last event wait in the link, so the task captures one
  // pointer and fits the task's inline storage: no allocation per close.
  if (close_posted_) return;  // the call takes the first close only
  close_posted_ = true;
  close_status_ = std::move(status);
  has_close_last_ = last != nullptr;
  if (has_close_last_) close_last_.Swap(last);
  call_loop_->Post([self = shared_from_this()] {
    if (self->call_ == nullptr) return;
    self->call_->Close(std::move(self->close_status_),
                       self->has_close_last_ ? &self->close_last_ : nullptr);
  });
}

void StartAcceptingCalls(Runtime* runtime, EventLoop* loop) {
  MatchmakerService* mm = &runtime->service;
  UnaryCall<MatchmakerService, mm::CreateTicketRequest, mm::Ticket, true>::Listen(
      runtime, mm, loop, Rpc::kCreateTicket, &MatchmakerService::RequestCreateTicket,
      &HandleCreateTicket);
  UnaryCall<MatchmakerService, mm::GetTicketRequest, mm::Ticket, true>::Listen(
      runtime, mm, loop, Rpc::kGetTicket, &MatchmakerService::RequestGetTicket,
      &HandleGetTicket);
  UnaryCall<MatchmakerService, mm::CancelTicketRequest, mm::Ticket, true>::Listen(
      runtime, mm, loop, Rpc::kCancelTicket, &MatchmakerService::RequestCancelTicket,
      &HandleCancelTicket);
  UnaryCall<MatchmakerService, mm::ListQueuesRequest, mm::ListQueuesResponse, true>::Listen(
      runtime, mm, loop, Rpc::kListQueues, &MatchmakerService::RequestListQueues,
      &HandleListQueues);
  StreamCall::Request(runtime, loop, StreamCall::Kind::kFindMatch);
  StreamCall::Request(runtime, loop, StreamCall::Kind::kWatchTicket);
  UnaryCall<HealthAsyncService, hv1::HealthCheckRequest, hv1::HealthCheckResponse>::Listen(
      runtime, &runtime->health_service, loop, Rpc::kHealthCheck,
      &HealthAsyncService::RequestCheck, &HandleHealthCheck);
  HealthWatchCall::Request(runtime, loop);
}

namespace {

// Recycled StreamCall storage, a free list per thread: a call is deleted on
// its loop's thread, which soon needs a new one. A StreamCall (about 2.6 KiB)
// is above glibc's small-bin sizes, and malloc consolidates its fast bins
// before serving such a request: a visible cost at tens of thousands of calls
// per second. At most kMaxBlocks are kept. Not under AddressSanitizer, which
// should see every call's memory freed.
class FreeCallBlocks {
 public:
  static constexpr size_t kMaxBlocks = 1024;
  ~FreeCallBlocks() {
    for (void* p : blocks_) ::operator delete(p);
  }
  void* Get(size_t size) {
    if (blocks_.empty()) return ::operator new(size);
    void* p = blocks_.back();
    blocks_.pop_back();
    return p;
  }
  void Put(void* p) {
    if (blocks_.size() >= kMaxBlocks) {
      ::operator delete(p);
    } else {
      blocks_.push_back(p);
    }
  }

 private:
  std::vector<void*> blocks_;
};

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRecycleCalls = false;
#else
constexpr bool kRecycleCalls = true;
#endif

thread_local FreeCallBlocks free_call_blocks;

}  // namespace

void* StreamCall::operator new(size_t size) {
  // The class is final: `size` is always sizeof(StreamCall), so every block
  // in a list fits every call.
  if (!kRecycleCalls) return ::operator new(size);
  return free_call_blocks.Get(size);
}

void StreamCall::operator delete(void* p) {
  if (!kRecycleCalls) return ::operator delete(p);
  free_call_blocks.Put(p);
}

StreamCall::StreamCall(Runtime* runtime, EventLoop* loop, Kind kind)
    : token_(runtime), runtime_(runtime), loop_(loop), kind_(kind) {}

StreamCall::~StreamCall() {
  Unlink();
  if (link_ != nullptr) link_->Unbind();
}

void StreamCall::Link() {
  StreamCall*& head = runtime_->streams[loop_->index()];
  next_ = head;
  if (head != nullptr) head->prev_ = this;
  head = this;
  linked_ = true;
}

void StreamCall::Unlink() {
  if (!linked_) return;
  if (prev_ != nullptr) {
    prev_->next_ = next_;
  } else {
    runtime_->streams[loop_->index()] = next_;
  }
  if (next_ != nullptr) next_->prev_ = prev_;
  linked_ = false;
}

void StreamCall::Sweep(Runtime* runtime, EventLoop* loop) {
  for (StreamCall* call = runtime->streams[loop->index()]; call != nullptr; call = call->next_) {
    const bool pending = (call->write_in_flight_ || call->finish_in_flight_) && !call->done_;
    if (!pending) {
      call->stalled_sweeps_ = 0;
      continue;
    }
    if (call->stalled_sweeps_ == 0 || call->writes_done_ != call->swept_writes_) {
      // A stall starts (or the last one moved on).
      call->stalled_sweeps_ = 1;
      call->swept_writes_ = call->writes_done_;
      continue;
    }
    if (++call->stalled_sweeps_ < 3) continue;
    // Pending, with no progress, at three sweeps in a row: for at least
    // stalled_write_after (two intervals), the caller took nothing.
    if (LogEnabled(LogLevel::kDebug)) {
      Log(LogLevel::kDebug, "a caller's connection takes no events; stream cancelled",
          {{"peer", call->ctx_.peer()}});
    }
    call->ctx_.TryCancel();
    call->stalled_sweeps_ = 0;
  }
}

void StreamCall::Request(Runtime* runtime, EventLoop* loop, Kind kind) {
  auto* call = new StreamCall(runtime, loop, kind);
  call->ctx_.AsyncNotifyWhenDone(call->done_tag_.Arm());
  if (kind == Kind::kFindMatch) {
    runtime->service.RequestFindMatch(&call->ctx_, &call->request_, &call->writer_, loop->cq(),
                                      loop->cq(), call->requested_tag_.Arm());
  } else {
    runtime->service.RequestWatchTicket(&call->ctx_, &call->request_, &call->writer_,
                                        loop->cq(), loop->cq(), call->requested_tag_.Arm());
  }
}

void StreamCall::OnRequested(bool ok) {
  if (!ok) {  // shutting down: the call never started and no done tag will come
    delete this;
    return;
  }
  Request(runtime_, loop_, kind_);
  state_ = State::kOpen;
  link_ = std::make_shared<StreamLink>(loop_, this);
  Link();
  Start();
}

void StreamCall::Reject(const grpc::Status& status) { Close(status, nullptr); }

void StreamCall::Start() {
  // Draining refuses new tickets; WatchTicket follows tickets this replica
  // already holds (and nobody else does).
  if (kind_ == Kind::kFindMatch && runtime_->draining.load()) return Reject(kDraining);
  if (request_.Length() > kMaxRequestBytes) return Reject(TooLarge(request_.Length()));
  const absl::Time deadline = CallerDeadline(ctx_, *runtime_->clock);
  if (kind_ == Kind::kFindMatch) {
    mm::FindMatchRequest request;
    grpc::ProtoBufferReader reader(&request_);
    const bool parsed = request.ParseFromZeroCopyStream(&reader);
    request_.Clear();  // not needed while the call waits
    if (!parsed) {
      return Reject(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "request is not a valid FindMatchRequest"));
    }
    QueueRuntime* queue = runtime_->FindQueue(request.queue());
    if (queue == nullptr) return Reject(UnknownQueue(request.queue()));
    queue_index_ = queue->index();
    if (absl::Status st = ValidateParty(request.players(), queue->settings()); !st.ok()) {
      return Reject(ToGrpcStatus(st));
    }
    queue->loop()->Dispatch(
        [queue, request = std::move(request), link = link_, deadline]() mutable {
          queue->FindMatch(std::move(request), std::move(link), deadline);
        });
    return;
  }
  mm::WatchTicketRequest request;
  grpc::ProtoBufferReader reader(&request_);
  const bool parsed = request.ParseFromZeroCopyStream(&reader);
  request_.Clear();
  if (!parsed) {
    return Reject(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "request is not a valid WatchTicketRequest"));
  }
  grpc::Status error;
  QueueRuntime* queue = QueueOfTicket(runtime_, request.ticket_id(), &error);
  if (queue == nullptr) return Reject(error);
  queue_index_ = queue->index();
  queue->loop()->Post([queue, id = request.ticket_id(), after = request.after_seq(),
                       link = link_]() mutable { queue->WatchTicket(id, after, std::move(link)); });
}

void StreamCall::Send(grpc::ByteBuffer* event) {
  if (state_ != State::kOpen || close_requested_ || done_) return;
  Pump(event);
}

void StreamCall::Close(grpc::Status status, grpc::ByteBuffer* last) {
  if (state_ != State::kOpen || close_requested_) return;
  runtime_->metrics->RecordRpc(loop_->index(), rpc(), status.error_code());
  close_requested_ = true;
  close_status_ = std::move(status);
  Pump(last);
}

void StreamCall::Pump(grpc::ByteBuffer* next) {
  if (write_in_flight_ || finish_in_flight_ || state_ != State::kOpen) {
    if (next != nullptr) outbox_.emplace_back().Swap(next);
    return;
  }
  if (done_) {  // the caller is gone: nothing more can be delivered
    outbox_.clear();
    return;
  }
  if (!outbox_.empty()) {
    if (next != nullptr) outbox_.emplace_back().Swap(next);
    in_flight_.Swap(&outbox_.front());
    outbox_.erase(outbox_.begin());
  } else if (next != nullptr) {
    in_flight_.Swap(next);  // nothing held: straight to the writer
  } else {
    if (close_requested_) {
      state_ = State::kClosing;
      finish_in_flight_ = true;
      writer_.Finish(close_status_, finished_tag_.Arm());
    }
    return;
  }
  if (close_requested_ && outbox_.empty()) {
    // The last event and the status in one batch.
    state_ = State::kClosing;
    finish_in_flight_ = true;
    writer_.WriteAndFinish(in_flight_, grpc::WriteOptions(), close_status_, finished_tag_.Arm());
  } else {
    write_in_flight_ = true;
    writer_.Write(in_flight_, written_tag_.Arm());
  }
}

void StreamCall::OnWritten(bool ok) {
  write_in_flight_ = false;
  ++writes_done_;
  in_flight_.Clear();
  if (!ok) {  // the stream broke; the done notification follows
    outbox_.clear();
    MaybeDelete();
    return;
  }
  Pump();
  MaybeDelete();
}

void StreamCall::OnFinished(bool /*ok*/) {
  finish_in_flight_ = false;
  ++writes_done_;
  in_flight_.Clear();
  MaybeDelete();
}

void StreamCall::OnDone(bool /*ok*/) {
  done_ = true;
  link_->MarkGone();
  // Ended by the server (our Finish) needs no notice; otherwise the caller
  // cancelled, its deadline passed or the connection died.
  if (state_ != State::kClosing && queue_index_ >= 0) {
    // The caller's client cancels at its deadline, while our copy of the
    // deadline (from the grpc-timeout header) is later by the request's
    // transit time: a call that ends this close to its deadline expired.
    constexpr auto kDeadlineSlack = std::chrono::seconds(1);
    const bool deadline_passed =
        ctx_.deadline() != std::chrono::system_clock::time_point::max() &&
        ctx_.deadline() <= std::chrono::system_clock::now() + kDeadlineSlack;
    const DetachReason reason =
        deadline_passed ? DetachReason::kCallerDeadline : DetachReason::kCallEnded;
    // A Close issued already (its Finish waiting behind a write) was counted.
    if (!close_requested_) {
      runtime_->metrics->RecordRpc(loop_->index(), rpc(),
                                   deadline_passed ? grpc::StatusCode::DEADLINE_EXCEEDED
                                                   : grpc::StatusCode::CANCELLED);
    }
    QueueRuntime* queue = runtime_->queues[queue_index_].get();
    queue->loop()->Post(
        [queue, link = link_, reason] { queue->OnStreamEnded(link.get(), reason); });
  }
  outbox_.clear();
  MaybeDelete();
}

void StreamCall::MaybeDelete() {
  if (done_ && !write_in_flight_ && !finish_in_flight_) delete this;
}

}  // namespace matchd
