// Queue configuration: the JSON file (schema: proto/matchd/config/v1/config.proto)
// or the embedded default (config/default.json), checked and turned into the
// matcher's rules.
#ifndef MATCHD_SERVICE_CONFIG_H_
#define MATCHD_SERVICE_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "matcher/pool.h"
#include "matchmaking/v1/matchmaking.pb.h"

namespace matchd {

// One queue, validated, with defaults applied.
struct QueueSettings {
  std::string name;
  std::string description;
  matcher::QueueRules rules;
  absl::Duration poll_ttl;
  absl::Duration reattach_grace;
  int max_waiting_tickets = 0;
  // Latency placement: region names, index = the matcher's region index.
  std::vector<std::string> regions;
  // Player attribute keys whose values must be equal within a match.
  std::vector<std::string> match_attributes;
};

// What ListQueues says of a queue, without its live counts.
matchmaking::v1::QueueInfo QueueInfoOf(const QueueSettings& settings);

// The embedded default configuration (config/default.json), as JSON text.
absl::string_view DefaultConfigJson();

// Parses and validates configuration JSON. INVALID_ARGUMENT with the field at
// fault, named as the JSON spells it (e.g. `queues[1] ("squad"): teamSize
// must be >= 1`), or when the queues would not fit in a ListQueues reply a
// client accepts (4 MiB).
absl::StatusOr<std::vector<QueueSettings>> ParseConfig(absl::string_view json);

// Reads `path` and parses it; an empty path means the embedded default.
// NOT_FOUND if the file cannot be read.
absl::StatusOr<std::vector<QueueSettings>> LoadConfig(const std::string& path);

}  // namespace matchd

#endif  // MATCHD_SERVICE_CONFIG_H_
