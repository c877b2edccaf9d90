#include "lstmserve/server/log.h"

#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lstmserve::server {
namespace {

void Write(char level, absl::string_view message) {
  const std::string when = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  std::fprintf(stderr, "%s %c %.*s\n", when.c_str(), level, static_cast<int>(message.size()), message.data());
}

}  // namespace

void LogInfo(absl::string_view message) { Write('I', message); }
void LogError(absl::string_view message) { Write('E', message); }

}  // namespace lstmserve::server
