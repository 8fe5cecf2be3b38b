#include "service/validation.h"

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"

namespace matchd {
namespace {

bool Printable(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

absl::Status Invalid(absl::string_view a, absl::string_view b = "", absl::string_view c = "",
                     absl::string_view d = "") {
  return absl::InvalidArgumentError(absl::StrCat(a, b, c, d));
}

}  // namespace

absl::Status ValidateParty(
    const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
    const matcher::QueueRules& rules) {
  if (players.empty()) return Invalid("players: at least one player is required");
  if (players.size() > rules.max_party_size) {
    return Invalid(absl::StrCat("players: a party of ", players.size(),
                                " is larger than this queue's maximum party size of ",
                                rules.max_party_size));
  }
  std::set<std::string> seen;
  for (int i = 0; i < players.size(); ++i) {
    const matchmaking::v1::Player& p = players[i];
    const std::string where = absl::StrCat("players[", i, "]");
    if (p.id().empty() || p.id().size() > kMaxIdBytes || !Printable(p.id())) {
      return Invalid(where, ".id must be 1..", absl::StrCat(kMaxIdBytes),
                     " bytes of printable ASCII without spaces");
    }
    if (!seen.insert(p.id()).second) {
      return Invalid(where, ".id \"", p.id(), "\" appears twice in the party");
    }
    if (!std::isfinite(p.rating()) || std::fabs(p.rating()) > kMaxAbsRating) {
      return Invalid(where, ".rating must be a finite number within [-100000, 100000]");
    }
    if (p.latency_ms_size() > kMaxRegions) {
      return Invalid(where, ".latency_ms has more than ", absl::StrCat(kMaxRegions), " regions");
    }
    for (const auto& [region, ms] : p.latency_ms()) {
      if (region.empty() || region.size() > kMaxRegionBytes || !Printable(region)) {
        return Invalid(where, ".latency_ms: region names must be 1..64 printable bytes");
      }
      if (ms > kMaxLatencyMs) {
        return Invalid(where, ".latency_ms[\"", region, "\"] must be 0..10000 ms");
      }
    }
    if (p.attributes_size() > kMaxAttributes) {
      return Invalid(where, ".attributes has more than ", absl::StrCat(kMaxAttributes),
                     " entries");
    }
    for (const auto& [key, value] : p.attributes()) {
      if (key.empty() || key.size() > kMaxAttributeKeyBytes) {
        return Invalid(where, ".attributes: keys must be 1..64 bytes");
      }
      if (value.size() > kMaxAttributeValueBytes) {
        return Invalid(where, ".attributes[\"", key, "\"] is longer than 256 bytes");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateTicketId(const std::string& ticket_id) {
  bool ok = ticket_id.size() == 32;
  for (char c : ticket_id) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!ok) {
    return absl::InvalidArgumentError(
        "ticket_id must be 32 lowercase hex digits as returned by CreateTicket or FindMatch");
  }
  return absl::OkStatus();
}

double PartyRating(const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players) {
  if (players.empty()) return 0;
  double sum = 0;
  for (const auto& p : players) sum += p.rating();
  return sum / players.size();
}

}  // namespace matchd
