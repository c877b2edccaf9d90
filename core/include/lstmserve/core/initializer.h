// The initializers of torch.nn.init (PyTorch 1.13), drawn from an explicit generator so
// that every creation is reproducible and independent of the process-wide RNG.
//
// Bit-exactness: for the same generator seed, shapes and draw order, ApplyInitializer
// produces the same float32 bits as the Python function of the same name after
// torch.manual_seed(seed), because it makes the same LibTorch calls with the same
// double-precision arguments (see README "Reproducing a set in Python"). orthogonal runs
// its QR on one thread, so it equals PyTorch with torch.set_num_threads(1) (its default on
// the machines we ship for); PyTorch's own result changes with its thread count.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lstmserve::core {

enum class InitKind {
  kUniform,         // U(low, high)
  kNormal,          // N(mean, std)
  kConstant,        // value
  kZeros,           // 0
  kOnes,            // 1
  kXavierUniform,   // U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))
  kXavierNormal,    // N(0, gain * sqrt(2 / (fan_in + fan_out)))
  kKaimingUniform,  // U(-b, b), b = gain(nonlinearity, slope) * sqrt(3 / fan)
  kKaimingNormal,   // N(0, gain(nonlinearity, slope) / sqrt(fan))
  kOrthogonal,      // QR of a N(0, 1) matrix, signs fixed by diag(R), times gain
  kTruncNormal,     // N(mean, std) truncated to [low, high] by inverse-CDF sampling
  kEye,             // the identity matrix (2-D); no draw
  kDirac,           // Dirac delta per group of output channels (3-D to 5-D); no draw
  kSparse,          // N(0, std), then per column ceil(sparsity * rows) rows zeroed by randperm (2-D)
};

// Nonlinearities known to calculate_gain.
enum class Nonlinearity {
  kLinear,
  kConv1d,
  kConv2d,
  kConv3d,
  kConvTranspose1d,
  kConvTranspose2d,
  kConvTranspose3d,
  kSigmoid,
  kTanh,
  kRelu,
  kLeakyRelu,
  kSelu,
};

// Which fan kaiming_* uses.
enum class FanMode { kFanIn, kFanOut };

// How fans are read off a shape.
//  kTorch:  fan_in = size(1) * receptive field, fan_out = size(0) * receptive field
//           (torch.nn.init; right for nn.Linear's [out, in] and conv's [out, in, k...]).
//  kMatmul: fan_in = size(0) * receptive field, fan_out = size(1) * receptive field
//           (a 2-D weight [in, out] used as x @ w, as the LSTM's [in + H, 4H] and ENAS).
enum class FanConvention { kTorch, kMatmul };

// One initializer with its parameters. Fields that a kind does not use are ignored. The
// named constructors carry torch.nn.init's defaults.
struct Initializer {
  InitKind kind = InitKind::kKaimingNormal;
  double low = 0.0;                                      // uniform: a; trunc_normal: a (cut-off)
  double high = 1.0;                                     // uniform: b; trunc_normal: b (cut-off)
  double mean = 0.0;                                     // normal, trunc_normal
  double std = 1.0;                                      // normal, trunc_normal, sparse
  double value = 0.0;                                    // constant
  double gain = 1.0;                                     // xavier_*, orthogonal
  double negative_slope = 0.0;                           // kaiming_*: torch's `a`
  double sparsity = 0.0;                                 // sparse: the fraction of each column zeroed
  int64_t groups = 1;                                    // dirac
  FanMode mode = FanMode::kFanIn;                        // kaiming_*
  Nonlinearity nonlinearity = Nonlinearity::kLeakyRelu;  // kaiming_*

  static Initializer Uniform(double a = 0.0, double b = 1.0);
  static Initializer Normal(double mean = 0.0, double std = 1.0);
  static Initializer Constant(double value);
  static Initializer Zeros();
  static Initializer Ones();
  static Initializer XavierUniform(double gain = 1.0);
  static Initializer XavierNormal(double gain = 1.0);
  static Initializer KaimingUniform(double a = 0.0, FanMode mode = FanMode::kFanIn,
                                    Nonlinearity nonlinearity = Nonlinearity::kLeakyRelu);
  static Initializer KaimingNormal(double a = 0.0, FanMode mode = FanMode::kFanIn,
                                   Nonlinearity nonlinearity = Nonlinearity::kLeakyRelu);
  static Initializer Orthogonal(double gain = 1.0);
  static Initializer TruncNormal(double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0);
  static Initializer Eye();
  static Initializer Dirac(int64_t groups = 1);
  static Initializer Sparse(double sparsity, double std = 0.01);

  // What common_ops.create_weight uses: kaiming_normal_(mode='fan_in', nonlinearity='relu').
  static Initializer DefaultWeight();
  // What common_ops.create_bias uses: constant_(0.0).
  static Initializer DefaultBias();
};

// Names as torch.nn.init spells them, without the trailing underscore ("kaiming_normal").
absl::StatusOr<InitKind> ParseInitKind(absl::string_view name);
absl::string_view InitKindName(InitKind kind);
absl::StatusOr<Nonlinearity> ParseNonlinearity(absl::string_view name);
absl::string_view NonlinearityName(Nonlinearity nonlinearity);
absl::StatusOr<FanMode> ParseFanMode(absl::string_view name);  // "fan_in" | "fan_out"
absl::string_view FanModeName(FanMode mode);
absl::StatusOr<FanConvention> ParseFanConvention(absl::string_view name);  // "torch" | "matmul"
absl::string_view FanConventionName(FanConvention convention);

// torch.nn.init.calculate_gain. `param` is the leaky_relu slope (0.01 when absent).
double CalculateGain(Nonlinearity nonlinearity, std::optional<double> param = std::nullopt);

struct Fans {
  int64_t fan_in = 0;
  int64_t fan_out = 0;
};

// Fans of a shape under a convention. INVALID_ARGUMENT for fewer than 2 dimensions, a
// non-positive size, a fan that overflows int64 or a fan of 0.
absl::StatusOr<Fans> ComputeFans(absl::Span<const int64_t> shape, FanConvention convention);

// Checks that `init` can be applied to a tensor of `shape`: finite parameters, std >= 0
// (> 0 for trunc_normal), low <= high for uniform, low < high for trunc_normal, at least 2
// dimensions for xavier_*, kaiming_* and orthogonal, and a positive fan; exactly 2 for eye
// and sparse (sparsity in [0, 1]); 3 to 5 for dirac, whose groups (>= 1) divide size(0).
absl::Status ValidateInitializer(const Initializer& init, absl::Span<const int64_t> shape, FanConvention convention);

// Fills `tensor` (float32, CPU, contiguous) in place, drawing from `generator` exactly as
// torch.nn.init does from the default generator. Validates first; never throws.
absl::Status ApplyInitializer(at::Tensor& tensor, const Initializer& init, FanConvention convention,
                              at::Generator& generator);

// A one-line description, e.g. "kaiming_normal(a=0, mode=fan_in, nonlinearity=relu)".
std::string DescribeInitializer(const Initializer& init);

}  // namespace lstmserve::core
