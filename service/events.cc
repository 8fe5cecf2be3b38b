#include "service/events.h"

#include <utility>

namespace matchd {

google::protobuf::Timestamp ToProtoTime(absl::Time t) {
  const int64_t nanos = absl::ToUnixNanos(t);
  google::protobuf::Timestamp ts;
  ts.set_seconds(nanos / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  if (ts.nanos() < 0) {
    ts.set_seconds(ts.seconds() - 1);
    ts.set_nanos(ts.nanos() + 1'000'000'000);
  }
  return ts;
}

google::protobuf::Duration ToProtoDuration(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  out.set_seconds(nanos / 1'000'000'000);
  out.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return out;
}

std::shared_ptr<const SharedMatch> MakeSharedMatch(matchmaking::v1::Match match) {
  auto shared = std::make_shared<SharedMatch>();
  shared->match = std::move(match);
  matchmaking::v1::MatchEvent body;
  *body.mutable_matched()->mutable_match() = shared->match;
  shared->matched_field = grpc::Slice(body.SerializeAsString());
  return shared;
}

grpc::ByteBuffer EventBytes(const matchmaking::v1::MatchEvent& event) {
  grpc::Slice slice(event.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer MatchedEventBytes(const std::string& ticket_id, uint64_t seq, absl::Time time,
                                   const SharedMatch& match) {
  matchmaking::v1::MatchEvent header;
  header.set_ticket_id(ticket_id);
  header.set_seq(seq);
  *header.mutable_time() = ToProtoTime(time);
  grpc::Slice slices[2] = {grpc::Slice(header.SerializeAsString()), match.matched_field};
  return grpc::ByteBuffer(slices, 2);
}

}  // namespace matchd
