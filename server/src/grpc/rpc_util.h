// Helpers shared by the service adapters: per-call error logs, finishing reactors, and the
// parsing of requests that the services do themselves.
//
// Every method is registered raw (grpc::ByteBuffer in and out; the generated
// WithRawCallbackMethod_ classes) and parses its messages here, because gRPC's own parsing
// leaves the service no say: the callback unary handler answers a request it cannot parse
// with UNIMPLEMENTED and an empty message (CallbackUnaryHandler::RunHandler in
// grpcpp/impl/codegen/server_callback_handlers.h, gRPC 1.51), and a stream message it cannot
// parse reaches OnReadDone as ok=false, the same as the client's half-close
// (CallOpRecvMessage::FinishOp), so a Session would end OK with its later steps lost.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/access.h"
#include "lstmserve/server/engine/compute_pool.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/metrics.h"
#include "lstmserve/wire/conversions.h"

namespace lstmserve::server {

// The request context of one call, for its error log line.
class RpcLog {
 public:
  RpcLog(grpc::CallbackServerContext* context, absl::string_view method, absl::string_view set_id)
      : method_(method), peer_(context->peer()), set_id_(core::ClientText(set_id)) {}

  // Logs a failure (nothing for OK) and converts the status for the wire.
  grpc::Status Done(const absl::Status& status) const {
    if (!status.ok()) {
      const std::string detail = core::ServerDetail(status);
      LogError(absl::StrCat("rpc=", method_, " peer=", peer_, set_id_.empty() ? "" : " set=", set_id_,
                            " code=", absl::StatusCodeToString(status.code()), " message=\"", status.message(), "\"",
                            detail.empty() ? "" : absl::StrCat(" detail=\"", detail, "\"")));
    }
    return wire::ToGrpcStatus(status);
  }
  void set_set_id(absl::string_view id) { set_id_ = core::ClientText(id); }

 private:
  std::string method_;
  std::string peer_;
  std::string set_id_;
};

// Parses one message of a raw method. INVALID_ARGUMENT naming the message type and `what`
// (e.g. "the request", "message 3 of the stream") when the bytes are not that message.
template <typename Message>
absl::Status ParseMessage(const grpc::ByteBuffer& bytes, Message* out, absl::string_view what) {
  out->Clear();
  grpc::ByteBuffer view(bytes);  // shares the slices; the reader consumes the copy
  grpc::ProtoBufferReader reader(&view);
  if (!out->ParseFromZeroCopyStream(&reader)) {
    out->Clear();  // nothing of a message that did not parse is used, not even in a log line
    return absl::InvalidArgumentError(
        absl::StrCat(what, " (", bytes.Length(), " bytes) is not a valid ", Message::descriptor()->full_name(),
                     ": it could not be parsed as that protobuf message; use the messages of proto/"));
  }
  return absl::OkStatus();
}

// Serializes a reply of a raw method into `out` (emptied first: a stream reuses its buffer).
inline grpc::Status SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out) {
  out->Clear();
  bool own_buffer = false;
  return grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, out, &own_buffer);
}

// A unary call of a raw method: owns the parsed request and the response until Reply, which
// serializes the response into gRPC's buffer (when OK), finishes the call and frees them.
// The reactor is the context's default one: gRPC runs its completion inline, where a
// reactor of our own would cost a hop to gRPC's executor thread per call.
class UnaryCallBase {
 public:
  virtual ~UnaryCallBase() = default;
  virtual void Reply(grpc::Status status) = 0;  // once; the call object is gone after it

  // The call's hops, for Metrics::ObserveInferencePhases (Step and Run): set `phases` and
  // MarkValidated() when the job is queued; Reply then times the encoding and reports all
  // three (of successful calls only).
  Metrics* phases = nullptr;
  absl::Time received;         // before the request was parsed
  absl::Duration decode;       // parsing it
  absl::Duration validate;     // from parsed to queued
  absl::Duration encode_fill;  // the result written into the response message
  void MarkValidated() { validate = absl::Now() - received - decode; }
};

