// Status helpers shared by the core: early-return macros and the one place where
// LibTorch exceptions become absl::Status values.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#define LSTMSERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define LSTMSERVE_STATUS_CONCAT_(a, b) LSTMSERVE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define LSTMSERVE_RETURN_IF_ERROR(expr)                    \
  do {                                                     \
    ::absl::Status lstmserve_status_ = (expr);             \
    if (!lstmserve_status_.ok()) return lstmserve_status_; \
  } while (0)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its error status.
#define LSTMSERVE_ASSIGN_OR_RETURN(lhs, expr) \
  LSTMSERVE_ASSIGN_OR_RETURN_IMPL_(LSTMSERVE_STATUS_CONCAT_(lstmserve_statusor_, __LINE__), lhs, expr)
#define LSTMSERVE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                     \
  if (!tmp.ok()) return std::move(tmp).status();         \
  lhs = std::move(tmp).value()

namespace lstmserve::core {

// A status's server-side detail (file paths, errno text) rides as a payload: the server logs
// it beside the message, and only the message reaches a client.
inline constexpr absl::string_view kServerDetailUrl = "type.googleapis.com/lstmserve.ServerDetail";

inline absl::Status WithServerDetail(absl::Status status, absl::string_view detail) {
  if (!status.ok()) status.SetPayload(kServerDetailUrl, absl::Cord(detail));
  return status;
}

// The detail, or "" when there is none.
inline std::string ServerDetail(const absl::Status& status) {
  const absl::optional<absl::Cord> detail = status.GetPayload(kServerDetailUrl);
  return detail ? std::string(*detail) : std::string();
}

// The message and the detail, for a log line.
inline std::string MessageForLog(const absl::Status& status) {
  const std::string detail = ServerDetail(status);
  return detail.empty() ? std::string(status.message()) : absl::StrCat(status.message(), " [", detail, "]");
}

// Text a client sent, as it may appear in a status message or a log line: printable ASCII as
// is, every other byte (newline, NUL, ESC, non-ASCII) as \xNN, and at most `max_bytes` of
// it, then "...(N bytes)". A client string can then neither forge a log line, nor reach a
// terminal as a control sequence, nor flood the log.
inline std::string ClientText(absl::string_view text, size_t max_bytes = 64) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const absl::string_view shown = text.substr(0, max_bytes);
  out.reserve(shown.size() + 16);
  for (const char ch : shown) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte >= 0x20 && byte < 0x7f) {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 15]);
    }
  }
  if (shown.size() < text.size()) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

// Runs `fn` (returning absl::Status or absl::StatusOr<T>) and turns any exception it throws
// into a status: c10::Error (LibTorch) and other std::exception become INTERNAL with
// `context` in the message, std::bad_alloc and c10::OutOfMemoryError RESOURCE_EXHAUSTED. This is the core's
// edge: no LibTorch exception escapes a public core function.
template <typename Fn>
auto GuardTorch(absl::string_view context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory"));
  } catch (const c10::OutOfMemoryError& e) {  // a device allocation (CUDA) failed
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of device memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(context, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(context, ": ", e.what()));
  }
}

}  // namespace lstmserve::core
