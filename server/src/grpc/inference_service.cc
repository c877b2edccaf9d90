#include <chrono>
#include <random>

#include <ATen/ATen.h>
#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/oip/open_inference.h"
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
// call at once when building the job failed (counted as a failure of set `known` when the
// set was found).
template <typename Fill>
void SubmitUnary(ServiceContext* ctx, UnaryCallBase* call, RpcLog log, const CallControl& control,
                 const std::string& known, absl::StatusOr<BatchJob> job, Fill fill) {
  if (!job.ok()) {
    if (!known.empty()) ctx->engine->CountFailure(known, control);
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
  ctx->engine->Submit(control, *std::move(job));
}

// A new sequence id for a Session that names none: "session-" and 128 random bits in hex.
std::string NewSessionSequenceId() {
  unsigned char bits[16];
  if (RAND_bytes(bits, sizeof(bits)) != 1) {
    thread_local std::mt19937_64 rng(std::random_device{}());
    for (auto& b : bits) b = static_cast<unsigned char>(rng());
  }
  return absl::StrCat("session-", absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bits), 16)));
}

// A Session stream: start, then one step per x; strictly one read or write in flight. Its
// messages are parsed here (a raw method): one that does not parse ends the stream with
// INVALID_ARGUMENT, where gRPC's parsing would have looked like the client's half-close.
// When the server drains, the stream is finished with UNAVAILABLE as soon as it waits for
// its next message (a step in flight is answered first); its sequence stays in the store.
class SessionReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  SessionReactor(grpc::CallbackServerContext* context, ServiceContext* ctx, RpcLog log)
      : context_(context),
        ctx_(ctx),
        log_(std::move(log)),
        key_(absl::StrCat("stream:", reinterpret_cast<uintptr_t>(this))) {
    ctx_->engine->sequences().Open(
        key_, [context = context_] { context->TryCancel(); }, [this] { Drain(); });
    tracked_ = true;
    Read();
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;  // finished by a drain while this read waited
    }
    if (!ok) {  // the client closed its side, or the session was cancelled (idle, or draining)
      EndNamedByServer();
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
        Read();
      }
      return;
    }
    SequenceStepOfStream();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(absl::CancelledError("the client stopped reading the session"));
      return;
    }
    Read();
  }
  void OnDone() override {
    if (tracked_) ctx_->engine->sequences().Close(key_);  // before the context goes away
    delete this;
  }

 private:
  // Finishes the stream, once. Leaves the tracker first, so that a client that sees the
  // stream end can open a new session at once.
  void End(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    if (tracked_) {
      ctx_->engine->sequences().Close(key_);
      tracked_ = false;
    }
    Finish(log_.Done(status));
  }

  // The next message, unless the server drains.
  void Read() {
    {
      absl::MutexLock lock(&mu_);
      if (!draining_ && !ctx_->draining.load()) {  // (a stream opened as the drain began)
        reading_ = true;
        StartRead(&read_);  // its OnReadDone never runs inline
        return;
      }
    }
    End(DrainStatus());
  }

  // From the sequence store, under its lock, when the server starts draining (the tracker is
  // left in OnDone). A read pending is given up: its message, if one comes, is not applied.
  void Drain() {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    if (!reading_ || finished_) return;  // a step in flight: finished after its answer
    finished_ = true;
    Finish(log_.Done(DrainStatus()));  // OnReadDone(false) and OnDone follow, never inline
  }

  absl::Status DrainStatus() const {
    if (sequence_key_.empty() || !sequence_started_) {
      return absl::UnavailableError("this server is shutting down; open the session on another replica");
    }
    if (!ctx_->engine->sequences().backend().shared()) {
      return absl::UnavailableError(absl::StrCat(
          "this server is shutting down after ", step_, " steps of sequence ", sequence_shown_,
          "; its state is lost with this server's memory (--sequence_store=memory; a shared store keeps it)"));
    }
    return absl::UnavailableError(absl::StrCat("this server is shutting down; sequence ", sequence_shown_,
                                               " is kept at ", step_,
                                               " steps: resume it on another replica with a Session whose "
                                               "start.sequence_id names it"));
  }

  // A sequence the server named ends when its client closes its side of the stream; one
  // whose stream was cancelled (a broken connection, an idle or draining server) stays to be
  // resumed until it expires.
  void EndNamedByServer() {
    if (named_by_client_ || !sequence_started_ || context_->IsCancelled()) return;
    if (absl::Status ended = ctx_->engine->EndSequence(sequence_key_, sequence_shown_); !ended.ok()) {
      LogError(absl::StrCat("session: sequence ", sequence_shown_, " was not ended (it expires after ",
                            absl::FormatDuration(ctx_->engine->sequences().idle_timeout()),
                            " idle): ", ended.message()));
    }
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
    auto state = RequestState(ctx_, *entry_, start, "start.");
    if (!state.ok()) {
      entry_.reset();
      return state.status();
    }
    state_ = *std::move(state);
    if (!start.sequence_id().empty()) {
      if (absl::Status s = OpenSequence(start); !s.ok()) {
        entry_.reset();
        return s;
      }
    } else {
      sequence_id_ = NewSessionSequenceId();
      sequence_key_ = oip::SequenceKey(sequence_id_);
      sequence_shown_ = sequence_id_;
    }
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

  // A session on a stored sequence: resumes it when it is open (its state, its step count),
  // else its first step starts it.
  absl::Status OpenSequence(const v1::SessionStart& start) {
    LSTMSERVE_ASSIGN_OR_RETURN(sequence_key_, oip::CheckedSequenceKey(start.sequence_id(), "start.sequence_id"));
    named_by_client_ = true;
    sequence_id_ = start.sequence_id();
    sequence_shown_ = core::ClientText(start.sequence_id());
    absl::StatusOr<SequenceRecord> record = ctx_->engine->GetSequence(sequence_key_, sequence_shown_);
    if (absl::IsNotFound(record.status())) return absl::OkStatus();  // the first step starts it
    if (!record.ok()) return record.status();
    if (record->set_id != start.parameter_set_id()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", sequence_shown_, " runs on set '",
                                                     core::ClientText(record->set_id), "', not '",
                                                     core::ClientText(start.parameter_set_id()), "'"));
    }
    if (!state_.c.empty() || !state_.h.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", sequence_shown_, " is open at step ", record->steps,
                                                     ": a session that resumes it goes on from its state; give no "
                                                     "start.c and start.h"));
    }
    const int64_t batch = record->state.c.empty() ? batch_ : record->state.c.front().size(0);
    if (batch != batch_) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", sequence_shown_, " runs with batch size ", batch,
                                                     "; start.batch_size is ", batch_));
    }
    sequence_started_ = true;
    step_ = static_cast<int64_t>(record->steps);
    return absl::OkStatus();
  }

  // One step of a session on a stored sequence: through the sequence store, exactly once
  // (its sequence_step is the count this stream knows).
  void SequenceStepOfStream() {
    absl::StatusOr<at::Tensor> x = StepInput();
    if (!x.ok()) {
      End(x.status());
      return;
    }
    SequenceStep step;
    step.key = sequence_key_;
    step.shown = sequence_shown_;
    step.set = entry_;
    step.inputs = x->unsqueeze(0);
    step.start = !sequence_started_;
    if (step.start && !state_.c.empty()) step.state = state_;
    step.expected_step = static_cast<uint64_t>(step_);
    step.want_outputs = false;
    step.inputs_name = "x";
    step.state_name = "start.c and start.h";
    ctx_->engine->SubmitSequenceStep(GrpcCall(context_), std::move(step),
                                     [this](absl::StatusOr<SequenceAnswer> answer) {
                                       if (!answer.ok()) {
                                         End(answer.status());
                                         return;
                                       }
                                       sequence_started_ = true;
                                       state_ = std::move(answer->result.final_state);
                                       const int64_t before = step_;
                                       step_ = static_cast<int64_t>(answer->steps);
                                       Respond(before);
                                     });
  }

  void Respond(int64_t step) {
    response_.Clear();
    response_.set_step(step);
    response_.set_sequence_id(sequence_id_);
    TensorToProto(state_.h.back(), response_.mutable_output());
    if (return_state_) StatesToProto(state_, &response_);
    if (grpc::Status s = SerializeMessage(response_, &write_); !s.ok()) {
      End(wire::FromGrpcStatus(s));
      return;
    }
    StartWrite(&write_);
  }

  absl::StatusOr<at::Tensor> StepInput() {
    if (!request_.has_x()) return absl::InvalidArgumentError("after start, every SessionRequest must carry x");
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry_, request_.x(), "x"));
    if (x.dim() != 2 || x.size(0) != batch_ || x.size(1) != entry_->lstm->input_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("x is [", absl::StrJoin(x.sizes(), ", "), "]; the session's x must be [", batch_, ", ",
                       entry_->lstm->input_size(), "] (its batch_size, the set's input_size)"));
    }
    return x;
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
  const std::string key_;  // the stream's, in the sequence store's idle tracking
  bool tracked_ = false;   // tracked there
  absl::Mutex mu_;         // between the stream's callbacks and a drain
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The stored sequence the steps go to: start.sequence_id, or one the server named.
  bool named_by_client_ = false;
  std::string sequence_id_;
  std::string sequence_key_;
  std::string sequence_shown_;
  bool sequence_started_ = false;  // it is open (resumed, or started by a step of this stream)
};

}  // namespace

