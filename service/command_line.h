// Command-line parsing for matchd and matchctl: abseil flags, with the exit
// statuses the programs document.
//
// absl::ParseCommandLine exits by itself, with status 1, on an unknown flag,
// a value that does not parse and even on --help, where a script needs 2 for
// bad usage and 0 for help. ParseFlags accepts the same syntax (--name=value,
// --name value, --name and --noname for booleans, -name for --name, "--" ends
// the flags) and returns instead of exiting.
#ifndef MATCHD_SERVICE_COMMAND_LINE_H_
#define MATCHD_SERVICE_COMMAND_LINE_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace matchd {

struct CommandLine {
  std::vector<std::string> positional;  // the arguments that are not flags, in order
  bool help = false;                    // --help, --helpfull, --helpshort or -h was given
  bool version = false;                 // --version was given (before any error)
  std::string error;                    // not empty: bad usage, and why
};

// Sets the flags argv[1..] names (argv[0] is the program). Stops at the first
// mistake: the flags before it are set, error says what it was.
CommandLine ParseFlags(int argc, char** argv);

// Each flag the program defines (not abseil's own), sorted by name, with its
// default and help text, then --version.
void PrintFlags(std::ostream& out);

// The text of the PEM file a flag names (--flag: the flag's name, without
// dashes): NotFound when it cannot be read, InvalidArgument when it holds no
// PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path);

}  // namespace matchd

#endif  // MATCHD_SERVICE_COMMAND_LINE_H_
