// The stacked LSTM of common_ops.stack_lstm, for inference.
//
// Layer l reads x (l == 0) or layer l-1's new h, computes
//   ifog = [x, h_prev] @ w_l (+ b_l),  i, f, o = sigmoid(.), g = tanh(.)
//   c = i * g + f * c_prev,            h = o * tanh(c)
// with gate blocks in the order i, f, o, g (not torch.nn.LSTM's i, f, g, o).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "lstmserve/core/parameter_set.h"

namespace lstmserve::core {

// Per-layer states, each [B, H]. An empty vector means zeros for every layer; otherwise it
// holds one tensor per layer.
struct LstmState {
  std::vector<at::Tensor> c;
  std::vector<at::Tensor> h;
};

struct SequenceResult {
  at::Tensor outputs;  // [T, B, H]: top-layer h at every step; undefined if not asked for
  LstmState final_state;
};

// Which implementation computes a call. kAuto picks; the others exist for tests and
// benchmarks, which check that every path gives the reference's numbers.
enum class LstmPath {
  kAuto,
  kSmallBatch,  // float32 CPU: own vectorised kernels, no LibTorch op per step; bfloat16 and
                // int8 weights are read as stored (auto: only where the CPU lacks the packed
                // GEMMs of kBlas, below x86-64-v3: B = 1 for float32 sets, B <= 4 for reduced)
  kBlas,        // float32 CPU: one GEMM per layer for all inputs, one GEMM per step. On every
                // x86-64-v3 CPU (AVX2 + FMA) these are the core's packed GEMMs, and auto
                // takes this path at every batch size: float32 weights packed once per set
                // (one FMA chain per output, in k's order: the same bits on AVX2 and AVX-512,
                // at any batch size), int8 with vpdpbusd or vpmaddwd (activations quantized
                // per row), bf16 with vdpbf16ps or two FMAs (activations rounded to bf16).
                // Elsewhere: BLAS, on reduced weights widened to float32 once per call
  kGeneric,     // any device and dtype: LibTorch ops
  kOneDnn,      // float32 CPU, LibTorch 2.x: at::lstm on weights reordered to its layout, which
                // runs oneDNN's fused RNN primitive (AVX-512 where the CPU has it; auto: B >= 32
                // and T >= 16, below x86-64-v3 only)
  kCudaFused,   // CUDA, B <= 8: one fused kernel per layer and step (GEMV + cell), reads w once
  kCudaGemm,    // CUDA: cuBLAS GEMMs (all inputs at once, then one per step) + a fused cell kernel
};
// The name of a path ("auto", "small_batch", "blas", "generic", "onednn", "cuda_fused",
// "cuda_gemm").
const char* LstmPathName(LstmPath path);
// The path of a name LstmPathName gives; INVALID_ARGUMENT naming the choices otherwise.
absl::StatusOr<LstmPath> ParseLstmPath(absl::string_view name);
// What this CPU and build give the CPU paths, in one line for the server's startup log: the
// small-batch kernels' clone, the build of the packed float32, int8 and bf16 GEMMs (AVX-512,
// AVX512-VNNI, AVX512-BF16, AVX2 or no), and oneDNN's LSTM.
std::string DescribeCpuKernels();
// True when this build has the CUDA paths (its LibTorch has CUDA).
bool BuiltWithCuda();
// True when the kOneDnn path is available: LibTorch 2.x with oneDNN enabled (1.13's at::lstm
// takes a per-step path on the CPU, slower than kBlas).
bool OneDnnLstmAvailable();

// Immutable after Create; Step and Run are const and safe to call from many threads.
class StackedLstm {
 public:
  // `weights[l]` is [in_l + H, 4H] with in_0 = input size and in_l = H for l > 0;
  // `biases` is empty or holds one [4H] per layer. With `storage` kDType all tensors share
  // dtype and device. With kBFloat16 or kInt8 the weights are bfloat16 or int8 on the CPU,
  // biases float32, and for int8 `scales` holds one float32 [4H] per layer (the scale of
  // each column); inputs, states and outputs are then float32.
  static absl::StatusOr<StackedLstm> Create(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases = {},
                                            WeightStorage storage = WeightStorage::kDType,
                                            std::vector<at::Tensor> scales = {});
  // From a set with the template's names (w_0.., b_0.. when present, w_0.scale.. for int8).
  static absl::StatusOr<StackedLstm> FromParameterSet(const ParameterSet& set);

  // One step: x [B, I] -> new per-layer c and h (each [B, H]).
  absl::StatusOr<LstmState> Step(const at::Tensor& x, const LstmState& prev, LstmPath path = LstmPath::kAuto) const;

  // A sequence: inputs [T, B, I] -> top-layer outputs [T, B, H] (when `want_outputs`) and
  // the final states. Equal to T calls of Step carrying the state.
  absl::StatusOr<SequenceResult> Run(const at::Tensor& inputs, const LstmState& initial, bool want_outputs = true,
                                     LstmPath path = LstmPath::kAuto) const;

  // The checks Run makes before computing (shapes, dtype, device, states): OK means Run
  // cannot fail on these inputs for a reason of theirs.
  absl::Status CheckRunInputs(const at::Tensor& inputs, const LstmState& initial) const;
  // The same checks but the device: for host tensors that a DeviceRunner will move.
  absl::Status CheckRunShapes(const at::Tensor& inputs, const LstmState& initial) const;

