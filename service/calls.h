// The call state machines. Each RPC in flight is one object owned by the loop
// whose completion queue it was requested on; every gRPC operation on it is
// started from that loop (unary replies excepted: see UnaryCall), and it is
// freed in exactly one place once no operation is outstanding.
#ifndef MATCHD_SERVICE_CALLS_H_
#define MATCHD_SERVICE_CALLS_H_

#include <memory>
#include <vector>

#include <grpcpp/server_context.h>
#include <grpcpp/support/async_stream.h>
#include <grpcpp/support/async_unary_call.h>

#include "service/event_loop.h"
#include "service/runtime.h"

namespace matchd {

// Requests the first call of every method on `loop`; each accepted call
// requests the next one of its kind, so one of each is always outstanding.
void StartAcceptingCalls(Runtime* runtime, EventLoop* loop);

// FindMatch or WatchTicket: a server stream that carries one ticket's events.
//
// States: kRequested (waiting for a caller) -> kOpen (events flow; at most one
// write in flight, the rest queued in order) -> kClosing (Finish or
// WriteAndFinish issued) -> freed when the done notification has arrived and
// no operation is outstanding. A call that the caller cancels (or whose
// connection dies) is noticed through AsyncNotifyWhenDone: its ticket is told
// through StreamLink (gone) and OnStreamEnded posted to the ticket's queue loop.
class StreamCall final {
 public:
  enum class Kind { kFindMatch, kWatchTicket };

  // Requests one call of `kind` on `loop`. The object owns itself from here.
  static void Request(Runtime* runtime, EventLoop* loop, Kind kind);

  // Storage recycled per thread (see calls.cc).
  static void* operator new(size_t size);
  static void operator delete(void* p);

  // Call-loop only (through StreamLink). Each takes the event's contents
  // (`*event`, `*last`), leaving it empty.
  void Send(grpc::ByteBuffer* event);
  void Close(grpc::Status status, grpc::ByteBuffer* last);

  // On `loop`, every RuntimeLimits::stalled_write_after / 2: cancels the
  // loop's streams whose write (or final status) made no progress over three
  // sweeps in a row (stalled for stalled_write_after at least, 1.5x at most). A caller that stopped reading (or whose flow-control
  // window stays shut) would otherwise hold its call, and events queued
  // behind it, until the connection ends, and its ticket could be matched
  // with nobody to tell; cancelled, it is handled like a dropped call.
  static void Sweep(Runtime* runtime, EventLoop* loop);

 private:
  enum class State { kRequested, kOpen, kClosing };

  StreamCall(Runtime* runtime, EventLoop* loop, Kind kind);
  ~StreamCall();

  void OnRequested(bool ok);
  void OnWritten(bool ok);
  void OnFinished(bool ok);
  void OnDone(bool ok);
  void Start();            // validate and hand the ticket to its queue's loop
  void Reject(const grpc::Status& status);
  // Issues the next write or the Finish. `next`, if given, is the newest
  // event (taken); it is queued behind any held ones, or written at once.
  void Pump(grpc::ByteBuffer* next = nullptr);
  void MaybeDelete();
  void Link();    // into runtime_->streams[loop index]
  void Unlink();
  Rpc rpc() const { return kind_ == Kind::kFindMatch ? Rpc::kFindMatch : Rpc::kWatchTicket; }

  LiveCallToken token_;
  Runtime* const runtime_;  // not owned
  EventLoop* const loop_;   // not owned
  const Kind kind_;
  State state_ = State::kRequested;
  grpc::ServerContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncWriter<grpc::ByteBuffer> writer_{&ctx_};
  std::shared_ptr<StreamLink> link_;
  int queue_index_ = -1;
  // Events not yet written, oldest first. A vector, not a deque: a deque
  // allocates a block up front, and most calls never queue an event at all
  // (an event that finds the stream idle is written at once).
  std::vector<grpc::ByteBuffer> outbox_;
  grpc::ByteBuffer in_flight_;  // alive until its write completes
  bool write_in_flight_ = false;
  bool close_requested_ = false;
  grpc::Status close_status_;
  bool finish_in_flight_ = false;
  bool done_ = false;
  // The loop's list of open streams (Sweep).
  bool linked_ = false;
  StreamCall* prev_ = nullptr;
  StreamCall* next_ = nullptr;
  uint32_t writes_done_ = 0;    // writes and finishes completed
  uint32_t swept_writes_ = 0;   // writes_done_ when the current stall was first seen
  int stalled_sweeps_ = 0;      // sweeps in a row that saw a write pending, no progress

  MemberCompletion<StreamCall> requested_tag_{this, &StreamCall::OnRequested};
  MemberCompletion<StreamCall> written_tag_{this, &StreamCall::OnWritten};
  MemberCompletion<StreamCall> finished_tag_{this, &StreamCall::OnFinished};
  MemberCompletion<StreamCall> done_tag_{this, &StreamCall::OnDone};
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_CALLS_H_
