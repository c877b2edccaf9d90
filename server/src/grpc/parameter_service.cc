#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <set>

#include <ATen/ATen.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

#include "lstmserve/core/diagnostics.h"
#include "lstmserve/core/status.h"
#include "lstmserve/core/tensor_bytes.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/log.h"
#include "lstmserve/wire/conversions.h"
#include "rpc_util.h"

namespace lstmserve::server {

using core::CheckShape;
using wire::DTypeFromProto;
using wire::DTypeToProto;
using wire::SpecFromProto;
using wire::TensorToProto;
namespace {

// This file's service, as the access table (access.h) and the wire name it.
constexpr const char* kService = "lstmserve.v1.ParameterService";

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr int64_t kDefaultChunkBytes = int64_t{1} << 20;
constexpr int64_t kMaxChunkBytes = int64_t{4} << 20;
constexpr int64_t kChunkFramingBytes = 256;  // room left for a chunk's framing under the message limit
constexpr absl::string_view kPageTokenPrefix = "after:";

std::string NewSetId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat("ps-", absl::Hex(rng() & 0xffffffffffffULL, absl::kZeroPad12));
}

absl::StatusOr<std::string> IdOrNew(const std::string& requested) {
  if (requested.empty()) return NewSetId();
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(requested));
  return requested;
}

// Export: metadata first, then each tensor's bytes in chunks, one write in flight at a time.
class ExportReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ExportReactor(std::shared_ptr<const SetEntry> entry, int64_t chunk_bytes, RpcLog log)
      : entry_(std::move(entry)), chunk_bytes_(chunk_bytes), log_(std::move(log)) {
    EntryToProto(*entry_, response_.mutable_parameter_set());
    Write();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(log_.Done(absl::CancelledError("the client stopped reading the export")));
      return;
    }
    NextWrite();
  }
  void OnDone() override { delete this; }

 private:
  void NextWrite() {
    const auto& tensors = entry_->stored.set.tensors;
    while (index_ < tensors.size()) {
      if (!current_.defined()) current_ = tensors[index_].value.contiguous().cpu();
      const int64_t total = static_cast<int64_t>(current_.nbytes());
      if (offset_ < total) {
        const int64_t n = std::min(chunk_bytes_, total - offset_);
        response_.Clear();
        auto* chunk = response_.mutable_chunk();
        chunk->set_tensor_index(static_cast<int32_t>(index_));
        chunk->set_offset(offset_);
        chunk->set_data(static_cast<const char*>(current_.data_ptr()) + offset_, n);
        offset_ += n;
        Write();
        return;
      }
      ++index_;
      offset_ = 0;
      current_ = at::Tensor();
    }
    Finish(log_.Done(absl::OkStatus()));
  }

  void Write() {
    if (grpc::Status s = SerializeMessage(response_, &bytes_); !s.ok()) {
      Finish(s);
      return;
    }
    StartWrite(&bytes_);
  }

  std::shared_ptr<const SetEntry> entry_;  // the set as it was when the export began
  const int64_t chunk_bytes_;
  RpcLog log_;
  v1::ExportParameterSetResponse response_;
  grpc::ByteBuffer bytes_;
  size_t index_ = 0;
  int64_t offset_ = 0;
  at::Tensor current_;
};

