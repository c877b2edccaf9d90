#include <chrono>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/wire/conversions.h"
#include "rpc_util.h"

namespace lstmserve::server {

using wire::TensorFromProto;
using wire::TensorToProto;
namespace {

// This file's service, as the access table (access.h) and the wire name it.
constexpr const char* kService = "lstmserve.v1.InferenceService";

absl::StatusOr<at::Tensor> Input(ServiceContext* ctx, const SetEntry& entry, const v1::Tensor& t,
                                 absl::string_view field) {
  // Host tensors: the batch worker moves the merged batch to the set's device.
  return TensorFromProto(t, field, entry.stored.set.dtype, ctx->options.max_tensor_elements, c10::Device(c10::kCPU));
}

absl::StatusOr<std::vector<at::Tensor>> States(ServiceContext* ctx, const SetEntry& entry,
                                               const google::protobuf::RepeatedPtrField<v1::Tensor>& states,
                                               absl::string_view field) {
  if (!states.empty() && states.size() != entry.lstm->num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has ", states.size(), " tensors; the set has ",
                                                   entry.lstm->num_layers(),
                                                   " layers (give one per layer, or none for zeros)"));
  }
  std::vector<at::Tensor> out;
  for (int l = 0; l < states.size(); ++l) {
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor t, Input(ctx, entry, states[l], absl::StrCat(field, "[", l, "]")));
    out.push_back(std::move(t));
  }
  return out;
}

// The per-layer c and h of a request (StepRequest, RunRequest, SessionStart).
template <typename Request>
absl::StatusOr<core::LstmState> RequestState(ServiceContext* ctx, const SetEntry& entry, const Request& request,
                                             absl::string_view prefix) {
  core::LstmState state;
  LSTMSERVE_ASSIGN_OR_RETURN(state.c, States(ctx, entry, request.c(), absl::StrCat(prefix, "c")));
  LSTMSERVE_ASSIGN_OR_RETURN(state.h, States(ctx, entry, request.h(), absl::StrCat(prefix, "h")));
  return state;
}

template <typename Response>
void StatesToProto(const core::LstmState& state, Response* response) {
  for (const auto& c : state.c) TensorToProto(c, response->add_c());
  for (const auto& h : state.h) TensorToProto(h, response->add_h());
}

// Queues a validated job whose answer `fill` writes into the response, or finishes the
// call at once when building the job failed.
template <typename Fill>
void SubmitUnary(ServiceContext* ctx, UnaryCallBase* call, RpcLog log, absl::StatusOr<BatchJob> job, Fill fill) {
  if (!job.ok()) {
    call->Reply(log.Done(job.status()));
    return;
  }
  job->done = [call, log = std::move(log), fill = std::move(fill)](absl::StatusOr<core::SequenceResult> result) {
    if (result.ok()) {
      const absl::Time start = absl::Now();
      fill(*result);
      call->encode_fill = absl::Now() - start;
    }
    call->Reply(log.Done(result.status()));
  };
  call->phases = ctx->metrics;
  call->MarkValidated();
  ctx->engine->Submit(*std::move(job));
}

