#include "service/validation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
    const QueueSettings& queue) {
  const matcher::QueueRules& rules = queue.rules;
  if (players.empty()) return Invalid("players: at least one player is required");
  if (players.size() > rules.max_party_size) {
    return Invalid(absl::StrCat("players: a party of ", players.size(),
                                " is larger than this queue's maximum party size of ",
                                rules.max_party_size));
  }
  for (int i = 0; i < players.size(); ++i) {
    const matchmaking::v1::Player& p = players[i];
    const std::string where = absl::StrCat("players[", i, "]");
    if (p.id().empty() || p.id().size() > kMaxIdBytes || !Printable(p.id())) {
      return Invalid(where, ".id must be 1..", absl::StrCat(kMaxIdBytes),
                     " bytes of printable ASCII without spaces");
    }
    // Parties are small (at most max_party_size): a scan beats a set, and
    // allocates nothing.
    for (int j = 0; j < i; ++j) {
      if (players[j].id() == p.id()) {
        return Invalid(where, ".id \"", p.id(), "\" appears twice in the party");
      }
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
    for (const std::string& key : queue.match_attributes) {
      auto it = p.attributes().find(key);
      if (it == p.attributes().end()) {
        return Invalid(where, ".attributes: queue \"", queue.name,
                       absl::StrCat("\" matches only players with equal \"", key,
                                    "\"; give it for every player"));
      }
      if (i > 0 && players[0].attributes().at(key) != it->second) {
        return Invalid(where, absl::StrCat(".attributes[\"", key, "\"] is \"", it->second,
                                           "\" but players[0] has \"",
                                           players[0].attributes().at(key),
                                           "\"; a party plays with one value of it"));
      }
    }
  }
  if (!queue.regions.empty()) {
    const auto latency = PartyLatency(players, queue);
    bool any = false;
    for (size_t r = 0; r < queue.regions.size(); ++r) {
      any = any || latency[r] != matcher::TicketSpec::kUnreachable;
    }
    if (!any) {
      return Invalid("players[].latency_ms: queue \"", queue.name,
                     absl::StrCat("\" places matches in ", absl::StrJoin(queue.regions, ", "),
                                  "; every player of the party must give a latency to at least "
                                  "one same region of them"));
    }
  }
  return absl::OkStatus();
}

std::array<uint16_t, matcher::QueueRules::kMaxRegions> PartyLatency(
    const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
    const QueueSettings& queue) {
  std::array<uint16_t, matcher::QueueRules::kMaxRegions> out =
      matcher::TicketSpec::FilledUnreachable();
  for (size_t r = 0; r < queue.regions.size(); ++r) {
    uint32_t worst = 0;
    for (const matchmaking::v1::Player& p : players) {
      auto it = p.latency_ms().find(queue.regions[r]);
      // kMaxLatencyMs < kUnreachable: a given latency is always reachable.
      worst = std::max(worst, it == p.latency_ms().end() ? uint32_t{matcher::TicketSpec::kUnreachable}
                                                         : it->second);
    }
    if (!players.empty()) out[r] = static_cast<uint16_t>(worst);
  }
  return out;
}

std::string PartitionKey(const google::protobuf::RepeatedPtrField<matchmaking::v1::Player>& players,
                         const QueueSettings& queue) {
  std::string key;
  if (players.empty()) return key;
  for (const std::string& attribute : queue.match_attributes) {
    auto it = players[0].attributes().find(attribute);
    const std::string value = it == players[0].attributes().end() ? "" : it->second;
    // Length-prefixed, so that no two value lists join to the same key.
    absl::StrAppend(&key, value.size(), ":", value);
  }
  return key;
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
