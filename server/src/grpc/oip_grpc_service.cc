// The Open Inference Protocol over gRPC: converts inference.* messages to the protocol-neutral
// values of open_inference.h and back; everything else is OpenInference's.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/grpc/oip_grpc_codec.h"
#include "lstmserve/server/grpc/services.h"
#include "rpc_util.h"

namespace lstmserve::server {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

namespace {

// This file's service, as the access table (access.h) and the wire name it.
constexpr const char* kService = "inference.GRPCInferenceService";

// The sequence parameters of a request (Triton's sequence extension).
absl::Status SequenceFromProto(const ModelInferRequest& request, oip::InferRequest* out) {
  const auto& params = request.parameters();
  if (auto it = params.find("sequence_id"); it != params.end()) {
    const inference::InferParameter& id = it->second;
    switch (id.parameter_choice_case()) {
      case inference::InferParameter::kInt64Param:
        if (id.int64_param() < 0) {
          return absl::InvalidArgumentError(absl::StrCat("sequence_id is ", id.int64_param(), "; it must be >= 0"));
        }
        out->sequence_key = oip::SequenceKey(static_cast<uint64_t>(id.int64_param()));
        break;
      case inference::InferParameter::kUint64Param: out->sequence_key = oip::SequenceKey(id.uint64_param()); break;
      case inference::InferParameter::kStringParam: out->sequence_key = oip::SequenceKey(id.string_param()); break;
      default: return absl::InvalidArgumentError("sequence_id must be an int64, uint64 or string parameter");
    }
  }
  for (const auto& [name, flag] : {std::pair<const char*, bool*>{"sequence_start", &out->sequence_start},
                                   std::pair<const char*, bool*>{"sequence_end", &out->sequence_end}}) {
    if (auto it = params.find(name); it != params.end()) {
      if (it->second.parameter_choice_case() != inference::InferParameter::kBoolParam) {
        return absl::InvalidArgumentError(absl::StrCat(name, " must be a bool parameter"));
      }
      *flag = it->second.bool_param();
    }
  }
  if (auto it = params.find("sequence_step"); it != params.end()) {
    const inference::InferParameter& step = it->second;
    if (step.parameter_choice_case() == inference::InferParameter::kUint64Param) {
      out->sequence_step = step.uint64_param();
    } else if (step.parameter_choice_case() == inference::InferParameter::kInt64Param && step.int64_param() >= 0) {
      out->sequence_step = static_cast<uint64_t>(step.int64_param());
    } else {
      return absl::InvalidArgumentError(
          "sequence_step must be a uint64 (or non-negative int64) parameter: the steps the sequence has taken "
          "before this request");
    }
  }
  return absl::OkStatus();
}

}  // namespace

// Moves what a parsed request carries into the protocol-neutral request (its raw bytes are
// taken, not copied).
absl::StatusOr<oip::InferRequest> RequestFromProto(ModelInferRequest& request) {
  oip::InferRequest out;
  out.model = request.model_name();
  out.version = request.model_version();
  out.id = request.id();
  LSTMSERVE_RETURN_IF_ERROR(SequenceFromProto(request, &out));
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return absl::InvalidArgumentError(absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(),
                                                   " entries for ", request.inputs_size(),
                                                   " inputs; give one per input, in the order of inputs"));
  }
  for (int i = 0; i < request.inputs_size(); ++i) {
    auto* in = request.mutable_inputs(i);
    oip::Tensor t;
    t.name = in->name();
    t.datatype = in->datatype();
    t.shape.assign(in->shape().begin(), in->shape().end());
    // Typed contents other than fp32_contents: the field a client filled, for a clear refusal.
    const auto& c = in->contents();
    const char* other = c.bool_contents_size() > 0     ? "bool_contents"
                        : c.int_contents_size() > 0    ? "int_contents"
                        : c.int64_contents_size() > 0  ? "int64_contents"
                        : c.uint_contents_size() > 0   ? "uint_contents"
                        : c.uint64_contents_size() > 0 ? "uint64_contents"
                        : c.fp64_contents_size() > 0   ? "fp64_contents"
                        : c.bytes_contents_size() > 0  ? "bytes_contents"
                                                       : nullptr;
    const bool typed = other != nullptr || c.fp32_contents_size() > 0;
    if (raw && typed) {
      return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name),
                                                     " has both raw_input_contents and typed contents: give one"));
    }
    if (other != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input ", core::ClientText(t.name), " sends contents.", other,
          ", which this server does not take: send raw_input_contents, or contents.fp32_contents for FP32"));
    }
    if (raw) {
      t.data = std::move(*request.mutable_raw_input_contents(i));
    } else if (t.datatype == "FP32" && c.fp32_contents_size() > 0) {
      const auto& values = c.fp32_contents();
      t.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    } else if (c.fp32_contents_size() > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", core::ClientText(t.name), " is ", core::ClientText(t.datatype),
                       ": contents.fp32_contents holds FP32 only; send raw_input_contents"));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", core::ClientText(t.name), " has no data: send it in raw_input_contents",
                       t.datatype == "FP32" ? " or contents.fp32_contents" : " (typed contents exist for FP32 only)"));
    }
    out.inputs.push_back(std::move(t));
  }
  for (const auto& o : request.outputs()) out.outputs.push_back(o.name());
  return out;
}

