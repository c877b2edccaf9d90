#include "lstmserve/core/diagnostics.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"

namespace lstmserve::core {
namespace {

// |z| beyond which sigmoid(z) leaves [0.05, 0.95], and tanh(z) leaves [-0.95, 0.95].
constexpr double kSigmoidEdge = 2.9444389791664403;  // log(0.95 / 0.05)
constexpr double kTanhEdge = 1.8318679906315083;     // atanh(0.95)

absl::Status CheckOptions(const ProbeOptions& o, int64_t parameters, int64_t steps) {
  if (o.samples < 2 || o.samples > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("samples is ", o.samples, "; expected 2 to 1048576"));
  }
  if (steps < 1 || steps > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("steps is ", steps, "; expected 1 to 100000"));
  }
  const double work = static_cast<double>(o.samples) * static_cast<double>(steps) * static_cast<double>(parameters);
  if (work > static_cast<double>(o.max_work)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the probe would take ", static_cast<int64_t>(work), " multiply-adds (samples ", o.samples, " x steps ", steps,
        " x ", parameters, " parameters); the limit is ", o.max_work, ": use fewer samples or steps"));
  }
  return absl::OkStatus();
}

// The probe's generator. Its stream must not be the one that drew the weights: a set made
// with seed s draws from torch.manual_seed(s)'s stream, and probing it with the same
// stream multiplies the weights by themselves (x = W gives var(x W^T) twice the truth). So
// the probe seed goes through a SplitMix64 step first.
at::Generator ProbeGenerator(uint64_t seed) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return at::detail::createCPUGenerator(z ^ (z >> 31));
}

double Var(const at::Tensor& t) { return t.to(at::kDouble).var(/*unbiased=*/false).item<double>(); }

at::Tensor Probe(at::Generator& gen, std::vector<int64_t> shape) {
  return at::empty(shape, at::TensorOptions().dtype(at::kFloat)).normal_(0, 1, gen);
}

}  // namespace

absl::StatusOr<StorageError> MeasureStorageError(const StackedLstm& full, const StackedLstm& reduced,
                                                 uint64_t probe_seed) {
  if (full.weight_storage() != WeightStorage::kDType || full.scalar_type() != at::kFloat || !full.device().is_cpu()) {
    return absl::InvalidArgumentError("the reference of a weight-storage error must be a float32 CPU set");
  }
  if (full.num_layers() != reduced.num_layers() || full.input_size() != reduced.input_size() ||
      full.hidden_size() != reduced.hidden_size() || full.has_bias() != reduced.has_bias()) {
    return absl::InvalidArgumentError("the float32 and the reduced set differ in shape");
  }
  constexpr int64_t kRows = 4;
  constexpr double kMaxWork = static_cast<double>(int64_t{1} << 36);
  double parameters = 0;
  for (const auto& w : full.weights()) parameters += static_cast<double>(w.numel());
  StorageError out;
  out.storage = reduced.weight_storage();
  out.steps = {1, 100};
  if (kRows * 1000.0 * parameters <= kMaxWork) out.steps.push_back(1000);
  return GuardTorch("weight storage error", [&]() -> absl::StatusOr<StorageError> {
    at::Generator gen = ProbeGenerator(probe_seed);
    const at::Tensor x = Probe(gen, {out.steps.back(), kRows, full.input_size()});
    LSTMSERVE_ASSIGN_OR_RETURN(SequenceResult a, full.Run(x, {}));
    LSTMSERVE_ASSIGN_OR_RETURN(SequenceResult b, reduced.Run(x, {}));
    for (int64_t t : out.steps) {
      const at::Tensor d = (a.outputs[t - 1] - b.outputs[t - 1]).abs().to(at::kDouble);
      out.max_abs_error.push_back(d.max().item<double>());
      out.mean_abs_error.push_back(d.mean().item<double>());
    }
    return out;
  });
}

