// Element types and devices that parameter sets and LSTM calls can use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lstmserve::core {

// Element type of parameters and activations. float32 works everywhere; float16 and
// bfloat16 sets (weights and activations) only on CUDA. int8 is the element type of the
// weights of a set with int8 weight storage (parameter_set.h), never a set's dtype.
enum class DType { kFloat32, kFloat16, kBFloat16, kInt8 };

// Parses a set dtype: "float32" | "float16" | "bfloat16" (also "fp32", "fp16", "bf16").
absl::StatusOr<DType> ParseDType(absl::string_view name);
absl::string_view DTypeName(DType dtype);
c10::ScalarType ToScalarType(DType dtype);
absl::StatusOr<DType> FromScalarType(c10::ScalarType type);
int64_t DTypeSize(DType dtype);

// True when this LibTorch build can reach at least one CUDA device.
bool CudaAvailable();

// Resolves a device request: "cpu", "cuda", "cuda:N" or "auto" (CUDA device 0 when there is
// one, else CPU). A CUDA request on a build or machine without CUDA is FAILED_PRECONDITION,
// a malformed name INVALID_ARGUMENT, an index past the last GPU OUT_OF_RANGE.
absl::StatusOr<c10::Device> ResolveDevice(absl::string_view spec);

// The canonical name of a device ("cpu", "cuda:0").
std::string DeviceName(const c10::Device& device);

// OK when `dtype` can be a set's dtype on `device` (float16 and bfloat16 need CUDA; int8 is
// only ever a weight storage).
absl::Status CheckDTypeOnDevice(DType dtype, const c10::Device& device);

// The LibTorch this was built against ("1.13.0").
std::string LibTorchVersion();

// Waits until the device has finished all queued work (CUDA); nothing on the CPU. For
// benchmarks and tests that time or read device results.
void SynchronizeDevice(const c10::Device& device);

// Memory of LibTorch's CUDA caching allocator on a device, in bytes.
struct DeviceMemory {
  int64_t allocated_bytes = 0;  // in tensors now
  int64_t reserved_bytes = 0;   // held from the driver, allocated or cached
};
// Empty for the CPU and for builds without CUDA.
std::optional<DeviceMemory> DeviceMemoryStats(const c10::Device& device);

}  // namespace lstmserve::core
