#include "lstmserve/core/parameter_set.h"

#include <unordered_set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"

namespace lstmserve::core {
namespace {

constexpr size_t kMaxNameBytes = 128;

bool NameChar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
         ch == ':' || ch == '/' || ch == '-';
}

absl::Status ValidateTemplate(const LstmTemplate& t, const CreateLimits& limits) {
  auto positive = [](int64_t v, absl::string_view field) -> absl::Status {
    if (v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("lstm template: ", field, " must be >= 1, got ", v));
    }
    return absl::OkStatus();
  };
  LSTMSERVE_RETURN_IF_ERROR(positive(t.num_layers, "num_layers"));
  LSTMSERVE_RETURN_IF_ERROR(positive(t.input_size, "input_size"));
  LSTMSERVE_RETURN_IF_ERROR(positive(t.hidden_size, "hidden_size"));
  if (t.num_layers > limits.max_layers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("lstm template: num_layers ", t.num_layers, " exceeds the limit of ", limits.max_layers));
  }
  // 4 * H and in + H must not overflow before the per-tensor checks multiply them.
  int64_t gates = 0;
  int64_t rows = 0;
  if (__builtin_mul_overflow(t.hidden_size, int64_t{4}, &gates) ||
      __builtin_add_overflow(std::max(t.input_size, t.hidden_size), t.hidden_size, &rows)) {
    return absl::InvalidArgumentError("lstm template: sizes overflow int64");
  }
  return absl::OkStatus();
}

absl::StatusOr<ParameterSet> CreateFullSet(const ParameterSetSpec& spec, std::vector<TensorSpec> tensors,
                                           const c10::Device& device);

}  // namespace

const at::Tensor* ParameterSet::Find(absl::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t.value;
  }
  return nullptr;
}

std::string LstmWeightName(int64_t layer) { return absl::StrCat("w_", layer); }
std::string LstmBiasName(int64_t layer) { return absl::StrCat("b_", layer); }
std::string LstmScaleName(int64_t layer) { return absl::StrCat("w_", layer, ".scale"); }

absl::StatusOr<WeightStorage> ParseWeightStorage(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n.empty() || n == "dtype" || n == "float32" || n == "fp32" || n == "full") return WeightStorage::kDType;
  if (n == "bfloat16" || n == "bf16") return WeightStorage::kBFloat16;
  if (n == "int8") return WeightStorage::kInt8;
  return absl::InvalidArgumentError(absl::StrCat("unknown weight storage '", ClientText(name),
                                                 "'; expected dtype (the set's own), bfloat16 or int8"));
}

absl::string_view WeightStorageName(WeightStorage storage) {
  switch (storage) {
    case WeightStorage::kDType: return "dtype";
    case WeightStorage::kBFloat16: return "bfloat16";
    case WeightStorage::kInt8: return "int8";
  }
  return "unknown";
}

absl::StatusOr<ParameterSet> ReduceWeights(const ParameterSet& set, WeightStorage storage) {
  if (storage == WeightStorage::kDType) return set;
  if (set.weight_storage != WeightStorage::kDType) {
    return absl::InvalidArgumentError("the set's weights are already stored reduced");
  }
  if (set.dtype != DType::kFloat32 || set.tensors.empty() || !set.tensors.front().value.device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight storage ", WeightStorageName(storage), " needs a float32 set on the CPU"));
  }
  if (set.Find(LstmWeightName(0)) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight storage ", WeightStorageName(storage), " needs a stacked-LSTM set (tensors w_0, ...)"));
  }
  return GuardTorch("reduce weights", [&]() -> absl::StatusOr<ParameterSet> {
    ParameterSet out;
    out.lstm = set.lstm;
    out.dtype = set.dtype;
    out.weight_storage = storage;
    std::vector<NamedTensor> scales;
    std::vector<NamedTensor> rest;
    int64_t layers = 0;
    while (set.Find(LstmWeightName(layers)) != nullptr) ++layers;
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor w = set.Find(LstmWeightName(l))->contiguous();
      if (storage == WeightStorage::kBFloat16) {
        out.tensors.push_back({LstmWeightName(l), w.to(at::kBFloat16).contiguous()});
        continue;
      }
      const at::Tensor scale = w.abs().amax(0).div_(127.0f);
      const at::Tensor q = at::where(scale > 0, at::round(w / scale), at::zeros({}, w.options()))
                               .clamp_(-127, 127)
                               .to(at::kChar)
                               .contiguous();
      out.tensors.push_back({LstmWeightName(l), q});
      scales.push_back({LstmScaleName(l), scale.contiguous()});
    }
    for (auto& t : scales) out.tensors.push_back(std::move(t));
    for (const auto& t : set.tensors) {
      if (out.Find(t.name) == nullptr) out.tensors.push_back(t);
    }
    for (const auto& t : out.tensors) out.byte_size += static_cast<int64_t>(t.value.nbytes());
    LSTMSERVE_RETURN_IF_ERROR(ValidateWeightStorage(out));
    return out;
  });
}