void ResponseToProto(oip::InferResponse& response, ModelInferResponse* out) {
  out->set_model_name(std::move(response.model));
  out->set_model_version(std::move(response.version));
  if (response.sequence_step.has_value()) {
    (*out->mutable_parameters())["sequence_step"].set_uint64_param(*response.sequence_step);
  }
  out->set_id(std::move(response.id));
  for (oip::Tensor& t : response.outputs) {
    auto* o = out->add_outputs();
    o->set_name(std::move(t.name));
    o->set_datatype(std::move(t.datatype));
    o->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
    out->add_raw_output_contents(std::move(t.data));
  }
}

namespace {

inference::DataType ConfigType(const std::string& datatype) {
  if (datatype == "FP16") return inference::TYPE_FP16;
  if (datatype == "BF16") return inference::TYPE_BF16;
  return inference::TYPE_FP32;
}

// A ModelStreamInfer stream: one request at a time, each answered (a response, or its error
// in error_message) before the next is read; the stream ends when the client closes it.
class StreamInferReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamInferReactor(grpc::CallbackServerContext* context, ServiceContext* ctx, RpcLog log)
      : context_(context), ctx_(ctx), log_(std::move(log)) {
    StartRead(&read_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(log_.Done(absl::OkStatus()));
      return;
    }
    ++messages_;
    absl::Status parsed = ParseMessage(read_, &request_, absl::StrCat("message ", messages_, " of the stream"));
    absl::StatusOr<oip::InferRequest> request = parsed.ok() ? RequestFromProto(request_) : parsed;
    if (!request.ok()) {
      Answer(request.status());
      return;
    }
    ctx_->oip->Infer(*std::move(request), GrpcCall(context_),
                     [this](absl::StatusOr<oip::InferResponse> response) { Answer(std::move(response)); });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(log_.Done(absl::CancelledError("the client stopped reading the stream")));
      return;
    }
    StartRead(&read_);
  }
  void OnDone() override { delete this; }

 private:
  void Answer(absl::StatusOr<oip::InferResponse> response) {
    response_.Clear();
    if (response.ok()) {
      ResponseToProto(*response, response_.mutable_infer_response());
    } else {
      (void)log_.Done(response.status());  // logged; the stream goes on
      response_.set_error_message(std::string(response.status().message()));
    }
    if (grpc::Status s = SerializeMessage(response_, &write_); !s.ok()) {
      Finish(s);
      return;
    }
    StartWrite(&write_);
  }

  grpc::CallbackServerContext* context_;
  ServiceContext* ctx_;
  RpcLog log_;
  grpc::ByteBuffer read_;
  grpc::ByteBuffer write_;
  ModelInferRequest request_;
  inference::ModelStreamInferResponse response_;
  int64_t messages_ = 0;
};

}  // namespace

grpc::ServerUnaryReactor* OipGrpcService::ServerLive(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return ParseUnary<inference::ServerLiveRequest, inference::ServerLiveResponse>(ctx_, context, in, out, kService,
                                                                                 "ServerLive", [&](auto* call) {
                                                                                   call->response.set_live(true);
                                                                                   call->Reply(grpc::Status::OK);
                                                                                 });
}

grpc::ServerUnaryReactor* OipGrpcService::ServerReady(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                      grpc::ByteBuffer* out) {
  return ParseUnary<inference::ServerReadyRequest, inference::ServerReadyResponse>(
      ctx_, context, in, out, kService, "ServerReady", [&](auto* call) {
        call->response.set_ready(ctx_->oip->ServerReady());
        call->Reply(grpc::Status::OK);
      });
}