// Import: a header, then chunks in tensor and offset order; validated and stored at the end.
// Its messages are parsed here (a raw method): one that does not parse ends the import with
// INVALID_ARGUMENT, where gRPC's parsing would have looked like the end of the stream.
class ImportReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  ImportReactor(ServiceContext* ctx, grpc::ByteBuffer* out, RpcLog log) : ctx_(ctx), out_(out), log_(std::move(log)) {
    StartRead(&bytes_);
  }
  void OnReadDone(bool ok) override {
    absl::Status status = ok ? Parse() : Complete();
    if (status.ok() && ok) status = Handle();
    if (!ok || !status.ok()) {
      grpc::Status reply = log_.Done(status);
      if (reply.ok()) reply = SerializeMessage(response_, out_);
      Finish(reply);
      return;
    }
    StartRead(&bytes_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Parse() {
    ++messages_;
    absl::Status parsed = ParseMessage(bytes_, &request_, absl::StrCat("message ", messages_, " of the import"));
    if (parsed.ok()) return parsed;
    return absl::InvalidArgumentError(absl::StrCat(parsed.message(), "; nothing was stored"));
  }

  absl::Status Handle() {
    if (!header_seen_) {
      if (!request_.has_header()) {
        return absl::InvalidArgumentError("the first ImportParameterSetRequest must carry the header");
      }
      header_seen_ = true;
      return ReadHeader(request_.header());
    }
    if (!request_.has_chunk()) return absl::InvalidArgumentError("after the header, every message must be a chunk");
    const auto& chunk = request_.chunk();
    if (chunk.tensor_index() < 0 || chunk.tensor_index() >= static_cast<int>(buffers_.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk.tensor_index ", chunk.tensor_index(), " is not in [0, ", buffers_.size(), ")"));
    }
    const size_t i = static_cast<size_t>(chunk.tensor_index());
    if (i < next_tensor_ || (i == next_tensor_ && chunk.offset() != received_[i])) {
      return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", i, " at offset ", chunk.offset(),
                                                     " is out of order; expected tensor ", next_tensor_, " offset ",
                                                     received_[std::min(next_tensor_, received_.size() - 1)]));
    }
    while (next_tensor_ < i) {
      if (received_[next_tensor_] != static_cast<int64_t>(buffers_[next_tensor_].nbytes())) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", next_tensor_, " ended after ",
                                                       received_[next_tensor_], " of ", buffers_[next_tensor_].nbytes(),
                                                       " bytes"));
      }
      ++next_tensor_;
    }
    const int64_t total = static_cast<int64_t>(buffers_[i].nbytes());
    if (chunk.offset() != received_[i] || received_[i] + static_cast<int64_t>(chunk.data().size()) > total) {
      return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", i, " at offset ", chunk.offset(), " with ",
                                                     chunk.data().size(), " bytes overruns its ", total, " bytes"));
    }
    std::memcpy(static_cast<char*>(buffers_[i].data_ptr()) + received_[i], chunk.data().data(), chunk.data().size());
    received_[i] += static_cast<int64_t>(chunk.data().size());
    return absl::OkStatus();
  }

  absl::Status ReadHeader(const v1::ImportHeader& header) {
    LSTMSERVE_ASSIGN_OR_RETURN(id_, IdOrNew(header.parameter_set_id()));
    if (header.tensors().empty()) return absl::InvalidArgumentError("header.tensors is empty");
    if (header.tensors_size() > ctx_->options.max_tensors_per_set) {
      return absl::ResourceExhaustedError(absl::StrCat("header.tensors has ", header.tensors_size(),
                                                       " tensors; the limit is ", ctx_->options.max_tensors_per_set));
    }
    checksum_ = header.checksum();
    LSTMSERVE_ASSIGN_OR_RETURN(storage_, wire::WeightStorageFromProto(header.weight_storage(), "header"));
    const core::DType weight_dtype =
        storage_ == core::WeightStorage::kInt8 ? core::DType::kInt8 : core::DType::kBFloat16;
    std::set<std::string> names;
    int64_t total = 0;
    for (int i = 0; i < header.tensors_size(); ++i) {
      const auto& info = header.tensors(i);
      const std::string field = absl::StrCat("header.tensors[", i, "]");
      if (auto s = core::ValidateTensorName(info.name()); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".name: ", s.message()));
      }
      if (!names.insert(info.name()).second) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".name '", info.name(), "' is used twice"));
      }
      LSTMSERVE_ASSIGN_OR_RETURN(core::DType dtype, DTypeFromProto(info.dtype(), field));
      if (storage_ == core::WeightStorage::kDType) {
        if (i > 0 && dtype != dtypes_[0])
          return absl::InvalidArgumentError(absl::StrCat(field, ".dtype differs from tensor 0's"));
        LSTMSERVE_RETURN_IF_ERROR(core::CheckDTypeOnDevice(dtype, ctx_->registry->device()));
      } else if (dtype != core::DType::kFloat32 && dtype != weight_dtype) {
        // The layout (which tensor has which dtype) is checked once all data is in.
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".dtype is ", core::DTypeName(dtype), "; a set with weight storage ",
                         core::WeightStorageName(storage_), " has ", core::DTypeName(weight_dtype),
                         " weights and float32 otherwise"));
      }
      dtypes_.push_back(dtype);
      LSTMSERVE_ASSIGN_OR_RETURN(int64_t count, CheckShape(info.shape(), field, std::numeric_limits<int64_t>::max()));
      int64_t bytes = 0;
      if (__builtin_mul_overflow(count, core::DTypeSize(dtype), &bytes) ||
          __builtin_add_overflow(total, bytes, &total) || total > ctx_->options.max_set_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat("the header declares more than the server's limit of ",
                                                         ctx_->options.max_set_bytes, " bytes per set (", field,
                                                         " is [", absl::StrJoin(info.shape(), ", "), "])"));
      }
    }
    return core::GuardTorch("import", [&]() -> absl::Status {
      for (int i = 0; i < header.tensors_size(); ++i) {
        const auto& info = header.tensors(i);
        buffers_.push_back(at::empty(std::vector<int64_t>(info.shape().begin(), info.shape().end()),
                                     at::TensorOptions().dtype(core::ToScalarType(dtypes_[i]))));
        names_.push_back(info.name());
      }
      received_.assign(buffers_.size(), 0);
      return absl::OkStatus();
    });
  }

  absl::Status Complete() {
    if (!header_seen_) return absl::InvalidArgumentError("the import stream ended before its header");
    for (size_t i = 0; i < buffers_.size(); ++i) {
      if (received_[i] != static_cast<int64_t>(buffers_[i].nbytes())) {
        return absl::InvalidArgumentError(absl::StrCat("the import stream ended with tensor '", names_[i], "' at ",
                                                       received_[i], " of ", buffers_[i].nbytes(),
                                                       " bytes; nothing was stored"));
      }
    }
    core::StoredSet stored;
    stored.id = id_;
    stored.origin = "imported";
    stored.create_time_micros = absl::ToUnixMicros(absl::Now());
    stored.set.dtype = storage_ == core::WeightStorage::kDType ? dtypes_.front() : core::DType::kFloat32;
    stored.set.weight_storage = storage_;
    LSTMSERVE_RETURN_IF_ERROR(core::GuardTorch("import", [&]() -> absl::Status {
      for (size_t i = 0; i < buffers_.size(); ++i) {
        if (!at::isfinite(buffers_[i]).all().item<bool>()) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", names_[i], "' contains NaN or infinity"));
        }
        stored.set.byte_size += static_cast<int64_t>(buffers_[i].nbytes());
        stored.set.tensors.push_back({names_[i], buffers_[i]});
      }
      return core::ValidateWeightStorage(stored.set);
    }));
    stored.checksum = core::ComputeChecksum(stored.set);
    if (!checksum_.empty() && checksum_ != stored.checksum) {
      return absl::InvalidArgumentError(absl::StrCat("header.checksum is ", core::ClientText(checksum_, 80),
                                                     " but the data hashes to ", stored.checksum,
                                                     "; nothing was stored"));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->registry->Add(std::move(stored)));
    EntryToProto(*entry, response_.mutable_parameter_set());
    return absl::OkStatus();
  }

  ServiceContext* ctx_;
  grpc::ByteBuffer* out_;  // gRPC's, for the response
  RpcLog log_;
  grpc::ByteBuffer bytes_;
  int64_t messages_ = 0;  // read so far
  v1::ImportParameterSetRequest request_;
  v1::ImportParameterSetResponse response_;
  bool header_seen_ = false;
  std::string id_;
  std::string checksum_;
  core::WeightStorage storage_ = core::WeightStorage::kDType;
  std::vector<core::DType> dtypes_;  // per tensor
  std::vector<std::string> names_;
  std::vector<at::Tensor> buffers_;
  std::vector<int64_t> received_;
  size_t next_tensor_ = 0;
};

}  // namespace

