// The Open Inference Protocol over HTTP/REST (KServe v2), on cpp-httplib: a thin front end
// over oip::OpenInference, beside the gRPC one.
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
// Errors answer {"error": "..."} with the HTTP status of the gRPC code (HttpStatusFor).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lstmserve/server/security.h"
#include "lstmserve/server/services.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace lstmserve::server {

// The HTTP status a status code answers with (one mapping for the whole HTTP front end).
int HttpStatusFor(absl::StatusCode code);

// The route (its name in the access table and the metrics: "ServerLive", ..., "ModelInfer")
// that an HTTP method and path (a query string is ignored) reach; "" for none.
absl::string_view HttpRouteName(absl::string_view method, absl::string_view path);

class HttpService {
 public:
  // Listens on "HOST:PORT" (port 0 picks one) with `threads` handler threads (each holds one
  // keep-alive connection at a time), TLS when `tls.cert_file` is set (mutual with a client
  // CA), and serves until Stop. UNAVAILABLE when it cannot bind; INVALID_ARGUMENT for TLS
  // files it cannot use. Borrows `ctx`, which must outlive it.
  static absl::StatusOr<std::unique_ptr<HttpService>> Start(const std::string& listen, int threads,
                                                            int64_t max_body_bytes, const TlsFiles& tls,
                                                            ServiceContext* ctx);
  ~HttpService();  // Stop()

  // "HOST:PORT" bound.
  const std::string& address() const { return address_; }
  // Stops accepting and waits for the requests being handled to be answered. Idempotent.
  void Stop();

 private:
  HttpService() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::string address_;
};

}  // namespace lstmserve::server
