// EventLoop on a real completion queue and a manual clock: timer order,
// cancellation (also of ids whose slot has been reused, and of most of many
// timers) and Dispatch; and on the real clock, that timers alone wake the
// loop.
#include "service/event_loop.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "matcher/clock.h"

namespace matchd {
namespace {

using ::testing::ElementsAre;

class EventLoopTest : public ::testing::Test {
 protected:
  EventLoopTest() {
    grpc::ServerBuilder builder;
    auto cq = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    loop_ = std::make_unique<EventLoop>(0, std::move(cq), &clock_);
    loop_->Start();
  }
  ~EventLoopTest() override {
    server_->Shutdown();
    loop_->StopAndJoin();
  }

  // Runs `f` on the loop and waits for it. Timers that are due run first.
  template <typename F>
  void OnLoop(F f) {
    absl::Notification done;
    loop_->Post([&] {
      f();
      done.Notify();
    });
    done.WaitForNotification();
  }

  absl::Time Now() const { return clock_.Now(); }

  ManualClock clock_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<EventLoop> loop_;
  std::vector<int> ran_;  // touched on the loop only
};

TEST_F(EventLoopTest, TimersRunInTimeOrderAndEqualTimesInArmingOrder) {
  OnLoop([&] {
    loop_->RunAt(Now() + absl::Seconds(3), [&] { ran_.push_back(3); });
    loop_->RunAt(Now() + absl::Seconds(1), [&] { ran_.push_back(1); });
    loop_->RunAt(Now() + absl::Seconds(1), [&] { ran_.push_back(2); });
    const EventLoop::TimerId cancelled =
        loop_->RunAt(Now() + absl::Seconds(2), [&] { ran_.push_back(-1); });
    EXPECT_NE(cancelled, 0u);
    loop_->CancelTimer(cancelled);
  });
  clock_.Advance(absl::Milliseconds(1500));
  OnLoop([&] { EXPECT_THAT(ran_, ElementsAre(1, 2)); });
  clock_.Advance(absl::Seconds(2));
  OnLoop([&] { EXPECT_THAT(ran_, ElementsAre(1, 2, 3)); });
}

TEST_F(EventLoopTest, AnOldIdNeverCancelsTheTimerThatReusedItsSlot) {
  OnLoop([&] {
    // Cancelled, then its slot is reused: the old id no longer matches.
    const EventLoop::TimerId first =
        loop_->RunAt(Now() + absl::Seconds(1), [&] { ran_.push_back(-1); });
    loop_->CancelTimer(first);
    const EventLoop::TimerId second =
        loop_->RunAt(Now() + absl::Seconds(1), [&] { ran_.push_back(2); });
    EXPECT_NE(second, first);
    loop_->CancelTimer(first);
    loop_->CancelTimer(0);  // "no timer"
  });
  clock_.Advance(absl::Seconds(1));
  EventLoop::TimerId ran_id = 0;
  OnLoop([&] {
    EXPECT_THAT(ran_, ElementsAre(2));
    // A timer that has run: its id is dead too, and its slot reused.
    ran_id = loop_->RunAt(Now(), [&] { ran_.push_back(3); });
  });
  OnLoop([&] {
    EXPECT_THAT(ran_, ElementsAre(2, 3));
    loop_->RunAt(Now() + absl::Seconds(1), [&] { ran_.push_back(4); });
    loop_->CancelTimer(ran_id);
  });
  clock_.Advance(absl::Seconds(1));
  OnLoop([&] { EXPECT_THAT(ran_, ElementsAre(2, 3, 4)); });
}

TEST_F(EventLoopTest, ManyCancellationsLeaveTheRestInOrder) {
  // Cancelling most of a few hundred timers rebuilds the heap without them
  // (more than once on the way); the survivors still run, in time order.
  // Timer i runs at 1 + (97i mod 300) ms: every time once, armed out of
  // order. Every fifth one is kept.
  OnLoop([&] {
    for (int i = 0; i < 300; ++i) {
      const int at_ms = 1 + (97 * i) % 300;
      const EventLoop::TimerId id =
          loop_->RunAt(Now() + absl::Milliseconds(at_ms), [this, at_ms] { ran_.push_back(at_ms); });
      if (i % 5 != 0) loop_->CancelTimer(id);
    }
  });
  clock_.Advance(absl::Seconds(1));
  OnLoop([&] {
    std::vector<int> expected;
    for (int i = 0; i < 300; i += 5) expected.push_back(1 + (97 * i) % 300);
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(ran_, expected);
  });
}

TEST_F(EventLoopTest, DispatchRunsInlineOnTheLoopAndPostsFromElsewhere) {
  OnLoop([&] {
    loop_->Dispatch([&] { ran_.push_back(1); });
    ran_.push_back(2);  // after: the dispatched task ran inside Dispatch
  });
  absl::Notification done;
  std::thread other([&] {
    loop_->Dispatch([&] {
      EXPECT_TRUE(loop_->InLoopThread());
      ran_.push_back(3);
      done.Notify();
    });
  });
  done.WaitForNotification();
  other.join();
  OnLoop([&] { EXPECT_THAT(ran_, ElementsAre(1, 2, 3)); });
}

// With the wall clock, nothing but a timer's own deadline wakes the loop here
// (the loop waits on gRPC's monotonic clock, converted from the wall clock).
// Both timers must run: the second is armed from the first one's task, so it
// is waited for with a deadline computed on the loop. A wrong conversion
// leaves the loop asleep far past the 30 s this waits (a generous bound for
// timers due 30 and 50 ms from now, not a measure of speed).
TEST(EventLoopRealClockTest, TimersAloneWakeTheLoop) {
  grpc::ServerBuilder builder;
  auto cq = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  const RealClock* clock = RealClock::Get();
  EventLoop loop(0, std::move(cq), clock);
  loop.Start();

  std::mutex mu;
  std::condition_variable cv;
  int ran = 0;
  loop.Post([&] {
    loop.RunAt(clock->Now() + absl::Milliseconds(30), [&] {
      loop.RunAt(clock->Now() + absl::Milliseconds(20), [&] {
        std::lock_guard<std::mutex> lock(mu);
        ++ran;
        cv.notify_all();
      });
      std::lock_guard<std::mutex> lock(mu);
      ++ran;
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return ran == 2; }))
        << "timers that ran: " << ran;
  }
  server->Shutdown();
  loop.StopAndJoin();
}

}  // namespace
}  // namespace matchd
