// Helpers shared by the service adapters: per-call error logs, finishing reactors.
#pragma once

#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "lstmserve/server/compute_pool.h"
#include "lstmserve/wire/conversions.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/services.h"

namespace lstmserve::server {

// The request context of one call, for its error log line.
class RpcLog {
 public:
  RpcLog(grpc::CallbackServerContext* context, absl::string_view method, absl::string_view set_id)
      : method_(method), peer_(context->peer()), set_id_(set_id) {}

  // Logs a failure (nothing for OK) and converts the status for the wire.
  grpc::Status Done(const absl::Status& status) const {
    if (!status.ok()) {
      LogError(absl::StrCat("rpc=", method_, " peer=", peer_, set_id_.empty() ? "" : " set=", set_id_,
                            " code=", absl::StatusCodeToString(status.code()), " message=\"", status.message(), "\""));
    }
    return wire::ToGrpcStatus(status);
  }
  void set_set_id(absl::string_view id) { set_id_ = std::string(id); }

 private:
  std::string method_;
  std::string peer_;
  std::string set_id_;
};

// Runs `body` and finishes the unary call with its status.
template <typename Body>
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, const RpcLog& log, Body&& body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = body();
  if (status.ok() && context->IsCancelled()) status = absl::CancelledError("the call was cancelled");
  reactor->Finish(log.Done(status));
  return reactor;
}

// Runs `body` on the compute pool and finishes the unary call from there; the gRPC thread
// returns at once. `body` must capture by value what it needs beyond request and response,
// which live until the call is finished.
template <typename Body>
grpc::ServerUnaryReactor* FinishUnaryOnPool(grpc::CallbackServerContext* context, ComputePool* pool, RpcLog log,
                                            Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool->Submit([context, reactor, log = std::move(log), body = std::move(body)]() mutable {
    absl::Status status =
        context->IsCancelled()
            ? absl::CancelledError("the call was cancelled or its deadline passed before it was computed")
            : body();
    reactor->Finish(log.Done(status));
  });
  return reactor;
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

// UNAUTHENTICATED unless the call carries a valid bearer token, when the server has tokens.
inline absl::Status Authorize(const ServiceContext* ctx, const grpc::CallbackServerContext* context) {
  return ctx->auth == nullptr ? absl::OkStatus() : ctx->auth->Check(*context);
}

}  // namespace lstmserve::server
