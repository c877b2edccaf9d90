// Tensors from the bytes a wire carries, whatever the protocol: one check of shape, size and
// values for lstmserve.v1 and the Open Inference Protocol (gRPC and HTTP).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

#include "lstmserve/core/device.h"

namespace lstmserve::core {

// Checks a shape from a request: rank 1..8 and sizes >= 1 (else INVALID_ARGUMENT naming
// `field`), product <= max_elements (else RESOURCE_EXHAUSTED). Returns the element count.
absl::StatusOr<int64_t> CheckShape(absl::Span<const int64_t> shape, absl::string_view field, int64_t max_elements);

// A host tensor of `dtype` and `shape` from row-major little-endian `bytes` (copied).
// INVALID_ARGUMENT (naming `field`) when the shape is bad, the byte count disagrees with
// shape and dtype, or a value is NaN or infinite (inputs must be finite);
// RESOURCE_EXHAUSTED past max_elements.
absl::StatusOr<at::Tensor> TensorFromBytes(DType dtype, absl::Span<const int64_t> shape, absl::string_view bytes,
                                           absl::string_view field, int64_t max_elements);

// The bytes of a tensor (any device), row-major little-endian.
std::string TensorBytes(const at::Tensor& tensor);

}  // namespace lstmserve::core
