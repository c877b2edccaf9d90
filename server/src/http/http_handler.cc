#include "lstmserve/server/http/http_handler.h"

#include <memory>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/access.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/oip/oip_json.h"

namespace lstmserve::server {
namespace {

using json = nlohmann::json;

HttpResponse Json(int status, const json& body) {
  HttpResponse response;
  response.status = status;
  response.content_type = "application/json";
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

// A readiness or liveness answer: the protocol's 200 for true, 400 for false.
HttpResponse Probe(bool ok) {
  HttpResponse response;
  response.status = ok ? 200 : 400;
  return response;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX escapes decoded; a '%' that starts no escape stays as it is.
std::string PercentDecoded(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = HexDigit(s[i + 1]);
      const int lo = HexDigit(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// What every answer of the HTTP front end reports: its error in the log (but NOT_FOUND, a
// lookup's answer), and the call counted and timed under inference.http.
void Report(const ServiceContext& ctx, absl::string_view route, absl::string_view peer, absl::string_view target,
            const absl::Status& status, absl::Time start) {
  if (route.empty()) route = "none";
  if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
    LogError(absl::StrCat("http=", route, " peer=", peer, " path=", core::ClientText(target),
                          " code=", absl::StatusCodeToString(status.code()), " message=\"", status.message(), "\""));
  }
  if (ctx.metrics != nullptr) ctx.metrics->ObserveRequest(kHttpService, route, status.code(), absl::Now() - start);
}

}  // namespace

HttpRoute FindHttpRouteOf(absl::string_view method, absl::string_view path) {
  HttpRoute route;
  const size_t query = path.find('?');
  if (query != absl::string_view::npos) path = path.substr(0, query);
  if (method == "GET" && path == "/v2") return {"ServerMetadata", "", ""};
  if (method == "GET" && path == "/v2/health/live") return {"ServerLive", "", ""};
  if (method == "GET" && path == "/v2/health/ready") return {"ServerReady", "", ""};
  // Triton's statistics of every model; a set named "stats" answers its metadata over gRPC.
  if (method == "GET" && path == "/v2/models/stats") return {"ModelStatistics", "", ""};
  if (method == "POST" && path == "/v2/repository/index") return {"RepositoryIndex", "", ""};
  if (absl::ConsumePrefix(&path, "/v2/repository/models/")) {
    // {name}/load | {name}/unload
    std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
    if (method != "POST" || parts.size() != 2 || parts[0].empty()) return route;
    if (parts[1] == "load") route.name = "RepositoryModelLoad";
    if (parts[1] == "unload") route.name = "RepositoryModelUnload";
    if (!route.name.empty()) route.model = PercentDecoded(parts[0]);
    return route;
  }
  if (!absl::ConsumePrefix(&path, "/v2/models/")) return route;
  // {name}[/versions/{v}][/ready|/config|/stats|/infer]: the name and version hold no '/'.
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  size_t next = 1;
  if (parts[0].empty()) return route;
  if (parts.size() >= 3 && parts[1] == "versions" && !parts[2].empty()) next = 3;
  absl::string_view name;
  if (parts.size() == next) {
    if (method == "GET") name = "ModelMetadata";
  } else if (parts.size() == next + 1) {
    if (method == "GET" && parts[next] == "ready") name = "ModelReady";
    if (method == "GET" && parts[next] == "config") name = "ModelConfig";
    if (method == "GET" && parts[next] == "stats") name = "ModelStatistics";
    if (method == "POST" && parts[next] == "infer") name = "ModelInfer";
  }
  if (name.empty()) return route;
  route.name = name;
  route.model = PercentDecoded(parts[0]);
  if (next == 3) route.version = PercentDecoded(parts[2]);
  return route;
}

absl::string_view HttpRouteName(absl::string_view method, absl::string_view path) {
  return FindHttpRouteOf(method, path).name;
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

HttpResponse HttpError(const absl::Status& status) {
  return Json(HttpStatusFor(status.code()), json{{"error", std::string(status.message())}});
}

std::optional<absl::string_view> HttpRequest::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return absl::string_view(value);
  }
  return std::nullopt;
}

int HttpRequest::HeaderCount(absl::string_view name) const {
  int count = 0;
  for (const auto& header : headers) count += absl::EqualsIgnoreCase(header.first, name) ? 1 : 0;
  return count;
}

std::optional<HttpResponse> HttpHandler::Admit(const HttpRequest& head) const {
  const absl::Time start = absl::Now();
  const HttpRoute route = FindHttpRouteOf(head.method, head.target);
  const auto refuse = [&](int http_status, absl::Status status) {
    HttpResponse response = HttpError(status);
    if (http_status != 0) response.status = http_status;
    Report(*ctx_, route.name, head.peer, head.target, status, start);
    return std::optional<HttpResponse>(std::move(response));
  };
  // Who may call what (access.h), first: an anonymous caller learns nothing more.
  if (ctx_->auth != nullptr) {
    const absl::Status denied = CheckAccess(ctx_->auth, FindHttpRoute(route.name), head.Header("Authorization"));
    if (!denied.ok()) return refuse(0, denied);
  }
  // Framing that a proxy in front could read another way (request smuggling).
  if (head.HeaderCount("Content-Length") > 1) {
    return refuse(0, absl::InvalidArgumentError("the request has more than one Content-Length header"));
  }
  if (const auto te = head.Header("Transfer-Encoding"); te.has_value()) {
    if (head.HeaderCount("Transfer-Encoding") > 1 ||
        !absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(*te), "chunked")) {
      return refuse(0,
                    absl::InvalidArgumentError(absl::StrCat("Transfer-Encoding \"", core::ClientText(*te),
                                                            "\" is not supported; send chunked or a Content-Length")));
    }
    if (head.HeaderCount("Content-Length") > 0) {
      return refuse(0, absl::InvalidArgumentError("the request has both Content-Length and Transfer-Encoding"));
    }
  }
  if (head.HeaderCount(oip::kHeaderLength) > 1) {
    return refuse(
        0, absl::InvalidArgumentError(absl::StrCat("the request has more than one ", oip::kHeaderLength, " header")));
  }
  if (head.headers.size() > static_cast<size_t>(kMaxHttpHeaders)) {
    return refuse(431, absl::InvalidArgumentError(absl::StrCat("the request has ", head.headers.size(),
                                                               " headers; at most ", kMaxHttpHeaders)));
  }
  if (const auto encoding = head.Header("Content-Encoding"); encoding.has_value()) {
    if (!absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(*encoding), "identity")) {
      return refuse(415, absl::InvalidArgumentError(absl::StrCat("Content-Encoding \"", core::ClientText(*encoding),
                                                                 "\" is not supported; send the body uncompressed")));
    }
  }
  if (route.name.empty()) {
    return refuse(0,
                  absl::NotFoundError(absl::StrCat("no such endpoint: ", core::ClientText(head.method), " ",
                                                   core::ClientText(head.target), " (see /v2 and /v2/models/{name})")));
  }
  return std::nullopt;
}

bool HttpHandler::Immediate(const HttpRequest& head) {
  const absl::string_view name = HttpRouteName(head.method, head.target);
  return name != "ModelInfer" && name != "ModelStatistics" && !absl::StartsWith(name, "Repository");
}

void HttpHandler::Handle(HttpRequest request, std::function<void(HttpResponse)> done) const {
  const absl::Time start = absl::Now();
  HttpRoute route = FindHttpRouteOf(request.method, request.target);
  // Every answer: counted and timed under inference.http, errors logged.
  auto finish = [ctx = ctx_, start, name = route.name, peer = request.peer, target = request.target,
                 done = std::move(done)](absl::StatusOr<HttpResponse> answer) {
    Report(*ctx, name, peer, target, answer.status(), start);
    done(answer.ok() ? *std::move(answer) : HttpError(answer.status()));
  };
  const oip::OpenInference& oip = *ctx_->oip;
  if (route.name == "ServerLive") return finish(Probe(true));
  if (route.name == "ServerReady") return finish(Probe(oip.ServerReady()));
  if (route.name == "ServerMetadata") {
    const oip::ServerMetadata server = oip.Server();
    return finish(Json(200, {{"name", server.name}, {"version", server.version}, {"extensions", server.extensions}}));
  }
  if (route.name == "ModelReady") return finish(Probe(oip.Ready(route.model, route.version)));
  if (route.name == "ModelMetadata" || route.name == "ModelConfig") {
    absl::StatusOr<oip::ModelMetadata> m = oip.Metadata(route.model, route.version);
    if (!m.ok()) return finish(m.status());
    return finish(Json(200, route.name == "ModelMetadata" ? oip::MetadataJson(*m) : oip::ConfigJson(*m)));
  }
  if (route.name == "ModelStatistics") {
    absl::StatusOr<std::vector<ModelStats>> stats = oip.Statistics(route.model, route.version);
    if (!stats.ok()) return finish(stats.status());
    return finish(Json(200, oip::StatisticsJson(*stats)));
  }
  if (route.name == "RepositoryIndex") {
    absl::StatusOr<bool> ready_only = oip::ParseRepositoryIndex(request.body);
    if (!ready_only.ok()) return finish(ready_only.status());
    absl::StatusOr<std::vector<oip::RepositoryModel>> index = oip.RepositoryIndex("", *ready_only);
    if (!index.ok()) return finish(index.status());
    return finish(Json(200, oip::RepositoryIndexJson(*index)));
  }
  if (route.name == "RepositoryModelLoad" || route.name == "RepositoryModelUnload") {
    absl::StatusOr<std::vector<std::string>> parameters = oip::ParseRepositoryParameters(request.body);
    if (!parameters.ok()) return finish(parameters.status());
    const absl::Status status = route.name == "RepositoryModelLoad" ? oip.Load("", route.model, *parameters)
                                                                    : oip.Unload("", route.model, *parameters);
    if (!status.ok()) return finish(status);
    HttpResponse ok;
    ok.status = 200;
    return finish(std::move(ok));
  }
  if (route.name != "ModelInfer") {
    return finish(absl::NotFoundError(
        absl::StrCat("no such endpoint: ", core::ClientText(request.method), " ", core::ClientText(request.target))));
  }
  const std::optional<absl::string_view> length_header = request.Header(oip::kHeaderLength);
  const std::string length = length_header ? std::string(*length_header) : std::string();
  absl::StatusOr<oip::HttpInferRequest> parsed = oip::ParseHttpInfer(request.body, length_header ? &length : nullptr);
  if (!parsed.ok()) return finish(parsed.status());
  // The body is no longer needed: its memory goes before the computation.
  std::string().swap(request.body);
  auto shared = std::make_shared<oip::HttpInferRequest>(*std::move(parsed));
  shared->request.model = route.model;
  shared->request.version = route.version;
  CallControl call;
  if (shared->timeout) call.deadline = absl::Now() + *shared->timeout;
  call.cancelled = std::move(request.cancelled);
  oip::InferRequest infer = std::move(shared->request);
  oip.Infer(std::move(infer), call,
            [shared, finish = std::move(finish)](absl::StatusOr<oip::InferResponse> response) mutable {
              if (!response.ok()) return finish(response.status());
              oip::HttpBody body = oip::EncodeHttpInfer(*response, *shared);
              HttpResponse answer;
              answer.status = 200;
              if (body.header_length) answer.headers.emplace_back(oip::kHeaderLength, *body.header_length);
              answer.content_type = std::move(body.content_type);
              answer.body = std::move(body.body);
              finish(std::move(answer));
            });
}

}  // namespace lstmserve::server
