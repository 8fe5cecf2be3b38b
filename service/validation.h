// Checks of caller input that need no state: each failure is INVALID_ARGUMENT
// with a message that names the field and the limit.
#ifndef MATCHD_SERVICE_VALIDATION_H_
#define MATCHD_SERVICE_VALIDATION_H_

#include <google/protobuf/repeated_field.h>

#include "absl/status/status.h"
#include "matcher/pool.h"
#include "service/config.h"
#include "matchmaking/v1/matchmaking.pb.h"

namespace matchd {

// Limits on requests, documented in the proto.
inline constexpr size_t kMaxIdBytes = 128;
inline constexpr size_t kMaxRegionBytes = 64;
inline constexpr int kMaxRegions = 32;
inline constexpr uint32_t kMaxLatencyMs = 10000;
inline constexpr int kMaxAttributes = 16;
inline constexpr size_t kMaxAttributeKeyBytes = 64;
inline constexpr size_t kMaxAttributeValueBytes = 256;
inline constexpr double kMaxAbsRating = 100000;
inline constexpr size_t kMaxRequestBytes = 64 * 1024;

// A party for `queue`: 1..max_party_size players with valid, distinct ids,
// finite ratings and bounded latencies and attributes; with latency rules, a
// region of the queue that every member gave a latency for; with match
// attributes, every one given and equal across the party.
absl::Status ValidateParty(
    const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
    const QueueSettings& queue);

// The party's latency per region of `queue` (the worst member; unreachable
// where a member gave none), as the matcher takes it.
std::array<uint16_t, matcher::QueueRules::kMaxRegions> PartyLatency(
    const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
    const QueueSettings& queue);

// The party's values of the queue's match attributes, joined into one key
// (equal key, equal values). Empty when the queue has none.
std::string PartitionKey(const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
                         const QueueSettings& queue);

// A ticket id as issued by the server: 32 lowercase hex digits.
absl::Status ValidateTicketId(const std::string& ticket_id);

// The party's rating: the mean of its members' ratings.
double PartyRating(const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players);

}  // namespace matchd

#endif  // MATCHD_SERVICE_VALIDATION_H_
