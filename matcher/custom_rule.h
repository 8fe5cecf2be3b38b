// The plug-in point for a studio's own matching rule, and the registry that
// lets a queue's configuration name one.
//
// A CustomRule is compiled into matchd (see matcher/rules/crossplay_rule.cc for
// an example) and registered under a name in matcher/rules/builtin.cc; a
// queue's config then selects it with `customRule: {name, params}`. The pool consults it for every candidate
// group:
//   * TicketData turns a party's attributes into 64 bits the pool keeps with
//     the ticket (TicketSpec::custom), once, when the ticket is admitted;
//   * Compatible is a hard filter in the group walk;
//   * Penalty adds rating points to a group's spread before the rating window
//     is applied: a soft rule that a long enough wait overcomes.
// Rules are shared by all queues that name them with the same parameters and
// are called from the queues' event-loop threads at once: every method must
// be const and thread-safe, and cheap (it runs in the matching hot path).
#ifndef MATCHD_MATCHER_CUSTOM_RULE_H_
#define MATCHD_MATCHER_CUSTOM_RULE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace matchd::matcher {

struct TicketSpec;

// One player's attributes (Player.attributes in the API), sorted by key.
using PlayerAttributes = std::map<std::string, std::string, std::less<>>;

class CustomRule {
 public:
  virtual ~CustomRule() = default;

  // Shown in `searching` events when this rule is what holds a group back.
  virtual absl::string_view name() const = 0;
  // The ticket's data for Compatible and Penalty (TicketSpec::custom), from
  // its party's attributes; or INVALID_ARGUMENT with a message for the caller
  // (the ticket is refused). Called once per ticket, off the hot path.
  virtual absl::StatusOr<uint64_t> TicketData(absl::Span<const PlayerAttributes> party) const {
    return 0;
  }
  // Whether `candidate` may join a group gathered around `anchor`. Must be
  // symmetric. Tickets it keeps apart still neighbour each other for
  // re-evaluation, so a rule that splits the pool in large parts is better
  // expressed as match attributes (a partition).
  virtual bool Compatible(const TicketSpec& anchor, const TicketSpec& candidate) const {
    return true;
  }
  // Rating points (finite, >= 0) added to the group's rating spread before
  // the window test; the group is accepted once the window covers
  // spread + penalty. Only rated queues apply it.
  virtual double Penalty(absl::Span<const TicketSpec* const> group) const { return 0; }
};

// Makes a rule from a queue's `customRule.params`; INVALID_ARGUMENT naming
// the parameter at fault.
using CustomRuleFactory = std::function<absl::StatusOr<std::shared_ptr<const CustomRule>>(
    const std::map<std::string, std::string>& params)>;

// The rules compiled into this binary, by name. Global() starts with the
// rules listed in matcher/rules/builtin.cc (add yours there); tests may
// register more. Not thread-safe: register before serving.
class CustomRuleRegistry {
 public:
  static CustomRuleRegistry& Global();
  // False if the name is taken.
  bool Register(std::string name, CustomRuleFactory factory);
  // NOT_FOUND listing the known names, or the factory's result.
  absl::StatusOr<std::shared_ptr<const CustomRule>> Make(
      absl::string_view name, const std::map<std::string, std::string>& params) const;
  std::vector<std::string> Names() const;

 private:
  std::map<std::string, CustomRuleFactory, std::less<>> factories_;
};

// Registers the rules that ship with this build (matcher/rules/builtin.cc).
void RegisterBuiltinRules(CustomRuleRegistry& registry);

}  // namespace matchd::matcher

#endif  // MATCHD_MATCHER_CUSTOM_RULE_H_
