#include "lstmserve/core/device.h"

#include <ATen/Context.h>
#include <torch/version.h>
#ifdef LSTMSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lstmserve::core {

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "fp32" || n == "float") return DType::kFloat32;
  if (n == "float16" || n == "fp16" || n == "half") return DType::kFloat16;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'; expected float32, float16 or bfloat16"));
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt8: return "int8";
  }
  return "unknown";
}

c10::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return c10::kFloat;
    case DType::kFloat16: return c10::kHalf;
    case DType::kBFloat16: return c10::kBFloat16;
    case DType::kInt8: return c10::kChar;
  }
  return c10::kFloat;
}

absl::StatusOr<DType> FromScalarType(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat: return DType::kFloat32;
    case c10::kHalf: return DType::kFloat16;
    case c10::kBFloat16: return DType::kBFloat16;
    case c10::kChar: return DType::kInt8;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unsupported tensor dtype ", c10::toString(type),
                                                     "; expected float32, float16, bfloat16 or int8"));
  }
}

int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kInt8: return 1;
  }
  return 4;
}

bool CudaAvailable() { return at::hasCUDA() && at::getNumGPUs() > 0; }

absl::StatusOr<c10::Device> ResolveDevice(absl::string_view spec) {
  const std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(spec));
  if (s == "cpu") return c10::Device(c10::kCPU);
  if (s == "auto") {
    return CudaAvailable() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  }
  absl::string_view rest = s;
  if (!absl::ConsumePrefix(&rest, "cuda")) {
    return absl::InvalidArgumentError(absl::StrCat("unknown device '", spec, "'; expected auto, cpu, cuda or cuda:N"));
  }
  int index = 0;
  if (!rest.empty()) {
    if (!absl::ConsumePrefix(&rest, ":") || !absl::SimpleAtoi(rest, &index) || index < 0 || index > 127) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed device '", spec, "'; expected cuda or cuda:N with N >= 0"));
    }
  }
  if (!at::hasCUDA()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", spec,
                     "' requested, but this build of lstmserve has no CUDA (LibTorch is CPU-only or no "
                     "driver is present); use --device=cpu or a CUDA build"));
  }
  const int64_t gpus = static_cast<int64_t>(at::getNumGPUs());
  if (index >= gpus) {
    return absl::OutOfRangeError(
        absl::StrCat("device '", spec, "' requested, but only ", gpus, " CUDA device(s) exist"));
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

std::string DeviceName(const c10::Device& device) {
  if (device.is_cpu()) return "cpu";
  return absl::StrCat(c10::DeviceTypeName(device.type(), /*lower_case=*/true), ":",
                      device.has_index() ? device.index() : 0);
}

absl::Status CheckDTypeOnDevice(DType dtype, const c10::Device& device) {
  if (dtype == DType::kInt8) {
    return absl::InvalidArgumentError(
        "int8 is not a set dtype; a set of float32 can store its LSTM weights in int8 (weight_storage)");
  }
  if (dtype != DType::kFloat32 && !device.is_cuda()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype ", DTypeName(dtype), " is supported on CUDA only; use float32 on ", DeviceName(device),
        dtype == DType::kBFloat16 ? " (a float32 LSTM set can store its weights in bfloat16 there: weight_storage)"
                                  : ""));
  }
  return absl::OkStatus();
}

std::string LibTorchVersion() { return TORCH_VERSION; }

void SynchronizeDevice(const c10::Device& device) {
#ifdef LSTMSERVE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)device;
}

std::optional<DeviceMemory> DeviceMemoryStats(const c10::Device& device) {
#ifdef LSTMSERVE_WITH_CUDA
  if (device.is_cuda() && CudaAvailable()) {
    // Index 0 of each stat array is the aggregate over pools, in every LibTorch since 1.x.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    DeviceMemory memory;
    memory.allocated_bytes = stats.allocated_bytes[0].current;
    memory.reserved_bytes = stats.reserved_bytes[0].current;
    return memory;
  }
#endif
  (void)device;
  return std::nullopt;
}

}  // namespace lstmserve::core
