// libFuzzer: the Open Inference Protocol's requests, as both front ends decode them, through
// the real engine (registry, store, batcher, sequence store) on a small LSTM. The first byte
// picks the form: even, a gRPC ModelInferRequest (RequestFromProto); odd, an HTTP body
// (ParseHttpInfer; the second byte, unless 255, gives the JSON's length of the binary
// data extension). Properties: no crash or sanitizer finding; an accepted request answers
// outputs whose byte counts match their shapes, and the HTTP answer encodes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <string>

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/grpc/oip_grpc_codec.h"
#include "lstmserve/server/oip/oip_json.h"
#include "lstmserve/server/oip/open_inference.h"

namespace {

using namespace lstmserve;  // NOLINT

struct Engine {
  std::unique_ptr<server::SetRegistry> registry;
  std::unique_ptr<server::Batcher> batcher;
  std::unique_ptr<server::SequenceStore> sequences;
  std::unique_ptr<server::InferenceEngine> engine;
  std::unique_ptr<server::oip::OpenInference> oip;
};

Engine& Get() {
  static Engine* e = [] {
    auto* out = new Engine();
    const auto dir = std::filesystem::temp_directory_path() / ("lstmserve-fuzz-oip-" + std::to_string(getpid()));
    auto store = core::ParameterStore::Open(dir.string());
    if (!store.ok()) std::abort();
    out->registry = std::make_unique<server::SetRegistry>(*std::move(store), c10::Device(c10::kCPU), 1 << 26);
    core::ParameterSetSpec spec;
    spec.lstm = core::LstmTemplate{2, 3, 4, true};
    spec.seed = 7;
    auto set = core::CreateParameterSet(spec, {});
    if (!set.ok()) std::abort();
    core::StoredSet stored;
    stored.id = "m";
    stored.set = *std::move(set);
    if (!out->registry->Add(std::move(stored)).ok()) std::abort();
    out->batcher = std::make_unique<server::Batcher>(server::BatchOptions());
    out->sequences = std::make_unique<server::SequenceStore>(64, absl::Minutes(10));
    out->engine = std::make_unique<server::InferenceEngine>(out->registry.get(), out->batcher.get(),
                                                            out->sequences.get(), /*max_tensor_elements=*/4096);
    out->oip = std::make_unique<server::oip::OpenInference>(out->engine.get(), absl::Minutes(10));
    return out;
  }();
  return *e;
}

void Check(const server::oip::InferResponse& r) {
  for (const auto& t : r.outputs) {
    int64_t count = 1;
    for (int64_t d : t.shape) count *= d;
    if (t.datatype != "FP32" || static_cast<int64_t>(t.data.size()) != count * 4) std::abort();
  }
}

absl::StatusOr<server::oip::InferResponse> Infer(server::oip::InferRequest request) {
  request.model = "m";
  std::promise<absl::StatusOr<server::oip::InferResponse>> answer;
  auto future = answer.get_future();
  Get().oip->Infer(std::move(request), server::CallControl(),
                   [&](absl::StatusOr<server::oip::InferResponse> r) { answer.set_value(std::move(r)); });
  return future.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool http = (data[0] & 1) != 0;
  if (!http) {
    inference::ModelInferRequest message;
    if (!message.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    auto request = server::RequestFromProto(message);
    if (!request.ok()) return 0;
    auto response = Infer(*std::move(request));
    if (response.ok()) {
      Check(*response);
      inference::ModelInferResponse out;
      server::ResponseToProto(*response, &out);
    }
    return 0;
  }
  if (size < 2) return 0;
  const std::string length = std::to_string(data[1]);
  const absl::string_view body(reinterpret_cast<const char*>(data + 2), size - 2);
  auto parsed = server::oip::ParseHttpInfer(body, data[1] != 255 ? &length : nullptr);
  if (!parsed.ok()) return 0;
  auto response = Infer(parsed->request);
  if (response.ok()) {
    Check(*response);
    (void)server::oip::EncodeHttpInfer(*response, *parsed);
  }
  return 0;
}
