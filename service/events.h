// Building the bytes of MatchEvent messages. A match is serialized once; each
// member's event is a small per-ticket header followed by that shared,
// refcounted body (protobuf allows a message's fields to be concatenated).
#ifndef MATCHD_SERVICE_EVENTS_H_
#define MATCHD_SERVICE_EVENTS_H_

#include <memory>
#include <string>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "absl/time/time.h"
#include "matchmaking/v1/matchmaking.pb.h"

namespace matchd {

google::protobuf::Timestamp ToProtoTime(absl::Time t);
google::protobuf::Duration ToProtoDuration(absl::Duration d);

// A formed match as its tickets keep it: the serialized `matched` field of
// MatchEvent (field 12), built once and shared (read-only) by the match's
// tickets on the queue's loop and by the in-flight writes of every member's
// stream. The Match message itself is not kept: a retained ticket that goes
// then frees one buffer rather than a tree of messages, long after they left
// the cache. The readers of a matched ticket's whole state (the Ticket
// replies of CreateTicket and GetTicket, CancelTicket's error) parse it back.
// The slice is reference-counted: a copy shares the bytes, and the match
// costs one allocation.
struct SharedMatch {
  grpc::Slice matched_field;  // empty: no match
  bool empty() const { return matched_field.size() == 0; }
  matchmaking::v1::Match Parse() const;
};

// Serializes `match` once.
SharedMatch MakeSharedMatch(const matchmaking::v1::Match& match);

// The whole event as bytes: `event` already carries ticket_id, seq and time.
grpc::ByteBuffer EventBytes(const matchmaking::v1::MatchEvent& event);

// The `matched` event of one member: header + the shared body (no copy of it).
grpc::ByteBuffer MatchedEventBytes(const std::string& ticket_id, uint64_t seq, absl::Time time,
                                   const SharedMatch& match);

}  // namespace matchd

#endif  // MATCHD_SERVICE_EVENTS_H_
