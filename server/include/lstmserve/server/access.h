// Who may call what: every method of every front end (lstmserve.v1 and the Open Inference
// Protocol over gRPC, the protocol's HTTP routes, gRPC's own health and reflection services)
// is declared here once, as a probe (anyone) or guarded (a bearer token, when the server has
// tokens). The front ends check a call against its entry before they read or parse its
// body, so an anonymous caller never reaches a parser. A method missing from the table is
// guarded: a new method is closed until it is declared.
//
// Protocol-neutral: names and header values only, no gRPC or HTTP type.
#pragma once

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

#include "lstmserve/server/security.h"

namespace lstmserve::server {

enum class Access {
  kProbe,    // liveness, readiness, health, reflection: orchestrators call them without a token
  kGuarded,  // a valid bearer token when the server has tokens
};

// One method: its service ("lstmserve.v1.ParameterService", "inference.GRPCInferenceService",
// "inference.http" for the HTTP routes, ...), its name as the protocol names it, and who may
// call it. `service` and `name` are also the labels it is counted under in the metrics.
struct Method {
  const char* service;
  const char* name;
  Access access;
};

// The HTTP front end's routes, counted under this service name.
inline constexpr const char* kHttpService = "inference.http";

// Every gRPC method the server registers (its own and gRPC's health and reflection).
absl::Span<const Method> GrpcMethods();
// Every HTTP route (GET /v2/health/live is "ServerLive", ... POST .../infer is "ModelInfer").
absl::Span<const Method> HttpRoutes();

// The entry of gRPC method "/package.Service/Method" (as gRPC names it on the wire), or of
// an HTTP route by name; a guarded entry of that name when the table has none.
Method FindGrpcMethod(absl::string_view path);
Method FindGrpcMethod(absl::string_view service, absl::string_view name);
Method FindHttpRoute(absl::string_view name);

// OK when `method` may be called with this "authorization" header value (nullopt: the call
// has none): always for a probe, and for every method when `auth` is null (a server
// without tokens). Else UNAUTHENTICATED saying what is wrong (TokenAuthenticator::Check).
absl::Status CheckAccess(const TokenAuthenticator* auth, const Method& method,
                         std::optional<absl::string_view> authorization);

}  // namespace lstmserve::server
