#include <algorithm>
#include <optional>

#include <ATen/ATen.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/engine/set_operations.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/log.h"
#include "lstmserve/wire/conversions.h"
#include "rpc_util.h"

namespace lstmserve::server {

using wire::DTypeFromProto;
using wire::DTypeToProto;
using wire::SpecFromProto;
using wire::TensorToProto;
namespace {

// This file's service, as the access table (access.h) and the wire name it.
constexpr const char* kService = "lstmserve.v1.ParameterService";

constexpr int64_t kDefaultChunkBytes = int64_t{1} << 20;
constexpr int64_t kMaxChunkBytes = int64_t{4} << 20;
constexpr int64_t kChunkFramingBytes = 256;  // room left for a chunk's framing under the message limit

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
    if (import_ == nullptr) {
      if (!request_.has_header()) {
        return absl::InvalidArgumentError("the first ImportParameterSetRequest must carry the header");
      }
      LSTMSERVE_ASSIGN_OR_RETURN(ImportHeader header, HeaderFromProto(request_.header()));
      LSTMSERVE_ASSIGN_OR_RETURN(
          import_, SetImport::Begin(ctx_->registry, {ctx_->options.max_tensors_per_set, ctx_->options.max_set_bytes},
                                    std::move(header)));
      return absl::OkStatus();
    }
    if (!request_.has_chunk()) return absl::InvalidArgumentError("after the header, every message must be a chunk");
    const auto& chunk = request_.chunk();
    return import_->Append(chunk.tensor_index(), chunk.offset(), chunk.data());
  }

  static absl::StatusOr<ImportHeader> HeaderFromProto(const v1::ImportHeader& in) {
    ImportHeader header;
    header.requested_id = in.parameter_set_id();
    header.checksum = in.checksum();
    LSTMSERVE_ASSIGN_OR_RETURN(header.storage, wire::WeightStorageFromProto(in.weight_storage(), "header"));
    for (int i = 0; i < in.tensors_size(); ++i) {
      const auto& info = in.tensors(i);
      ImportTensor& t = header.tensors.emplace_back();
      t.name = info.name();
      LSTMSERVE_ASSIGN_OR_RETURN(t.dtype, DTypeFromProto(info.dtype(), absl::StrCat("header.tensors[", i, "]")));
      t.shape.assign(info.shape().begin(), info.shape().end());
    }
    return header;
  }

  absl::Status Complete() {
    if (import_ == nullptr) return absl::InvalidArgumentError("the import stream ended before its header");
    LSTMSERVE_ASSIGN_OR_RETURN(auto entry, import_->Finish());
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
  std::unique_ptr<SetImport> import_;  // once the header is in
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
          LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSetSpec spec, SpecFromProto(request->spec()));
          LSTMSERVE_ASSIGN_OR_RETURN(auto entry,
                                     CreateSet(*ctx_->registry, ctx_->create_limits, request->parameter_set_id(), spec,
                                               absl::Base64Escape(request->spec().SerializeAsString())));
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
          LSTMSERVE_ASSIGN_OR_RETURN(SetPage page,
                                     ListSets(*ctx_->registry, request->page_size(), request->page_token()));
          for (const auto& entry : page.sets) EntryToProto(*entry, response->add_parameter_sets());
          response->set_next_page_token(std::move(page.next_page_token));
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

absl::StatusOr<AnalyzeOptions> AnalyzeOptionsFromProto(const v1::AnalyzeParameterSetRequest& request) {
  AnalyzeOptions options;
  options.probe.seed = request.probe_seed();
  if (request.samples() != 0) options.probe.samples = request.samples();
  if (request.steps() != 0) options.probe.steps = request.steps();
  options.tensors.assign(request.tensors().begin(), request.tensors().end());
  options.weight_storage_error = request.weight_storage_error();
  LSTMSERVE_ASSIGN_OR_RETURN(options.chain.activation, ActivationFromProto(request.activation()));
  if (request.negative_slope() != 0) options.chain.negative_slope = request.negative_slope();
  switch (request.layout()) {
    case v1::WEIGHT_LAYOUT_UNSPECIFIED: options.chain.layout = core::WeightLayout::kAuto; break;
    case v1::WEIGHT_LAYOUT_OUT_IN: options.chain.layout = core::WeightLayout::kOutIn; break;
    case v1::WEIGHT_LAYOUT_IN_OUT: options.chain.layout = core::WeightLayout::kInOut; break;
    default: return absl::InvalidArgumentError("layout is not a WeightLayout");
  }
  return options;
}

void AnalysisToProto(const SetAnalysis& analysis, v1::AnalyzeParameterSetResponse* response) {
  for (size_t l = 0; l < analysis.lstm_layers.size(); ++l) {
    auto* out = response->add_lstm_layers();
    const auto& s = analysis.lstm_layers[l];
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
  for (const auto& error : analysis.storage_errors) {
    auto* out = response->add_weight_storage_errors();
    out->set_weight_storage(wire::WeightStorageToProto(error.storage));
    out->mutable_steps()->Assign(error.steps.begin(), error.steps.end());
    out->mutable_max_abs_error()->Assign(error.max_abs_error.begin(), error.max_abs_error.end());
    out->mutable_mean_abs_error()->Assign(error.mean_abs_error.begin(), error.mean_abs_error.end());
  }
  for (const auto& s : analysis.chain_layers) {
    auto* out = response->add_chain_layers();
    out->set_tensor(s.name);
    out->set_fan_in(s.fan_in);
    out->set_fan_out(s.fan_out);
    out->set_forward_variance(s.forward_variance);
    out->set_activation_variance(s.activation_variance);
    out->set_gradient_variance(s.gradient_variance);
    out->set_dead_fraction(s.dead_fraction);
  }
}

// The spec a set was created from here (kept as the serialized v1 message), when it parses.
std::optional<core::ParameterSetSpec> StoredSpec(const SetEntry& entry) {
  std::string raw;
  v1::ParameterSetSpec stored;
  if (entry.stored.spec.empty() || !absl::Base64Unescape(entry.stored.spec, &raw) || !stored.ParseFromString(raw)) {
    return std::nullopt;
  }
  auto parsed = SpecFromProto(stored);
  if (!parsed.ok()) return std::nullopt;
  return *std::move(parsed);
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
          LSTMSERVE_ASSIGN_OR_RETURN(AnalyzeOptions options, AnalyzeOptionsFromProto(*request));
          if (request->has_spec()) {
            LSTMSERVE_ASSIGN_OR_RETURN(core::ParameterSetSpec spec, SpecFromProto(request->spec()));
            LSTMSERVE_ASSIGN_OR_RETURN(SetAnalysis analysis,
                                       AnalyzeSpec(spec, ctx_->create_limits, std::move(options)));
            AnalysisToProto(analysis, response);
            return absl::OkStatus();
          }
          if (request->parameter_set_id().empty()) return absl::InvalidArgumentError("give parameter_set_id or spec");
          LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->registry->Get(request->parameter_set_id()));
          LSTMSERVE_ASSIGN_OR_RETURN(SetAnalysis analysis, AnalyzeSet(entry->stored.set, StoredSpec(*entry),
                                                                      ctx_->create_limits, std::move(options)));
          AnalysisToProto(analysis, response);
          return absl::OkStatus();
        });
      });
}

}  // namespace lstmserve::server
