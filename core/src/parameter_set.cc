#include "lstmserve/core/parameter_set.h"

#include <unordered_set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "lstmserve/core/status.h"

namespace lstmserve::core {
namespace {

constexpr size_t kMaxNameBytes = 128;

bool NameChar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_' || ch == '.' || ch == ':' || ch == '/' || ch == '-';
}

absl::Status ValidateTemplate(const LstmTemplate& t, const CreateLimits& limits) {
  auto positive = [](int64_t v, absl::string_view field) -> absl::Status {
    if (v < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("lstm template: ", field, " must be >= 1, got ", v));
    }
    return absl::OkStatus();
  };
  LSTMSERVE_RETURN_IF_ERROR(positive(t.num_layers, "num_layers"));
  LSTMSERVE_RETURN_IF_ERROR(positive(t.input_size, "input_size"));
  LSTMSERVE_RETURN_IF_ERROR(positive(t.hidden_size, "hidden_size"));
  if (t.num_layers > limits.max_layers) {
    return absl::ResourceExhaustedError(absl::StrCat("lstm template: num_layers ", t.num_layers,
                                                   " exceeds the limit of ", limits.max_layers));
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

}  // namespace

const at::Tensor* ParameterSet::Find(absl::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t.value;
  }
  return nullptr;
}

std::string LstmWeightName(int64_t layer) { return absl::StrCat("w_", layer); }
std::string LstmBiasName(int64_t layer) { return absl::StrCat("b_", layer); }

std::vector<TensorSpec> ExpandLstmTemplate(const LstmTemplate& lstm) {
  std::vector<TensorSpec> specs;
  const int64_t h = lstm.hidden_size;
  for (int64_t l = 0; l < lstm.num_layers; ++l) {
    specs.push_back({LstmWeightName(l), {(l == 0 ? lstm.input_size : h) + h, 4 * h},
                     lstm.weight_init});
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
    return absl::InvalidArgumentError(absl::StrCat("tensor name '", ClientText(name, 32),
                                                   "' is longer than ", kMaxNameBytes,
                                                   " bytes"));
  }
  for (char ch : name) {
    if (!NameChar(ch)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name '", ClientText(name), "' has a character outside [A-Za-z0-9_.:/-]"));
    }
  }
  if (absl::StrContains(name, "..")) {
    return absl::InvalidArgumentError(absl::StrCat("tensor name '", name, "' contains '..'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TensorSpec>> ValidateSpec(const ParameterSetSpec& spec,
                                                     const CreateLimits& limits) {
  if (spec.lstm.has_value() == !spec.tensors.empty()) {
    return absl::InvalidArgumentError(
        "a parameter set spec needs exactly one of: the lstm template, or a list of tensors");
  }
  if (spec.lstm) LSTMSERVE_RETURN_IF_ERROR(ValidateTemplate(*spec.lstm, limits));
  std::vector<TensorSpec> tensors = spec.lstm ? ExpandLstmTemplate(*spec.lstm) : spec.tensors;
  if (static_cast<int64_t>(tensors.size()) > limits.max_tensors) {
    return absl::ResourceExhaustedError(absl::StrCat("the set has ", tensors.size(),
                                                   " tensors; the limit is ", limits.max_tensors));
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
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': shape must have at least 1 dimension"));
    }
    if (static_cast<int64_t>(t.shape.size()) > limits.max_rank) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': rank ",
                                                     t.shape.size(), " exceeds the limit of ",
                                                     limits.max_rank));
    }
    int64_t bytes = element_size;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] < 1) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': dimension ", d,
                                                       " has size ", t.shape[d],
                                                       "; every size must be >= 1"));
      }
      if (__builtin_mul_overflow(bytes, t.shape[d], &bytes)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", t.name, "': shape [", absl::StrJoin(t.shape, ", "), "] overflows int64"));
      }
    }
    if (__builtin_add_overflow(total_bytes, bytes, &total_bytes) ||
        total_bytes > limits.max_set_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the set would exceed the limit of ", limits.max_set_bytes, " bytes (at tensor '",
          t.name, "' of ", bytes, " bytes)"));
    }
    absl::Status init_ok = ValidateInitializer(t.init, t.shape, spec.fan_convention);
    if (!init_ok.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", init_ok.message()));
    }
  }
  return tensors;
}

absl::StatusOr<ParameterSet> CreateParameterSet(const ParameterSetSpec& spec,
                                                const CreateLimits& limits,
                                                const c10::Device& device) {
  LSTMSERVE_RETURN_IF_ERROR(CheckDTypeOnDevice(spec.dtype, device));
  LSTMSERVE_ASSIGN_OR_RETURN(std::vector<TensorSpec> tensors, ValidateSpec(spec, limits));
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

}  // namespace lstmserve::core