absl::Status ValidateWeightStorage(const ParameterSet& set) {
  if (set.weight_storage == WeightStorage::kDType) {
    if (set.dtype == DType::kInt8)
      return absl::InvalidArgumentError("int8 is not a set dtype; use weight storage int8");
    for (const auto& t : set.tensors) {
      if (t.value.scalar_type() != ToScalarType(set.dtype)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", t.name, "' is ", c10::toString(t.value.scalar_type()), "; every tensor of the set must be ",
            DTypeName(set.dtype), " (or give the set a weight storage)"));
      }
    }
    return absl::OkStatus();
  }
  const absl::string_view storage = WeightStorageName(set.weight_storage);
  const at::ScalarType weight_type = set.weight_storage == WeightStorage::kInt8 ? at::kChar : at::kBFloat16;
  if (set.dtype != DType::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight storage ", storage, " needs a float32 set, not ", DTypeName(set.dtype)));
  }
  const at::Tensor* w0 = set.Find(LstmWeightName(0));
  if (w0 == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight storage ", storage, " needs a stacked-LSTM set; w_0 is missing"));
  }
  std::unordered_set<std::string> weights;
  for (int64_t l = 0; const at::Tensor* w = set.Find(LstmWeightName(l)); ++l) {
    const std::string name = LstmWeightName(l);
    weights.insert(name);
    if (w->scalar_type() != weight_type || w->dim() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' must be a 2-D ", c10::toString(weight_type),
                                                     " tensor in a set with weight storage ", storage, "; got ",
                                                     c10::toString(w->scalar_type()), " of rank ", w->dim()));
    }
    if (set.weight_storage != WeightStorage::kInt8) continue;
    const std::string scale_name = LstmScaleName(l);
    weights.insert(scale_name);
    const at::Tensor* scale = set.Find(scale_name);
    if (scale == nullptr || scale->scalar_type() != at::kFloat || scale->dim() != 1 || scale->size(0) != w->size(1)) {
      return absl::InvalidArgumentError(absl::StrCat("a set with int8 weights needs '", scale_name, "': float32 [",
                                                     w->size(1), "], one scale per column of ", name));
    }
    if (!(scale->ge(0).all().item<bool>() && at::isfinite(*scale).all().item<bool>())) {
      return absl::InvalidArgumentError(absl::StrCat("'", scale_name, "' must hold finite scales >= 0"));
    }
  }
  for (const auto& t : set.tensors) {
    if (!t.value.device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("weight storage ", storage, " is computed on the CPU; tensor '",
                                                     t.name, "' is on ", DeviceName(t.value.device())));
    }
    if (weights.count(t.name) == 0 && t.value.scalar_type() != at::kFloat) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' is ", c10::toString(t.value.scalar_type()),
                       "; only the weights w_<l> are stored reduced, the rest is float32"));
    }
  }
  return absl::OkStatus();
}

WeightStorage InferWeightStorage(const std::vector<NamedTensor>& tensors) {
  bool int8 = false, bf16 = false, f32 = false;
  for (const auto& t : tensors) {
    int8 |= t.value.scalar_type() == at::kChar;
    bf16 |= t.value.scalar_type() == at::kBFloat16;
    f32 |= t.value.scalar_type() == at::kFloat;
  }
  if (int8) return WeightStorage::kInt8;
  return bf16 && f32 ? WeightStorage::kBFloat16 : WeightStorage::kDType;
}

at::Tensor DequantizeWeight(const at::Tensor& weight, const at::Tensor* scale) {
  if (weight.scalar_type() == at::kChar) return weight.to(at::kFloat).mul_(*scale);
  return weight.to(at::kFloat);
}

std::vector<TensorSpec> ExpandLstmTemplate(const LstmTemplate& lstm) {
  std::vector<TensorSpec> specs;
  const int64_t h = lstm.hidden_size;
  for (int64_t l = 0; l < lstm.num_layers; ++l) {
    specs.push_back({LstmWeightName(l), {(l == 0 ? lstm.input_size : h) + h, 4 * h}, lstm.weight_init});
  }
  if (lstm.bias) {
    for (int64_t l = 0; l < lstm.num_layers; ++l) {
      specs.push_back({LstmBiasName(l), {4 * h}, lstm.bias_init});
    }
  }
  return specs;
}