void EntryToProto(const SetEntry& entry, v1::ParameterSet* out) {
  const core::StoredSet& s = entry.stored;
  out->set_id(s.id);
  out->set_origin(s.origin == "imported" ? v1::SET_ORIGIN_IMPORTED : v1::SET_ORIGIN_CREATED);
  std::string spec;
  if (!s.spec.empty() && absl::Base64Unescape(s.spec, &spec)) out->mutable_spec()->ParseFromString(spec);
  for (const auto& t : s.set.tensors) {
    auto* info = out->add_tensors();
    info->set_name(t.name);
    info->mutable_shape()->Assign(t.value.sizes().begin(), t.value.sizes().end());
    info->set_dtype(DTypeToProto(core::FromScalarType(t.value.scalar_type()).value_or(s.set.dtype)));
  }
  out->set_weight_storage(wire::WeightStorageToProto(s.set.weight_storage));
  out->set_byte_size(s.set.byte_size);
  out->set_checksum(s.checksum);
  out->mutable_create_time()->set_seconds(s.create_time_micros / 1000000);
  out->mutable_create_time()->set_nanos(static_cast<int32_t>(s.create_time_micros % 1000000) * 1000);
  if (entry.lstm) {
    auto* l = out->mutable_lstm();
    l->set_num_layers(entry.lstm->num_layers());
    l->set_input_size(entry.lstm->input_size());
    l->set_hidden_size(entry.lstm->hidden_size());
    l->set_bias(entry.lstm->has_bias());
  }
  if (!s.set.tensors.empty()) out->set_device(core::DeviceName(s.set.tensors.front().value.device()));
}

