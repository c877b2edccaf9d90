#include "lstmserve/server/log.h"

#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "lstmserve/core/status.h"

namespace lstmserve::server {
namespace {

// The longest record; a longer one is cut and says how long it was.
constexpr size_t kMaxRecordBytes = 8192;

// One line per record whatever the message holds: control and non-ASCII bytes are escaped
// (messages carry text from clients, e.g. a rejected id), and the length is bounded.
void Write(char level, absl::string_view message) {
  const std::string when = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  const std::string text = core::ClientText(message, kMaxRecordBytes);
  std::fprintf(stderr, "%s %c %s\n", when.c_str(), level, text.c_str());
}

}  // namespace

void LogInfo(absl::string_view message) { Write('I', message); }
void LogError(absl::string_view message) { Write('E', message); }

}  // namespace lstmserve::server
