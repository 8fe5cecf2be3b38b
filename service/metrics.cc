#include "service/metrics.h"

#include <algorithm>
#include <limits>
#include <utility>

#include <prometheus/metric_type.h>

#include "service/version.h"

namespace matchd {
namespace {

constexpr const char* kRpcNames[kRpcCount] = {
    "FindMatch",  "CreateTicket", "GetTicket",  "CancelTicket",
    "WatchTicket", "ListQueues",  "HealthCheck", "HealthWatch"};
constexpr const char* kCodeNames[kStatusCodeCount] = {
    "OK",        "CANCELLED",          "UNKNOWN",      "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",    "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS",        "UNAUTHENTICATED"};

std::vector<double> WaitBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600};
}
std::vector<double> RatingBuckets() {
  // 0 first: unrated queues and identical ratings give exactly 0.
  return {0, 1, 5, 10, 25, 50, 100, 200, 300, 500, 800, 1200, 2000};
}
std::vector<double> LagBuckets() { return {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1}; }

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

prometheus::ClientMetric Labelled(std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  return metric;
}

}  // namespace

OwnedHistogram::OwnedHistogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void OwnedHistogram::Observe(double value) {
  // The first bound >= value; NaN compares false everywhere and lands in +Inf.
  const size_t bucket =
      std::find_if(bounds_.begin(), bounds_.end(), [value](double b) { return value <= b; }) -
      bounds_.begin();
  std::atomic<uint64_t>& count = counts_[bucket];
  count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  sum_.store(sum_.load(std::memory_order_relaxed) + value, std::memory_order_relaxed);
}

prometheus::ClientMetric::Histogram OwnedHistogram::Snapshot() const {
  prometheus::ClientMetric::Histogram out;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    prometheus::ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound =
        i < bounds_.size() ? bounds_[i] : std::numeric_limits<double>::infinity();
    out.bucket.push_back(bucket);
  }
  out.sample_count = cumulative;
  out.sample_sum = sum_.load(std::memory_order_relaxed);
  return out;
}

Metrics::Queue::Queue()
    : wait_seconds(WaitBuckets()), rating_spread(RatingBuckets()), team_gap(RatingBuckets()) {}

Metrics::Loop::Loop() : lag(LagBuckets()) {}

Metrics::Metrics(std::vector<std::string> queue_names, int loops,
                 int64_t waiting_party_bytes_limit)
    : queue_names_(std::move(queue_names)), waiting_party_bytes_limit_(waiting_party_bytes_limit) {
  for (size_t i = 0; i < queue_names_.size(); ++i) queues_.push_back(std::make_unique<Queue>());
  for (int i = 0; i < loops; ++i) loops_.push_back(std::make_unique<Loop>());
}

void Metrics::RecordRpc(int loop, Rpc rpc, grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  if (c < 0 || c >= kStatusCodeCount) return;
  loops_[loop]->rpcs[static_cast<int>(rpc)][c].Increment();
}

void Metrics::RecordLoopLag(int loop, absl::Duration lag) {
  loops_[loop]->lag.Observe(absl::ToDoubleSeconds(lag));
}

