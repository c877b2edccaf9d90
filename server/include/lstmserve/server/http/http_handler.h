// The Open Inference Protocol over HTTP/REST (KServe v2), apart from any socket: a request in,
// an answer out. HttpService (http_service.h) carries these over TCP and TLS; tests call the
// handler directly.
//
//   GET  /v2                                   server metadata
//   GET  /v2/health/live, /v2/health/ready     200 when live / ready, else 400 (no token needed)
//   GET  /v2/models/{name}[/versions/{v}]      model metadata
//   GET  /v2/models/{name}[/versions/{v}]/ready
//   GET  /v2/models/{name}[/versions/{v}]/config   Triton's model configuration (JSON)
//   POST /v2/models/{name}[/versions/{v}]/infer    JSON, or Triton's binary tensor data
//        extension (header Inference-Header-Content-Length: the JSON's length; the tensors'
//        bytes follow it, each input and output with parameters.binary_data_size)
//
// Every error answers {"error": "..."} with the HTTP status of its gRPC code (HttpStatusFor).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include "lstmserve/server/grpc/services.h"

namespace lstmserve::server {

// The HTTP status a status code answers with (one mapping for the whole HTTP front end).
int HttpStatusFor(absl::StatusCode code);

// The route (its name in the access table and the metrics: "ServerLive", ..., "ModelInfer")
// that an HTTP method and path (a query string is ignored) reach; "" for none.
absl::string_view HttpRouteName(absl::string_view method, absl::string_view path);

// A route with the model and version its path names (percent-escapes decoded).
struct HttpRoute {
  absl::string_view name;  // as HttpRouteName; "" for none
  std::string model;
  std::string version;
};
HttpRoute FindHttpRouteOf(absl::string_view method, absl::string_view path);

// Limits on a request's head, beyond the transport's byte limits.
inline constexpr int kMaxHttpHeaders = 100;

struct HttpRequest {
  std::string method;                                        // "GET", "POST", ...
  std::string target;                                        // the path, with its query string if any
  std::vector<std::pair<std::string, std::string>> headers;  // as received, in order
  std::string body;
  std::string peer;  // for the log
  // Optional: true once the client has gone (its connection closed); a queued inference is
  // then dropped and never computed.
  std::function<bool()> cancelled;

  // The first value of a header (names compare case-insensitively); nullopt when absent.
  std::optional<absl::string_view> Header(absl::string_view name) const;
  int HeaderCount(absl::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type;                                  // empty with an empty body
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type and -Length
  std::string body;
};

// The JSON error answer for `status`: HttpStatusFor(code), {"error": message}.
HttpResponse HttpError(const absl::Status& status);

// Thread-safe. Borrows `ctx`, which must outlive it.
class HttpHandler {
 public:
  explicit HttpHandler(ServiceContext* ctx) : ctx_(ctx) {}

  // What the head of a request (its body not read yet) decides: nullopt to read the body
  // and Handle it, else the answer. Refuses a caller without access (401, before its body is
  // read), framing a proxy could read differently (two Content-Length headers, a
  // Transfer-Encoding other than chunked, two Inference-Header-Content-Length headers: 400),
  // over kMaxHttpHeaders headers (431), a Content-Encoding it cannot read (415), and a path
  // or method that is no route (404).
  std::optional<HttpResponse> Admit(const HttpRequest& head) const;

  // Whether Handle answers at once without computing or reading the store (probes,
  // metadata), so the transport may run it on its I/O threads; inferences (a small one
  // decoded on the I/O thread), statistics and the repository's calls go to a worker.
  static bool Immediate(const HttpRequest& head);

  // Answers a request that Admit let through. `done` is called once, maybe on another thread
  // (the batcher's) and maybe before Handle returns.
  void Handle(HttpRequest request, std::function<void(HttpResponse)> done) const;

 private:
  ServiceContext* ctx_;
};

}  // namespace lstmserve::server
