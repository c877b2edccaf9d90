// Parameter sets: named tensors created from a spec and a seed, reproducibly.
//
// Draw order (what a user replays in Python after torch.manual_seed(seed)):
//  - a list of tensor specs: each tensor in list order, one initializer call each;
//  - the stacked-LSTM template: w_0 ... w_{L-1} (shape [(l == 0 ? I : H) + H, 4H]), then,
//    when biases are asked for, b_0 ... b_{L-1} (shape [4H]).
// Every tensor is drawn as float32 on the CPU from one generator seeded with `seed` (only
// its low 32 bits matter to the CPU generator), then converted to the requested dtype and
// moved to the requested device (or, with a reduced weight storage, its weights rounded as
// WeightStorage says). Nothing reads or advances the process-wide generator.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "lstmserve/core/device.h"
#include "lstmserve/core/initializer.h"

namespace lstmserve::core {

// One tensor to create.
struct TensorSpec {
  std::string name;            // unique in the set; [A-Za-z0-9_.:/-], at most 128 bytes
  std::vector<int64_t> shape;  // every size >= 1
  Initializer init = Initializer::DefaultWeight();
};

// The stacked LSTM of common_ops.stack_lstm: per layer a fused weight [in_l + H, 4H] with
// gate blocks i, f, o, g, and optionally a bias [4H] added to the gate pre-activations.
struct LstmTemplate {
  int64_t num_layers = 1;
  int64_t input_size = 1;
  int64_t hidden_size = 1;
  bool bias = false;
  Initializer weight_init = Initializer::DefaultWeight();
  Initializer bias_init = Initializer::DefaultBias();
};

// How a stacked-LSTM set keeps its weights w_l. The set's dtype stays float32: inputs,
// states, outputs, biases and all arithmetic are float32; only the weights are stored (and
// read by the kernels) in fewer bits, which is what bounds a small batch's step on the CPU.
//  - kDType: in the set's dtype (every set but these two).
//  - kBFloat16: w_l in bfloat16, rounded to nearest even from the float32 draw
//    (torch: w.to(torch.bfloat16)).
//  - kInt8: w_l in int8 with one float32 scale per output column (per gate unit), kept as
//    "w_<l>.scale" [4H]: scale = max_k |w[k, j]| / 127 and q = round_half_even(w / scale)
//    (torch: s = w.abs().amax(0) / 127; q = torch.round(w / s).to(torch.int8), with q = 0
//    where s = 0); the kernels read q * scale.
// Both need an LSTM-template set of float32 on the CPU.
enum class WeightStorage { kDType, kBFloat16, kInt8 };
// Parses "dtype" (also "", "float32", "fp32", "full"), "bfloat16" ("bf16"), "int8".
absl::StatusOr<WeightStorage> ParseWeightStorage(absl::string_view name);
// "dtype", "bfloat16" or "int8".
absl::string_view WeightStorageName(WeightStorage storage);

// What to create: exactly one of `lstm` or `tensors`.
struct ParameterSetSpec {
  std::optional<LstmTemplate> lstm;
  std::vector<TensorSpec> tensors;
  uint64_t seed = 0;
  FanConvention fan_convention = FanConvention::kTorch;
  DType dtype = DType::kFloat32;
  WeightStorage weight_storage = WeightStorage::kDType;
};

// Bounds on what one creation may ask for. Defaults suit a small server.
struct CreateLimits {
  int64_t max_set_bytes = int64_t{1} << 30;  // bytes of all tensors, in the target dtype
  int64_t max_tensors = 4096;
  int64_t max_rank = 8;
  int64_t max_layers = 1024;
};

struct NamedTensor {
  std::string name;
  at::Tensor value;
};

// A created (or imported) set. Tensors are contiguous, on one device, of one dtype, except
// in a set with reduced weight storage: its w_l are bfloat16 or int8 (with w_<l>.scale
// float32), everything else float32 (see ValidateWeightStorage).
struct ParameterSet {
  std::vector<NamedTensor> tensors;
  std::optional<LstmTemplate> lstm;  // set when the tensors follow the LSTM layout
  DType dtype = DType::kFloat32;     // of the activations, and of every tensor when kDType
  WeightStorage weight_storage = WeightStorage::kDType;
  int64_t byte_size = 0;

  // The tensor called `name`, or nullptr.
  const at::Tensor* Find(absl::string_view name) const;
};

// Names the template uses: "w_<l>" and "b_<l>"; int8 storage adds "w_<l>.scale".
std::string LstmWeightName(int64_t layer);
std::string LstmBiasName(int64_t layer);
std::string LstmScaleName(int64_t layer);

// The set with its weights in `storage`: from a float32 CPU set of the LSTM layout, w_l
// rounded as WeightStorage says (int8 adds w_<l>.scale after the weights, before the
// biases). kDType returns the set unchanged. INVALID_ARGUMENT for any other set.
absl::StatusOr<ParameterSet> ReduceWeights(const ParameterSet& set, WeightStorage storage);

// Checks that a set's tensors are what its dtype and weight_storage say: for kDType every
// tensor of the set's dtype (never int8); otherwise dtype float32 on the CPU, w_0..w_{L-1}
// 2-D in the storage's type, for int8 each w_<l>.scale float32 [w_l.size(1)] with finite
// values >= 0, and every other tensor float32. INVALID_ARGUMENT naming the first mismatch.
absl::Status ValidateWeightStorage(const ParameterSet& set);

// The weight storage a list of tensors has, from their dtypes alone: any int8 tensor means
// kInt8, bfloat16 beside float32 means kBFloat16, anything else kDType. What clients send
// with an import of tensors that came from an export.
WeightStorage InferWeightStorage(const std::vector<NamedTensor>& tensors);

// A stored weight as float32 (q * scale for int8, exact widening for bfloat16).
at::Tensor DequantizeWeight(const at::Tensor& weight, const at::Tensor* scale);

// The template as an explicit tensor list, in draw order.
std::vector<TensorSpec> ExpandLstmTemplate(const LstmTemplate& lstm);

// Checks a tensor name: non-empty, at most 128 bytes, [A-Za-z0-9_.:/-], no "..".
absl::Status ValidateTensorName(absl::string_view name);

// Validates the whole spec: sizes (>= 1, no overflow), names (valid, unique), ranks and
// initializers give INVALID_ARGUMENT; exceeding `limits` (bytes, tensors, layers) gives
// RESOURCE_EXHAUSTED. Returns the expanded tensor list.
absl::StatusOr<std::vector<TensorSpec>> ValidateSpec(const ParameterSetSpec& spec, const CreateLimits& limits);

// Creates the set on `device`. Thread-safe: concurrent calls share no RNG state. A reduced
// weight storage needs the CPU (INVALID_ARGUMENT otherwise).
absl::StatusOr<ParameterSet> CreateParameterSet(const ParameterSetSpec& spec, const CreateLimits& limits,
                                                const c10::Device& device = c10::Device(c10::kCPU));

}  // namespace lstmserve::core
