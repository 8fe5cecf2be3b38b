// Prometheus metrics. Label values are bounded: queue names come from the
// configuration, methods and codes from fixed lists, loops from --threads.
//
// Every series has one writer: a queue's series are written on the loop that
// owns the queue, the RPC counters and the lag histogram of a loop on that
// loop. A write is then a relaxed load and store, with no locked
// read-modify-write and no cache line shared between loops; the RPC counters,
// which every loop writes, are kept per loop and summed when the metrics are
// collected. Collect() may run on any thread (the exposer's) at any time.
#ifndef MATCHD_SERVICE_METRICS_H_
#define MATCHD_SERVICE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>
#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

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
// grpc::StatusCode's values, OK (0) to UNAUTHENTICATED (16).
inline constexpr int kStatusCodeCount = 17;

// A counter with one writing thread; any thread may read it.
class OwnedCounter {
 public:
  void Increment() {
    value_.store(value_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A gauge with one writing thread.
class OwnedGauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A histogram with one writing thread. A value goes into the first bucket
// whose upper bound is >= it (Prometheus' `le`), else into +Inf.
class OwnedHistogram {
 public:
  // `bounds`: ascending upper bounds, without +Inf.
  explicit OwnedHistogram(std::vector<double> bounds);
  void Observe(double value);
  // Cumulative buckets ending with +Inf; the count is the +Inf bucket's, so
  // the two always agree. The sum is read after the buckets and may already
  // include an observation the buckets missed.
  prometheus::ClientMetric::Histogram Snapshot() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0};
};

class Metrics final : public prometheus::Collectable {
 public:
  // Per queue, written only on the queue's loop.
  struct alignas(64) Queue {
    Queue();
    OwnedCounter created;
    OwnedCounter matched;
    OwnedCounter cancelled;
    OwnedCounter expired;
    OwnedGauge waiting;
    OwnedGauge max_wait_seconds;  // the queue's maxWait, set once
    OwnedCounter matches;
    OwnedHistogram wait_seconds;
    OwnedHistogram rating_spread;
    OwnedHistogram team_gap;
  };

  Metrics(std::vector<std::string> queue_names, int loops, int64_t waiting_party_bytes_limit);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  Queue& queue(int index) { return *queues_[index]; }
  // On loop `loop`'s thread.
  void RecordRpc(int loop, Rpc rpc, grpc::StatusCode code);
  void RecordLoopLag(int loop, absl::Duration lag);

  std::vector<prometheus::MetricFamily> Collect() const override;

  // The bytes of waiting parties, all queues together, as admission counts
  // them against --max_waiting_bytes (QueueRuntime::Admit and Finish, from
  // any loop). Kept here so that a scrape reads the one counter there is.
  std::atomic<int64_t> waiting_party_bytes{0};
  // ServerOptions::max_waiting_bytes, which admission holds it to.
  int64_t waiting_party_bytes_limit() const { return waiting_party_bytes_limit_; }

 private:
  struct alignas(64) Loop {
    Loop();
    OwnedCounter rpcs[kRpcCount][kStatusCodeCount];
    OwnedHistogram lag;
  };

  const std::vector<std::string> queue_names_;
  const int64_t waiting_party_bytes_limit_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::vector<std::unique_ptr<Loop>> loops_;
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_METRICS_H_
