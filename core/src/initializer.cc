#include "lstmserve/core/initializer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/threads.h"

namespace lstmserve::core {
namespace {

constexpr std::pair<InitKind, absl::string_view> kInitNames[] = {
    {InitKind::kUniform, "uniform"},
    {InitKind::kNormal, "normal"},
    {InitKind::kConstant, "constant"},
    {InitKind::kZeros, "zeros"},
    {InitKind::kOnes, "ones"},
    {InitKind::kXavierUniform, "xavier_uniform"},
    {InitKind::kXavierNormal, "xavier_normal"},
    {InitKind::kKaimingUniform, "kaiming_uniform"},
    {InitKind::kKaimingNormal, "kaiming_normal"},
    {InitKind::kOrthogonal, "orthogonal"},
    {InitKind::kTruncNormal, "trunc_normal"},
    {InitKind::kEye, "eye"},
    {InitKind::kDirac, "dirac"},
    {InitKind::kSparse, "sparse"},
};

constexpr std::pair<Nonlinearity, absl::string_view> kNonlinearityNames[] = {
    {Nonlinearity::kLinear, "linear"},
    {Nonlinearity::kConv1d, "conv1d"},
    {Nonlinearity::kConv2d, "conv2d"},
    {Nonlinearity::kConv3d, "conv3d"},
    {Nonlinearity::kConvTranspose1d, "conv_transpose1d"},
    {Nonlinearity::kConvTranspose2d, "conv_transpose2d"},
    {Nonlinearity::kConvTranspose3d, "conv_transpose3d"},
    {Nonlinearity::kSigmoid, "sigmoid"},
    {Nonlinearity::kTanh, "tanh"},
    {Nonlinearity::kRelu, "relu"},
    {Nonlinearity::kLeakyRelu, "leaky_relu"},
    {Nonlinearity::kSelu, "selu"},
};

template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(const std::pair<Enum, absl::string_view> (&table)[N], absl::string_view name,
                               absl::string_view what) {
  std::string n = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (!n.empty() && n.back() == '_') n.pop_back();  // accept torch's "kaiming_normal_"
  for (const auto& [value, text] : table) {
    if (n == text) return value;
  }
  std::vector<absl::string_view> known;
  for (const auto& entry : table) known.push_back(entry.second);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name, "'; expected one of ", absl::StrJoin(known, ", ")));
}

template <typename Enum, size_t N>
absl::string_view NameOf(const std::pair<Enum, absl::string_view> (&table)[N], Enum value) {
  for (const auto& [v, text] : table) {
    if (v == value) return text;
  }
  return "unknown";
}

// torch's norm_cdf inside _no_grad_trunc_normal_, with the same operation order.
double NormCdf(double x) { return (1. + std::erf(x / std::sqrt(2.))) / 2.; }

bool NeedsFans(InitKind kind) {
  return kind == InitKind::kXavierUniform || kind == InitKind::kXavierNormal || kind == InitKind::kKaimingUniform ||
         kind == InitKind::kKaimingNormal;
}

// Every parameter must be finite and at most 1e30 in magnitude: the draws are float32
// (whose range ends at 3.4e38), and a bound or gain past that would overflow it (found by
// the fuzzer: a constant of 9e307 made the draw throw, which reached the caller as
// INTERNAL).
absl::Status CheckFinite(double v, absl::string_view field, const Initializer& init) {
  constexpr double kMaxMagnitude = 1e30;
  if (!std::isfinite(v) || std::abs(v) > kMaxMagnitude) {
    return absl::InvalidArgumentError(absl::StrCat(InitKindName(init.kind), ": ", field,
                                                   " must be a finite number of magnitude at most 1e30, got ", v));
  }
  return absl::OkStatus();
}

// MKL's thread-local thread count (the C entry point that mkl_service.h's
// mkl_set_num_threads_local names; the lower-case symbols are Fortran's, taking int*). Present
// when LibTorch carries MKL (PyPI's wheels), null otherwise (Debian's LibTorch calls OpenBLAS):
// a weak reference resolves to nothing.
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

