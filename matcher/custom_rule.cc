#include "matcher/custom_rule.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace matchd::matcher {

CustomRuleRegistry& CustomRuleRegistry::Global() {
  static auto* registry = [] {
    auto* r = new CustomRuleRegistry();
    RegisterBuiltinRules(*r);
    return r;
  }();
  return *registry;
}

bool CustomRuleRegistry::Register(std::string name, CustomRuleFactory factory) {
  return factories_.emplace(std::move(name), std::move(factory)).second;
}

absl::StatusOr<std::shared_ptr<const CustomRule>> CustomRuleRegistry::Make(
    absl::string_view name, const std::map<std::string, std::string>& params) const {
  auto it = factories_.find(name);
  if (it == factories_.end()) {
    return absl::NotFoundError(absl::StrCat("no custom rule named \"", name,
                                            "\"; this build has: ",
                                            absl::StrJoin(Names(), ", ")));
  }
  return it->second(params);
}

std::vector<std::string> CustomRuleRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, factory] : factories_) names.push_back(name);
  return names;
}

}  // namespace matchd::matcher
