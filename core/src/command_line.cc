#include "lstmserve/core/command_line.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lstmserve::core {
namespace {

std::string program_name = "lstmserve";

void PrintHelp(absl::string_view usage, const std::vector<std::string>& own_flag_files) {
  std::printf("%s\n\nFlags:\n", std::string(usage).c_str());
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    for (const auto& file : own_flag_files) {
      if (absl::StrContains(flag->Filename(), file)) {
        flags.push_back(flag);
        break;
      }
    }
  }
  std::sort(flags.begin(), flags.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  for (const auto* flag : flags) {
    std::printf("  --%s (%s)\n      default: %s\n", std::string(flag->Name()).c_str(), flag->Help().c_str(),
                flag->DefaultValue().c_str());
  }
}

// argv with each --flagfile=PATH replaced by the arguments in PATH: one per line; blank
// lines and lines starting with '#' are skipped; nested flag files are read too.
void ExpandFlagFiles(const std::vector<std::string>& in, std::vector<std::string>* out, int depth) {
  for (size_t i = 0; i < in.size(); ++i) {
    absl::string_view arg = in[i];
    std::string path;
    if (absl::ConsumePrefix(&arg, "--flagfile=") || absl::ConsumePrefix(&arg, "-flagfile=")) {
      path = std::string(arg);
    } else if ((arg == "--flagfile" || arg == "-flagfile") && i + 1 < in.size()) {
      path = in[++i];
    } else {
      out->push_back(in[i]);
      continue;
    }
    if (depth > 8) UsageErrorExit("--flagfile nested more than 8 deep");
    std::ifstream file(path);
    if (!file) UsageErrorExit(absl::StrCat("cannot read --flagfile ", path));
    std::vector<std::string> lines;
    for (std::string line; std::getline(file, line);) {
      absl::string_view l = absl::StripAsciiWhitespace(line);
      if (!l.empty() && l.front() != '#') lines.emplace_back(l);
    }
    ExpandFlagFiles(lines, out, depth + 1);
  }
}

}  // namespace

void UsageErrorExit(absl::string_view message) {
  std::fprintf(stderr, "%s: error: %s\n", program_name.c_str(), std::string(message).c_str());
  std::exit(2);
}

ParsedCommandLine ParseCommandLineOrExit(int argc, char** argv, absl::string_view usage,
                                         const std::vector<std::string>& own_flag_files, int max_positional) {
  if (argc > 0) {
    program_name = argv[0];
    const auto slash = program_name.rfind('/');
    if (slash != std::string::npos) program_name = program_name.substr(slash + 1);
  }
  std::vector<std::string> args;
  ExpandFlagFiles(std::vector<std::string>(argv + std::min(argc, 1), argv + argc), &args, 0);
  ParsedCommandLine parsed;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (flags_done || !absl::StartsWith(arg, "-") || arg == "-") {
      parsed.positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    absl::string_view body = arg;
    if (!absl::ConsumePrefix(&body, "--")) absl::ConsumePrefix(&body, "-");
    if (body == "help" || body == "helpfull" || body == "h") {
      PrintHelp(usage, own_flag_files);
      std::exit(0);
    }
    absl::string_view name = body;
    absl::string_view value;
    bool has_value = false;
    if (const auto eq = body.find('='); eq != absl::string_view::npos) {
      name = body.substr(0, eq);
      value = body.substr(eq + 1);
      has_value = true;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    std::string bool_value = "true";
    if (flag == nullptr && !has_value && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      bool_value = "false";
      if (flag != nullptr && !flag->IsOfType<bool>()) flag = nullptr;
    }
    if (flag == nullptr) UsageErrorExit(absl::StrCat("unknown flag --", name, " (see --help)"));
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = bool_value;
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        UsageErrorExit(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      UsageErrorExit(absl::StrCat("bad value '", value, "' for --", name, ": ", error));
    }
  }
  if (static_cast<int>(parsed.positional.size()) > max_positional) {
    UsageErrorExit(absl::StrCat("unexpected argument '", parsed.positional[max_positional], "' (see --help)"));
  }
  return parsed;
}

}  // namespace lstmserve::core
