#include "lstmserve/core/tensor_bytes.h"

#include <cmath>
#include <cstring>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"

namespace lstmserve::core {

absl::StatusOr<int64_t> CheckShape(absl::Span<const int64_t> shape, absl::string_view field, int64_t max_elements) {
  if (shape.empty() || shape.size() > 8) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape has rank ", shape.size(), "; expected 1 to 8"));
  }
  int64_t count = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape[", d, "] is ", shape[d], "; sizes must be >= 1"));
    }
    if (__builtin_mul_overflow(count, shape[d], &count)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape [", absl::StrJoin(shape, ", "), "] has more elements than an int64 counts"));
    }
  }
  if (count > max_elements) {
    return absl::ResourceExhaustedError(absl::StrCat(field, ".shape [", absl::StrJoin(shape, ", "), "] has ", count,
                                                     " elements; it exceeds the limit of ", max_elements, " elements"));
  }
  return count;
}

absl::StatusOr<at::Tensor> TensorFromBytes(DType dtype, absl::Span<const int64_t> shape, absl::string_view bytes,
                                           absl::string_view field, int64_t max_elements) {
  LSTMSERVE_ASSIGN_OR_RETURN(int64_t count, CheckShape(shape, field, max_elements));
  const int64_t expected_bytes = count * DTypeSize(dtype);
  if (static_cast<int64_t>(bytes.size()) != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".data has ", bytes.size(), " bytes; shape [",
                                                   absl::StrJoin(shape, ", "), "] of ", DTypeName(dtype), " needs ",
                                                   expected_bytes));
  }
  return GuardTorch(field, [&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor out =
        at::empty(std::vector<int64_t>(shape.begin(), shape.end()), at::TensorOptions().dtype(ToScalarType(dtype)));
    std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
    bool finite = true;
    if (dtype == DType::kFloat32) {
      const float* p = out.data_ptr<float>();
      for (int64_t i = 0; i < count && finite; ++i) finite = std::isfinite(p[i]);
    } else {
      finite = at::isfinite(out).all().item<bool>();
    }
    if (!finite) {
      return absl::InvalidArgumentError(absl::StrCat(field, " contains NaN or infinity; values must be finite"));
    }
    return out;
  });
}

std::string TensorBytes(const at::Tensor& tensor) {
  const at::Tensor cpu = tensor.contiguous().cpu();
  return std::string(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
}

}  // namespace lstmserve::core
