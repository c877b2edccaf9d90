#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "lstmserve/core/status.h"
#include "lstmserve/wire/conversions.h"
#include "lstmserve/server/services.h"
#include "rpc_util.h"

namespace lstmserve::server {

using wire::TensorFromProto;
using wire::TensorToProto;
namespace {

// The set's LSTM, or FAILED_PRECONDITION when it is not LSTM-shaped.
absl::StatusOr<std::shared_ptr<const SetEntry>> LstmSet(ServiceContext* ctx, const std::string& id) {
  LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx->registry->Get(id));
  if (!entry->lstm) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter set '", id, "' is not a stacked LSTM: it needs tensors w_0.. of shape [in + H, 4H] "
        "(and optionally b_0..); create it with spec.lstm"));
  }
  return entry;
}

absl::StatusOr<at::Tensor> Input(ServiceContext* ctx, const SetEntry& entry, const v1::Tensor& t,
                                 absl::string_view field) {
  return TensorFromProto(t, field, entry.stored.set.dtype, ctx->options.max_tensor_elements,
                         entry.lstm->device());
}

absl::StatusOr<std::vector<at::Tensor>> States(ServiceContext* ctx, const SetEntry& entry,
                                               const google::protobuf::RepeatedPtrField<v1::Tensor>& states,
                                               absl::string_view field) {
  if (!states.empty() && states.size() != entry.lstm->num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has ", states.size(), " tensors; the set has ",
                                                   entry.lstm->num_layers(), " layers (give one per layer, or none for zeros)"));
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

// A Session stream: start, then one step per x; strictly one read or write in flight.
class SessionReactor final : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(ServiceContext* ctx, RpcLog log) : ctx_(ctx), log_(std::move(log)) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side: the session ends normally
      Finish(log_.Done(absl::OkStatus()));
      return;
    }
    // The step runs on the compute pool; the next read or write starts from there.
    ctx_->compute->Submit([this] {
      absl::Status status = entry_ ? Step() : Start();
      if (!status.ok()) {
        Finish(log_.Done(status));
      } else if (wrote_) {
        wrote_ = false;
        StartWrite(&response_);
      } else {
        StartRead(&request_);
      }
    });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(log_.Done(absl::CancelledError("the client stopped reading the session")));
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Start() {
    if (!request_.has_start()) return absl::InvalidArgumentError("the first SessionRequest must be start");
    const auto& start = request_.start();
    log_.set_set_id(start.parameter_set_id());
    LSTMSERVE_ASSIGN_OR_RETURN(entry_, LstmSet(ctx_, start.parameter_set_id()));
    if (start.batch_size() < 1 || start.batch_size() > ctx_->options.max_tensor_elements) {
      entry_.reset();
      return absl::InvalidArgumentError(absl::StrCat("start.batch_size is ", start.batch_size(), "; expected >= 1"));
    }
    batch_ = start.batch_size();
    return_state_ = start.return_state();
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

  absl::Status Step() {
    if (!request_.has_x()) return absl::InvalidArgumentError("after start, every SessionRequest must carry x");
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry_, request_.x(), "x"));
    if (x.dim() != 2 || x.size(0) != batch_) {
      return absl::InvalidArgumentError(absl::StrCat("x must be [", batch_, ", ", entry_->lstm->input_size(),
                                                     "] (the session's batch size)"));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(state_, entry_->lstm->Step(x, state_));
    response_.Clear();
    response_.set_step(step_++);
    TensorToProto(state_.h.back(), response_.mutable_output());
    if (return_state_) StatesToProto(state_, &response_);
    wrote_ = true;
    return absl::OkStatus();
  }

  ServiceContext* ctx_;
  RpcLog log_;
  v1::SessionRequest request_;
  v1::SessionResponse response_;
  std::shared_ptr<const SetEntry> entry_;
  core::LstmState state_;
  int64_t batch_ = 0;
  int64_t step_ = 0;
  bool return_state_ = false;
  bool wrote_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* InferenceServiceImpl::Step(grpc::CallbackServerContext* context,
                                                     const v1::StepRequest* request, v1::StepResponse* response) {
  RpcLog log(context, "Step", request->parameter_set_id());
  return FinishUnaryOnPool(context, ctx_->compute, std::move(log), [this, request, response]() -> absl::Status {
    LSTMSERVE_ASSIGN_OR_RETURN(auto entry, LstmSet(ctx_, request->parameter_set_id()));
    if (!request->has_x()) return absl::InvalidArgumentError("x is not set");
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry, request->x(), "x"));
    LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
    LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState next, entry->lstm->Step(x, state));
    StatesToProto(next, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Run(grpc::CallbackServerContext* context,
                                                    const v1::RunRequest* request, v1::RunResponse* response) {
  RpcLog log(context, "Run", request->parameter_set_id());
  return FinishUnaryOnPool(context, ctx_->compute, std::move(log), [this, request, response]() -> absl::Status {
    LSTMSERVE_ASSIGN_OR_RETURN(auto entry, LstmSet(ctx_, request->parameter_set_id()));
    if (!request->has_inputs()) return absl::InvalidArgumentError("inputs is not set");
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor inputs, Input(ctx_, *entry, request->inputs(), "inputs"));
    LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
    LSTMSERVE_ASSIGN_OR_RETURN(core::SequenceResult result,
                               entry->lstm->Run(inputs, state, !request->final_state_only()));
    if (result.outputs.defined()) TensorToProto(result.outputs, response->mutable_outputs());
    StatesToProto(result.final_state, response);
    return absl::OkStatus();
  });
}

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* InferenceServiceImpl::Session(
    grpc::CallbackServerContext* context) {
  RpcLog log(context, "Session", "");
  return new SessionReactor(ctx_, std::move(log));
}

}  // namespace lstmserve::server
