// The parameter-set operations the front ends expose (create, list, import, analyze), over the
// set registry and the core, in the core's types. A front end converts its messages to these
// and back; it decides nothing here. Knows no wire type.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "lstmserve/core/diagnostics.h"
#include "lstmserve/core/initializer.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/engine/set_registry.h"

namespace lstmserve::server {

// `requested` when it is a valid set id (INVALID_ARGUMENT when not), or a new random id
// ("ps-" and 12 hex digits) when it is empty.
absl::StatusOr<std::string> SetIdOrNew(const std::string& requested);

// Initializes the set `spec` describes and stores it under `requested_id` (or a new id).
// `spec_record` is kept with the set as the front end gave it (its own encoding of the
// spec, read back by it). INVALID_ARGUMENT for a bad id or spec, RESOURCE_EXHAUSTED past
// `limits`, and the registry's errors.
absl::StatusOr<std::shared_ptr<const SetEntry>> CreateSet(SetRegistry& registry, const core::CreateLimits& limits,
                                                          const std::string& requested_id,
                                                          const core::ParameterSetSpec& spec, std::string spec_record);

// One page of the sets a registry holds, in id order.
struct SetPage {
  std::vector<std::shared_ptr<const SetEntry>> sets;
  std::string next_page_token;  // empty on the last page
};
inline constexpr int kDefaultPageSize = 100;
inline constexpr int kMaxPageSize = 1000;
// `page_size` 0 means kDefaultPageSize; `page_token` is empty or a next_page_token returned
// before. INVALID_ARGUMENT for anything else.
absl::StatusOr<SetPage> ListSets(SetRegistry& registry, int64_t page_size, absl::string_view page_token);

// An import's declaration: the set's tensors, sent before their bytes.
struct ImportTensor {
  std::string name;
  core::DType dtype = core::DType::kFloat32;
  std::vector<int64_t> shape;
};
struct ImportHeader {
  std::string requested_id;  // empty: a new id
  std::string checksum;      // empty: not checked
  core::WeightStorage storage = core::WeightStorage::kDType;
  std::vector<ImportTensor> tensors;
};
struct ImportLimits {
  int64_t max_tensors = 0;
  int64_t max_set_bytes = 0;
};

// A set arriving in pieces: a header, then each tensor's bytes in order. Nothing is stored
// before Finish, and nothing at all when any step fails. Not thread-safe (one import).
class SetImport {
 public:
  // Checks the header (names, dtypes for `registry`'s device and the storage, shapes, the
  // limits) and sets aside the tensors' memory. Field names in errors are the header's
  // ("header.tensors[1].dtype").
  static absl::StatusOr<std::unique_ptr<SetImport>> Begin(SetRegistry* registry, const ImportLimits& limits,
                                                          ImportHeader header);

  // The next `data` of tensor `index`, at byte `offset`: tensors in order, each tensor's
  // bytes in order, no gap and no overrun (INVALID_ARGUMENT otherwise).
  absl::Status Append(int64_t index, int64_t offset, absl::string_view data);

  // Checks that every byte came, that every value is finite, the weight-storage layout and
  // the checksum, then stores the set (the registry's errors).
  absl::StatusOr<std::shared_ptr<const SetEntry>> Finish();

 private:
  SetImport(SetRegistry* registry, ImportHeader header) : registry_(registry), header_(std::move(header)) {}

  SetRegistry* const registry_;
  const ImportHeader header_;
  std::string id_;
  std::vector<at::Tensor> buffers_;
  std::vector<int64_t> received_;  // bytes per tensor
  size_t next_tensor_ = 0;
};

// What an analysis asks for.
struct AnalyzeOptions {
  core::ProbeOptions probe;
  std::vector<std::string> tensors;   // a chain's weights, by name; empty: the set's own reading
  bool weight_storage_error = false;  // stacked LSTMs: the reduced storages' output error
  core::ChainOptions chain;           // `preferred` is set from the set's fan convention
};
struct SetAnalysis {
  std::vector<core::LstmLayerStats> lstm_layers;
  std::vector<core::StorageError> storage_errors;
  std::vector<core::ChainLayerStats> chain_layers;
};

// Analyzes `set`, made from `spec` when known (which sets the fan convention and lets a set
// with reduced weights be compared with its float32 original): as a stacked LSTM when its
// tensors form one and `options.tensors` is empty, otherwise as a chain of weights.
// INVALID_ARGUMENT / FAILED_PRECONDITION for what does not apply, RESOURCE_EXHAUSTED past
// the probe's work limit.
absl::StatusOr<SetAnalysis> AnalyzeSet(const core::ParameterSet& set, const std::optional<core::ParameterSetSpec>& spec,
                                       const core::CreateLimits& limits, AnalyzeOptions options);

// Analyzes the set `spec` would make, without storing it; the probe's cost is checked before
// any tensor is made.
absl::StatusOr<SetAnalysis> AnalyzeSpec(const core::ParameterSetSpec& spec, const core::CreateLimits& limits,
                                        AnalyzeOptions options);

}  // namespace lstmserve::server
