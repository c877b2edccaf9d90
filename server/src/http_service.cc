#include "lstmserve/server/http_service.h"

#include <cstring>
#include <future>
#include <optional>
#include <utility>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "lstmserve/core/status.h"
#include "lstmserve/server/access.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/options.h"
#include "oip_json.h"

namespace lstmserve::server {
namespace {

using json = nlohmann::json;

void ReplyJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// A readiness or liveness answer: the protocol's 200 for true, 400 for false.
absl::Status Probe(httplib::Response& res, bool ok) {
  res.status = ok ? 200 : 400;
  return absl::OkStatus();
}

void ReplyError(httplib::Response& res, const absl::Status& status) {
  ReplyJson(res, HttpStatusFor(status.code()), json{{"error", std::string(status.message())}});
}

}  // namespace

absl::string_view HttpRouteName(absl::string_view method, absl::string_view path) {
  const size_t query = path.find('?');
  if (query != absl::string_view::npos) path = path.substr(0, query);
  if (method == "GET" && path == "/v2") return "ServerMetadata";
  if (method == "GET" && path == "/v2/health/live") return "ServerLive";
  if (method == "GET" && path == "/v2/health/ready") return "ServerReady";
  if (!absl::ConsumePrefix(&path, "/v2/models/")) return "";
  // {name}[/versions/{v}][/ready|/config|/infer]: the name and version hold no '/'.
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  size_t next = 1;
  if (parts[0].empty()) return "";
  if (parts.size() >= 3 && parts[1] == "versions" && !parts[2].empty()) next = 3;
  if (parts.size() == next) return method == "GET" ? "ModelMetadata" : "";
  if (parts.size() != next + 1) return "";
  if (method == "GET" && parts[next] == "ready") return "ModelReady";
  if (method == "GET" && parts[next] == "config") return "ModelConfig";
  if (method == "POST" && parts[next] == "infer") return "ModelInfer";
  return "";
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

absl::StatusOr<std::unique_ptr<HttpService>> HttpService::Start(const std::string& listen, int threads,
                                                                int64_t max_body_bytes, const TlsFiles& tls,
                                                                ServiceContext* ctx) {
  std::string host;
  int port = 0;
  LSTMSERVE_RETURN_IF_ERROR(ParseHostPort(listen, &host, &port));
  std::unique_ptr<HttpService> service(new HttpService());
  if (tls.cert_file.empty()) {
    service->http_ = std::make_unique<httplib::Server>();
  } else {
    auto https = std::make_unique<httplib::SSLServer>(
        tls.cert_file.c_str(), tls.key_file.c_str(),
        tls.client_ca_file.empty() ? nullptr : tls.client_ca_file.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError("the HTTP server cannot use --tls_cert_file, --tls_key_file or --tls_client_ca_file");
    }
    service->http_ = std::move(https);
  }
  httplib::Server& http = *service->http_;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_payload_max_length(static_cast<size_t>(max_body_bytes));
  http.set_keep_alive_max_count(1000);
  // Small answers must not wait for the client's delayed ACK (Nagle): 40 ms per call otherwise.
  http.set_tcp_nodelay(true);

  // Before routing, before the body is read: the caller's access (access.h), so an
  // anonymous caller never makes the server read or parse a body.
  http.set_pre_routing_handler([ctx](const httplib::Request& req, httplib::Response& res) {
    if (ctx->auth == nullptr) return httplib::Server::HandlerResponse::Unhandled;  // no tokens: nothing to check
    const absl::Time start = absl::Now();
    const Method route = FindHttpRoute(HttpRouteName(req.method, req.path));
    const absl::Status denied = CheckAccess(
        ctx->auth, route,
        req.has_header("Authorization") ? std::optional<absl::string_view>(req.get_header_value("Authorization"))
                                        : std::nullopt);
    if (denied.ok()) return httplib::Server::HandlerResponse::Unhandled;
    ReplyError(res, denied);
    LogError(absl::StrCat("http=", route.name, " peer=", req.remote_addr, " path=", core::ClientText(req.path),
                          " code=", absl::StatusCodeToString(denied.code()), " message=\"", denied.message(), "\""));
    if (ctx->metrics != nullptr) ctx->metrics->ObserveRequest(kHttpService, route.name, denied.code(), absl::Now() - start);
    return httplib::Server::HandlerResponse::Handled;
  });

  // Every route: counted and timed under inference.http.
  using Body = std::function<absl::Status(const httplib::Request&, httplib::Response&)>;
  auto route = [ctx](const char* method, Body body) {
    return [ctx, method, body = std::move(body)](const httplib::Request& req, httplib::Response& res) {
      const absl::Time start = absl::Now();
      absl::Status status = body(req, res);
      if (!status.ok()) {
        ReplyError(res, status);
        if (status.code() != absl::StatusCode::kNotFound) {
          LogError(absl::StrCat("http=", method, " peer=", req.remote_addr, " path=", core::ClientText(req.path),
                                " code=", absl::StatusCodeToString(status.code()), " message=\"", status.message(),
                                "\""));
        }
      }
      if (ctx->metrics != nullptr) ctx->metrics->ObserveRequest(kHttpService, method, status.code(), absl::Now() - start);
    };
  };
  http.Get("/v2/health/live", route("ServerLive", [](const auto&, auto& res) { return Probe(res, true); }));
  http.Get("/v2/health/ready", route("ServerReady", [ctx](const auto&, auto& res) {
             return Probe(res, !ctx->draining.load());
           }));
  http.Get("/v2", route("ServerMetadata", [](const auto&, auto& res) {
             ReplyJson(res, 200, {{"name", "lstmserve"}, {"version", LSTMSERVE_VERSION}, {"extensions", oip::Extensions()}});
             return absl::OkStatus();
           }));
  const std::string model = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
  http.Get(model, route("ModelMetadata", [ctx](const auto& req, auto& res) -> absl::Status {
             LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m, ctx->oip->Metadata(req.matches[1], req.matches[2]));
             ReplyJson(res, 200, oip::MetadataJson(m));
             return absl::OkStatus();
           }));
  http.Get(model + "/ready", route("ModelReady", [ctx](const auto& req, auto& res) {
             return Probe(res, !ctx->draining.load() && ctx->oip->Ready(req.matches[1], req.matches[2]));
           }));
  http.Get(model + "/config", route("ModelConfig", [ctx](const auto& req, auto& res) -> absl::Status {
             LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m, ctx->oip->Metadata(req.matches[1], req.matches[2]));
             ReplyJson(res, 200, oip::ConfigJson(m));
             return absl::OkStatus();
           }));
  http.Post(model + "/infer", route("ModelInfer", [ctx](const auto& req, auto& res) -> absl::Status {
              const std::string length = req.get_header_value(oip::kHeaderLength);
              LSTMSERVE_ASSIGN_OR_RETURN(
                  oip::HttpInferRequest parsed,
                  oip::ParseHttpInfer(req.body, req.has_header(oip::kHeaderLength) ? &length : nullptr));
              parsed.request.model = req.matches[1];
              parsed.request.version = req.matches[2];
              // The handler thread waits for the batcher's answer.
              std::promise<absl::StatusOr<oip::InferResponse>> answer;
              auto future = answer.get_future();
              CallControl call;
              if (parsed.timeout) call.deadline = absl::Now() + *parsed.timeout;
              ctx->oip->Infer(std::move(parsed.request), call,
                              [&answer](absl::StatusOr<oip::InferResponse> r) { answer.set_value(std::move(r)); });
              absl::StatusOr<oip::InferResponse> response = future.get();
              if (!response.ok()) return response.status();
              oip::HttpBody body = oip::EncodeHttpInfer(*response, parsed);
              res.status = 200;
              if (body.header_length) res.set_header(oip::kHeaderLength, *body.header_length);
              res.set_content(std::move(body.body), body.content_type);
              return absl::OkStatus();
            }));
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty() && res.status == 404) {
      ReplyJson(res, 404, json{{"error", absl::StrCat("no such endpoint: ", req.method, " ", core::ClientText(req.path),
                                                      " (see /v2 and /v2/models/{name})")}});
    }
  });

  const int bound = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, " for HTTP (in use, or not a local address?)"));
  }
  service->address_ = absl::StrCat(host, ":", bound);
  service->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return service;
}

HttpService::~HttpService() { Stop(); }

void HttpService::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace lstmserve::server