template <typename Request, typename Response>
class UnaryCall final : public UnaryCallBase {
 public:
  UnaryCall(grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* out) : reactor_(reactor), out_(out) {}
  Request request;
  Response response;
  void Reply(grpc::Status status) override {
    if (status.ok()) {
      const absl::Time start = phases != nullptr ? absl::Now() : absl::Time();
      status = SerializeMessage(response, out_);
      if (phases != nullptr && status.ok()) {
        phases->ObserveInferencePhases(decode, validate, encode_fill + (absl::Now() - start));
      }
    }
    grpc::ServerUnaryReactor* reactor = reactor_;
    delete this;  // nothing of the request or response is needed once the reply is serialized
    reactor->Finish(std::move(status));
  }

 private:
  grpc::ServerUnaryReactor* reactor_;
  grpc::ByteBuffer* out_;  // gRPC's, alive until the call is done
};

// UNAUTHENTICATED unless the access table (access.h) lets this call of `service`/`method`
// in: every entry point calls it before it reads or parses a message.
inline absl::Status Authorize(const ServiceContext* ctx, const grpc::CallbackServerContext* context,
                              absl::string_view service, absl::string_view method) {
  if (ctx->auth == nullptr) return absl::OkStatus();  // no tokens: no lookup on the hot path
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  return CheckAccess(ctx->auth, FindGrpcMethod(service, method),
                     it == metadata.end()
                         ? std::nullopt
                         : std::optional<absl::string_view>(absl::string_view(it->second.data(), it->second.size())));
}

// The entry of a raw unary method of `service`: checks the caller's access (Authorize),
// then parses the request and hands the call to `handler` (which finishes it with Reply);
// or finishes it with UNAUTHENTICATED or INVALID_ARGUMENT.
template <typename Request, typename Response, typename Handler>
grpc::ServerUnaryReactor* ParseUnary(const ServiceContext* ctx, grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* in, grpc::ByteBuffer* out, absl::string_view service,
                                     absl::string_view method, Handler&& handler) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto* call = new UnaryCall<Request, Response>(reactor, out);
  call->received = absl::Now();
  absl::Status parsed = Authorize(ctx, context, service, method);
  if (parsed.ok()) parsed = ParseMessage(*in, &call->request, "the request");
  call->decode = absl::Now() - call->received;
  if (!parsed.ok()) {
    call->Reply(RpcLog(context, method, "").Done(parsed));
  } else {
    handler(call);  // may Reply (and free the call) before it returns
  }
  return reactor;
}

// Runs `body` and finishes the unary call with its status.
template <typename Body>
void FinishUnary(grpc::CallbackServerContext* context, UnaryCallBase* call, const RpcLog& log, Body&& body) {
  absl::Status status = body();
  if (status.ok() && context->IsCancelled()) status = absl::CancelledError("the call was cancelled");
  call->Reply(log.Done(status));
}

// Runs `body` on the compute pool and finishes the unary call from there; the gRPC thread
// returns at once. `body` must capture by value what it needs beyond the call, which lives
// until it is finished.
template <typename Body>
void FinishUnaryOnPool(grpc::CallbackServerContext* context, UnaryCallBase* call, ComputePool* pool, RpcLog log,
                       Body body) {
  pool->Submit([context, call, log = std::move(log), body = std::move(body)]() mutable {
    absl::Status status =
        context->IsCancelled()
            ? absl::CancelledError("the call was cancelled or its deadline passed before it was computed")
            : body();
    call->Reply(log.Done(status));
  });
}

// Streams that fail before they start: `Reactor` is a ServerWriteReactor, ServerReadReactor
// or ServerBidiReactor type.
template <typename Reactor>
Reactor* FailedStream(grpc::Status status) {
  class Failed final : public Reactor {
   public:
    explicit Failed(grpc::Status s) { this->Finish(std::move(s)); }
    void OnDone() override { delete this; }
  };
  return new Failed(std::move(status));
}

// The call as the engine sees it: its deadline, and whether the client has gone.
inline CallControl GrpcCall(grpc::CallbackServerContext* context) {
  CallControl call;
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    call.deadline = absl::FromChrono(context->deadline());
  }
  call.cancelled = [context] { return context->IsCancelled(); };
  return call;
}

}  // namespace lstmserve::server