  int64_t num_layers() const { return static_cast<int64_t>(weights_.size()); }
  int64_t input_size() const { return input_size_; }
  int64_t hidden_size() const { return hidden_size_; }
  bool has_bias() const { return !biases_.empty(); }
  const std::vector<at::Tensor>& weights() const { return weights_; }
  const std::vector<at::Tensor>& biases() const { return biases_; }
  c10::Device device() const { return weights_.front().device(); }
  // The dtype of inputs, states and outputs (float32 for reduced weight storage).
  c10::ScalarType scalar_type() const { return scalar_type_; }
  WeightStorage weight_storage() const { return storage_; }
  // Layer l's weight as float32 (the stored one, or its dequantized copy).
  at::Tensor FloatWeight(int64_t layer) const;

  // Memory this set holds beyond its own tensors: the layouts some paths derive from the
  // weights on their first call (kOneDnn's reordered float32 weights; kBlas's packed float32,
  // int8 or bf16 weights and int8's column sums; a small reduced set's float32 copy,
  // WidenedCopy).
  // DerivedBytes: the bytes made so far, shared by copies of this object.
  int64_t DerivedBytes() const { return derived_->bytes.load(std::memory_order_relaxed); }
  // `listener` is called with the bytes of each layout as it is made, on the thread of the
  // call that makes it, before that call computes; calls that wait for the same layout wait
  // for the listener too. Set it before the set is shared between threads.
  void SetDerivedBytesListener(std::function<void(int64_t bytes)> listener) {
    derived_->listener = std::move(listener);
  }

  // FLOPs of one step at batch size `batch` (2 * B * (in_l + H) * 4H summed over layers).
  double StepFlops(int64_t batch) const;

  // The kernel a call of `batch` rows and `steps` steps runs on `path` (kAuto: the path auto
  // picks), for metrics and logs: the path's name, except that the BLAS path names how it
  // multiplies: "packed_f32", "packed_int8", "packed_bf16", "blas_widened" (reduced weights
  // on BLAS) or "blas" (float32 weights on BLAS).
  const char* KernelName(int64_t batch, int64_t steps, LstmPath path = LstmPath::kAuto) const;

 private:
  StackedLstm() = default;

  absl::Status ValidateState(const LstmState& state, int64_t batch, absl::string_view what, bool check_device) const;
  absl::Status CheckInputs(const at::Tensor& inputs, const LstmState& initial, bool check_device) const;
  LstmPath ChoosePath(int64_t batch, int64_t steps, LstmPath requested) const;
  // `inputs` holds steps x batch rows of input_size ([T, B, I], or [B, I] for one step).
  SequenceResult RunFloatCpu(const at::Tensor& inputs, int64_t steps, int64_t batch, const LstmState& initial,
                             bool want_outputs, bool small_batch) const;
  SequenceResult RunGeneric(const at::Tensor& inputs, const LstmState& initial, bool want_outputs) const;
  SequenceResult RunOneDnn(const at::Tensor& inputs, const LstmState& initial, bool want_outputs) const;
  // stacked_lstm_cuda.cc; only in CUDA builds.
  SequenceResult RunCuda(const at::Tensor& inputs, const LstmState& initial, bool want_outputs, bool fused) const;

  std::vector<at::Tensor> weights_;  // [in_l + H, 4H], contiguous
  std::vector<at::Tensor> biases_;   // [4H] or empty
  std::vector<at::Tensor> scales_;   // int8 storage: [4H] float32 per layer
  WeightStorage storage_ = WeightStorage::kDType;
  c10::ScalarType scalar_type_ = c10::kFloat;
  at::Tensor zero_bias_;  // [4H] zeros for float32 CPU sets without biases
  // at::lstm's parameters (w_ih, w_hh[, b_ih, b_hh] per layer, gates i, f, g, o), made on the
  // first kOneDnn call: the set's weights once more in memory, for sets that run it.
  struct TorchLayout {
    std::once_flag once;
    std::vector<at::Tensor> params;
  };
  std::shared_ptr<TorchLayout> torch_layout_;
  // Weights packed for the kBlas path's GEMMs (kernels::PackF32, PackInt8 and PackBf16),
  // made on the first call that takes them: the stored weights once more (4, 1 or 2 bytes
  // per weight), split into each layer's input rows and hidden rows.
  struct PackedLayout {
    std::once_flag once;
    std::vector<at::Tensor> x, h;            // per layer: w_l[0:in] and w_l[in:in + H], packed
    std::vector<at::Tensor> x_sums, h_sums;  // int8: their int32 column sums
  };
  std::shared_ptr<PackedLayout> packed_;
  // Whether kBlas runs this set's weights on the packed GEMMs (float32 CPU sets and reduced
  // storage, on a CPU at x86-64-v3 or above), and the layout, packed on first use.
  bool UsesPackedGemm() const;
  const PackedLayout& Packed() const;
  // A small reduced set's weights widened to float32 once, on first use, where no packed
  // GEMM serves it: its layers are compute-bound, and widening each weight in registers on
  // every step costs more than the memory it saves (null for other sets; see the .cc).
  struct WidenedLayout {
    std::once_flag once;
    std::vector<at::Tensor> w;
  };
  std::shared_ptr<WidenedLayout> widened_;
  const std::vector<at::Tensor>* WidenedCopy() const;
  struct DerivedMemory {
    std::atomic<int64_t> bytes{0};
    std::function<void(int64_t)> listener;
  };
  std::shared_ptr<DerivedMemory> derived_ = std::make_shared<DerivedMemory>();
  // Counts a layout just made (inside its call_once) and tells the listener.
  void CountDerived(const std::vector<std::vector<at::Tensor>*>& parts) const;
  int64_t input_size_ = 0;
  int64_t hidden_size_ = 0;
};

}  // namespace lstmserve::core
