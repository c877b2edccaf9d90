// Parameter sets: named tensors created from a spec and a seed, reproducibly.
//
// Draw order (what a user replays in Python after torch.manual_seed(seed)):
//  - a list of tensor specs: each tensor in list order, one initializer call each;
//  - the stacked-LSTM template: w_0 ... w_{L-1} (shape [(l == 0 ? I : H) + H, 4H]), then,
//    when biases are asked for, b_0 ... b_{L-1} (shape [4H]).
// Every tensor is drawn as float32 on the CPU from one generator seeded with `seed` (only
// its low 32 bits matter to the CPU generator), then converted to the requested dtype and
// moved to the requested device. Nothing reads or advances the process-wide generator.
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

// What to create: exactly one of `lstm` or `tensors`.
struct ParameterSetSpec {
  std::optional<LstmTemplate> lstm;
  std::vector<TensorSpec> tensors;
  uint64_t seed = 0;
  FanConvention fan_convention = FanConvention::kTorch;
  DType dtype = DType::kFloat32;
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

// A created (or imported) set. Tensors are contiguous, on one device, of one dtype.
struct ParameterSet {
  std::vector<NamedTensor> tensors;
  std::optional<LstmTemplate> lstm;  // set when the tensors follow the LSTM layout
  DType dtype = DType::kFloat32;
  int64_t byte_size = 0;

  // The tensor called `name`, or nullptr.
  const at::Tensor* Find(absl::string_view name) const;
};

// Names the template uses: "w_<l>" and "b_<l>".
std::string LstmWeightName(int64_t layer);
std::string LstmBiasName(int64_t layer);

// The template as an explicit tensor list, in draw order.
std::vector<TensorSpec> ExpandLstmTemplate(const LstmTemplate& lstm);

// Checks a tensor name: non-empty, at most 128 bytes, [A-Za-z0-9_.:/-], no "..".
absl::Status ValidateTensorName(absl::string_view name);

// Validates the whole spec: sizes (>= 1, no overflow), names (valid, unique), ranks and
// initializers give INVALID_ARGUMENT; exceeding `limits` (bytes, tensors, layers) gives
// RESOURCE_EXHAUSTED. Returns the expanded tensor list.
absl::StatusOr<std::vector<TensorSpec>> ValidateSpec(const ParameterSetSpec& spec,
                                                     const CreateLimits& limits);

// Creates the set on `device`. Thread-safe: concurrent calls share no RNG state.
absl::StatusOr<ParameterSet> CreateParameterSet(const ParameterSetSpec& spec,
                                                const CreateLimits& limits,
                                                const c10::Device& device = c10::Device(c10::kCPU));

}  // namespace lstmserve::core
