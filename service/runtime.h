// State shared by the server's event loops, and the two ways a queue's loop
// talks back to a call owned by another loop.
#ifndef MATCHD_SERVICE_RUNTIME_H_
#define MATCHD_SERVICE_RUNTIME_H_

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include "matcher/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "matchmaking/v1/matchmaking.grpc.pb.h"
#include "service/config.h"
#include "service/event_loop.h"
#include "service/health.h"
#include "service/metrics.h"

namespace matchd {

class QueueRuntime;
class StreamCall;

// FindMatch and WatchTicket are raw (their events are built as bytes, see
// events.h); the unary methods are typed.
// Every method raw (bytes in and out): matchd parses each request itself, so
// that a malformed one gets INVALID_ARGUMENT, and serializes each event once.
using MatchmakerService = matchmaking::v1::Matchmaker::WithRawMethod_FindMatch<
    matchmaking::v1::Matchmaker::WithRawMethod_WatchTicket<
        matchmaking::v1::Matchmaker::WithRawMethod_CreateTicket<
            matchmaking::v1::Matchmaker::WithRawMethod_GetTicket<
                matchmaking::v1::Matchmaker::WithRawMethod_CancelTicket<
                    matchmaking::v1::Matchmaker::WithRawMethod_ListQueues<
                        matchmaking::v1::Matchmaker::Service>>>>>>;

// Server-wide settings that are not per queue.
struct RuntimeLimits {
  absl::Duration heartbeat_interval = absl::Seconds(5);
  absl::Duration queued_delay = absl::Milliseconds(50);  // ServerOptions::queued_delay
  absl::Duration ticket_retention = absl::Seconds(60);
  int64_t max_waiting_tickets = 1'000'000;  // across all queues
  // Finished tickets kept per queue for GetTicket/WatchTicket; beyond it the
  // oldest go before their retention ends, so memory stays bounded at any rate.
  int64_t max_retained_tickets = 100'000;
  // And at most about this many bytes of them per queue (ServerOptions::
  // max_retained_bytes shared out): tickets with large parties go sooner.
  int64_t max_retained_bytes_per_queue = int64_t{128} << 20;
  // A stream whose write the caller's connection has not taken for about
  // this long (keepalive_time + keepalive_timeout: the patience given to a
  // peer that does not answer pings) is cancelled; see StreamCall::Sweep.
  absl::Duration stalled_write_after = absl::Seconds(40);
};

// Shared by every loop. Immutable after start except the atomics.
struct Runtime {
  RuntimeLimits limits;
  const Clock* clock = nullptr;  // not owned
  std::shared_ptr<Metrics> metrics;  // shared with the metrics exposer
  MatchmakerService service;
  grpc::health::v1::Health::AsyncService health_service;
  HealthBoard health;
  std::vector<std::unique_ptr<EventLoop>> loops;
  // By loop index: the open stream calls of that loop, linked through the
  // calls (touched only on that loop).
  std::vector<StreamCall*> streams;
  std::vector<std::unique_ptr<QueueRuntime>> queues;
  std::unordered_map<std::string, int> queue_index;
  std::atomic<bool> draining{false};
  // Tickets not yet in a terminal state, all queues together.
  std::atomic<int64_t> active_tickets{0};

  QueueRuntime* FindQueue(const std::string& name) const;

  // Call objects alive (requested or in progress). Shutdown waits for zero
  // before it shuts the completion queues down: no handler may start an
  // operation on a queue that is shut down.
  void CallCreated() { live_calls.fetch_add(1, std::memory_order_relaxed); }
  void CallDestroyed();
  // True if every call object was destroyed before `deadline`.
  bool WaitForNoCalls(absl::Time deadline);

 private:
  std::atomic<int64_t> live_calls{0};
  std::mutex calls_mu_;
  std::condition_variable calls_cv_;
};

// Counts one live call object for Runtime::WaitForNoCalls. Declared as a
// call's first member, so it is destroyed last, after the ServerContext.
class LiveCallToken final {
 public:
  explicit LiveCallToken(Runtime* runtime) : runtime_(runtime) { runtime_->CallCreated(); }
  ~LiveCallToken() { runtime_->CallDestroyed(); }
  LiveCallToken(const LiveCallToken&) = delete;
  LiveCallToken& operator=(const LiveCallToken&) = delete;

 private:
  Runtime* const runtime_;
};

// Connects a ticket, owned by its queue's loop, to the stream call that
// carries its events, owned by the call's loop. Refcounted: both sides hold
// it. The queue's loop calls Send/Close; they run on the call's loop in the
// order they were made, always posted (also to the same loop), so that the
// queue's step is complete before the caller sees the event.
class StreamLink final : public std::enable_shared_from_this<StreamLink> {
 public:
  StreamLink(EventLoop* call_loop, StreamCall* call) : call_loop_(call_loop), call_(call) {}

  // Queues an event for the stream.
  void Send(grpc::ByteBuffer event);
  // Ends the stream with `status` after the queued events (and `last`, if
  // given; its contents are taken).
  void Close(grpc::Status status, grpc::ByteBuffer* last = nullptr);

  // True once the call has ended for any reason (client cancel, connection
  // loss, deadline, or our Close completed). Set on the call's loop; read
  // anywhere.
  bool gone() const { return gone_.load(std::memory_order_acquire); }

  // Call-loop side.
  void MarkGone() { gone_.store(true, std::memory_order_release); }
  void Unbind() { call_ = nullptr; }

  // Queue-loop side: the ticket this stream carries (0 until attached).
  uint64_t ticket_key() const { return ticket_key_; }
  void set_ticket_key(uint64_t key) { ticket_key_ = key; }

 private:
  EventLoop* const call_loop_;
  StreamCall* call_;  // not owned; touched only on call_loop_, null once deleted
  // Close's arguments: written by the closing side before it posts the close,
  // read on call_loop_ by the posted task.
  bool close_posted_ = false;
  bool has_close_last_ = false;
  grpc::Status close_status_;
  grpc::ByteBuffer close_last_;
  std::atomic<bool> gone_{false};
  uint64_t ticket_key_ = 0;  // touched only on the ticket's queue loop
};

// The reply side of a unary call. Reply/Fail are called exactly once, from
// any loop; the reply is sent from the call's own loop.
template <typename Response>
class Responder {
 public:
  virtual void Reply(const Response& response) = 0;
  virtual void Fail(const grpc::Status& status) = 0;

 protected:
  ~Responder() = default;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_RUNTIME_H_
