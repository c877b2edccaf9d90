// One-line log records on stderr: "2026-11-29T06:30:00.123456Z I message". A record is
// always one line of printable ASCII: control and non-ASCII bytes in the message (which may
// carry client text) are written as \xNN, and a message past 8 KiB is cut (see
// core::ClientText).
#pragma once

#include "absl/strings/string_view.h"

namespace lstmserve::server {

void LogInfo(absl::string_view message);
void LogError(absl::string_view message);

}  // namespace lstmserve::server
