#include "matcher/rules/crossplay_rule.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "matcher/pool.h"

namespace matchd::matcher {

CrossplayRule::CrossplayRule(std::string attribute, std::string first_kind, double penalty,
                             bool allow_mixed)
    : attribute_(std::move(attribute)),
      first_kind_(std::move(first_kind)),
      penalty_(penalty),
      allow_mixed_(allow_mixed) {}

absl::StatusOr<std::shared_ptr<const CustomRule>> CrossplayRule::Make(
    const std::map<std::string, std::string>& params) {
  std::string attribute = "input";
  std::string first_kind = "mouse";
  double penalty = 200;
  bool allow_mixed = true;
  for (const auto& [key, value] : params) {
    if (key == "attribute") {
      attribute = value;
    } else if (key == "first_kind") {
      first_kind = value;
    } else if (key == "penalty") {
      if (!absl::SimpleAtod(value, &penalty) || !std::isfinite(penalty) || penalty < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("crossplay: penalty must be a number >= 0, got \"", value, "\""));
      }
    } else if (key == "allow_mixed") {
      if (!absl::SimpleAtob(value, &allow_mixed)) {
        return absl::InvalidArgumentError(
            absl::StrCat("crossplay: allow_mixed must be true or false, got \"", value, "\""));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "crossplay: unknown parameter \"", key,
          "\" (known: attribute, first_kind, penalty, allow_mixed)"));
    }
  }
  if (attribute.empty()) return absl::InvalidArgumentError("crossplay: attribute is empty");
  return std::make_shared<CrossplayRule>(attribute, first_kind, penalty, allow_mixed);
}

absl::StatusOr<uint64_t> CrossplayRule::TicketData(absl::Span<const PlayerAttributes> party) const {
  uint64_t kinds = 0;
  for (size_t i = 0; i < party.size(); ++i) {
    auto it = party[i].find(attribute_);
    if (it == party[i].end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "players[", i, "].attributes: this queue needs \"", attribute_, "\" (crossplay)"));
    }
    kinds |= it->second == first_kind_ ? kFirstKind : kOtherKind;
  }
  if (!allow_mixed_ && kinds == (kFirstKind | kOtherKind)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "players[].attributes[\"", attribute_, "\"]: this queue does not mix kinds in a party"));
  }
  return kinds;
}

bool CrossplayRule::Compatible(const TicketSpec& anchor, const TicketSpec& candidate) const {
  return allow_mixed_ || anchor.custom == candidate.custom;
}

double CrossplayRule::Penalty(absl::Span<const TicketSpec* const> group) const {
  uint64_t kinds = 0;
  for (const TicketSpec* spec : group) kinds |= spec->custom;
  return kinds == (kFirstKind | kOtherKind) ? penalty_ : 0;
}

}  // namespace matchd::matcher
