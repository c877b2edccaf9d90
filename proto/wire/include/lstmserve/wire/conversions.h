// The one place where wire messages and core values meet: tensors, specs, statuses.
// Shared by the server and the clients.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "lstmserve/core/device.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/v1/parameter_service.pb.h"
#include "lstmserve/v1/tensor.pb.h"

namespace lstmserve::wire {

// The one mapping between absl::Status and grpc::Status (the codes are the same numbers).
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

absl::StatusOr<core::DType> DTypeFromProto(v1::DataType dtype, absl::string_view field);
v1::DataType DTypeToProto(core::DType dtype);
// INVALID_ARGUMENT (naming `field`) for values out of range.
absl::StatusOr<core::WeightStorage> WeightStorageFromProto(v1::WeightStorage storage, absl::string_view field);
v1::WeightStorage WeightStorageToProto(core::WeightStorage storage);

// Decodes a wire tensor. INVALID_ARGUMENT (naming `field`) when the dtype is unset or is
// not `expected`, a size is < 1, the data length disagrees with shape and dtype, or a value
// is NaN or infinite (inputs must be finite); RESOURCE_EXHAUSTED when the element count
// exceeds `max_elements` (a server limit).
absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& tensor, absl::string_view field, core::DType expected,
                                           int64_t max_elements, const c10::Device& device);

// Encodes a tensor (any device) as row-major little-endian bytes.
void TensorToProto(const at::Tensor& tensor, v1::Tensor* out);

// The wire spec as the core's spec. INVALID_ARGUMENT for enum values out of range.
absl::StatusOr<core::ParameterSetSpec> SpecFromProto(const v1::ParameterSetSpec& spec);

}  // namespace lstmserve::wire