grpc::ServerUnaryReactor* OipGrpcService::ModelReady(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return ParseUnary<inference::ModelReadyRequest, inference::ModelReadyResponse>(
      ctx_, context, in, out, kService, "ModelReady", [&](auto* call) {
        RpcLog log(context, "ModelReady", call->request.name());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          call->response.set_ready(ctx_->oip->Ready(call->request.name(), call->request.version()));
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::ServerMetadata(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::ServerMetadataRequest, inference::ServerMetadataResponse>(
      ctx_, context, in, out, kService, "ServerMetadata", [&](auto* call) {
        RpcLog log(context, "ServerMetadata", "");
        FinishUnary(context, call, log, [&]() -> absl::Status {
          const oip::ServerMetadata server = ctx_->oip->Server();
          call->response.set_name(server.name);
          call->response.set_version(server.version);
          for (const auto& e : server.extensions) call->response.add_extensions(e);
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::ModelMetadata(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::ModelMetadataRequest, inference::ModelMetadataResponse>(
      ctx_, context, in, out, kService, "ModelMetadata", [&](auto* call) {
        RpcLog log(context, "ModelMetadata", call->request.name());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m,
                                     ctx_->oip->Metadata(call->request.name(), call->request.version()));
          auto& r = call->response;
          r.set_name(m.name);
          for (const auto& v : m.versions) r.add_versions(v);
          r.set_platform(m.platform);
          for (const auto* part : {&m.inputs, &m.outputs}) {
            for (const auto& t : *part) {
              auto* o = part == &m.inputs ? r.add_inputs() : r.add_outputs();
              o->set_name(t.name);
              o->set_datatype(t.datatype);
              o->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
            }
          }
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::ModelConfig(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                      grpc::ByteBuffer* out) {
  return ParseUnary<inference::ModelConfigRequest, inference::ModelConfigResponse>(
      ctx_, context, in, out, kService, "ModelConfig", [&](auto* call) {
        RpcLog log(context, "ModelConfig", call->request.name());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          LSTMSERVE_ASSIGN_OR_RETURN(oip::ModelMetadata m,
                                     ctx_->oip->Metadata(call->request.name(), call->request.version()));
          auto* c = call->response.mutable_config();
          c->set_name(m.name);
          c->set_platform(m.platform);
          c->set_backend(m.backend);
          c->set_max_batch_size(static_cast<int32_t>(m.max_batch_size));
          for (const auto& t : m.inputs) {
            auto* i = c->add_input();
            i->set_name(t.name);
            i->set_data_type(ConfigType(t.datatype));
            i->mutable_dims()->Assign(t.shape.begin(), t.shape.end());
            i->set_optional(t.optional);
          }
          for (const auto& t : m.outputs) {
            auto* o = c->add_output();
            o->set_name(t.name);
            o->set_data_type(ConfigType(t.datatype));
            o->mutable_dims()->Assign(t.shape.begin(), t.shape.end());
          }
          c->mutable_sequence_batching()->set_max_sequence_idle_microseconds(
              absl::ToInt64Microseconds(m.sequence_idle_timeout));
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::ModelInfer(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return ParseUnary<ModelInferRequest, ModelInferResponse>(
      ctx_, context, in, out, kService, "ModelInfer", [&](auto* call) {
        RpcLog log(context, "ModelInfer", call->request.model_name());
        absl::StatusOr<oip::InferRequest> request = [&]() -> absl::StatusOr<oip::InferRequest> {
          return RequestFromProto(call->request);
        }();
        if (!request.ok()) {
          call->Reply(log.Done(request.status()));
          return;
        }
        // No phase metrics (Step and Run only): OIP requests are validated inside Infer, so the
        // hop from parsed to queued is not this handler's to time.
        ModelInferResponse* response = &call->response;
        ctx_->oip->Infer(*std::move(request), GrpcCall(context),
                         [call, response, log = std::move(log)](absl::StatusOr<oip::InferResponse> result) {
                           if (result.ok()) ResponseToProto(*result, response);
                           call->Reply(log.Done(result.status()));
                         });
      });
}

namespace {

void DurationToProto(const StatDuration& d, inference::StatisticDuration* out) {
  out->set_count(d.count);
  out->set_ns(d.ns);
}

template <typename Map>
std::vector<std::string> ParameterNames(const Map& parameters) {
  std::vector<std::string> names;
  for (const auto& [name, value] : parameters) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

grpc::ServerUnaryReactor* OipGrpcService::ModelStatistics(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::ModelStatisticsRequest, inference::ModelStatisticsResponse>(
      ctx_, context, in, out, kService, "ModelStatistics", [&](auto* call) {
        RpcLog log(context, "ModelStatistics", call->request.name());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          LSTMSERVE_ASSIGN_OR_RETURN(std::vector<ModelStats> all,
                                     ctx_->oip->Statistics(call->request.name(), call->request.version()));
          for (const ModelStats& m : all) {
            inference::ModelStatistics* o = call->response.add_model_stats();
            o->set_name(m.name);
            o->set_version("1");
            o->set_last_inference(m.last_inference_ms);
            o->set_inference_count(m.inference_count);
            o->set_execution_count(m.execution_count);
            inference::InferStatistics* s = o->mutable_inference_stats();
            DurationToProto(m.success, s->mutable_success());
            DurationToProto(m.fail, s->mutable_fail());
            DurationToProto(m.queue, s->mutable_queue());
            DurationToProto(m.compute_input, s->mutable_compute_input());
            DurationToProto(m.compute_infer, s->mutable_compute_infer());
            DurationToProto(m.compute_output, s->mutable_compute_output());
            s->mutable_cache_hit();
            s->mutable_cache_miss();
            for (const BatchSizeStats& b : m.batch_stats) {
              inference::InferBatchStatistics* ob = o->add_batch_stats();
              ob->set_batch_size(b.batch_size);
              DurationToProto(b.compute_input, ob->mutable_compute_input());
              DurationToProto(b.compute_infer, ob->mutable_compute_infer());
              DurationToProto(b.compute_output, ob->mutable_compute_output());
            }
          }
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::RepositoryIndex(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::RepositoryIndexRequest, inference::RepositoryIndexResponse>(
      ctx_, context, in, out, kService, "RepositoryIndex", [&](auto* call) {
        RpcLog log(context, "RepositoryIndex", "");
        FinishUnary(context, call, log, [&]() -> absl::Status {
          LSTMSERVE_ASSIGN_OR_RETURN(
              std::vector<oip::RepositoryModel> models,
              ctx_->oip->RepositoryIndex(call->request.repository_name(), call->request.ready()));
          for (const oip::RepositoryModel& m : models) {
            auto* o = call->response.add_models();
            o->set_name(m.name);
            o->set_version(m.version);
            o->set_state(m.state);
            o->set_reason(m.reason);
          }
          return absl::OkStatus();
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::RepositoryModelLoad(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::RepositoryModelLoadRequest, inference::RepositoryModelLoadResponse>(
      ctx_, context, in, out, kService, "RepositoryModelLoad", [&](auto* call) {
        RpcLog log(context, "RepositoryModelLoad", call->request.model_name());
        // Reads the set's file (up to --max_set_bytes): on the compute pool.
        const auto* request = &call->request;
        FinishUnaryOnPool(context, call, ctx_->compute, std::move(log), [this, request]() -> absl::Status {
          return ctx_->oip->Load(request->repository_name(), request->model_name(),
                                 ParameterNames(request->parameters()));
        });
      });
}

grpc::ServerUnaryReactor* OipGrpcService::RepositoryModelUnload(grpc::CallbackServerContext* context,
                                                                const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<inference::RepositoryModelUnloadRequest, inference::RepositoryModelUnloadResponse>(
      ctx_, context, in, out, kService, "RepositoryModelUnload", [&](auto* call) {
        RpcLog log(context, "RepositoryModelUnload", call->request.model_name());
        FinishUnary(context, call, log, [&]() -> absl::Status {
          return ctx_->oip->Unload(call->request.repository_name(), call->request.model_name(),
                                   ParameterNames(call->request.parameters()));
        });
      });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OipGrpcService::ModelStreamInfer(
    grpc::CallbackServerContext* context) {
  RpcLog log(context, "ModelStreamInfer", "");
  if (absl::Status denied = Authorize(ctx_, context, kService, "ModelStreamInfer"); !denied.ok()) {
    return FailedStream<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(log.Done(denied));
  }
  return new StreamInferReactor(context, ctx_, std::move(log));
}

}  // namespace lstmserve::server
