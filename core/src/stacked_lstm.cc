#include "lstmserve/core/stacked_lstm.h"

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lstm_kernels.h"
#include "lstmserve/core/status.h"

namespace lstmserve::core {
namespace {

// Batches up to this size take the small-batch kernels on CPU.
constexpr int64_t kSmallBatchMax = 8;
// The input projection of a layer is computed for at most this many bytes of gates at a
// time, so memory stays bounded for long sequences.
constexpr int64_t kProjectionChunkBytes = int64_t{32} << 20;
// Rows of gate math below which splitting across threads costs more than it saves.
constexpr int64_t kGateUnitsPerTask = 4096;

std::string ShapeString(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

// Row-major out[m, n] (=|+=) a[m, k] @ w[k, n] with the chosen kernel. `out` and `a` are
// contiguous views; nothing is allocated on the small path.
void Gemm(bool small, const at::Tensor& a, const at::Tensor& w, at::Tensor& out, bool accumulate) {
  if (small) {
    kernels::SmallGemm(a.data_ptr<float>(), a.size(1), w.data_ptr<float>(), w.size(0), w.size(1),
                       out.data_ptr<float>(), a.size(0), accumulate);
  } else if (accumulate) {
    out.addmm_(a, w);
  } else {
    at::mm_out(out, a, w);
  }
}

void Gates(const float* gates, const float* bias, const float* c_prev, float* c_out, float* h_out,
           int64_t batch, int64_t hidden, bool parallel) {
  if (!parallel) {
    kernels::LstmGates(gates, bias, c_prev, c_out, h_out, batch, hidden);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGateUnitsPerTask / hidden);
  at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
    kernels::LstmGates(gates + b0 * 4 * hidden, bias, c_prev ? c_prev + b0 * hidden : nullptr,
                       c_out + b0 * hidden, h_out + b0 * hidden, b1 - b0, hidden);
  });
}

}  // namespace

absl::StatusOr<StackedLstm> StackedLstm::Create(std::vector<at::Tensor> weights,
                                                std::vector<at::Tensor> biases) {
  if (weights.empty()) return absl::InvalidArgumentError("a stacked LSTM needs at least 1 layer");
  const at::Tensor& w0 = weights[0];
  if (!w0.defined() || w0.dim() != 2 || w0.size(1) < 4 || w0.size(1) % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "w_0 must be 2-D [input_size + hidden, 4 * hidden], got ",
        w0.defined() ? ShapeString(w0) : "an undefined tensor"));
  }
  const int64_t hidden = w0.size(1) / 4;
  const int64_t input = w0.size(0) - hidden;
  if (input < 1) {
    return absl::InvalidArgumentError(absl::StrCat("w_0 ", ShapeString(w0), " has ", w0.size(0),
                                                   " rows; it needs input_size + ", hidden,
                                                   " with input_size >= 1"));
  }
  LSTMSERVE_RETURN_IF_ERROR(FromScalarType(w0.scalar_type()).status());
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const int64_t rows = (l == 0 ? input : hidden) + hidden;
    if (!w.defined() || w.dim() != 2 || w.size(0) != rows || w.size(1) != 4 * hidden) {
      return absl::InvalidArgumentError(absl::StrCat(
          "w_", l, " must be [", rows, ", ", 4 * hidden, "], got ",
          w.defined() ? ShapeString(w) : "an undefined tensor"));
    }
    if (w.scalar_type() != w0.scalar_type() || w.device() != w0.device()) {
      return absl::InvalidArgumentError(absl::StrCat("w_", l, " differs from w_0 in dtype or device"));
    }
  }
  if (!biases.empty() && biases.size() != weights.size()) {
    return absl::InvalidArgumentError(absl::StrCat("got ", biases.size(), " biases for ",
                                                   weights.size(), " layers; give one per layer or none"));
  }
  for (size_t l = 0; l < biases.size(); ++l) {
    const at::Tensor& b = biases[l];
    if (!b.defined() || b.dim() != 1 || b.size(0) != 4 * hidden || b.scalar_type() != w0.scalar_type() ||
        b.device() != w0.device()) {
      return absl::InvalidArgumentError(absl::StrCat("b_", l, " must be [", 4 * hidden,
                                                     "] of the weights' dtype and device"));
    }
  }
  StackedLstm lstm;
  lstm.input_size_ = input;
  lstm.hidden_size_ = hidden;
  for (auto& w : weights) lstm.weights_.push_back(w.contiguous());
  for (auto& b : biases) lstm.biases_.push_back(b.contiguous());
  return lstm;
}