absl::Status CheckProbeCost(const ProbeOptions& options, int64_t parameters, bool lstm) {
  return lstm ? CheckOptions(options, parameters, options.steps) : CheckOptions(options, 3 * parameters, 1);
}

absl::StatusOr<std::vector<LstmLayerStats>> AnalyzeLstm(const StackedLstm& lstm, const ProbeOptions& options) {
  int64_t parameters = 0;
  for (const auto& w : lstm.weights()) parameters += w.numel();
  LSTMSERVE_RETURN_IF_ERROR(CheckProbeCost(options, parameters, /*lstm=*/true));
  return GuardTorch("analyze LSTM", [&]() -> absl::StatusOr<std::vector<LstmLayerStats>> {
    c10::InferenceMode inference;
    at::Generator gen = ProbeGenerator(options.seed);
    const int64_t layers = lstm.num_layers(), hidden = lstm.hidden_size(), batch = options.samples;
    std::vector<at::Tensor> w, b;
    for (int64_t l = 0; l < layers; ++l) {
      // What the set computes with: an int8 weight is q * scale, not q.
      w.push_back(lstm.FloatWeight(l).to(at::kCPU, at::kFloat));
      if (!lstm.biases().empty()) b.push_back(lstm.biases()[static_cast<size_t>(l)].to(at::kCPU, at::kFloat));
    }
    std::vector<at::Tensor> c(layers, at::zeros({batch, hidden})), h(layers, at::zeros({batch, hidden}));
    std::vector<LstmLayerStats> stats(static_cast<size_t>(layers));
    for (int64_t t = 0; t < options.steps; ++t) {
      at::Tensor x = Probe(gen, {batch, lstm.input_size()});
      for (int64_t l = 0; l < layers; ++l) {
        auto& s = stats[static_cast<size_t>(l)];
        at::Tensor z = at::cat({x, h[l]}, 1).matmul(w[l]);
        if (!b.empty()) z = z + b[l];
        const auto gates = z.split(hidden, 1);  // i, f, o, g as in common_ops.lstm
        for (int k = 0; k < 4; ++k) s.gate_variance[k] += Var(gates[k]);
        s.preactivation_variance += Var(z);
        const at::Tensor sig = z.narrow(1, 0, 3 * hidden);
        s.sigmoid_saturated += (sig.abs() > kSigmoidEdge).to(at::kDouble).mean().item<double>();
        c[l] = at::sigmoid(gates[1]) * c[l] + at::sigmoid(gates[0]) * at::tanh(gates[3]);
        h[l] = at::sigmoid(gates[2]) * at::tanh(c[l]);
        const double tanh_out =
            ((gates[3].abs() > kTanhEdge).to(at::kDouble).sum() + (c[l].abs() > kTanhEdge).to(at::kDouble).sum())
                .item<double>();
        s.tanh_saturated += tanh_out / static_cast<double>(2 * batch * hidden);
        s.c_variance += Var(c[l]);
        s.h_variance += Var(h[l]);
        x = h[l];
      }
    }
    const double n = static_cast<double>(options.steps);
    for (auto& s : stats) {
      for (double& g : s.gate_variance) g /= n;
      s.preactivation_variance /= n;
      s.c_variance /= n;
      s.h_variance /= n;
      s.sigmoid_saturated /= n;
      s.tanh_saturated /= n;
    }
    return stats;
  });
}

// A leaky ReLU's slope for negative inputs: PyTorch's default is 0.01, any in use is within
// [0, 1]; past 1000 in magnitude the float32 probe overflows (-1e308 made LibTorch throw).
constexpr double kMaxNegativeSlope = 1000;

