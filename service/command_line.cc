#include "service/command_line.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace matchd {
namespace {

// Flags abseil itself defines (--flagfile, --undefok, ...): not ours to list.
bool IsAbseils(const absl::CommandLineFlag& flag) {
  const std::string file = flag.Filename();
  return absl::StartsWith(file, "absl/") || absl::StrContains(file, "/absl/");
}

}  // namespace

CommandLine ParseFlags(int argc, char** argv) {
  CommandLine result;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) result.positional.emplace_back(argv[i]);
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      result.positional.emplace_back(arg);
      continue;
    }
    absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    absl::string_view name = body.substr(0, eq);
    if (name == "help" || name == "helpfull" || name == "helpshort" || name == "h") {
      result.help = true;
      continue;
    }
    if (name == "version") {
      if (eq != absl::string_view::npos) {
        result.error = "--version takes no value";
        return result;
      }
      result.version = true;
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    bool negated = false;
    if ((flag == nullptr || IsAbseils(*flag)) && absl::StartsWith(name, "no")) {
      // --noverbose: a boolean set to false.
      absl::CommandLineFlag* positive = absl::FindCommandLineFlag(name.substr(2));
      if (positive != nullptr && positive->IsOfType<bool>()) {
        flag = positive;
        negated = true;
      }
    }
    if (flag == nullptr || IsAbseils(*flag)) {
      result.error = absl::StrCat("unknown flag ", arg.substr(0, arg.find('=')));
      return result;
    }
    std::string value;
    if (negated) {
      if (eq != absl::string_view::npos) {
        result.error = absl::StrCat("--", name, " takes no value");
        return result;
      }
      value = "false";
    } else if (eq != absl::string_view::npos) {
      value = std::string(body.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];  // --name value
    } else {
      result.error = absl::StrCat("--", name, " needs a value");
      return result;
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      result.error = error;  // "Illegal value 'x' specified for flag 'threads'..."
      return result;
    }
  }
  return result;
}

void PrintFlags(std::ostream& out) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!IsAbseils(*flag)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
              return a->Name() < b->Name();
            });
  for (const absl::CommandLineFlag* flag : flags) {
    out << "  --" << flag->Name() << " (default: " << flag->DefaultValue() << ")\n      "
        << flag->Help() << "\n";
  }
  // ParseFlags' own (CommandLine::version); last, as it sorts.
  out << "  --version\n      Print the program's version and the gRPC and protobuf it runs on.\n";
}

absl::StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, ": cannot read ", path));
  if (text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is not a PEM file"));
  }
  return text.str();
}

}  // namespace matchd
