// Command-line parsing for lstmserve's binaries, on Abseil flags.
//
// absl::ParseCommandLine (20220623) exits with status 1 and a multi-line report on a bad
// flag; our binaries promise one line and exit status 2, and --help listing only their own
// flags. Thread-compatible; call once, from main.
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lstmserve::core {

struct ParsedCommandLine {
  std::vector<std::string> positional;  // arguments that are not flags, in order
};

// Parses --name=value, --name value, --bool_flag, --nobool_flag and "--" (end of flags)
// into the ABSL_FLAG definitions linked in. --flagfile=PATH reads more arguments from PATH,
// one per line ('#' starts a comment line), in its place: later flags win. --help prints `usage` and the flags defined
// in files whose path contains one of `own_flag_files`, then exits 0. Any unknown flag or bad value prints "PROGRAM:
// error: ..." on one line and exits 2. At most `max_positional` positional arguments are accepted.
ParsedCommandLine ParseCommandLineOrExit(int argc, char** argv, absl::string_view usage,
                                         const std::vector<std::string>& own_flag_files, int max_positional);

// Prints "PROGRAM: error: MESSAGE" on stderr and exits with status 2 (a usage error).
[[noreturn]] void UsageErrorExit(absl::string_view message);

}  // namespace lstmserve::core