absl::StatusOr<std::vector<ChainLayerStats>> AnalyzeChain(const std::vector<NamedTensor>& weights,
                                                          const ChainOptions& chain, const ProbeOptions& options) {
  if (weights.empty()) return absl::InvalidArgumentError("the chain has no weight");
  if (!std::isfinite(chain.negative_slope) || std::abs(chain.negative_slope) > kMaxNegativeSlope) {
    return absl::InvalidArgumentError(absl::StrCat("negative_slope is ", chain.negative_slope,
                                                   "; expected a finite number in [-1000, 1000] (0 means 0.01)"));
  }
  int64_t parameters = 0;
  for (const auto& w : weights) parameters += w.value.numel();
  LSTMSERVE_RETURN_IF_ERROR(CheckProbeCost(options, parameters, /*lstm=*/false));
  // Orient every weight as [in, out].
  std::vector<at::Tensor> oriented;
  std::vector<ChainLayerStats> stats;
  int64_t width = -1;
  for (const auto& named : weights) {
    const at::Tensor& w = named.value;
    if (w.dim() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", named.name, "' is ", w.dim(), "-D; a chain takes 2-D weights"));
    }
    const bool out_in_fits = width < 0 || w.size(1) == width;
    const bool in_out_fits = width < 0 || w.size(0) == width;
    WeightLayout layout = chain.layout;
    if (layout == WeightLayout::kAuto) {
      layout = out_in_fits && in_out_fits ? chain.preferred : out_in_fits ? WeightLayout::kOutIn : WeightLayout::kInOut;
    }
    at::Tensor m = layout == WeightLayout::kOutIn ? w.t() : w;
    if (width >= 0 && m.size(0) != width) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", named.name, "' [", w.size(0), ", ", w.size(1),
                                                     "] does not take the ", width, " units the layer before gives"));
    }
    ChainLayerStats s;
    s.name = named.name;
    s.fan_in = m.size(0);
    s.fan_out = m.size(1);
    stats.push_back(s);
    oriented.push_back(m);
    width = m.size(1);
  }
  return GuardTorch("analyze chain", [&]() -> absl::StatusOr<std::vector<ChainLayerStats>> {
    torch::autograd::AutoGradMode grad(true);
    at::Generator gen = ProbeGenerator(options.seed);
    const auto activate = [&](const at::Tensor& z) {
      switch (chain.activation) {
        case Activation::kRelu: return at::relu(z);
        case Activation::kLeakyRelu: return at::leaky_relu(z, chain.negative_slope);
        case Activation::kTanh: return at::tanh(z);
        case Activation::kSigmoid: return at::sigmoid(z);
        case Activation::kLinear: break;
      }
      return z;
    };
    // The probe stands for the pre-activation before the first layer: each layer takes
    // act(previous pre-activation), so a variance-preserving initialization keeps every
    // layer's figure where the probe's is (1), the first layer included.
    at::Tensor x = Probe(gen, {options.samples, oriented.front().size(0)}).requires_grad_(true);
    std::vector<at::Tensor> inputs;
    at::Tensor a = activate(x);
    for (size_t l = 0; l < oriented.size(); ++l) {
      if (!a.is_leaf()) a.retain_grad();
      inputs.push_back(a);
      const at::Tensor w = oriented[l].to(at::kCPU, at::kFloat).detach();
      const at::Tensor z = a.matmul(w);
      auto& s = stats[l];
      a = activate(z);
      at::NoGradGuard no_grad;
      s.forward_variance = Var(z);
      s.activation_variance = Var(a);
      const bool relu_like = chain.activation == Activation::kRelu || chain.activation == Activation::kLeakyRelu;
      s.dead_fraction = relu_like ? (z <= 0).all(0).to(at::kDouble).mean().item<double>() : 0.0;
    }
    const at::Tensor r = Probe(gen, {a.size(0), a.size(1)});
    (a * r).sum().backward();
    for (size_t l = 0; l < inputs.size(); ++l) {
      at::NoGradGuard no_grad;
      stats[l].gradient_variance = Var(inputs[l].grad());
    }
    return stats;
  });
}

}  // namespace lstmserve::core
