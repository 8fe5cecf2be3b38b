// The custom rules compiled into matchd. A studio adds its own rule here
// (and its .cc to matcher/CMakeLists.txt); queues then name it in their
// config's `customRule`.
#include "matcher/custom_rule.h"
#include "matcher/rules/crossplay_rule.h"

namespace matchd::matcher {

void RegisterBuiltinRules(CustomRuleRegistry& registry) {
  registry.Register("crossplay", CrossplayRule::Make);
}

}  // namespace matchd::matcher
