#include "lstmserve/server/http_service.h"

#include <cstring>
#include <future>
#include <optional>
#include <utility>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "lstmserve/core/status.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/options.h"

namespace lstmserve::server {
namespace {

using json = nlohmann::json;

constexpr const char* kHeaderLength = "Inference-Header-Content-Length";

void ReplyJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void ReplyError(httplib::Response& res, const absl::Status& status) {
  ReplyJson(res, HttpStatusFor(status.code()), json{{"error", std::string(status.message())}});
}

// The values of a JSON "data" (flat, or nested row-major lists) in `out`.
absl::Status Flatten(const json& data, int depth, std::vector<double>* out, const std::string& name) {
  if (data.is_number()) {
    out->push_back(data.get<double>());
    return absl::OkStatus();
  }
  if (!data.is_array() || depth > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", core::ClientText(name), ".data must hold numbers (a flat or nested list)"));
  }
  for (const json& item : data) LSTMSERVE_RETURN_IF_ERROR(Flatten(item, depth + 1, out, name));
  return absl::OkStatus();
}

// The little-endian bytes of `values` as `datatype`; nullopt for a type the server never
// takes (OpenInference then names the type it wants).
std::optional<std::string> Encode(const std::vector<double>& values, const std::string& datatype) {
  std::string out;
  auto put = [&out](const auto& v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  if (datatype == "FP32") {
    for (double v : values) put(static_cast<float>(v));
  } else if (datatype == "FP16") {
    for (double v : values) put(c10::Half(static_cast<float>(v)));
  } else if (datatype == "BF16") {
    for (double v : values) put(c10::BFloat16(static_cast<float>(v)));
  } else {
    return std::nullopt;
  }
  return out;
}

// The values of an output's bytes, for a JSON answer.
json Decode(const oip::Tensor& t) {
  json values = json::array();
  const char* p = t.data.data();
  if (t.datatype == "FP32") {
    for (size_t i = 0; i + 4 <= t.data.size(); i += 4) {
      float v;
      std::memcpy(&v, p + i, 4);
      values.push_back(v);
    }
  } else {
    for (size_t i = 0; i + 2 <= t.data.size(); i += 2) {
      uint16_t bits;
      std::memcpy(&bits, p + i, 2);
      const float v = t.datatype == "FP16" ? static_cast<float>(c10::Half(bits, c10::Half::from_bits()))
                                           : static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
      values.push_back(v);
    }
  }
  return values;
}

absl::Status SequenceFromJson(const json& params, oip::InferRequest* out) {
  if (auto it = params.find("sequence_id"); it != params.end()) {
    if (it->is_number_unsigned()) {
      out->sequence_key = oip::SequenceKey(it->get<uint64_t>());
    } else if (it->is_string()) {
      out->sequence_key = oip::SequenceKey(it->get<std::string>());
    } else {
      return absl::InvalidArgumentError("parameters.sequence_id must be an unsigned integer or a string");
    }
  }
  for (const auto& [name, flag] : {std::pair<const char*, bool*>{"sequence_start", &out->sequence_start},
                                   std::pair<const char*, bool*>{"sequence_end", &out->sequence_end}}) {
    if (auto it = params.find(name); it != params.end()) {
      if (!it->is_boolean()) return absl::InvalidArgumentError(absl::StrCat("parameters.", name, " must be a boolean"));
      *flag = it->get<bool>();
    }
  }
  return absl::OkStatus();
}

// An infer request's body: JSON, then (with the header) the binary tensors.
struct ParsedInfer {
  oip::InferRequest request;
  bool all_binary = false;            // parameters.binary_data_output
  std::vector<std::string> binary;    // outputs asked for with binary_data
};

absl::StatusOr<ParsedInfer> ParseInfer(const httplib::Request& req) {
  absl::string_view body = req.body;
  absl::string_view header = body;
  absl::string_view binary;
  if (req.has_header(kHeaderLength)) {
    size_t length = 0;
    if (!absl::SimpleAtoi(req.get_header_value(kHeaderLength), &length) || length > body.size()) {
      return absl::InvalidArgumentError(absl::StrCat(kHeaderLength, " must be the JSON's length in bytes, at most the body's ",
                                                     body.size()));
    }
    header = body.substr(0, length);
    binary = body.substr(length);
  }
  const json doc = json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError("the request is not a JSON object (the Open Inference Protocol's inference request)");
  }
  ParsedInfer parsed;
  oip::InferRequest& r = parsed.request;
  if (auto it = doc.find("id"); it != doc.end()) {
    if (!it->is_string()) return absl::InvalidArgumentError("id must be a string");
    r.id = it->get<std::string>();
  }
  if (auto it = doc.find("parameters"); it != doc.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError("parameters must be an object");
    LSTMSERVE_RETURN_IF_ERROR(SequenceFromJson(*it, &r));
    if (auto b = it->find("binary_data_output"); b != it->end() && b->is_boolean()) parsed.all_binary = b->get<bool>();
  }
  const auto inputs = doc.find("inputs");
  if (inputs == doc.end() || !inputs->is_array()) return absl::InvalidArgumentError("inputs must be a list of tensors");
  size_t offset = 0;
  for (const json& in : *inputs) {
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string() || !in.contains("datatype") ||
        !in["datatype"].is_string() || !in.contains("shape") || !in["shape"].is_array()) {
      return absl::InvalidArgumentError("each input needs name (string), datatype (string) and shape (list)");
    }
    oip::Tensor t;
    t.name = in["name"].get<std::string>();
    t.datatype = in["datatype"].get<std::string>();
    for (const json& d : in["shape"]) {
      if (!d.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name), ".shape must hold integers"));
      }
      t.shape.push_back(d.get<int64_t>());
    }
    const json* size = nullptr;
    if (auto p = in.find("parameters"); p != in.end() && p->is_object()) {
      if (auto s = p->find("binary_data_size"); s != p->end()) size = &*s;
    }
    if (size != nullptr) {
      if (!size->is_number_unsigned() || size->get<uint64_t>() > binary.size() - offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            "input ", core::ClientText(t.name), ": binary_data_size must be a byte count within the ",
            binary.size() - offset, " bytes of binary data left after the JSON (", kHeaderLength, ")"));
      }
      t.data = std::string(binary.substr(offset, size->get<uint64_t>()));
      offset += size->get<uint64_t>();
    } else {
      const auto data = in.find("data");
      if (data == in.end()) {
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name),
                                                       " has no data: give data, or parameters.binary_data_size"));
      }
      std::vector<double> values;
      LSTMSERVE_RETURN_IF_ERROR(Flatten(*data, 0, &values, t.name));
      t.data = Encode(values, t.datatype).value_or(std::string());
    }
    r.inputs.push_back(std::move(t));
  }
  if (offset != binary.size()) {
    return absl::InvalidArgumentError(absl::StrCat(binary.size() - offset,
                                                   " bytes of binary data after the JSON belong to no input"));
  }
  if (auto outputs = doc.find("outputs"); outputs != doc.end()) {
    if (!outputs->is_array()) return absl::InvalidArgumentError("outputs must be a list");
    for (const json& o : *outputs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        return absl::InvalidArgumentError("each output needs a name (string)");
      }
      r.outputs.push_back(o["name"].get<std::string>());
      if (auto p = o.find("parameters"); p != o.end() && p->is_object()) {
        if (auto b = p->find("binary_data"); b != p->end() && b->is_boolean() && b->get<bool>()) {
          parsed.binary.push_back(r.outputs.back());
        }
      }
    }
  }
  return parsed;
}