std::vector<prometheus::MetricFamily> Metrics::Collect() const {
  using prometheus::MetricType;
  auto created = Family("matchd_tickets_created_total", "Tickets accepted into a queue.",
                        MetricType::Counter);
  auto ended = Family("matchd_tickets_ended_total",
                      "Tickets that reached a terminal state, by outcome.", MetricType::Counter);
  auto waiting =
      Family("matchd_tickets_waiting", "Tickets waiting in a queue's pool now.", MetricType::Gauge);
  auto max_wait = Family("matchd_queue_max_wait_seconds",
                         "The queue's maxWait: the longest a ticket waits for a match.",
                         MetricType::Gauge);
  auto matches = Family("matchd_matches_total", "Matches formed.", MetricType::Counter);
  auto wait = Family("matchd_ticket_wait_seconds", "Time from a ticket's creation to its match.",
                     MetricType::Histogram);
  auto spread = Family("matchd_match_rating_spread",
                       "Highest minus lowest party rating in a match.", MetricType::Histogram);
  auto gap = Family("matchd_match_team_gap", "Highest minus lowest team mean rating in a match.",
                    MetricType::Histogram);
  auto counter = [](std::vector<prometheus::ClientMetric::Label> labels, uint64_t value) {
    prometheus::ClientMetric metric = Labelled(std::move(labels));
    metric.counter.value = static_cast<double>(value);
    return metric;
  };
  auto histogram = [](std::vector<prometheus::ClientMetric::Label> labels,
                      const OwnedHistogram& h) {
    prometheus::ClientMetric metric = Labelled(std::move(labels));
    metric.histogram = h.Snapshot();
    return metric;
  };
  for (size_t i = 0; i < queues_.size(); ++i) {
    const Queue& q = *queues_[i];
    const std::string& name = queue_names_[i];
    created.metric.push_back(counter({{"queue", name}}, q.created.Value()));
    ended.metric.push_back(counter({{"outcome", "matched"}, {"queue", name}}, q.matched.Value()));
    ended.metric.push_back(
        counter({{"outcome", "cancelled"}, {"queue", name}}, q.cancelled.Value()));
    ended.metric.push_back(counter({{"outcome", "expired"}, {"queue", name}}, q.expired.Value()));
    prometheus::ClientMetric w = Labelled({{"queue", name}});
    w.gauge.value = q.waiting.Value();
    waiting.metric.push_back(std::move(w));
    prometheus::ClientMetric m = Labelled({{"queue", name}});
    m.gauge.value = q.max_wait_seconds.Value();
    max_wait.metric.push_back(std::move(m));
    matches.metric.push_back(counter({{"queue", name}}, q.matches.Value()));
    wait.metric.push_back(histogram({{"queue", name}}, q.wait_seconds));
    spread.metric.push_back(histogram({{"queue", name}}, q.rating_spread));
    gap.metric.push_back(histogram({{"queue", name}}, q.team_gap));
  }

  auto rpcs = Family("matchd_rpcs_total", "Finished RPCs by method and status code.",
                     MetricType::Counter);
  for (int r = 0; r < kRpcCount; ++r) {
    for (int c = 0; c < kStatusCodeCount; ++c) {
      uint64_t sum = 0;
      for (const auto& loop : loops_) sum += loop->rpcs[r][c].Value();
      rpcs.metric.push_back(counter({{"code", kCodeNames[c]}, {"method", kRpcNames[r]}}, sum));
    }
  }
  auto lag = Family("matchd_event_loop_lag_seconds",
                    "How late an event loop ran a timer: a busy or blocked loop shows here.",
                    MetricType::Histogram);
  for (size_t i = 0; i < loops_.size(); ++i) {
    lag.metric.push_back(histogram({{"loop", std::to_string(i)}}, loops_[i]->lag));
  }

  // One series, always 1: which build answers (join on it to break a fleet
  // down by version during a rollout).
  auto build = Family("matchd_build_info",
                      "matchd's version and the gRPC it runs on (always 1).", MetricType::Gauge);
  prometheus::ClientMetric info = Labelled({{"version", Version()},
                                            {"grpc_version", GrpcVersion()},
                                            {"grpc_source", GrpcSource()}});
  info.gauge.value = 1;
  build.metric.push_back(std::move(info));

  auto party_bytes = Family("matchd_waiting_party_bytes",
                            "Bytes of waiting tickets' parties, all queues, as counted against "
                            "--max_waiting_bytes (twice their serialized size).",
                            MetricType::Gauge);
  party_bytes.metric.push_back(Labelled({}));
  party_bytes.metric.back().gauge.value =
      static_cast<double>(waiting_party_bytes.load(std::memory_order_relaxed));
  auto party_limit = Family("matchd_waiting_party_bytes_limit",
                            "--max_waiting_bytes: new tickets are refused beyond it.",
                            MetricType::Gauge);
  party_limit.metric.push_back(Labelled({}));
  party_limit.metric.back().gauge.value = static_cast<double>(waiting_party_bytes_limit_);

  std::vector<prometheus::MetricFamily> families;
  for (auto* family : {&build, &party_bytes, &party_limit, &created, &ended, &waiting, &max_wait, &matches, &wait, &spread, &gap, &rpcs, &lag}) {
    families.push_back(std::move(*family));
  }
  return families;
}

}  // namespace matchd