absl::Status ValidateTensorName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("tensor name must not be empty");
  if (name.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor name '", ClientText(name, 32), "' is longer than ", kMaxNameBytes, " bytes"));
  }
  for (char ch : name) {
    if (!NameChar(ch)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name '", ClientText(name), "' has a character outside [A-Za-z0-9_.:/-]"));
    }
  }
  if (absl::StrContains(name, "..")) {
    return absl::InvalidArgumentError(absl::StrCat("tensor name '", name, "' contains '..'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TensorSpec>> ValidateSpec(const ParameterSetSpec& spec, const CreateLimits& limits) {
  if (spec.lstm.has_value() == !spec.tensors.empty()) {
    return absl::InvalidArgumentError(
        "a parameter set spec needs exactly one of: the lstm template, or a list of tensors");
  }
  if (spec.lstm) LSTMSERVE_RETURN_IF_ERROR(ValidateTemplate(*spec.lstm, limits));
  if (spec.weight_storage != WeightStorage::kDType) {
    if (!spec.lstm) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight storage ", WeightStorageName(spec.weight_storage),
                       " is for stacked-LSTM sets (the lstm template), not tensor lists"));
    }
    if (spec.dtype != DType::kFloat32) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight storage ", WeightStorageName(spec.weight_storage),
                       " needs dtype float32 (inputs, states and math stay float32), not ", DTypeName(spec.dtype)));
    }
  }
  std::vector<TensorSpec> tensors = spec.lstm ? ExpandLstmTemplate(*spec.lstm) : spec.tensors;
  if (static_cast<int64_t>(tensors.size()) > limits.max_tensors) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the set has ", tensors.size(), " tensors; the limit is ", limits.max_tensors));
  }
  std::unordered_set<std::string> names;
  const int64_t element_size = DTypeSize(spec.dtype);
  int64_t total_bytes = 0;
  for (const TensorSpec& t : tensors) {
    LSTMSERVE_RETURN_IF_ERROR(ValidateTensorName(t.name));
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor name '", t.name, "' is used twice"));
    }
    if (t.shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': shape must have at least 1 dimension"));
    }
    if (static_cast<int64_t>(t.shape.size()) > limits.max_rank) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': rank ", t.shape.size(), " exceeds the limit of ", limits.max_rank));
    }
    int64_t bytes = element_size;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] < 1) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': dimension ", d, " has size ", t.shape[d],
                                                       "; every size must be >= 1"));
      }
      if (__builtin_mul_overflow(bytes, t.shape[d], &bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "': shape [", absl::StrJoin(t.shape, ", "), "] overflows int64"));
      }
    }
    if (__builtin_add_overflow(total_bytes, bytes, &total_bytes) || total_bytes > limits.max_set_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the set would exceed the limit of ", limits.max_set_bytes,
                                                       " bytes (at tensor '", t.name, "' of ", bytes, " bytes)"));
    }
    absl::Status init_ok = ValidateInitializer(t.init, t.shape, spec.fan_convention);
    if (!init_ok.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", init_ok.message()));
    }
  }
  return tensors;
}

absl::StatusOr<ParameterSet> CreateParameterSet(const ParameterSetSpec& spec, const CreateLimits& limits,
                                                const c10::Device& device) {
  LSTMSERVE_RETURN_IF_ERROR(CheckDTypeOnDevice(spec.dtype, device));
  LSTMSERVE_ASSIGN_OR_RETURN(std::vector<TensorSpec> tensors, ValidateSpec(spec, limits));
  if (spec.weight_storage != WeightStorage::kDType && !device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight storage ", WeightStorageName(spec.weight_storage), " runs on the CPU kernels; this set would be on ",
        DeviceName(device), " (use dtype bfloat16 or float16 for reduced precision on CUDA)"));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(ParameterSet full, CreateFullSet(spec, std::move(tensors), device));
  return ReduceWeights(full, spec.weight_storage);
}

namespace {
absl::StatusOr<ParameterSet> CreateFullSet(const ParameterSetSpec& spec, std::vector<TensorSpec> tensors,
                                           const c10::Device& device) {
  return GuardTorch("create parameter set", [&]() -> absl::StatusOr<ParameterSet> {
    // A generator of its own: same seed, same draws, whatever other threads do.
    at::Generator generator = at::detail::createCPUGenerator(spec.seed);
    ParameterSet set;
    set.lstm = spec.lstm;
    set.dtype = spec.dtype;
    const at::ScalarType target = ToScalarType(spec.dtype);
    for (TensorSpec& t : tensors) {
      at::Tensor value = at::empty(t.shape, at::TensorOptions().dtype(at::kFloat));
      LSTMSERVE_RETURN_IF_ERROR(ApplyInitializer(value, t.init, spec.fan_convention, generator));
      if (target != at::kFloat || !device.is_cpu()) value = value.to(device, target).contiguous();
      // Values past the dtype's range (a constant of 1e6 in float16) would be stored as
      // infinities.
      if (!at::isfinite(value).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': its values overflow ",
                                                       DTypeName(spec.dtype), "; use a smaller scale"));
      }
      set.byte_size += value.numel() * DTypeSize(spec.dtype);
      set.tensors.push_back({std::move(t.name), std::move(value)});
    }
    return set;
  });
}
}  // namespace

}  // namespace lstmserve::core
