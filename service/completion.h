// The tag type for gRPC's completion queues: each tag handed to gRPC is a
// Completion, and whoever polls the queue calls OnComplete(ok). Header-only,
// so that the benchmark tools use the same one.
#ifndef MATCHD_SERVICE_COMPLETION_H_
#define MATCHD_SERVICE_COMPLETION_H_

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define MATCHD_TSAN_RELEASE(addr) __tsan_release(addr)
#define MATCHD_TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#else
#define MATCHD_TSAN_RELEASE(addr) ((void)(addr))
#define MATCHD_TSAN_ACQUIRE(addr) ((void)(addr))
#endif

namespace matchd {

// A tag given to gRPC. When the operation completes, the loop that owns the
// completion queue calls OnComplete(ok). The object must stay alive until then.
class Completion {
 public:
  virtual void OnComplete(bool ok) = 0;

  // The tag to hand to gRPC. A completion queue orders the start of an
  // operation before its completion, possibly on another thread; this makes
  // that visible to ThreadSanitizer, which cannot see inside an uninstrumented
  // libgrpc (a no-op in other builds).
  void* Arm() {
    MATCHD_TSAN_RELEASE(this);
    return this;
  }

 protected:
  ~Completion() = default;
};

// A Completion that calls a member function of its owner.
template <typename T>
class MemberCompletion final : public Completion {
 public:
  MemberCompletion(T* owner, void (T::*fn)(bool)) : owner_(owner), fn_(fn) {}
  void OnComplete(bool ok) override { (owner_->*fn_)(ok); }

 private:
  T* const owner_;
  void (T::*const fn_)(bool);
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_COMPLETION_H_
