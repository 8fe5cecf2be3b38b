#include "service/metrics.h"

#include <prometheus/family.h>

namespace matchd {
namespace {

constexpr const char* kRpcNames[kRpcCount] = {
    "FindMatch",  "CreateTicket", "GetTicket",  "CancelTicket",
    "WatchTicket", "ListQueues",  "HealthCheck", "HealthWatch"};
constexpr const char* kCodeNames[] = {
    "OK",        "CANCELLED",          "UNKNOWN",      "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",    "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS",        "UNAUTHENTICATED"};
constexpr int kCodeCount = sizeof(kCodeNames) / sizeof(kCodeNames[0]);

}  // namespace

Metrics::Metrics(const std::vector<std::string>& queue_names, int loops)
    : registry_(std::make_shared<prometheus::Registry>()) {
  auto& created = prometheus::BuildCounter()
                      .Name("matchd_tickets_created_total")
                      .Help("Tickets accepted into a queue.")
                      .Register(*registry_);
  auto& ended = prometheus::BuildCounter()
                    .Name("matchd_tickets_ended_total")
                    .Help("Tickets that reached a terminal state, by outcome.")
                    .Register(*registry_);
  auto& waiting = prometheus::BuildGauge()
                      .Name("matchd_tickets_waiting")
                      .Help("Tickets waiting in a queue's pool now.")
                      .Register(*registry_);
  auto& matches = prometheus::BuildCounter()
                      .Name("matchd_matches_total")
                      .Help("Matches formed.")
                      .Register(*registry_);
  auto& wait = prometheus::BuildHistogram()
                   .Name("matchd_ticket_wait_seconds")
                   .Help("Time from a ticket's creation to its match.")
                   .Register(*registry_);
  auto& spread = prometheus::BuildHistogram()
                     .Name("matchd_match_rating_spread")
                     .Help("Highest minus lowest party rating in a match.")
                     .Register(*registry_);
  auto& gap = prometheus::BuildHistogram()
                  .Name("matchd_match_team_gap")
                  .Help("Highest minus lowest team mean rating in a match.")
                  .Register(*registry_);
  const prometheus::Histogram::BucketBoundaries wait_buckets = {
      0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600};
  const prometheus::Histogram::BucketBoundaries rating_buckets = {
      1, 5, 10, 25, 50, 100, 200, 300, 500, 800, 1200, 2000};
  for (const std::string& name : queue_names) {
    Queue q;
    q.created = &created.Add({{"queue", name}});
    q.matched = &ended.Add({{"queue", name}, {"outcome", "matched"}});
    q.cancelled = &ended.Add({{"queue", name}, {"outcome", "cancelled"}});
    q.expired = &ended.Add({{"queue", name}, {"outcome", "expired"}});
    q.waiting = &waiting.Add({{"queue", name}});
    q.matches = &matches.Add({{"queue", name}});
    q.wait_seconds = &wait.Add({{"queue", name}}, wait_buckets);
    q.rating_spread = &spread.Add({{"queue", name}}, rating_buckets);
    q.team_gap = &gap.Add({{"queue", name}}, rating_buckets);
    queues_.push_back(q);
  }
  auto& rpcs = prometheus::BuildCounter()
                   .Name("matchd_rpcs_total")
                   .Help("Finished RPCs by method and status code.")
                   .Register(*registry_);
  rpcs_.resize(kRpcCount);
  for (int r = 0; r < kRpcCount; ++r) {
    for (int c = 0; c < kCodeCount; ++c) {
      rpcs_[r].push_back(&rpcs.Add({{"method", kRpcNames[r]}, {"code", kCodeNames[c]}}));
    }
  }
  auto& lag = prometheus::BuildHistogram()
                  .Name("matchd_event_loop_lag_seconds")
                  .Help("How late an event loop ran a timer: a busy or blocked loop shows here.")
                  .Register(*registry_);
  for (int i = 0; i < loops; ++i) {
    loop_lag_.push_back(&lag.Add({{"loop", std::to_string(i)}},
                                 prometheus::Histogram::BucketBoundaries{
                                     0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1}));
  }
}

void Metrics::RecordRpc(Rpc rpc, grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  if (c < 0 || c >= kCodeCount) return;
  rpcs_[static_cast<int>(rpc)][c]->Increment();
}

void Metrics::RecordLoopLag(int loop, absl::Duration lag) {
  loop_lag_[loop]->Observe(absl::ToDoubleSeconds(lag));
}

}  // namespace matchd