grpc::ServerUnaryReactor* ParameterServiceImpl::CreateParameterSet(grpc::CallbackServerContext* context,
                                                                   const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::CreateParameterSetRequest, v1::CreateParameterSetResponse>(
      ctx_, context, in, out, kService, "CreateParameterSet", [&](auto* call) {
        const v1::CreateParameterSetRequest* request = &call->request;
        v1::CreateParameterSetResponse* response = &call->response;
        RpcLog log(context, "CreateParameterSet", request->parameter_set_id());
        FinishUnaryOnPool(context, call, ctx_->compute, std::move(log), [this, request, response]() -> absl::Status {
          if (!request->has_spec()) return absl::InvalidArgumentError("spec is not set");
          LSTMSERVE_ASSIGN_OR_RETURN(std::string id, IdOrNew(request->parameter_set_id()));
          LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSetSpec spec, SpecFromProto(request->spec()));
          LSTMSERVE_RETURN_IF_ERROR(core::CheckDTypeOnDevice(spec.dtype, ctx_->registry->device()));
          auto created = core::CreateParameterSet(spec, ctx_->create_limits);
          LSTMSERVE_RETURN_IF_ERROR(created.status());
          core::StoredSet stored;
          stored.id = id;
          stored.origin = "created";
          stored.create_time_micros = absl::ToUnixMicros(absl::Now());
          stored.spec = absl::Base64Escape(request->spec().SerializeAsString());
          stored.set = *std::move(created);
          stored.checksum = core::ComputeChecksum(stored.set);
          LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->registry->Add(std::move(stored)));
          EntryToProto(*entry, response->mutable_parameter_set());
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::GetParameterSet(grpc::CallbackServerContext* context,
                                                                const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::GetParameterSetRequest, v1::GetParameterSetResponse>(
      ctx_, context, in, out, kService, "GetParameterSet", [&](auto* call) {
        const v1::GetParameterSetRequest* request = &call->request;
        v1::GetParameterSetResponse* response = &call->response;
        RpcLog log(context, "GetParameterSet", request->parameter_set_id());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->registry->Get(request->parameter_set_id()));
          EntryToProto(*entry, response->mutable_parameter_set());
          if (request->include_tensors()) {
            if (entry->stored.set.byte_size > ctx_->options.max_message_bytes - 65536) {
              return absl::ResourceExhaustedError(
                  absl::StrCat("the set's ", entry->stored.set.byte_size, " bytes exceed the message limit of ",
                               ctx_->options.max_message_bytes, "; use ExportParameterSet"));
            }
            for (const auto& t : entry->stored.set.tensors) {
              auto* named = response->add_tensors();
              named->set_name(t.name);
              TensorToProto(t.value, named->mutable_tensor());
            }
          }
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::ListParameterSets(grpc::CallbackServerContext* context,
                                                                  const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::ListParameterSetsRequest, v1::ListParameterSetsResponse>(
      ctx_, context, in, out, kService, "ListParameterSets", [&](auto* call) {
        const v1::ListParameterSetsRequest* request = &call->request;
        v1::ListParameterSetsResponse* response = &call->response;
        RpcLog log(context, "ListParameterSets", "");
        FinishUnary(context, call, log, [&]() -> absl::Status {
          if (request->page_size() < 0 || request->page_size() > kMaxPageSize) {
            return absl::InvalidArgumentError(absl::StrCat("page_size is ", request->page_size(), "; expected 0 to ",
                                                           kMaxPageSize, " (0 means ", kDefaultPageSize, ")"));
          }
          std::string after;
          if (!request->page_token().empty()) {
            absl::string_view token = request->page_token();
            if (!absl::ConsumePrefix(&token, kPageTokenPrefix) || !core::ValidateSetId(token).ok()) {
              return absl::InvalidArgumentError("page_token is not a next_page_token this server returned");
            }
            after = std::string(token);
          }
          bool more = false;
          const int limit = request->page_size() == 0 ? kDefaultPageSize : request->page_size();
          for (const auto& entry : ctx_->registry->List(after, limit, &more)) {
            EntryToProto(*entry, response->add_parameter_sets());
          }
          if (more)
            response->set_next_page_token(absl::StrCat(kPageTokenPrefix, response->parameter_sets().rbegin()->id()));
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::DeleteParameterSet(grpc::CallbackServerContext* context,
                                                                   const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::DeleteParameterSetRequest, v1::DeleteParameterSetResponse>(
      ctx_, context, in, out, kService, "DeleteParameterSet", [&](auto* call) {
        const v1::DeleteParameterSetRequest* request = &call->request;
        RpcLog log(context, "DeleteParameterSet", request->parameter_set_id());
        FinishUnary(context, call, log,
                    [&]() -> absl::Status { return ctx_->registry->Delete(request->parameter_set_id()); });
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ParameterServiceImpl::ExportParameterSet(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* in) {
  v1::ExportParameterSetRequest parsed;
  absl::Status status = Authorize(ctx_, context, kService, "ExportParameterSet");
  if (status.ok()) status = ParseMessage(*in, &parsed, "the request");
  const v1::ExportParameterSetRequest* request = &parsed;
  RpcLog log(context, "ExportParameterSet", request->parameter_set_id());
  // A chunk message is its data plus a few dozen bytes of framing (index, offset, tags); the
  // largest chunk is the one that still fits --max_message_bytes with room to spare.
  const int64_t fits = std::min(kMaxChunkBytes, ctx_->options.max_message_bytes - kChunkFramingBytes);
  const int64_t chunk_bytes = request->chunk_bytes() == 0 ? std::min(kDefaultChunkBytes, fits) : request->chunk_bytes();
  if (status.ok() && (chunk_bytes < 0 || chunk_bytes > fits)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes is ", request->chunk_bytes(), "; expected 0 to ", fits, " (0 means ",
                     std::min(kDefaultChunkBytes, fits), "; at most ", kMaxChunkBytes, ", and ", kChunkFramingBytes,
                     " bytes under the server's --max_message_bytes of ", ctx_->options.max_message_bytes, ")"));
  }
  absl::StatusOr<std::shared_ptr<const SetEntry>> entry =
      status.ok() ? ctx_->registry->Get(request->parameter_set_id()) : status;
  if (!entry.ok()) return FailedStream<grpc::ServerWriteReactor<grpc::ByteBuffer>>(log.Done(entry.status()));
  return new ExportReactor(*std::move(entry), chunk_bytes, std::move(log));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* ParameterServiceImpl::ImportParameterSet(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  RpcLog log(context, "ImportParameterSet", "");
  if (absl::Status denied = Authorize(ctx_, context, kService, "ImportParameterSet"); !denied.ok()) {
    return FailedStream<grpc::ServerReadReactor<grpc::ByteBuffer>>(log.Done(denied));
  }
  return new ImportReactor(ctx_, response, std::move(log));
}

namespace {

absl::StatusOr<core::Activation> ActivationFromProto(v1::ChainActivation a) {
  switch (a) {
    case v1::CHAIN_ACTIVATION_UNSPECIFIED:
    case v1::CHAIN_ACTIVATION_RELU: return core::Activation::kRelu;
    case v1::CHAIN_ACTIVATION_LEAKY_RELU: return core::Activation::kLeakyRelu;
    case v1::CHAIN_ACTIVATION_TANH: return core::Activation::kTanh;
    case v1::CHAIN_ACTIVATION_SIGMOID: return core::Activation::kSigmoid;
    case v1::CHAIN_ACTIVATION_LINEAR: return core::Activation::kLinear;
    default:
      return absl::InvalidArgumentError(absl::StrCat("activation ", static_cast<int>(a), " is not a ChainActivation"));
  }
}

core::ProbeOptions ProbeFromProto(const v1::AnalyzeParameterSetRequest& request) {
  core::ProbeOptions probe;
  probe.seed = request.probe_seed();
  if (request.samples() != 0) probe.samples = request.samples();
  if (request.steps() != 0) probe.steps = request.steps();
  return probe;
}

// The weight-storage errors of an LSTM set (AnalyzeParameterSetRequest.weight_storage_error):
// for a float32 set both reduced storages, for a reduced one its own against the float32 set
// that `spec` (the set's, when known) makes.
absl::Status AnalyzeStorageError(const core::ParameterSet& set, const std::optional<core::ParameterSetSpec>& spec,
                                 const core::CreateLimits& limits, uint64_t probe_seed,
                                 v1::AnalyzeParameterSetResponse* response) {
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
    auto* out = response->add_weight_storage_errors();
    out->set_weight_storage(wire::WeightStorageToProto(error.storage));
    out->mutable_steps()->Assign(error.steps.begin(), error.steps.end());
    out->mutable_max_abs_error()->Assign(error.max_abs_error.begin(), error.max_abs_error.end());
    out->mutable_mean_abs_error()->Assign(error.mean_abs_error.begin(), error.mean_abs_error.end());
  }
  return absl::OkStatus();
}

// The analysis of a set's tensors (a stacked LSTM, or a chain of weights). `spec`: the spec
// the set was made from, when known.
absl::Status Analyze(const core::ParameterSet& set, core::FanConvention convention,
                     const std::optional<core::ParameterSetSpec>& spec, const core::CreateLimits& limits,
                     const v1::AnalyzeParameterSetRequest& request, v1::AnalyzeParameterSetResponse* response) {
  const core::ProbeOptions probe = ProbeFromProto(request);
  auto lstm = core::StackedLstm::FromParameterSet(set);
  if (lstm.ok() && request.tensors().empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(auto layers, core::AnalyzeLstm(*lstm, probe));
    for (size_t l = 0; l < layers.size(); ++l) {
      auto* out = response->add_lstm_layers();
      const auto& s = layers[l];
      out->set_layer(static_cast<int64_t>(l));
      out->set_input_gate_variance(s.gate_variance[0]);
      out->set_forget_gate_variance(s.gate_variance[1]);
      out->set_output_gate_variance(s.gate_variance[2]);
      out->set_cell_gate_variance(s.gate_variance[3]);
      out->set_preactivation_variance(s.preactivation_variance);
      out->set_c_variance(s.c_variance);
      out->set_h_variance(s.h_variance);
      out->set_sigmoid_saturated_fraction(s.sigmoid_saturated);
      out->set_tanh_saturated_fraction(s.tanh_saturated);
    }
    if (request.weight_storage_error()) {
      return AnalyzeStorageError(set, spec, limits, request.probe_seed(), response);
    }
    return absl::OkStatus();
  }
  if (request.weight_storage_error()) {
    return absl::InvalidArgumentError("weight_storage_error is for stacked-LSTM sets (w_0, ...) analysed as such");
  }
  core::ChainOptions chain;
  LSTMSERVE_ASSIGN_OR_RETURN(chain.activation, ActivationFromProto(request.activation()));
  if (request.negative_slope() != 0) chain.negative_slope = request.negative_slope();
  switch (request.layout()) {
    case v1::WEIGHT_LAYOUT_UNSPECIFIED: chain.layout = core::WeightLayout::kAuto; break;
    case v1::WEIGHT_LAYOUT_OUT_IN: chain.layout = core::WeightLayout::kOutIn; break;
    case v1::WEIGHT_LAYOUT_IN_OUT: chain.layout = core::WeightLayout::kInOut; break;
    default: return absl::InvalidArgumentError("layout is not a WeightLayout");
  }
  chain.preferred =
      convention == core::FanConvention::kMatmul ? core::WeightLayout::kInOut : core::WeightLayout::kOutIn;
  std::vector<core::NamedTensor> weights;
  if (request.tensors().empty()) {
    weights = set.tensors;
  } else {
    for (const auto& name : request.tensors()) {
      auto it = std::find_if(set.tensors.begin(), set.tensors.end(), [&](const auto& t) { return t.name == name; });
      if (it == set.tensors.end())
        return absl::InvalidArgumentError(absl::StrCat("tensors: the set has no '", core::ClientText(name), "'"));
      weights.push_back(*it);
    }
  }
  LSTMSERVE_ASSIGN_OR_RETURN(auto layers, core::AnalyzeChain(weights, chain, probe));
  for (const auto& s : layers) {
    auto* out = response->add_chain_layers();
    out->set_tensor(s.name);
    out->set_fan_in(s.fan_in);
    out->set_fan_out(s.fan_out);
    out->set_forward_variance(s.forward_variance);
    out->set_activation_variance(s.activation_variance);
    out->set_gradient_variance(s.gradient_variance);
    out->set_dead_fraction(s.dead_fraction);
  }
  return absl::OkStatus();
}

}  // namespace

grpc::ServerUnaryReactor* ParameterServiceImpl::AnalyzeParameterSet(grpc::CallbackServerContext* context,
                                                                    const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::AnalyzeParameterSetRequest, v1::AnalyzeParameterSetResponse>(
      ctx_, context, in, out, kService, "AnalyzeParameterSet", [&](auto* call) {
        const v1::AnalyzeParameterSetRequest* request = &call->request;
        v1::AnalyzeParameterSetResponse* response = &call->response;
        RpcLog log(context, "AnalyzeParameterSet", request->parameter_set_id());
        // Minutes of compute at most (bounded by the probe's work limit): on the compute pool.
        FinishUnaryOnPool(context, call, ctx_->compute, std::move(log), [this, request, response]() -> absl::Status {
          if (request->has_spec()) {
            LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSetSpec spec, SpecFromProto(request->spec()));
            // The cost bound before any tensor is made.
            LSTMSERVE_ASSIGN_OR_RETURN(auto tensors, core::ValidateSpec(spec, ctx_->create_limits));
            int64_t parameters = 0;
            for (const auto& t : tensors) {
              int64_t n = 1;
              for (int64_t d : t.shape) n *= d;
              parameters += n;
            }
            LSTMSERVE_RETURN_IF_ERROR(core::CheckProbeCost(ProbeFromProto(*request), parameters,
                                                           spec.lstm.has_value() && request->tensors().empty()));
            LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSet set, core::CreateParameterSet(spec, ctx_->create_limits));
            return Analyze(set, spec.fan_convention, spec, ctx_->create_limits, *request, response);
          }
          if (request->parameter_set_id().empty()) return absl::InvalidArgumentError("give parameter_set_id or spec");
          LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->registry->Get(request->parameter_set_id()));
          // The convention the set was created with, when it was created from a spec here.
          core::FanConvention convention = core::FanConvention::kTorch;
          std::optional<core::ParameterSetSpec> spec;
          std::string raw;
          v1::ParameterSetSpec stored_spec;
          if (!entry->stored.spec.empty() && absl::Base64Unescape(entry->stored.spec, &raw) &&
              stored_spec.ParseFromString(raw)) {
            if (stored_spec.fan_convention() == v1::FAN_CONVENTION_MATMUL) convention = core::FanConvention::kMatmul;
            if (auto parsed = SpecFromProto(stored_spec); parsed.ok()) spec = *std::move(parsed);
          }
          return Analyze(entry->stored.set, convention, spec, ctx_->create_limits, *request, response);
        });
      });
}

}  // namespace lstmserve::server
