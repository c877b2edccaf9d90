// libFuzzer: request decoding and validation, as the server does it for Step, Run and
// Session: bytes -> request message -> wire tensors -> validated inputs and states -> a
// real core call on a small LSTM. The first byte picks the message type. Properties: no
// crash or sanitizer finding; every accepted request computes finite outputs of the
// documented shape.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <ATen/ATen.h>

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/core/store.h"
#include "lstmserve/v1/inference_service.pb.h"
#include "lstmserve/wire/conversions.h"

namespace {

using lstmserve::core::LstmState;
using lstmserve::core::StackedLstm;

constexpr int64_t kMaxElements = 4096;  // the server's --max_tensor_elements, scaled down

const StackedLstm& Lstm() {
  static const StackedLstm* lstm = [] {
    lstmserve::core::ParameterSetSpec spec;
    lstmserve::core::LstmTemplate t;
    t.num_layers = 2;
    t.input_size = 3;
    t.hidden_size = 4;
    t.bias = true;
    spec.lstm = t;
    spec.seed = 7;
    auto set = lstmserve::core::CreateParameterSet(spec, {});
    if (!set.ok()) std::abort();
    auto made = StackedLstm::FromParameterSet(*set);
    if (!made.ok()) std::abort();
    return new StackedLstm(*std::move(made));
  }();
  return *lstm;
}

absl::StatusOr<at::Tensor> Decode(const lstmserve::v1::Tensor& t, const char* field) {
  return lstmserve::wire::TensorFromProto(t, field, lstmserve::core::DType::kFloat32, kMaxElements,
                                          c10::Device(c10::kCPU));
}

absl::StatusOr<std::vector<at::Tensor>> States(const google::protobuf::RepeatedPtrField<lstmserve::v1::Tensor>& in,
                                               const char* field) {
  std::vector<at::Tensor> out;
  if (!in.empty() && in.size() != Lstm().num_layers()) return absl::InvalidArgumentError("layers");
  for (const auto& t : in) {
    auto decoded = Decode(t, field);
    if (!decoded.ok()) return decoded.status();
    out.push_back(*std::move(decoded));
  }
  return out;
}

template <typename Request>
void Check(const Request& request, const lstmserve::v1::Tensor& input, bool sequence) {
  (void)lstmserve::core::ValidateSetId(request.parameter_set_id());
  auto x = Decode(input, "x");
  auto c = States(request.c(), "c");
  auto h = States(request.h(), "h");
  if (!x.ok() || !c.ok() || !h.ok()) return;
  if (!sequence && x->dim() != 2) return;  // the server's "x must be 2-D"
  const at::Tensor inputs = sequence ? *x : x->unsqueeze(0);
  LstmState state{*std::move(c), *std::move(h)};
  if (!Lstm().CheckRunInputs(inputs, state).ok()) return;
  auto result = Lstm().Run(inputs, state, /*want_outputs=*/true);
  if (!result.ok()) std::abort();  // validated inputs must compute
  if (result->outputs.size(0) != inputs.size(0) || result->outputs.size(1) != inputs.size(1) ||
      result->outputs.size(2) != Lstm().hidden_size() || !at::isfinite(result->outputs).all().item<bool>()) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t kind = data[0] % 3;
  ++data;
  --size;
  const int n = static_cast<int>(size);
  if (kind == 0) {
    lstmserve::v1::StepRequest r;
    if (r.ParseFromArray(data, n)) Check(r, r.x(), /*sequence=*/false);
  } else if (kind == 1) {
    lstmserve::v1::RunRequest r;
    if (r.ParseFromArray(data, n)) Check(r, r.inputs(), /*sequence=*/true);
  } else {
    lstmserve::v1::SessionRequest r;
    if (r.ParseFromArray(data, n) && r.has_start()) {
      (void)lstmserve::core::ValidateSetId(r.start().parameter_set_id());
      (void)States(r.start().c(), "start.c");
    } else if (r.has_x()) {
      lstmserve::v1::StepRequest step;
      *step.mutable_x() = r.x();
      Check(step, step.x(), /*sequence=*/false);
    }
  }
  return 0;
}
