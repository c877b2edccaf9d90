// The HTTP/1.1 transport of the Open Inference Protocol's REST API (routes and answers:
// http_handler.h), event-driven on Boost.Beast over Asio: a few I/O threads serve every
// connection, so any number of slow or idle clients cost memory, never a thread, and never
// delay a probe or a well-formed request.
//
// Each connection is read one request at a time: pipelined requests are answered in order.
// A request's head is bounded (kMaxHttpHeadBytes, kMaxHttpHeaders), its body by
// --max_message_bytes, and each phase by a time limit (HttpLimits); a caller without access
// is refused before its body is read. Inferences are decoded and run on `threads` workers;
// probes and metadata are answered on the I/O threads. A connection that closes while its
// inference waits in the batcher's queue cancels it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/http/http_handler.h"
#include "lstmserve/server/security.h"

namespace lstmserve::server {

// A request's line and headers, together, at most this many bytes (431 past it).
inline constexpr int64_t kMaxHttpHeadBytes = 32 << 10;

struct HttpLimits {
  int64_t max_body_bytes = 64 << 20;                  // 413 past it
  absl::Duration idle_timeout = absl::Seconds(60);    // a kept-alive connection waiting for a request
  absl::Duration header_timeout = absl::Seconds(10);  // from a request's first byte to its last header
  absl::Duration body_timeout = absl::Seconds(120);   // to read a body
  absl::Duration write_timeout = absl::Seconds(120);  // to write an answer
  int max_connections = 10000;                        // more are answered 503 and closed
};

class HttpService {
 public:
  // Listens on "HOST:PORT" (port 0 picks one) with `threads` workers for inferences, TLS
  // when `tls.cert_file` is set (mutual with a client CA), and serves until Stop.
  // UNAVAILABLE when it cannot bind; INVALID_ARGUMENT for TLS files it cannot use. Borrows
  // `ctx`, which must outlive it.
  static absl::StatusOr<std::unique_ptr<HttpService>> Start(const std::string& listen, int threads,
                                                            const HttpLimits& limits, const TlsFiles& tls,
                                                            ServiceContext* ctx);
  ~HttpService();  // Stop(0)

  // "HOST:PORT" bound.
  const std::string& address() const;
  // Stops accepting, closes idle connections, and waits up to `grace` for the requests
  // being read or handled to be answered; then closes the rest. Idempotent.
  void Stop(absl::Duration grace = absl::ZeroDuration());

  struct Impl;

 private:
  explicit HttpService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lstmserve::server
