// An example CustomRule: crossplay between input devices.
//
// Each player says how they play in one attribute (by default "input", e.g.
// "mouse" or "controller"). Lobbies of one kind form as usual; a lobby that
// mixes kinds costs `penalty` rating points, so it forms only once the rating
// window has widened that much further: players get their own kind first and
// crossplay when the queue is thin. With `allow_mixed: "false"` kinds never
// meet (a party must then be of one kind).
//
//   "customRule": {"name": "crossplay",
//                  "params": {"attribute": "input", "penalty": "150"}}
#ifndef MATCHD_MATCHER_RULES_CROSSPLAY_RULE_H_
#define MATCHD_MATCHER_RULES_CROSSPLAY_RULE_H_

#include <string>

#include "matcher/custom_rule.h"

namespace matchd::matcher {

class CrossplayRule final : public CustomRule {
 public:
  // Ticket data: bit 0 set if the party has a player with `first_kind`, bit 1
  // if it has a player of another kind.
  static constexpr uint64_t kFirstKind = 1;
  static constexpr uint64_t kOtherKind = 2;

  CrossplayRule(std::string attribute, std::string first_kind, double penalty, bool allow_mixed);
  // Params: attribute (default "input"), first_kind (default "mouse"),
  // penalty (rating points, default 200), allow_mixed ("true"/"false").
  static absl::StatusOr<std::shared_ptr<const CustomRule>> Make(
      const std::map<std::string, std::string>& params);

  absl::string_view name() const override { return "crossplay"; }
  absl::StatusOr<uint64_t> TicketData(absl::Span<const PlayerAttributes> party) const override;
  bool Compatible(const TicketSpec& anchor, const TicketSpec& candidate) const override;
  double Penalty(absl::Span<const TicketSpec* const> group) const override;

 private:
  const std::string attribute_;
  const std::string first_kind_;
  const double penalty_;
  const bool allow_mixed_;
};

}  // namespace matchd::matcher

#endif  // MATCHD_MATCHER_RULES_CROSSPLAY_RULE_H_
