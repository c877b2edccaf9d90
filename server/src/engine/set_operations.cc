#include "lstmserve/server/engine/set_operations.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <set>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/tensor_bytes.h"

namespace lstmserve::server {
namespace {

constexpr absl::string_view kPageTokenPrefix = "after:";

std::string NewSetId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat("ps-", absl::Hex(rng() & 0xffffffffffffULL, absl::kZeroPad12));
}

}  // namespace

absl::StatusOr<std::string> SetIdOrNew(const std::string& requested) {
  if (requested.empty()) return NewSetId();
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(requested));
  return requested;
}

absl::StatusOr<std::shared_ptr<const SetEntry>> CreateSet(SetRegistry& registry, const core::CreateLimits& limits,
                                                          const std::string& requested_id,
                                                          const core::ParameterSetSpec& spec, std::string spec_record) {
  LSTMSERVE_ASSIGN_OR_RETURN(std::string id, SetIdOrNew(requested_id));
  LSTMSERVE_RETURN_IF_ERROR(core::CheckDTypeOnDevice(spec.dtype, registry.device()));
  // A set is made where it will run: a bfloat16 or float16 set exists on CUDA only. Sets with
  // reduced weight storage run on the CPU kernels wherever the server runs.
  const c10::Device create_on =
      spec.weight_storage == core::WeightStorage::kDType ? registry.device() : c10::Device(c10::kCPU);
  LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSet set, core::CreateParameterSet(spec, limits, create_on));
  core::StoredSet stored;
  stored.id = std::move(id);
  stored.origin = "created";
  stored.create_time_micros = absl::ToUnixMicros(absl::Now());
  stored.spec = std::move(spec_record);
  stored.set = std::move(set);
  stored.checksum = core::ComputeChecksum(stored.set);
  return registry.Add(std::move(stored));
}

absl::StatusOr<SetPage> ListSets(SetRegistry& registry, int64_t page_size, absl::string_view page_token) {
  if (page_size < 0 || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size is ", page_size, "; expected 0 to ", kMaxPageSize,
                                                   " (0 means ", kDefaultPageSize, ")"));
  }
  std::string after;
  if (!page_token.empty()) {
    if (!absl::ConsumePrefix(&page_token, kPageTokenPrefix) || !core::ValidateSetId(page_token).ok()) {
      return absl::InvalidArgumentError("page_token is not a next_page_token this server returned");
    }
    after = std::string(page_token);
  }
  SetPage page;
  bool more = false;
  page.sets = registry.List(after, page_size == 0 ? kDefaultPageSize : static_cast<int>(page_size), &more);
  if (more && !page.sets.empty()) page.next_page_token = absl::StrCat(kPageTokenPrefix, page.sets.back()->stored.id);
  return page;
}

absl::StatusOr<std::unique_ptr<SetImport>> SetImport::Begin(SetRegistry* registry, const ImportLimits& limits,
                                                            ImportHeader header) {
  LSTMSERVE_ASSIGN_OR_RETURN(std::string id, SetIdOrNew(header.requested_id));
  if (header.tensors.empty()) return absl::InvalidArgumentError("header.tensors is empty");
  if (static_cast<int64_t>(header.tensors.size()) > limits.max_tensors) {
    return absl::ResourceExhaustedError(
        absl::StrCat("header.tensors has ", header.tensors.size(), " tensors; the limit is ", limits.max_tensors));
  }
  const core::WeightStorage storage = header.storage;
  const core::DType weight_dtype = storage == core::WeightStorage::kInt8 ? core::DType::kInt8 : core::DType::kBFloat16;
  std::set<std::string> names;
  int64_t total = 0;
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const ImportTensor& info = header.tensors[i];
    const std::string field = absl::StrCat("header.tensors[", i, "]");
    if (auto s = core::ValidateTensorName(info.name); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: ", s.message()));
    }
    if (!names.insert(info.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name '", info.name, "' is used twice"));
    }
    if (storage == core::WeightStorage::kDType) {
      if (i > 0 && info.dtype != header.tensors[0].dtype) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".dtype differs from tensor 0's"));
      }
      LSTMSERVE_RETURN_IF_ERROR(core::CheckDTypeOnDevice(info.dtype, registry->device()));
    } else if (info.dtype != core::DType::kFloat32 && info.dtype != weight_dtype) {
      // The layout (which tensor has which dtype) is checked once all data is in.
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".dtype is ", core::DTypeName(info.dtype), "; a set with weight storage ",
          core::WeightStorageName(storage), " has ", core::DTypeName(weight_dtype), " weights and float32 otherwise"));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(int64_t count, core::CheckShape(info.shape, field, std::numeric_limits<int64_t>::max()));
    int64_t bytes = 0;
    if (__builtin_mul_overflow(count, core::DTypeSize(info.dtype), &bytes) ||
        __builtin_add_overflow(total, bytes, &total) || total > limits.max_set_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the header declares more than the server's limit of ",
                                                       limits.max_set_bytes, " bytes per set (", field, " is [",
                                                       absl::StrJoin(info.shape, ", "), "])"));
    }
  }
  std::unique_ptr<SetImport> import(new SetImport(registry, std::move(header)));
  import->id_ = std::move(id);
  LSTMSERVE_RETURN_IF_ERROR(core::GuardTorch("import", [&]() -> absl::Status {
    for (const ImportTensor& info : import->header_.tensors) {
      import->buffers_.push_back(at::empty(info.shape, at::TensorOptions().dtype(core::ToScalarType(info.dtype))));
    }
    return absl::OkStatus();
  }));
  import->received_.assign(import->buffers_.size(), 0);
  return import;
}

