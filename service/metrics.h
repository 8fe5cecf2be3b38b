// Prometheus metrics. Label values are bounded: queue names come from the
// configuration, methods and codes from fixed lists, loops from --threads.
// All recording methods are thread-safe (prometheus-cpp's metrics are atomic).
#ifndef MATCHD_SERVICE_METRICS_H_
#define MATCHD_SERVICE_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/time/time.h"

namespace matchd {

enum class Rpc {
  kFindMatch,
  kCreateTicket,
  kGetTicket,
  kCancelTicket,
  kWatchTicket,
  kListQueues,
  kHealthCheck,
  kHealthWatch,
};
inline constexpr int kRpcCount = 8;

class Metrics final {
 public:
  // Per queue; pointers owned by the registry.
  struct Queue {
    prometheus::Counter* created;
    prometheus::Counter* matched;
    prometheus::Counter* cancelled;
    prometheus::Counter* expired;
    prometheus::Gauge* waiting;
    prometheus::Counter* matches;
    prometheus::Histogram* wait_seconds;
    prometheus::Histogram* rating_spread;
    prometheus::Histogram* team_gap;
  };

  Metrics(const std::vector<std::string>& queue_names, int loops);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  Queue& queue(int index) { return queues_[index]; }
  void RecordRpc(Rpc rpc, grpc::StatusCode code);
  void RecordLoopLag(int loop, absl::Duration lag);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<Queue> queues_;
  // rpcs_[rpc][code]
  std::vector<std::vector<prometheus::Counter*>> rpcs_;
  std::vector<prometheus::Histogram*> loop_lag_;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_METRICS_H_
