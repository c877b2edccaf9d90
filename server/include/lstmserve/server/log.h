// One-line log records on stderr: "2026-11-29T06:30:00.123456Z I message".
#pragma once

#include "absl/strings/string_view.h"

namespace lstmserve::server {

void LogInfo(absl::string_view message);
void LogError(absl::string_view message);

}  // namespace lstmserve::server