absl::Status SetImport::Append(int64_t index, int64_t offset, absl::string_view data) {
  if (index < 0 || index >= static_cast<int64_t>(buffers_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk.tensor_index ", index, " is not in [0, ", buffers_.size(), ")"));
  }
  const size_t i = static_cast<size_t>(index);
  if (i < next_tensor_ || (i == next_tensor_ && offset != received_[i])) {
    return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", i, " at offset ", offset,
                                                   " is out of order; expected tensor ", next_tensor_, " offset ",
                                                   received_[std::min(next_tensor_, received_.size() - 1)]));
  }
  while (next_tensor_ < i) {
    if (received_[next_tensor_] != static_cast<int64_t>(buffers_[next_tensor_].nbytes())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", next_tensor_, " ended after ", received_[next_tensor_],
                                                     " of ", buffers_[next_tensor_].nbytes(), " bytes"));
    }
    ++next_tensor_;
  }
  const int64_t total = static_cast<int64_t>(buffers_[i].nbytes());
  if (offset != received_[i] || received_[i] + static_cast<int64_t>(data.size()) > total) {
    return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", i, " at offset ", offset, " with ", data.size(),
                                                   " bytes overruns its ", total, " bytes"));
  }
  if (!data.empty()) {
    std::memcpy(static_cast<char*>(buffers_[i].data_ptr()) + received_[i], data.data(), data.size());
  }
  received_[i] += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const SetEntry>> SetImport::Finish() {
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (received_[i] != static_cast<int64_t>(buffers_[i].nbytes())) {
      return absl::InvalidArgumentError(absl::StrCat("the import stream ended with tensor '", header_.tensors[i].name,
                                                     "' at ", received_[i], " of ", buffers_[i].nbytes(),
                                                     " bytes; nothing was stored"));
    }
  }
  core::StoredSet stored;
  stored.id = id_;
  stored.origin = "imported";
  stored.create_time_micros = absl::ToUnixMicros(absl::Now());
  stored.set.dtype =
      header_.storage == core::WeightStorage::kDType ? header_.tensors.front().dtype : core::DType::kFloat32;
  stored.set.weight_storage = header_.storage;
  LSTMSERVE_RETURN_IF_ERROR(core::GuardTorch("import", [&]() -> absl::Status {
    for (size_t i = 0; i < buffers_.size(); ++i) {
      const std::string& name = header_.tensors[i].name;
      if (!at::isfinite(buffers_[i]).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' contains NaN or infinity"));
      }
      stored.set.byte_size += static_cast<int64_t>(buffers_[i].nbytes());
      stored.set.tensors.push_back({name, buffers_[i]});
    }
    return core::ValidateWeightStorage(stored.set);
  }));
  stored.checksum = core::ComputeChecksum(stored.set);
  if (!header_.checksum.empty() && header_.checksum != stored.checksum) {
    return absl::InvalidArgumentError(absl::StrCat("header.checksum is ", core::ClientText(header_.checksum, 80),
                                                   " but the data hashes to ", stored.checksum,
                                                   "; nothing was stored"));
  }
  return registry_->Add(std::move(stored));
}

