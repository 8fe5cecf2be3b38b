// One event loop per thread: a gRPC completion queue, a mailbox for work
// handed over from other threads, and a timer heap. Everything the server
// does runs inside some loop; a piece of state belongs to exactly one loop.
#ifndef MATCHD_SERVICE_EVENT_LOOP_H_
#define MATCHD_SERVICE_EVENT_LOOP_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <grpc/support/time.h>
#include <grpcpp/alarm.h>
#include <grpcpp/completion_queue.h>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "matcher/clock.h"
#include "service/completion.h"

namespace matchd {

class EventLoop final {
 public:
  using Task = absl::AnyInvocable<void() &&>;
  using TimerId = uint64_t;

  // `clock` is not owned. With a manual clock the loop never waits on the wall
  // clock; timers run when the loop wakes up after the clock was advanced
  // (see Post).
  EventLoop(int index, std::unique_ptr<grpc::ServerCompletionQueue> cq, const Clock* clock);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  ~EventLoop();

  int index() const { return index_; }
  grpc::ServerCompletionQueue* cq() { return cq_.get(); }
  const Clock& clock() const { return *clock_; }
  bool InLoopThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // Starts the loop's thread.
  void Start();
  // Runs `task` on the loop's thread. Thread-safe. From the loop's own thread
  // the task runs after the current event, without a wake-up. Tasks posted
  // after Stop() are dropped.
  void Post(Task task);
  // Runs `f` at once when called on the loop's thread, otherwise posts it
  // (asio's dispatch). Direct, it costs no allocation and no hand-off.
  template <typename F>
  void Dispatch(F&& f) {
    if (InLoopThread()) {
      std::forward<F>(f)();
    } else {
      Post(Task(std::forward<F>(f)));
    }
  }
  // Runs `task` at `when` (or at once if it has passed). Loop thread only.
  // Never returns 0, so callers may use 0 for "no timer".
  TimerId RunAt(absl::Time when, Task task);
  // Cancels a timer that has not run. Unknown or already-run ids (and 0) are
  // ignored. Loop thread only.
  void CancelTimer(TimerId id);
  // Timers armed and not yet run or cancelled. Any thread (a diagnostic:
  // a count that only grows is a leak of timers).
  size_t timers_armed() const { return timers_armed_.load(std::memory_order_relaxed); }
  // Shuts the completion queue down (call after grpc::Server::Shutdown),
  // lets the loop drain it, and joins the thread. Pending timers are dropped.
  void StopAndJoin();

 private:
  void Run();
  void OnNudge(bool ok);
  void RunPosted();
  void RunDueTimers();
  absl::Time NextTimer();
  // `next` (on clock_) as a deadline on gRPC's monotonic clock.
  gpr_timespec MonotonicDeadline(absl::Time next);

  const int index_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  const Clock* const clock_;  // not owned
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};

  // Cross-thread mailbox. A single grpc::Alarm set in the past wakes the loop;
  // it is armed at most once at a time. std::mutex rather than absl::Mutex:
  // ThreadSanitizer understands it without an instrumented abseil.
  std::mutex mu_;
  std::vector<Task> inbox_ ABSL_GUARDED_BY(mu_);
  bool nudge_armed_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> inbox_nonempty_{false};  // inbox_ may hold tasks
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Alarm nudge_;
  MemberCompletion<EventLoop> nudge_tag_{this, &EventLoop::OnNudge};

  // Loop-thread state.
  absl::Time last_now_ = absl::UnixEpoch();  // RunDueTimers' last reading
  absl::Time offset_taken_at_ = absl::InfinitePast();
  absl::Duration mono_minus_clock_;  // gRPC's monotonic clock minus clock_
  std::vector<Task> local_;  // posted from the loop itself
  std::vector<Task> local_batch_;  // local_'s previous contents, while they run
  std::vector<Task> running_;
  // Timers. Each armed timer holds a slot; slots are reused through a free
  // list, so arming a timer allocates nothing once the loop has warmed up. A
  // TimerId is the slot's index and its generation (bumped on every reuse),
  // so the id of a timer that ran or was cancelled never matches a later one
  // (short of 2^32 reuses of its slot while the id is kept).
  // A cancelled timer's heap entry stays until it comes up, and is skipped.
  struct TimerSlot {
    Task task;
    uint32_t generation = 0;
    bool armed = false;
  };
  struct TimerEntry {
    absl::Time when;
    uint64_t order;  // arming order: equal times run first-armed first
    uint32_t slot;
    uint32_t generation;
    bool operator>(const TimerEntry& o) const {
      return when != o.when ? when > o.when : order > o.order;
    }
  };
  static TimerId MakeTimerId(uint32_t slot, uint32_t generation) {
    return (static_cast<uint64_t>(generation) << 32) | (static_cast<uint64_t>(slot) + 1);
  }
  // Drops a slot's task (if still there) and frees it for the next timer.
  void FreeTimerSlot(uint32_t slot);
  bool Live(const TimerEntry& e) const {
    const TimerSlot& s = timer_slots_[e.slot];
    return s.armed && s.generation == e.generation;
  }
  // A min-heap (std::push_heap with std::greater). Cancelled entries stay
  // until they come up, or until they outnumber the live ones: then the heap
  // is rebuilt without them (CancelTimer), so a loop that re-arms one timer
  // often keeps a heap the size of its armed timers, not of its history.
  std::vector<TimerEntry> timer_heap_;
  size_t cancelled_in_heap_ = 0;
  void PopTimer();
  std::vector<TimerSlot> timer_slots_;
  std::vector<uint32_t> free_timer_slots_;
  // timer_slots_ in use; written on the loop thread only.
  std::atomic<size_t> timers_armed_{0};
  uint64_t timer_order_ = 0;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_EVENT_LOOP_H_