void ReplyInfer(httplib::Response& res, oip::InferResponse& r, const ParsedInfer& parsed) {
  json body = {{"model_name", r.model}, {"model_version", r.version}, {"outputs", json::array()}};
  if (!r.id.empty()) body["id"] = r.id;
  std::string tail;
  for (const oip::Tensor& t : r.outputs) {
    json out = {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
    const bool binary =
        parsed.all_binary || std::find(parsed.binary.begin(), parsed.binary.end(), t.name) != parsed.binary.end();
    if (binary) {
      out["parameters"] = {{"binary_data_size", t.data.size()}};
      tail += t.data;
    } else {
      out["data"] = Decode(t);
    }
    body["outputs"].push_back(std::move(out));
  }
  std::string text = body.dump();
  res.status = 200;
  if (tail.empty()) {
    res.set_content(std::move(text), "application/json");
  } else {
    res.set_header(kHeaderLength, std::to_string(text.size()));
    res.set_content(text + tail, "application/octet-stream");
  }
}

json MetadataJson(const oip::ModelMetadata& m) {
  json out = {{"name", m.name}, {"versions", m.versions}, {"platform", m.platform}};
  for (const auto* part : {&m.inputs, &m.outputs}) {
    json list = json::array();
    for (const auto& t : *part) list.push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}});
    out[part == &m.inputs ? "inputs" : "outputs"] = std::move(list);
  }
  return out;
}