grpc::ServerUnaryReactor* InferenceServiceImpl::Step(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return ParseUnary<v1::StepRequest, v1::StepResponse>(ctx_, context, in, out, kService, "Step", [&](auto* call) {
    const v1::StepRequest* request = &call->request;
    RpcLog log(context, "Step", request->parameter_set_id());
    const CallControl control = GrpcCall(context);
    std::string known;  // the set, once found
    absl::StatusOr<BatchJob> job = [&]() -> absl::StatusOr<BatchJob> {
      LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->engine->LstmSet(request->parameter_set_id()));
      known = entry->stored.id;
      if (!request->has_x()) return absl::InvalidArgumentError("x is not set");
      LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor x, Input(ctx_, *entry, request->x(), "x"));
      if (x.dim() != 2 || x.size(1) != entry->lstm->input_size()) {
        return absl::InvalidArgumentError(absl::StrCat("x is [", absl::StrJoin(x.sizes(), ", "),
                                                       "]; the set's x must be [batch, ", entry->lstm->input_size(),
                                                       "] (its input_size)"));
      }
      LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
      return ctx_->engine->MakeJob(control, std::move(entry), x.unsqueeze(0), std::move(state),
                                   /*want_outputs=*/false);
    }();
    v1::StepResponse* response = &call->response;
    SubmitUnary(ctx_, call, std::move(log), control, known, std::move(job),
                [response](const core::SequenceResult& result) { StatesToProto(result.final_state, response); });
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Run(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                                    grpc::ByteBuffer* out) {
  return ParseUnary<v1::RunRequest, v1::RunResponse>(ctx_, context, in, out, kService, "Run", [&](auto* call) {
    const v1::RunRequest* request = &call->request;
    RpcLog log(context, "Run", request->parameter_set_id());
    const CallControl control = GrpcCall(context);
    std::string known;  // the set, once found
    absl::StatusOr<BatchJob> job = [&]() -> absl::StatusOr<BatchJob> {
      LSTMSERVE_ASSIGN_OR_RETURN(auto entry, ctx_->engine->LstmSet(request->parameter_set_id()));
      known = entry->stored.id;
      if (!request->has_inputs()) return absl::InvalidArgumentError("inputs is not set");
      LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor inputs, Input(ctx_, *entry, request->inputs(), "inputs"));
      LSTMSERVE_ASSIGN_OR_RETURN(core::LstmState state, RequestState(ctx_, *entry, *request, ""));
      return ctx_->engine->MakeJob(control, std::move(entry), std::move(inputs), std::move(state),
                                   !request->final_state_only());
    }();
    v1::RunResponse* response = &call->response;
    SubmitUnary(ctx_, call, std::move(log), control, known, std::move(job),
                [response](const core::SequenceResult& result) {
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

grpc::ServerUnaryReactor* InferenceServiceImpl::GetSequence(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
  return ParseUnary<v1::GetSequenceRequest, v1::GetSequenceResponse>(
      ctx_, context, in, out, kService, "GetSequence", [&](auto* call) {
        const v1::GetSequenceRequest* request = &call->request;
        v1::GetSequenceResponse* response = &call->response;
        RpcLog log(context, "GetSequence", "");
        FinishUnary(context, call, log, [&]() -> absl::Status {
          std::string key, shown;
          switch (request->sequence_id_case()) {
            case v1::GetSequenceRequest::kUint64Id:
              key = oip::SequenceKey(request->uint64_id());
              shown = absl::StrCat(request->uint64_id());
              break;
            case v1::GetSequenceRequest::kStringId: {
              LSTMSERVE_ASSIGN_OR_RETURN(key, oip::CheckedSequenceKey(request->string_id(), "string_id"));
              shown = core::ClientText(request->string_id());
              break;
            }
            default: break;
          }
          if (key.empty()) return absl::InvalidArgumentError("give uint64_id (nonzero) or string_id (not empty)");
          LSTMSERVE_ASSIGN_OR_RETURN(SequenceRecord record, ctx_->engine->GetSequence(key, shown));
          response->set_parameter_set_id(record.set_id);
          response->set_parameter_set_checksum(record.set_checksum);
          response->set_sequence_step(record.steps);
          if (!record.state.c.empty()) response->set_batch_size(record.state.c.front().size(0));
          if (request->include_state()) StatesToProto(record.state, response);
          return absl::OkStatus();
        });
      });
}

}  // namespace lstmserve::server