// A Session stream: start, then one step per x; strictly one read or write in flight. Its
// messages are parsed here (a raw method): one that does not parse ends the stream with
// INVALID_ARGUMENT, where gRPC's parsing would have looked like the client's half-close.
class SessionReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  SessionReactor(grpc::CallbackServerContext* context, ServiceContext* ctx, RpcLog log)
      : context_(context),
        ctx_(ctx),
        log_(std::move(log)),
        key_(absl::StrCat("stream:", reinterpret_cast<uintptr_t>(this))) {
    StartRead(&read_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side, or the session was cancelled (idle, or draining)
      End(absl::OkStatus());
      return;
    }
    ++messages_;
    if (absl::Status parsed = ParseMessage(read_, &request_, absl::StrCat("message ", messages_, " of the session"));
        !parsed.ok()) {
      End(absl::InvalidArgumentError(
          absl::StrCat(parsed.message(), "; the session ended after ", step_, " steps answered")));
      return;
    }
    if (tracked_) ctx_->engine->sequences().Touch(key_);
    if (!entry_) {
      absl::Status status = Start();
      if (!status.ok()) {
        End(status);
      } else {
        StartRead(&read_);
      }
      return;
    }
    // The step goes through the batcher, merged with other sessions' steps on the same set;
    // the write starts from the batch thread.
    absl::StatusOr<BatchJob> job = StepJob();
    if (!job.ok()) {
      End(job.status());
      return;
    }
    job->done = [this](absl::StatusOr<core::SequenceResult> result) {
      if (!result.ok()) {
        End(result.status());
        return;
      }
      state_ = std::move(result->final_state);
      ctx_->engine->sequences().StepDone();
      response_.Clear();
      response_.set_step(step_++);
      TensorToProto(state_.h.back(), response_.mutable_output());
      if (return_state_) StatesToProto(state_, &response_);
      if (grpc::Status s = SerializeMessage(response_, &write_); !s.ok()) {
        End(wire::FromGrpcStatus(s));
        return;
      }
      StartWrite(&write_);
    };
    ctx_->engine->Submit(*std::move(job));
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(absl::CancelledError("the client stopped reading the session"));
      return;
    }
    StartRead(&read_);
  }
  void OnDone() override {
    if (tracked_) ctx_->engine->sequences().Close(key_);  // before the context goes away
    delete this;
  }

 private:
  // Leaves the tracker before finishing, so that a client that sees the stream end can
  // open a new session at once.
  void End(const absl::Status& status) {
    if (tracked_) {
      ctx_->engine->sequences().Close(key_);
      tracked_ = false;
    }
    Finish(log_.Done(status));
  }

  absl::Status Start() {
    if (!request_.has_start()) return absl::InvalidArgumentError("the first SessionRequest must be start");
    const auto& start = request_.start();
    log_.set_set_id(start.parameter_set_id());
    LSTMSERVE_ASSIGN_OR_RETURN(entry_, ctx_->engine->LstmSet(start.parameter_set_id()));
    if (start.batch_size() < 1) {
      entry_.reset();
      return absl::InvalidArgumentError(absl::StrCat("start.batch_size is ", start.batch_size(), "; expected >= 1"));
    }
    if (start.batch_size() > ctx_->options.max_tensor_elements) {
      entry_.reset();
      return absl::ResourceExhaustedError(absl::StrCat("start.batch_size is ", start.batch_size(),
                                                       "; it exceeds the limit of ", ctx_->options.max_tensor_elements,
                                                       " elements per tensor"));
    }
    batch_ = start.batch_size();
    return_state_ = start.return_state();
    if (absl::Status admitted = ctx_->engine->sequences().Open(key_, [context = context_] { context->TryCancel(); });
        !admitted.ok()) {
      entry_.reset();
      return admitted;
    }
    tracked_ = true;
    auto state = RequestState(ctx_, *entry_, start, "start.");
    if (!state.ok()) {
      entry_.reset();
      return state.status();
    }
    state_ = *std::move(state);
    const int64_t hidden = entry_->lstm->hidden_size();
    for (const auto* part : {&state_.c, &state_.h}) {
      for (const auto& t : *part) {
        if (t.dim() != 2 || t.size(0) != batch_ || t.size(1) != hidden) {
          entry_.reset();
          return absl::InvalidArgumentError(absl::StrCat("start states must be [", batch_, ", ", hidden, "]"));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<BatchJob> StepJob() {
    if (!request_.has_x()) return absl::InvalidArgumentError("after start, every SessionRequest must carry x");
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry_, request_.x(), "x"));
    if (x.dim() != 2 || x.size(0) != batch_ || x.size(1) != entry_->lstm->input_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("x is [", absl::StrJoin(x.sizes(), ", "), "]; the session's x must be [", batch_, ", ",
                       entry_->lstm->input_size(), "] (its batch_size, the set's input_size)"));
    }
    return ctx_->engine->MakeJob(GrpcCall(context_), entry_, x.unsqueeze(0), state_, /*want_outputs=*/false);
  }

  grpc::CallbackServerContext* context_;
  ServiceContext* ctx_;
  RpcLog log_;
  grpc::ByteBuffer read_;
  grpc::ByteBuffer write_;
  v1::SessionRequest request_;
  v1::SessionResponse response_;
  int64_t messages_ = 0;  // read so far
  std::shared_ptr<const SetEntry> entry_;
  core::LstmState state_;
  int64_t batch_ = 0;
  int64_t step_ = 0;
  bool return_state_ = false;
  const std::string key_;  // in the sequence store
  bool tracked_ = false;   // open in the sequence store
};

}  // namespace

grpc::ServerUnaryReactor* InferenceServiceImpl::Step(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return ParseUnary<v1::StepRequest, v1::StepResponse>(ctx_, context, in, out, kService, "Step", [&](auto* call) {
    const v1::StepRequest* request = &call->request;
    RpcLog log(context, "Step", request->parameter_set_id());
    absl::StatusOr<BatchJob> job = [&]() -> absl::StatusOr<BatchJob> {
      LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->engine->LstmSet(request->parameter_set_id()));
      if (!request->has_x()) return absl::InvalidArgumentError("x is not set");
      LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry, request->x(), "x"));
      if (x.dim() != 2 || x.size(1) != entry->lstm->input_size()) {
        return absl::InvalidArgumentError(absl::StrCat("x is [", absl::StrJoin(x.sizes(), ", "),
                                                       "]; the set's x must be [batch, ", entry->lstm->input_size(),
                                                       "] (its input_size)"));
      }
      LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
      return ctx_->engine->MakeJob(GrpcCall(context), std::move(entry), x.unsqueeze(0), std::move(state),
                                   /*want_outputs=*/false);
    }();
    v1::StepResponse* response = &call->response;
    SubmitUnary(ctx_, call, std::move(log), std::move(job),
                [response](const core::SequenceResult& result) { StatesToProto(result.final_state, response); });
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Run(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                    grpc::ByteBuffer* out) {
  return ParseUnary<v1::RunRequest, v1::RunResponse>(ctx_, context, in, out, kService, "Run", [&](auto* call) {
    const v1::RunRequest* request = &call->request;
    RpcLog log(context, "Run", request->parameter_set_id());
    absl::StatusOr<BatchJob> job = [&]() -> absl::StatusOr<BatchJob> {
      LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->engine->LstmSet(request->parameter_set_id()));
      if (!request->has_inputs()) return absl::InvalidArgumentError("inputs is not set");
      LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor inputs, Input(ctx_, *entry, request->inputs(), "inputs"));
      LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
      return ctx_->engine->MakeJob(GrpcCall(context), std::move(entry), std::move(inputs), std::move(state),
                                   !request->final_state_only());
    }();
    v1::RunResponse* response = &call->response;
    SubmitUnary(ctx_, call, std::move(log), std::move(job), [response](const core::SequenceResult& result) {
      if (result.outputs.defined()) TensorToProto(result.outputs, response->mutable_outputs());
      StatesToProto(result.final_state, response);
    });
  });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceServiceImpl::Session(
    grpc::CallbackServerContext* context) {
  RpcLog log(context, "Session", "");
  if (absl::Status denied = Authorize(ctx_, context, kService, "Session"); !denied.ok()) {
    return FailedStream<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(log.Done(denied));
  }
  return new SessionReactor(context, ctx_, std::move(log));
}

}  // namespace lstmserve::server
