// StackedLstm's CUDA paths (compiled only in builds whose LibTorch has CUDA). Everything is
// queued on the current CUDA stream of the set's device: LibTorch's GEMMs (cuBLAS) and our
// kernels (cuda/lstm_cuda.cu) alike, so a caller that makes its own stream current (the
// server's batch workers do) keeps its work apart from other threads'.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/lstm_cuda.h"
#include "lstmserve/core/stacked_lstm.h"

namespace lstmserve::core {
namespace {

cuda::Elem ElemOf(c10::ScalarType type) {
  switch (type) {
    case at::kHalf: return cuda::Elem::kFloat16;
    case at::kBFloat16: return cuda::Elem::kBFloat16;
    default: return cuda::Elem::kFloat32;
  }
}

}  // namespace

bool BuiltWithCuda() { return true; }

// Layer by layer, as on the CPU. The cell state c is float32 within a call whatever the set's
// dtype (h, the outputs and the returned c have the set's dtype).
//   fused: per step one kernel: [x_t, h_{t-1}] @ w + b and the cell (cuda::FusedLstmStep).
//   gemm:  one GEMM for x @ W_x + b over all steps, then per step h_{t-1} @ W_h (cuBLAS)
//          and the cell kernel (cuda::LstmGates), which adds the two in float32.
SequenceResult StackedLstm::RunCuda(const at::Tensor& inputs, const LstmState& initial, bool want_outputs,
                                    bool fused) const {
  const c10::cuda::CUDAGuard guard(device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device().index()).stream();
  const int sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t steps = inputs.size(0), batch = inputs.size(1), hidden = hidden_size_;
  const int64_t layers = num_layers();
  const cuda::Elem elem = ElemOf(scalar_type());
  const at::TensorOptions options = inputs.options();
  const at::TensorOptions float_options = options.dtype(at::kFloat);

  at::Tensor partials, counters;
  if (fused) {
    int64_t scratch = 0;
    for (const auto& w : weights_) {
      scratch = std::max(scratch, cuda::FusedStepScratchFloats(w.size(0) - hidden, hidden, batch, sm_count));
    }
    partials = at::empty({scratch}, float_options);
    counters = at::zeros({cuda::FusedStepCounters(hidden)}, options.dtype(at::kInt));
  }

  SequenceResult result;
  at::Tensor layer_input = inputs.contiguous();
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor& w = weights_[l];
    const int64_t in = w.size(0) - hidden;
    const void* bias = has_bias() ? biases_[l].data_ptr() : nullptr;
    at::Tensor output = at::empty({steps, batch, hidden}, options);
    at::Tensor c = at::empty({batch, hidden}, float_options);
    bool c_is_zero = initial.c.empty();
    if (!c_is_zero) c.copy_(initial.c[l]);
    at::Tensor h_prev = initial.h.empty() ? at::Tensor() : initial.h[l].contiguous();

    if (fused) {
      for (int64_t t = 0; t < steps; ++t) {
        at::Tensor h_out = output[t];
        C10_CUDA_CHECK(cuda::FusedLstmStep(elem, layer_input[t].data_ptr(), in,
                                           h_prev.defined() ? h_prev.data_ptr() : nullptr, hidden, w.data_ptr(), bias,
                                           c.data_ptr<float>(), c_is_zero, h_out.data_ptr(), batch,
                                           partials.data_ptr<float>(), counters.data_ptr<int>(), sm_count, stream));
        c_is_zero = false;
        h_prev = h_out;
      }
    } else {
      const at::Tensor x2d = layer_input.view({steps * batch, in});
      const at::Tensor w_x = w.narrow(0, 0, in);
      const at::Tensor projection = has_bias() ? at::addmm(biases_[l], x2d, w_x) : at::mm(x2d, w_x);
      const at::Tensor w_h = w.narrow(0, in, hidden);
      at::Tensor recurrent = at::empty({batch, 4 * hidden}, options);
      for (int64_t t = 0; t < steps; ++t) {
        if (h_prev.defined()) at::mm_out(recurrent, h_prev, w_h);
        at::Tensor h_out = output[t];
        C10_CUDA_CHECK(
            cuda::LstmGates(elem, static_cast<char*>(projection.data_ptr()) + t * batch * 4 * hidden * w.element_size(),
                            h_prev.defined() ? recurrent.data_ptr() : nullptr, c.data_ptr<float>(), c_is_zero,
                            h_out.data_ptr(), batch, hidden, stream));
        c_is_zero = false;
        h_prev = h_out;
      }
    }
    result.final_state.c.push_back(c.to(scalar_type()));
    result.final_state.h.push_back(h_prev.clone());
    layer_input = std::move(output);
  }
  if (want_outputs) result.outputs = std::move(layer_input);
  return result;
}

}  // namespace lstmserve::core