absl::StatusOr<StackedLstm> StackedLstm::FromParameterSet(const ParameterSet& set) {
  std::vector<at::Tensor> weights;
  std::vector<at::Tensor> biases;
  for (int64_t l = 0;; ++l) {
    const at::Tensor* w = set.Find(LstmWeightName(l));
    if (w == nullptr) break;
    weights.push_back(*w);
    if (const at::Tensor* b = set.Find(LstmBiasName(l))) biases.push_back(*b);
  }
  if (weights.empty()) {
    return absl::FailedPreconditionError(
        "the parameter set has no tensor w_0; it is not a stacked-LSTM set");
  }
  if (!biases.empty() && biases.size() != weights.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the parameter set has ", biases.size(), " of ", weights.size(), " biases b_<l>"));
  }
  return Create(std::move(weights), std::move(biases));
}

double StackedLstm::StepFlops(int64_t batch) const {
  double flops = 0;
  for (const auto& w : weights_) flops += 2.0 * batch * w.size(0) * w.size(1);
  return flops;
}

absl::Status StackedLstm::ValidateState(const LstmState& state, int64_t batch,
                                        absl::string_view what) const {
  for (const auto* part : {&state.c, &state.h}) {
    const char* name = part == &state.c ? "c" : "h";
    if (part->empty()) continue;
    if (static_cast<int64_t>(part->size()) != num_layers()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", part->size(), " ", name,
                                                     " states for ", num_layers(),
                                                     " layers; give one per layer or none"));
    }
    for (size_t l = 0; l < part->size(); ++l) {
      const at::Tensor& t = (*part)[l];
      if (!t.defined() || t.dim() != 2 || t.size(0) != batch || t.size(1) != hidden_size_) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": ", name, "[", l, "] must be [", batch, ", ", hidden_size_, "], got ",
            t.defined() ? ShapeString(t) : "an undefined tensor"));
      }
      if (t.scalar_type() != scalar_type() || t.device() != device()) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": ", name, "[", l, "] is ", c10::toString(t.scalar_type()), " on ",
            DeviceName(t.device()), "; the set is ", c10::toString(scalar_type()), " on ",
            DeviceName(device())));
      }
    }
  }
  return absl::OkStatus();
}

LstmPath StackedLstm::ChoosePath(int64_t batch, LstmPath requested) const {
  if (requested != LstmPath::kAuto) return requested;
  if (scalar_type() != at::kFloat || !device().is_cpu()) return LstmPath::kGeneric;
  return batch <= kSmallBatchMax ? LstmPath::kSmallBatch : LstmPath::kBlas;
}

absl::StatusOr<LstmState> StackedLstm::Step(const at::Tensor& x, const LstmState& prev,
                                            LstmPath path) const {
  if (!x.defined() || x.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "x must be 2-D [batch, input_size], got ", x.defined() ? ShapeString(x) : "nothing"));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(SequenceResult result,
                             Run(x.unsqueeze(0), prev, /*want_outputs=*/false, path));
  return std::move(result.final_state);
}

absl::StatusOr<SequenceResult> StackedLstm::Run(const at::Tensor& inputs, const LstmState& initial,
                                                bool want_outputs, LstmPath path) const {
  if (!inputs.defined() || inputs.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs must be 3-D [steps, batch, input_size], got ",
        inputs.defined() ? ShapeString(inputs) : "nothing"));
  }
  const int64_t steps = inputs.size(0);
  const int64_t batch = inputs.size(1);
  if (steps < 1 || batch < 1 || inputs.size(2) != input_size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs ", ShapeString(inputs), " must be [steps >= 1, batch >= 1, ", input_size_, "]"));
  }
  if (inputs.scalar_type() != scalar_type() || inputs.device() != device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs are ", c10::toString(inputs.scalar_type()), " on ", DeviceName(inputs.device()),
        "; the set is ", c10::toString(scalar_type()), " on ", DeviceName(device())));
  }
  LSTMSERVE_RETURN_IF_ERROR(ValidateState(initial, batch, "initial state"));
  const LstmPath chosen = ChoosePath(batch, path);
  if (chosen != LstmPath::kGeneric && (scalar_type() != at::kFloat || !device().is_cpu())) {
    return absl::FailedPreconditionError("the small-batch and BLAS paths need float32 on the CPU");
  }
  return GuardTorch("stacked LSTM", [&]() -> absl::StatusOr<SequenceResult> {
    c10::InferenceMode inference;
    if (chosen == LstmPath::kGeneric) return RunGeneric(inputs, initial, want_outputs);
    return RunFloatCpu(inputs, initial, want_outputs, chosen == LstmPath::kSmallBatch);
  });
}