// Makes LAPACK/BLAS calls on this thread single-threaded while it lives. The QR of OpenBLAS
// and of MKL gives different bits on 1 and 2 threads, so orthogonal runs on one thread
// whatever the process uses: the same seed then gives the same bits under any --threads
// setting, and equals PyTorch at 1 intra-op thread. OpenMP's thread count (OpenBLAS) and
// MKL's local count are per calling thread, so other threads' calls are not affected. MKL's
// local count is needed because LibTorch sets MKL's global count, which outranks OpenMP's.
class SingleThreadedLinearAlgebra {
 public:
  SingleThreadedLinearAlgebra() {
    // Were the thread's first ATen parallel call to happen inside the QR, it would undo the
    // pin below, and the first orthogonal set made on a fresh thread would get the
    // many-thread bits.
    InitThreadsOnThisThread();
#ifdef _OPENMP
    saved_omp_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    if (MKL_Set_Num_Threads_Local != nullptr) saved_mkl_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedLinearAlgebra() {
#ifdef _OPENMP
    omp_set_num_threads(saved_omp_);
#endif
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(saved_mkl_);  // 0: MKL's global count again
  }

 private:
  int saved_omp_ = 1;
  int saved_mkl_ = 0;
};

int64_t Fan(const Fans& fans, FanMode mode) { return mode == FanMode::kFanIn ? fans.fan_in : fans.fan_out; }

}  // namespace

Initializer Initializer::Uniform(double a, double b) {
  Initializer i;
  i.kind = InitKind::kUniform;
  i.low = a;
  i.high = b;
  return i;
}
Initializer Initializer::Normal(double mean, double std) {
  Initializer i;
  i.kind = InitKind::kNormal;
  i.mean = mean;
  i.std = std;
  return i;
}
Initializer Initializer::Constant(double value) {
  Initializer i;
  i.kind = InitKind::kConstant;
  i.value = value;
  return i;
}
Initializer Initializer::Zeros() {
  Initializer i;
  i.kind = InitKind::kZeros;
  return i;
}
Initializer Initializer::Ones() {
  Initializer i;
  i.kind = InitKind::kOnes;
  return i;
}
Initializer Initializer::XavierUniform(double gain) {
  Initializer i;
  i.kind = InitKind::kXavierUniform;
  i.gain = gain;
  return i;
}
Initializer Initializer::XavierNormal(double gain) {
  Initializer i;
  i.kind = InitKind::kXavierNormal;
  i.gain = gain;
  return i;
}
Initializer Initializer::KaimingUniform(double a, FanMode mode, Nonlinearity nonlinearity) {
  Initializer i;
  i.kind = InitKind::kKaimingUniform;
  i.negative_slope = a;
  i.mode = mode;
  i.nonlinearity = nonlinearity;
  return i;
}
Initializer Initializer::KaimingNormal(double a, FanMode mode, Nonlinearity nonlinearity) {
  Initializer i = KaimingUniform(a, mode, nonlinearity);
  i.kind = InitKind::kKaimingNormal;
  return i;
}
Initializer Initializer::Orthogonal(double gain) {
  Initializer i;
  i.kind = InitKind::kOrthogonal;
  i.gain = gain;
  return i;
}
Initializer Initializer::TruncNormal(double mean, double std, double a, double b) {
  Initializer i;
  i.kind = InitKind::kTruncNormal;
  i.mean = mean;
  i.std = std;
  i.low = a;
  i.high = b;
  return i;
}
Initializer Initializer::Eye() {
  Initializer i;
  i.kind = InitKind::kEye;
  return i;
}
Initializer Initializer::Dirac(int64_t groups) {
  Initializer i;
  i.kind = InitKind::kDirac;
  i.groups = groups;
  return i;
}
Initializer Initializer::Sparse(double sparsity, double std) {
  Initializer i;
  i.kind = InitKind::kSparse;
  i.sparsity = sparsity;
  i.std = std;
  return i;
}
Initializer Initializer::DefaultWeight() { return KaimingNormal(0.0, FanMode::kFanIn, Nonlinearity::kRelu); }
Initializer Initializer::DefaultBias() { return Constant(0.0); }

absl::StatusOr<InitKind> ParseInitKind(absl::string_view name) { return ParseName(kInitNames, name, "initializer"); }
absl::string_view InitKindName(InitKind kind) { return NameOf(kInitNames, kind); }
absl::StatusOr<Nonlinearity> ParseNonlinearity(absl::string_view name) {
  return ParseName(kNonlinearityNames, name, "nonlinearity");
}
absl::string_view NonlinearityName(Nonlinearity n) { return NameOf(kNonlinearityNames, n); }