namespace {

// The weight-storage errors of an LSTM set: for a float32 set both reduced storages, for a
// reduced one its own against the float32 set that `spec` (the set's, when known) makes.
absl::Status MeasureStorageErrors(const core::ParameterSet& set, const std::optional<core::ParameterSetSpec>& spec,
                                  const core::CreateLimits& limits, uint64_t probe_seed, SetAnalysis* out) {
  core::ParameterSet full;
  std::vector<core::ParameterSet> reduced;
  if (set.weight_storage == core::WeightStorage::kDType) {
    if (set.dtype != core::DType::kFloat32) {
      return absl::FailedPreconditionError(
          absl::StrCat("weight_storage_error compares with float32 weights; the set is ", core::DTypeName(set.dtype)));
    }
    full = set;
    LSTMSERVE_RETURN_IF_ERROR(core::GuardTorch("weight storage error", [&]() -> absl::Status {
      for (auto& t : full.tensors) t.value = t.value.cpu();  // a CUDA server's set
      return absl::OkStatus();
    }));
    for (auto storage : {core::WeightStorage::kBFloat16, core::WeightStorage::kInt8}) {
      LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSet r, core::ReduceWeights(full, storage));
      reduced.push_back(std::move(r));
    }
  } else {
    if (!spec.has_value()) {
      return absl::FailedPreconditionError(
          "weight_storage_error needs the set's float32 weights, and this set was imported with reduced weights: "
          "analyze the float32 set it came from (its bfloat16 and int8 errors are both measured)");
    }
    core::ParameterSetSpec full_spec = *spec;
    full_spec.weight_storage = core::WeightStorage::kDType;
    LSTMSERVE_ASSIGN_OR_RETURN(full, core::CreateParameterSet(full_spec, limits));
    reduced.push_back(set);
  }
  LSTMSERVE_ASSIGN_OR_RETURN(core::StackedLstm full_lstm, core::StackedLstm::FromParameterSet(full));
  for (const auto& r : reduced) {
    LSTMSERVE_ASSIGN_OR_RETURN(core::StackedLstm reduced_lstm, core::StackedLstm::FromParameterSet(r));
    LSTMSERVE_ASSIGN_OR_RETURN(core::StorageError error,
                               core::MeasureStorageError(full_lstm, reduced_lstm, probe_seed));
    out->storage_errors.push_back(std::move(error));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SetAnalysis> AnalyzeSet(const core::ParameterSet& set, const std::optional<core::ParameterSetSpec>& spec,
                                       const core::CreateLimits& limits, AnalyzeOptions options) {
  SetAnalysis analysis;
  auto lstm = core::StackedLstm::FromParameterSet(set);
  if (lstm.ok() && options.tensors.empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(analysis.lstm_layers, core::AnalyzeLstm(*lstm, options.probe));
    if (options.weight_storage_error) {
      LSTMSERVE_RETURN_IF_ERROR(MeasureStorageErrors(set, spec, limits, options.probe.seed, &analysis));
    }
    return analysis;
  }
  if (options.weight_storage_error) {
    return absl::InvalidArgumentError("weight_storage_error is for stacked-LSTM sets (w_0, ...) analysed as such");
  }
  const bool matmul = spec.has_value() && spec->fan_convention == core::FanConvention::kMatmul;
  options.chain.preferred = matmul ? core::WeightLayout::kInOut : core::WeightLayout::kOutIn;
  std::vector<core::NamedTensor> weights;
  if (options.tensors.empty()) {
    weights = set.tensors;
  } else {
    for (const auto& name : options.tensors) {
      auto it = std::find_if(set.tensors.begin(), set.tensors.end(), [&](const auto& t) { return t.name == name; });
      if (it == set.tensors.end()) {
        return absl::InvalidArgumentError(absl::StrCat("tensors: the set has no '", core::ClientText(name), "'"));
      }
      weights.push_back(*it);
    }
  }
  LSTMSERVE_ASSIGN_OR_RETURN(analysis.chain_layers, core::AnalyzeChain(weights, options.chain, options.probe));
  return analysis;
}

absl::StatusOr<SetAnalysis> AnalyzeSpec(const core::ParameterSetSpec& spec, const core::CreateLimits& limits,
                                        AnalyzeOptions options) {
  LSTMSERVE_ASSIGN_OR_RETURN(auto tensors, core::ValidateSpec(spec, limits));
  int64_t parameters = 0;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    parameters += n;
  }
  LSTMSERVE_RETURN_IF_ERROR(
      core::CheckProbeCost(options.probe, parameters, spec.lstm.has_value() && options.tensors.empty()));
  LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSet set, core::CreateParameterSet(spec, limits));
  return AnalyzeSet(set, spec, limits, std::move(options));
}

}  // namespace lstmserve::server
