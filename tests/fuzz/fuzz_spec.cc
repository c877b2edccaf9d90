// libFuzzer: parameter-set spec validation: bytes -> ParameterSetSpec message -> the core's
// spec -> ValidateSpec under small limits -> CreateParameterSet. Properties: no crash or
// sanitizer finding; a spec that validates creates a set of exactly the validated tensors.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/v1/parameter_service.pb.h"
#include "lstmserve/wire/conversions.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lstmserve::v1::ParameterSetSpec message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto spec = lstmserve::wire::SpecFromProto(message);
  if (!spec.ok()) return 0;
  lstmserve::core::CreateLimits limits;
  limits.max_set_bytes = 1 << 16;
  limits.max_tensors = 16;
  limits.max_layers = 8;
  auto tensors = lstmserve::core::ValidateSpec(*spec, limits);
  if (!tensors.ok()) return 0;
  auto set = lstmserve::core::CreateParameterSet(*spec, limits);
  if (!set.ok()) {
    // Only what validation cannot see in advance may fail here (a dtype the CPU lacks).
    if (set.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  if (set->tensors.size() != tensors->size()) std::abort();
  for (size_t i = 0; i < tensors->size(); ++i) {
    if (set->tensors[i].name != (*tensors)[i].name) std::abort();
  }
  return 0;
}