// Triton's model configuration, as its HTTP API writes it (the fields lstmserve fills).
json ConfigJson(const oip::ModelMetadata& m) {
  auto tensors = [](const std::vector<oip::TensorMetadata>& list, bool inputs) {
    json out = json::array();
    for (const auto& t : list) {
      json e = {{"name", t.name}, {"data_type", "TYPE_" + t.datatype}, {"dims", t.shape}};
      if (inputs) e["optional"] = t.optional;
      out.push_back(std::move(e));
    }
    return out;
  };
  return {{"name", m.name},
          {"platform", m.platform},
          {"backend", "lstmserve"},
          {"max_batch_size", 0},
          {"input", tensors(m.inputs, true)},
          {"output", tensors(m.outputs, false)},
          {"sequence_batching",
           {{"max_sequence_idle_microseconds", absl::ToInt64Microseconds(m.sequence_idle_timeout)}}}};
}

}  // namespace

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

  // Every route: counted and timed under inference.http; all but the probes need a token.
  using Body = std::function<absl::Status(const httplib::Request&, httplib::Response&)>;
  auto route = [ctx](const char* method, bool guarded, Body body) {
    return [ctx, method, guarded, body = std::move(body)](const httplib::Request& req, httplib::Response& res) {
      const absl::Time start = absl::Now();
      absl::Status status = absl::OkStatus();
      if (guarded && ctx->auth != nullptr) {
        status = ctx->auth->Check(req.has_header("Authorization")
                                      ? std::optional<absl::string_view>(req.get_header_value("Authorization"))
                                      : std::nullopt);
      }
      if (status.ok()) status = body(req, res);
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
  auto probe = [](bool ok) {
    return [ok](httplib::Response& res) {
      res.status = ok ? 200 : 400;
      return absl::OkStatus();
    };
  };
  http.Get("/v2/health/live", route("ServerLive", false, [probe](const auto&, auto& res) { return probe(true)(res); }));
  http.Get("/v2/health/ready", route("ServerReady", false, [ctx, probe](const auto&, auto& res) {
             return probe(!ctx->draining.load())(res);
           }));
  http.Get("/v2", route("ServerMetadata", true, [](const auto&, auto& res) {
             ReplyJson(res, 200, {{"name", "lstmserve"}, {"version", LSTMSERVE_VERSION}, {"extensions", oip::Extensions()}});
             return absl::OkStatus();
           }));
  const std::string model = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
  http.Get(model, route("ModelMetadata", true, [ctx](const auto& req, auto& res) -> absl::Status {
             LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m, ctx->oip->Metadata(req.matches[1], req.matches[2]));
             ReplyJson(res, 200, MetadataJson(m));
             return absl::OkStatus();
           }));
  http.Get(model + "/ready", route("ModelReady", true, [ctx, probe](const auto& req, auto& res) {
             return probe(!ctx->draining.load() && ctx->oip->Ready(req.matches[1], req.matches[2]))(res);
           }));
  http.Get(model + "/config", route("ModelConfig", true, [ctx](const auto& req, auto& res) -> absl::Status {
             LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m, ctx->oip->Metadata(req.matches[1], req.matches[2]));
             ReplyJson(res, 200, ConfigJson(m));
             return absl::OkStatus();
           }));
  http.Post(model + "/infer", route("ModelInfer", true, [ctx](const auto& req, auto& res) -> absl::Status {
              LSTMSERVE_ASSIGN_OR_RETURN(ParsedInfer parsed, ParseInfer(req));
              parsed.request.model = req.matches[1];
              parsed.request.version = req.matches[2];
              // The handler thread waits for the batcher's answer.
              std::promise<absl::StatusOr<oip::InferResponse>> answer;
              auto future = answer.get_future();
              ctx->oip->Infer(std::move(parsed.request), CallControl(),
                              [&answer](absl::StatusOr<oip::InferResponse> r) { answer.set_value(std::move(r)); });
              absl::StatusOr<oip::InferResponse> response = future.get();
              if (!response.ok()) return response.status();
              ReplyInfer(res, *response, parsed);
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