absl::StatusOr<FanMode> ParseFanMode(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "fan_in") return FanMode::kFanIn;
  if (n == "fan_out") return FanMode::kFanOut;
  return absl::InvalidArgumentError(absl::StrCat("unknown fan mode '", name, "'; expected fan_in or fan_out"));
}
absl::string_view FanModeName(FanMode mode) { return mode == FanMode::kFanIn ? "fan_in" : "fan_out"; }
absl::StatusOr<FanConvention> ParseFanConvention(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "torch") return FanConvention::kTorch;
  if (n == "matmul") return FanConvention::kMatmul;
  return absl::InvalidArgumentError(absl::StrCat("unknown fan convention '", name, "'; expected torch or matmul"));
}
absl::string_view FanConventionName(FanConvention c) { return c == FanConvention::kTorch ? "torch" : "matmul"; }

double CalculateGain(Nonlinearity nonlinearity, std::optional<double> param) {
  switch (nonlinearity) {
    case Nonlinearity::kLinear:
    case Nonlinearity::kConv1d:
    case Nonlinearity::kConv2d:
    case Nonlinearity::kConv3d:
    case Nonlinearity::kConvTranspose1d:
    case Nonlinearity::kConvTranspose2d:
    case Nonlinearity::kConvTranspose3d:
    case Nonlinearity::kSigmoid: return 1.0;
    case Nonlinearity::kTanh: return 5.0 / 3;
    case Nonlinearity::kRelu: return std::sqrt(2.0);
    case Nonlinearity::kLeakyRelu: {
      const double slope = param.value_or(0.01);
      return std::sqrt(2.0 / (1 + std::pow(slope, 2.0)));
    }
    case Nonlinearity::kSelu: return 3.0 / 4;
  }
  return 1.0;
}

absl::StatusOr<Fans> ComputeFans(absl::Span<const int64_t> shape, FanConvention convention) {
  if (shape.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat("fan_in and fan_out need a tensor of at least 2 dimensions, got ",
                                                   shape.size(),
                                                   " (use uniform, normal, constant or trunc_normal for biases)"));
  }
  int64_t receptive = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("fan of 0: dimension ", d, " has size ", shape[d], "; every size must be >= 1"));
    }
    if (d >= 2 && __builtin_mul_overflow(receptive, shape[d], &receptive)) {
      return absl::InvalidArgumentError("receptive field size overflows int64");
    }
  }
  const int64_t rows = convention == FanConvention::kTorch ? shape[1] : shape[0];
  const int64_t cols = convention == FanConvention::kTorch ? shape[0] : shape[1];
  Fans fans;
  if (__builtin_mul_overflow(rows, receptive, &fans.fan_in) || __builtin_mul_overflow(cols, receptive, &fans.fan_out)) {
    return absl::InvalidArgumentError("fan overflows int64");
  }
  return fans;
}