// Layer by layer: one GEMM projects all of a layer's inputs (x @ W_x), then each step adds
// h_prev @ W_h into that step's slice and runs the fused gate kernel, which writes the new c
// in place and the new h straight into the layer's output sequence (the next layer's input).
// Views are made before the time loop, so the loop allocates nothing.
SequenceResult StackedLstm::RunFloatCpu(const at::Tensor& inputs, const LstmState& initial,
                                        bool want_outputs, bool small) const {
  const int64_t steps = inputs.size(0);
  const int64_t batch = inputs.size(1);
  const int64_t hidden = hidden_size_;
  const bool parallel_gates = !small && batch * hidden >= 2 * kGateUnitsPerTask;
  const auto options = inputs.options();
  const int64_t chunk_steps =
      std::clamp<int64_t>(kProjectionChunkBytes / (batch * 4 * hidden * 4), 1, steps);
  at::Tensor projection = at::empty({chunk_steps * batch, 4 * hidden}, options);
  std::vector<at::Tensor> gate_views(chunk_steps);
  for (int64_t t = 0; t < chunk_steps; ++t) gate_views[t] = projection.narrow(0, t * batch, batch);

  SequenceResult result;
  result.final_state.c.resize(num_layers());
  result.final_state.h.resize(num_layers());
  at::Tensor layer_input = inputs.contiguous();
  for (int64_t l = 0; l < num_layers(); ++l) {
    const at::Tensor& w = weights_[l];
    const int64_t in = w.size(0) - hidden;
    const at::Tensor w_x = w.narrow(0, 0, in);
    const at::Tensor w_h = w.narrow(0, in, hidden);
    const float* bias = has_bias() ? biases_[l].data_ptr<float>() : nullptr;
    const at::Tensor flat_input = layer_input.view({steps * batch, in});

    at::Tensor output = at::empty({steps, batch, hidden}, options);
    std::vector<at::Tensor> h_views(steps);
    for (int64_t t = 0; t < steps; ++t) h_views[t] = output[t];
    at::Tensor c = initial.c.empty() ? at::Tensor() : initial.c[l].contiguous().clone();
    if (!c.defined()) c = at::empty({batch, hidden}, options);
    bool c_is_zero = initial.c.empty();
    at::Tensor h_prev = initial.h.empty() ? at::Tensor() : initial.h[l].contiguous();

    for (int64_t t0 = 0; t0 < steps; t0 += chunk_steps) {
      const int64_t n = std::min(chunk_steps, steps - t0);
      at::Tensor proj = n == chunk_steps ? projection : projection.narrow(0, 0, n * batch);
      Gemm(small, flat_input.narrow(0, t0 * batch, n * batch), w_x, proj, /*accumulate=*/false);
      for (int64_t t = t0; t < t0 + n; ++t) {
        at::Tensor& gates = gate_views[t - t0];
        if (h_prev.defined()) Gemm(small, h_prev, w_h, gates, /*accumulate=*/true);
        Gates(gates.data_ptr<float>(), bias, c_is_zero ? nullptr : c.data_ptr<float>(),
              c.data_ptr<float>(), h_views[t].data_ptr<float>(), batch, hidden, parallel_gates);
        c_is_zero = false;
        h_prev = h_views[t];
      }
    }
    result.final_state.c[l] = c;
    result.final_state.h[l] = steps == 1 ? h_views[0] : h_views[steps - 1].clone();
    layer_input = std::move(output);
  }
  if (want_outputs) result.outputs = layer_input;
  return result;
}

// Any device and dtype, with LibTorch ops; the same algorithm as RunFloatCpu.
SequenceResult StackedLstm::RunGeneric(const at::Tensor& inputs, const LstmState& initial,
                                       bool want_outputs) const {
  const int64_t batch = inputs.size(1);
  const int64_t hidden = hidden_size_;
  SequenceResult result;
  result.final_state.c.resize(num_layers());
  result.final_state.h.resize(num_layers());
  at::Tensor layer_input = inputs;
  for (int64_t l = 0; l < num_layers(); ++l) {
    const at::Tensor& w = weights_[l];
    const int64_t in = w.size(0) - hidden;
    const at::Tensor w_h = w.narrow(0, in, hidden);
    at::Tensor projection = at::matmul(layer_input, w.narrow(0, 0, in));
    if (has_bias()) projection.add_(biases_[l]);
    at::Tensor c = initial.c.empty() ? at::zeros({batch, hidden}, inputs.options()) : initial.c[l];
    at::Tensor h = initial.h.empty() ? at::zeros({batch, hidden}, inputs.options()) : initial.h[l];
    std::vector<at::Tensor> outputs;
    outputs.reserve(inputs.size(0));
    for (int64_t t = 0; t < inputs.size(0); ++t) {
      const at::Tensor gates = at::addmm(projection[t], h, w_h);
      const auto ifog = gates.chunk(4, 1);
      c = at::sigmoid(ifog[0]) * at::tanh(ifog[3]) + at::sigmoid(ifog[1]) * c;
      h = at::sigmoid(ifog[2]) * at::tanh(c);
      outputs.push_back(h);
    }
    result.final_state.c[l] = c;
    result.final_state.h[l] = h;
    layer_input = at::stack(outputs);
  }
  if (want_outputs) result.outputs = layer_input;
  return result;
}

}  // namespace lstmserve::core
