#include "service/event_loop.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>

namespace matchd {

EventLoop::EventLoop(int index, std::unique_ptr<grpc::ServerCompletionQueue> cq,
                     const Clock* clock)
    : index_(index), cq_(std::move(cq)), clock_(clock) {}

EventLoop::~EventLoop() {
  if (thread_.joinable()) StopAndJoin();
}

void EventLoop::Start() {
  thread_ = std::thread([this] { Run(); });
}

void EventLoop::Post(Task task) {
  if (InLoopThread()) {
    local_.push_back(std::move(task));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;
  inbox_.push_back(std::move(task));
  inbox_nonempty_.store(true, std::memory_order_release);
  if (nudge_armed_) return;
  nudge_armed_ = true;
  // Set under mu_ so that StopAndJoin cannot shut the queue down in between.
  // Alarm::Set only enqueues; it never calls back into this object, so the
  // lock cannot deadlock.
  nudge_.Set(cq_.get(), gpr_inf_past(GPR_CLOCK_MONOTONIC), nudge_tag_.Arm());
}

void EventLoop::OnNudge(bool /*ok*/) {
  std::lock_guard<std::mutex> lock(mu_);
  nudge_armed_ = false;
}

EventLoop::TimerId EventLoop::RunAt(absl::Time when, Task task) {
  uint32_t slot;
  if (free_timer_slots_.empty()) {
    slot = static_cast<uint32_t>(timer_slots_.size());
    timer_slots_.emplace_back();
  } else {
    slot = free_timer_slots_.back();
    free_timer_slots_.pop_back();
  }
  TimerSlot& s = timer_slots_[slot];
  ++s.generation;
  s.armed = true;
  timers_armed_.store(timers_armed_.load(std::memory_order_relaxed) + 1,
                      std::memory_order_relaxed);
  s.task = std::move(task);
  timer_heap_.push_back(TimerEntry{when, timer_order_++, slot, s.generation});
  std::push_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
  return MakeTimerId(slot, s.generation);
}

void EventLoop::PopTimer() {
  std::pop_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
  timer_heap_.pop_back();
}

void EventLoop::CancelTimer(TimerId id) {
  if (id == 0) return;
  const uint64_t slot = (id & 0xffffffffu) - 1;
  if (slot >= timer_slots_.size()) return;
  TimerSlot& s = timer_slots_[slot];
  if (!s.armed || s.generation != static_cast<uint32_t>(id >> 32)) return;
  FreeTimerSlot(static_cast<uint32_t>(slot));
  ++cancelled_in_heap_;
  constexpr size_t kMinRebuild = 64;
  if (cancelled_in_heap_ >= kMinRebuild && 2 * cancelled_in_heap_ > timer_heap_.size()) {
    timer_heap_.erase(std::remove_if(timer_heap_.begin(), timer_heap_.end(),
                                     [this](const TimerEntry& e) { return !Live(e); }),
                      timer_heap_.end());
    std::make_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
    cancelled_in_heap_ = 0;
  }
}

void EventLoop::FreeTimerSlot(uint32_t slot) {
  TimerSlot& s = timer_slots_[slot];
  s.task = nullptr;
  s.armed = false;
  timers_armed_.store(timers_armed_.load(std::memory_order_relaxed) - 1,
                      std::memory_order_relaxed);
  free_timer_slots_.push_back(slot);
}

void EventLoop::RunPosted() {
  // The flag spares the lock on the loop's every turn when nothing was
  // posted; a task posted after the check is seen on the next turn (its nudge
  // wakes the loop).
  if (inbox_nonempty_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu_);
    running_.swap(inbox_);
    inbox_nonempty_.store(false, std::memory_order_relaxed);
  }
  // Timers due before a task was posted run before it, so a task always sees
  // the state its poster could expect at the time it was posted (e.g. a poll
  // after the TTL passed finds the ticket expired).
  for (Task& t : running_) {
    RunDueTimers();
    std::move(t)();
  }
  running_.clear();
  // Tasks posted by the loop to itself may post more; run until quiet. The
  // two vectors trade places, so both keep their capacity.
  while (!local_.empty()) {
    local_batch_.swap(local_);
    for (Task& t : local_batch_) std::move(t)();
    local_batch_.clear();
  }
}

void EventLoop::RunDueTimers() {
  const absl::Time now = clock_->Now();
  last_now_ = now;
  while (!timer_heap_.empty() && timer_heap_.front().when <= now) {
    const TimerEntry e = timer_heap_.front();
    PopTimer();
    if (!Live(e)) {  // cancelled
      --cancelled_in_heap_;
      continue;
    }
    Task task = std::move(timer_slots_[e.slot].task);
    FreeTimerSlot(e.slot);
    std::move(task)();
  }
}

absl::Time EventLoop::NextTimer() {
  while (!timer_heap_.empty() && !Live(timer_heap_.front())) {
    PopTimer();
    --cancelled_in_heap_;
  }
  return timer_heap_.empty() ? absl::InfiniteFuture() : timer_heap_.front().when;
}

void EventLoop::Run() {
  thread_id_.store(std::this_thread::get_id());
  for (;;) {
    RunPosted();
    RunDueTimers();
    RunPosted();
    const absl::Time next = clock_->IsManual() ? absl::InfiniteFuture() : NextTimer();
    void* tag = nullptr;
    bool ok = false;
    grpc::CompletionQueue::NextStatus status;
    if (next == absl::InfiniteFuture()) {
      status = cq_->Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                    : grpc::CompletionQueue::SHUTDOWN;
    } else {
      status = cq_->AsyncNext(&tag, &ok, MonotonicDeadline(next));
    }
    if (status == grpc::CompletionQueue::SHUTDOWN) break;
    if (status == grpc::CompletionQueue::TIMEOUT) continue;
    MATCHD_TSAN_ACQUIRE(tag);
    static_cast<Completion*>(tag)->OnComplete(ok);
  }
}

gpr_timespec EventLoop::MonotonicDeadline(absl::Time next) {
  // gRPC measures a deadline on its monotonic clock; given one on another
  // clock, it reads both clocks on every wait to convert it. The offset
  // between the two is taken here instead, against the loop's last reading
  // of its own clock, and taken again once that reading is a second away
  // from the one it was taken at (or the wall clock stepped back).
  const absl::Duration since = last_now_ - offset_taken_at_;
  if (since >= absl::Seconds(1) || since < absl::ZeroDuration()) {
    const gpr_timespec mono = gpr_now(GPR_CLOCK_MONOTONIC);
    offset_taken_at_ = clock_->Now();
    mono_minus_clock_ = absl::Seconds(mono.tv_sec) + absl::Nanoseconds(mono.tv_nsec) -
                        (offset_taken_at_ - absl::UnixEpoch());
    last_now_ = offset_taken_at_;
  }
  const absl::Duration d = next - absl::UnixEpoch() + mono_minus_clock_;
  gpr_timespec t;
  t.clock_type = GPR_CLOCK_MONOTONIC;
  t.tv_sec = absl::ToInt64Seconds(d);  // truncates
  t.tv_nsec = static_cast<int32_t>(absl::ToInt64Nanoseconds(d - absl::Seconds(t.tv_sec)));
  return t;
}

void EventLoop::StopAndJoin() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cq_->Shutdown();
  if (thread_.joinable()) thread_.join();
  // Drop what never ran: the server is gone.
  std::lock_guard<std::mutex> lock(mu_);
  inbox_.clear();
}

}  // namespace matchd