absl::Status ValidateInitializer(const Initializer& init, absl::Span<const int64_t> shape, FanConvention convention) {
  const absl::string_view name = InitKindName(init.kind);
  switch (init.kind) {
    case InitKind::kUniform:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.low, "a", init));
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.high, "b", init));
      if (init.low > init.high) {
        return absl::InvalidArgumentError(absl::StrCat("uniform: a must be <= b, got a=", init.low, " b=", init.high));
      }
      break;
    case InitKind::kNormal:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.mean, "mean", init));
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.std, "std", init));
      if (init.std < 0) {
        return absl::InvalidArgumentError(absl::StrCat("normal: std must be >= 0, got ", init.std));
      }
      break;
    case InitKind::kConstant: LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.value, "value", init)); break;
    case InitKind::kZeros:
    case InitKind::kOnes: break;
    case InitKind::kXavierUniform:
    case InitKind::kXavierNormal:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.gain, "gain", init));
      // torch raises for these too: uniform_(-b, b) with b < 0, normal_ with std < 0
      // (found by fuzz_spec: a gain of -2.6e-231 passed validation and failed the draw).
      if (init.gain < 0) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": gain must be >= 0, got ", init.gain));
      }
      break;
    case InitKind::kOrthogonal: LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.gain, "gain", init)); break;
    case InitKind::kKaimingUniform:
    case InitKind::kKaimingNormal:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.negative_slope, "a (negative slope)", init));
      break;
    case InitKind::kTruncNormal:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.mean, "mean", init));
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.std, "std", init));
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.low, "a", init));
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.high, "b", init));
      if (init.std <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("trunc_normal: std must be > 0, got ", init.std));
      }
      if (init.low >= init.high) {
        return absl::InvalidArgumentError(
            absl::StrCat("trunc_normal: a must be < b, got a=", init.low, " b=", init.high));
      }
      break;
    case InitKind::kEye:
      if (shape.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat("eye needs a tensor of 2 dimensions, got ", shape.size()));
      }
      break;
    case InitKind::kDirac:
      if (shape.size() < 3 || shape.size() > 5) {
        return absl::InvalidArgumentError(
            absl::StrCat("dirac needs a tensor of 3, 4 or 5 dimensions, got ", shape.size()));
      }
      if (init.groups < 1 || shape[0] % init.groups != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("dirac: groups must be >= 1 and divide size(0) = ", shape[0], ", got ", init.groups));
      }
      break;
    case InitKind::kSparse:
      LSTMSERVE_RETURN_IF_ERROR(CheckFinite(init.std, "std", init));
      if (init.std < 0) return absl::InvalidArgumentError(absl::StrCat("sparse: std must be >= 0, got ", init.std));
      if (!(init.sparsity >= 0 && init.sparsity <= 1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sparse: sparsity (the fraction of each column zeroed) must be in [0, 1], got ", init.sparsity));
      }
      if (shape.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat("sparse needs a tensor of 2 dimensions, got ", shape.size()));
      }
      break;
  }
  if (init.kind == InitKind::kOrthogonal && shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("orthogonal needs a tensor of at least 2 dimensions, got ", shape.size()));
  }
  if (NeedsFans(init.kind)) {
    auto fans = ComputeFans(shape, convention);
    if (!fans.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", fans.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyInitializer(at::Tensor& tensor, const Initializer& init, FanConvention convention,
                              at::Generator& generator) {
  const std::vector<int64_t> shape = tensor.sizes().vec();
  LSTMSERVE_RETURN_IF_ERROR(ValidateInitializer(init, shape, convention));
  if (tensor.scalar_type() != at::kFloat || !tensor.device().is_cpu() || !tensor.is_contiguous()) {
    return absl::InternalError("ApplyInitializer needs a contiguous float32 CPU tensor");
  }
  return GuardTorch(absl::StrCat("initializer ", InitKindName(init.kind)), [&]() -> absl::Status {
    c10::NoGradGuard no_grad;
    // Each branch repeats torch/nn/init.py (1.13) operation for operation, in double.
    switch (init.kind) {
      case InitKind::kUniform: tensor.uniform_(init.low, init.high, generator); break;
      case InitKind::kNormal: tensor.normal_(init.mean, init.std, generator); break;
      case InitKind::kConstant: tensor.fill_(init.value); break;
      case InitKind::kZeros: tensor.zero_(); break;
      case InitKind::kOnes: tensor.fill_(1); break;
      case InitKind::kXavierUniform:
      case InitKind::kXavierNormal: {
        const Fans fans = *ComputeFans(shape, convention);
        const double std = init.gain * std::sqrt(2.0 / static_cast<double>(fans.fan_in + fans.fan_out));
        if (init.kind == InitKind::kXavierUniform) {
          const double a = std::sqrt(3.0) * std;
          tensor.uniform_(-a, a, generator);
        } else {
          tensor.normal_(0., std, generator);
        }
        break;
      }
      case InitKind::kKaimingUniform:
      case InitKind::kKaimingNormal: {
        const Fans fans = *ComputeFans(shape, convention);
        const double fan = static_cast<double>(Fan(fans, init.mode));
        const double gain = CalculateGain(init.nonlinearity, init.negative_slope);
        const double std = gain / std::sqrt(fan);
        if (init.kind == InitKind::kKaimingUniform) {
          const double bound = std::sqrt(3.0) * std;
          tensor.uniform_(-bound, bound, generator);
        } else {
          tensor.normal_(0, std, generator);
        }
        break;
      }
      case InitKind::kOrthogonal: {
        const int64_t rows = tensor.size(0);
        const int64_t cols = tensor.numel() / rows;
        at::Tensor flattened = at::empty({rows, cols}, tensor.options()).normal_(0, 1, generator);
        if (rows < cols) flattened.t_();
        SingleThreadedLinearAlgebra one_thread;
        auto qr = at::linalg_qr(flattened);
        at::Tensor q = std::get<0>(qr);
        const at::Tensor& r = std::get<1>(qr);
        const at::Tensor ph = at::diag(r, 0).sign();
        q.mul_(ph);
        if (rows < cols) q.t_();
        tensor.view_as(q).copy_(q);
        tensor.mul_(init.gain);
        break;
      }
      case InitKind::kTruncNormal: {
        const double l = NormCdf((init.low - init.mean) / init.std);
        const double u = NormCdf((init.high - init.mean) / init.std);
        tensor.uniform_(2 * l - 1, 2 * u - 1, generator);
        tensor.erfinv_();
        tensor.mul_(init.std * std::sqrt(2.));
        tensor.add_(init.mean);
        tensor.clamp_(init.low, init.high);
        break;
      }
      case InitKind::kEye: at::eye_out(tensor, shape[0], shape[1]); break;
      case InitKind::kDirac: {
        // tensor[g * per_group + d, d, k2 / 2, (k3 / 2, (k4 / 2))] = 1, all else 0.
        tensor.zero_();
        const int64_t per_group = shape[0] / init.groups;
        const int64_t min_dim = std::min(per_group, shape[1]);
        std::vector<int64_t> index(shape.size());
        for (size_t k = 2; k < shape.size(); ++k) index[k] = shape[k] / 2;
        const std::vector<int64_t> strides = tensor.strides().vec();
        float* data = tensor.data_ptr<float>();
        for (int64_t g = 0; g < init.groups; ++g) {
          for (int64_t d = 0; d < min_dim; ++d) {
            index[0] = g * per_group + d;
            index[1] = d;
            int64_t offset = 0;
            for (size_t k = 0; k < shape.size(); ++k) offset += index[k] * strides[k];
            data[offset] = 1.0f;
          }
        }
        break;
      }
      case InitKind::kSparse: {
        // normal_(0, std), then per column the rows of randperm(rows)[:ceil(sparsity * rows)]
        // set to 0, drawing in torch's order.
        const int64_t rows = shape[0];
        const auto num_zeros = static_cast<int64_t>(std::ceil(init.sparsity * static_cast<double>(rows)));
        tensor.normal_(0, init.std, generator);
        for (int64_t col = 0; col < shape[1]; ++col) {
          const at::Tensor perm = at::randperm(rows, generator, at::TensorOptions().dtype(at::kLong));
          tensor.index_put_({perm.slice(0, 0, num_zeros), col}, 0);
        }
        break;
      }
    }
    return absl::OkStatus();
  });
}

std::string DescribeInitializer(const Initializer& init) {
  const absl::string_view name = InitKindName(init.kind);
  switch (init.kind) {
    case InitKind::kUniform: return absl::StrFormat("%s(a=%g, b=%g)", name, init.low, init.high);
    case InitKind::kNormal: return absl::StrFormat("%s(mean=%g, std=%g)", name, init.mean, init.std);
    case InitKind::kConstant: return absl::StrFormat("%s(value=%g)", name, init.value);
    case InitKind::kZeros:
    case InitKind::kOnes: return std::string(name);
    case InitKind::kXavierUniform:
    case InitKind::kXavierNormal:
    case InitKind::kOrthogonal: return absl::StrFormat("%s(gain=%g)", name, init.gain);
    case InitKind::kKaimingUniform:
    case InitKind::kKaimingNormal:
      return absl::StrFormat("%s(a=%g, mode=%s, nonlinearity=%s)", name, init.negative_slope, FanModeName(init.mode),
                             NonlinearityName(init.nonlinearity));
    case InitKind::kTruncNormal:
      return absl::StrFormat("%s(mean=%g, std=%g, a=%g, b=%g)", name, init.mean, init.std, init.low, init.high);
    case InitKind::kEye: return std::string(name);
    case InitKind::kDirac: return absl::StrFormat("%s(groups=%d)", name, init.groups);
    case InitKind::kSparse: return absl::StrFormat("%s(sparsity=%g, std=%g)", name, init.sparsity, init.std);
  }
  return std::string(name);
}

}  // namespace lstmserve::core
