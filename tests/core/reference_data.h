// Reference values from ../shared/reference/common_ops.py, made by
// tests/reference/make_reference.py and read back with torch::jit::pickle_load.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/ivalue.h>

#include "absl/status/statusor.h"

#include "lstmserve/core/initializer.h"

namespace lstmserve::testing {

// Loads the reference dict. Uses the file named by $LSTMSERVE_REFERENCE_FILE when set
// (for vectors regenerated independently), else runs make_reference.py once per process.
absl::StatusOr<c10::IValue> LoadReference();

// Accessors that fail loudly on a malformed file. The file stores a dict as a tuple of
// (key, value) pairs and a list as a tuple (see make_reference.py).
c10::IValue Field(const c10::IValue& dict, const std::string& key);
bool Has(const c10::IValue& dict, const std::string& key);
double AsDouble(const c10::IValue& v);
// Elements of a tuple (the file stores every Python list as a tuple).
std::vector<c10::IValue> Items(const c10::IValue& v);
std::vector<int64_t> Ints(const c10::IValue& v);
// A seed, stored as a decimal string.
uint64_t Seed(const c10::IValue& v);

// Maps torch.nn.init's name and keyword arguments ("a", "b", "mean", "std", "val", "gain",
// "mode", "nonlinearity") to the core's Initializer, with torch's defaults.
absl::StatusOr<core::Initializer> InitializerFromTorchCall(const std::string& name, const c10::IValue& kwargs);

}  // namespace lstmserve::testing
