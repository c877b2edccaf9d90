// Initialization diagnostics: how a parameter set carries variance through the network.
//
// The argument behind initializers such as Xavier and He: a good initialization keeps the
// variance of activations (forward) and of gradients (backward) about constant from layer
// to layer; a bad one makes them explode or vanish. These functions measure that on a
// set's own tensors with random unit-variance probe inputs, deterministically for a probe
// seed, at a bounded cost.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"

namespace lstmserve::core {

struct ProbeOptions {
  // Probe inputs: N(0, 1) from a CPU generator seeded with a hash of this seed (never the
  // stream torch.manual_seed(seed) gives, which may have drawn the weights themselves).
  uint64_t seed = 0;
  int64_t samples = 256;  // rows of the probe batch
  int64_t steps = 20;     // LSTM: steps T
  // Cost bound: samples x steps x parameters (multiply-adds). Past it, RESOURCE_EXHAUSTED.
  int64_t max_work = int64_t{4} << 30;
};

// OK, or INVALID_ARGUMENT for bad samples or steps, or RESOURCE_EXHAUSTED when samples x
// steps x parameters exceeds max_work (chains count 3 passes: forward and backward).
// AnalyzeLstm and AnalyzeChain check it themselves; callers may check before making the
// tensors.
absl::Status CheckProbeCost(const ProbeOptions& options, int64_t parameters, bool lstm);

// Per LSTM layer, over all T steps (each figure the mean over steps of the variance across
// samples and units). Saturated: a sigmoid output below 0.05 or above 0.95 (|z| > 2.944),
// a tanh output beyond +-0.95 (|z| > 1.832), counted over the gates i, f, o (sigmoid) and
// over g and tanh(c) (tanh).
struct LstmLayerStats {
  std::array<double, 4> gate_variance{};  // pre-activations of i, f, o, g
  double preactivation_variance = 0;      // all four gates together
  double c_variance = 0;
  double h_variance = 0;
  double sigmoid_saturated = 0;  // fraction
  double tanh_saturated = 0;     // fraction
};

// Steps the stacked LSTM over `options.steps` steps of unit-variance inputs from zero
// states (float32 on the CPU). INVALID_ARGUMENT for bad options, RESOURCE_EXHAUSTED past
// max_work.
absl::StatusOr<std::vector<LstmLayerStats>> AnalyzeLstm(const StackedLstm& lstm, const ProbeOptions& options);

// The output error of a stacked LSTM with reduced weight storage against the same one with
// float32 weights: the top layer's h of both, stepped from zero states over the same 4 rows
// of N(0, 1) inputs (seeded as the probe), compared after 1, 100 and 1,000 steps (1 and 100
// where 4 x 1,000 x parameters passes 2^36 multiply-adds).
struct StorageError {
  WeightStorage storage = WeightStorage::kDType;
  std::vector<int64_t> steps;
  std::vector<double> max_abs_error;
  std::vector<double> mean_abs_error;
};
// INVALID_ARGUMENT when `full` is not float32 with its weights in float32, or the shapes
// differ.
absl::StatusOr<StorageError> MeasureStorageError(const StackedLstm& full, const StackedLstm& reduced,
                                                 uint64_t probe_seed);

enum class Activation { kLinear, kRelu, kLeakyRelu, kTanh, kSigmoid };

// Which way a chain's 2-D weights are read: [out, in] (torch.nn.Linear: y = x W^T) or
// [in, out] (matmul: y = x W). kAuto takes whichever matches the width coming in, and
// `preferred` when both do (square weights).
enum class WeightLayout { kAuto, kOutIn, kInOut };

struct ChainOptions {
  Activation activation = Activation::kRelu;
  double negative_slope = 0.01;  // leaky ReLU
  WeightLayout layout = WeightLayout::kAuto;
  WeightLayout preferred = WeightLayout::kOutIn;  // for square weights under kAuto
};

// Per weight of a chain z_l = act(z_{l-1}) W_l, with z_{-1} ~ N(0, 1) (the probe stands
// for the pre-activation before the first layer, so a variance-preserving initialization
// keeps every z_l's variance near 1).
struct ChainLayerStats {
  std::string name;
  int64_t fan_in = 0;
  int64_t fan_out = 0;
  double forward_variance = 0;     // of the pre-activation z_l
  double activation_variance = 0;  // of act(z_l)
  double gradient_variance = 0;    // of d loss / d act(z_{l-1}), loss = sum(act(z_L) * r), r ~ N(0, 1) (autograd)
  double dead_fraction = 0;        // ReLU-like: units whose pre-activation is <= 0 for every sample
};

// INVALID_ARGUMENT when a tensor is not 2-D, the widths do not chain, or negative_slope is
// not finite or past 1000 in magnitude; RESOURCE_EXHAUSTED past max_work.
absl::StatusOr<std::vector<ChainLayerStats>> AnalyzeChain(const std::vector<NamedTensor>& weights,
                                                          const ChainOptions& chain, const ProbeOptions& options);

}  // namespace lstmserve::core
