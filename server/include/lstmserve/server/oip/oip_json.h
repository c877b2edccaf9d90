// The Open Inference Protocol's JSON (HTTP/REST) forms of requests, answers, metadata and
// Triton's model configuration, with Triton's binary tensor data extension: what
// http_handler.cc sends and receives, apart from the socket (and fuzzed on its own).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "lstmserve/server/oip/open_inference.h"

namespace lstmserve::server::oip {

// The header of the binary tensor data extension: the length of the JSON that starts the
// body; the tensors' bytes follow it.
inline constexpr const char* kHeaderLength = "Inference-Header-Content-Length";

// An infer request as its body said it, with how the answer's outputs should travel.
struct HttpInferRequest {
  InferRequest request;             // model and version come from the path, not the body
  bool all_binary = false;          // parameters.binary_data_output
  std::vector<std::string> binary;  // outputs asked for with parameters.binary_data
  // Triton's parameters.timeout (microseconds): the request is answered DEADLINE_EXCEEDED
  // and never computed when it is still queued after this long.
  std::optional<absl::Duration> timeout;
};

// Parses the body of POST /v2/models/{name}/infer: JSON, or, with `header_length` (the
// header's value), that many bytes of JSON followed by the inputs' bytes (each input with
// parameters.binary_data_size). INVALID_ARGUMENT naming what is wrong, including bytes that
// belong to no input.
absl::StatusOr<HttpInferRequest> ParseHttpInfer(absl::string_view body, const std::string* header_length);

// The answer's body: JSON, or JSON then the binary outputs (`header_length` set).
struct HttpBody {
  std::string body;
  std::optional<std::string> header_length;
  std::string content_type;
};
HttpBody EncodeHttpInfer(const InferResponse& response, const HttpInferRequest& request);

nlohmann::json MetadataJson(const ModelMetadata& m);
// Triton's model configuration, as its HTTP API writes it (the fields lstmserve fills).
nlohmann::json ConfigJson(const ModelMetadata& m);

// Triton's statistics extension over HTTP: {"model_stats": [...]} with each model's
// durations as {"count", "ns"} (GET /v2/models[/{name}[/versions/{v}]]/stats).
nlohmann::json StatisticsJson(const std::vector<ModelStats>& models);
// The model-repository extension over HTTP: the index as a list of {name, version, state,
// reason} (POST /v2/repository/index).
nlohmann::json RepositoryIndexJson(const std::vector<RepositoryModel>& models);

// The body of POST /v2/repository/index: empty, or {"ready": bool}. INVALID_ARGUMENT else.
absl::StatusOr<bool> ParseRepositoryIndex(absl::string_view body);
// The body of POST /v2/repository/models/{name}/load and .../unload: empty, or
// {"parameters": {...}}. The names of its parameters; INVALID_ARGUMENT for other JSON.
absl::StatusOr<std::vector<std::string>> ParseRepositoryParameters(absl::string_view body);

}  // namespace lstmserve::server::oip
