// Time for the matcher and the server, injected so that tests and the
// simulator can run in virtual time.
#ifndef MATCHD_MATCHER_CLOCK_H_
#define MATCHD_MATCHER_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace matchd {

// A source of the current time. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // True when time only moves by an explicit Advance() (tests, simulation):
  // event loops then never wait on the wall clock.
  virtual bool IsManual() const { return false; }
};

// The system's wall clock.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // A process-wide instance.
  static const RealClock* Get() {
    static const RealClock* const kClock = new RealClock();
    return kClock;
  }
};

// A clock that moves only when told to. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000))
      : nanos_(absl::ToUnixNanos(start)) {}
  absl::Time Now() const override {
    return absl::FromUnixNanos(nanos_.load(std::memory_order_acquire));
  }
  bool IsManual() const override { return true; }
  void Advance(absl::Duration d) {
    nanos_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_acq_rel);
  }
  void Set(absl::Time t) { nanos_.store(absl::ToUnixNanos(t), std::memory_order_release); }

 private:
  std::atomic<int64_t> nanos_;
};

}  // namespace matchd

#endif  // MATCHD_MATCHER_CLOCK_H_
