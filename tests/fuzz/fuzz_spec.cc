// libFuzzer: parameter-set spec validation: bytes -> ParameterSetSpec message -> the core's
// spec -> ValidateSpec under small limits -> CreateParameterSet. Properties: no crash or
// sanitizer finding; a spec that validates creates a set of exactly the validated tensors
// (with int8 weight storage, plus one scale per layer), in a layout ValidateWeightStorage
// accepts.
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
  // Exactly the validated tensors, in order; int8 weight storage adds one scale per layer
  // (w_<l>.scale) and nothing else. The layout is what ValidateWeightStorage accepts.
  const bool int8 = spec->weight_storage == lstmserve::core::WeightStorage::kInt8;
  size_t next = 0, scales = 0;
  for (const auto& t : set->tensors) {
    if (int8 && t.name == lstmserve::core::LstmScaleName(static_cast<int64_t>(scales))) {
      ++scales;
      continue;
    }
    if (next >= tensors->size() || t.name != (*tensors)[next].name) std::abort();
    ++next;
  }
  if (next != tensors->size()) std::abort();
  if (int8 && static_cast<int64_t>(scales) != spec->lstm->num_layers) std::abort();
  if (!lstmserve::core::ValidateWeightStorage(*set).ok()) std::abort();
  return 0;
}
