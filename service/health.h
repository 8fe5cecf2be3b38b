// The serving status behind grpc.health.v1, and who watches it. The Check and
// Watch calls themselves are call state machines in calls.cc, on the same
// completion-queue loops as every other call.
#ifndef MATCHD_SERVICE_HEALTH_H_
#define MATCHD_SERVICE_HEALTH_H_

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "grpc/health/v1/health.pb.h"

namespace matchd {

using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

// Thread-safe.
class HealthBoard final {
 public:
  // A Watch call's side. Called from any thread; must not call back into the board.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void Notify(ServingStatus status) = 0;
    // The server is stopping: end the watch.
    virtual void Close() = 0;
  };

  // Sets a service's status ("" is the whole server) and tells its watchers.
  void Set(const std::string& service, bool serving);
  // The status of a service set before; nullopt if never set.
  std::optional<ServingStatus> Get(const std::string& service) const;
  // Registers a watcher; returns the status now (SERVICE_UNKNOWN if never
  // set). After Shutdown(), returns nullopt and registers nothing.
  std::optional<ServingStatus> Watch(const std::string& service,
                                     std::shared_ptr<Listener> listener);
  void Unwatch(const Listener* listener);
  // Every service NOT_SERVING, then every watch closed.
  void Shutdown();

 private:
  mutable std::mutex mu_;
  std::map<std::string, ServingStatus> status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::shared_ptr<Listener>>> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_HEALTH_H_
