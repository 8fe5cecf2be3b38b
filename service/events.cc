#include "service/events.h"

#include <cassert>
#include <utility>

#include "google/protobuf/io/coded_stream.h"
#include "grpc/slice.h"

namespace matchd {

namespace {

using ::google::protobuf::io::CodedOutputStream;

// `message` serialized straight into a slice of its exact size: no string
// in between, no copy.
grpc::Slice SerializeToSlice(const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  grpc_slice slice = grpc_slice_malloc(size);
  message.SerializeWithCachedSizesToArray(GRPC_SLICE_START_PTR(slice));
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

}  // namespace

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

SharedMatch MakeSharedMatch(const matchmaking::v1::Match& match) {
  SharedMatch shared;
  // MatchEvent.matched (field 12) holding Matched.match (field 1), both
  // length-delimited, written around the match's own bytes: the match is
  // serialized once and never copied.
  constexpr uint8_t kMatchedTag = (12 << 3) | 2;
  constexpr uint8_t kMatchTag = (1 << 3) | 2;
  const size_t match_size = match.ByteSizeLong();
  const size_t matched_size = 1 + CodedOutputStream::VarintSize64(match_size) + match_size;
  const size_t total = 1 + CodedOutputStream::VarintSize64(matched_size) + matched_size;
  grpc_slice slice = grpc_slice_malloc(total);
  uint8_t* out = GRPC_SLICE_START_PTR(slice);
  *out++ = kMatchedTag;
  out = CodedOutputStream::WriteVarint64ToArray(matched_size, out);
  *out++ = kMatchTag;
  out = CodedOutputStream::WriteVarint64ToArray(match_size, out);
  match.SerializeWithCachedSizesToArray(out);
  shared.matched_field = grpc::Slice(slice, grpc::Slice::STEAL_REF);
  return shared;
}

matchmaking::v1::Match SharedMatch::Parse() const {
  // The field alone is a valid MatchEvent.
  matchmaking::v1::MatchEvent event;
  const bool parsed =
      event.ParseFromArray(matched_field.begin(), static_cast<int>(matched_field.size()));
  assert(parsed);
  (void)parsed;
  return std::move(*event.mutable_matched()->mutable_match());
}

grpc::ByteBuffer EventBytes(const matchmaking::v1::MatchEvent& event) {
  grpc::Slice slice = SerializeToSlice(event);
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer MatchedEventBytes(const std::string& ticket_id, uint64_t seq, absl::Time time,
                                   const SharedMatch& match) {
  // Reused: its string and timestamp keep their storage from one event to
  // the next, so a header costs no allocation.
  thread_local matchmaking::v1::MatchEvent header;
  header.set_ticket_id(ticket_id);
  header.set_seq(seq);
  *header.mutable_time() = ToProtoTime(time);
  grpc::Slice slices[2] = {SerializeToSlice(header), match.matched_field};
  return grpc::ByteBuffer(slices, 2);
}

}  // namespace matchd
