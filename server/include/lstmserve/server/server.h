// The lstmserve server: owns and joins the parts under lstmserve/server/.
//   engine/  the protocol-neutral engine: set registry, batcher, sequences, compute pool, clock
//   oip/     the Open Inference Protocol's logic (OpenInference) and its JSON form
//   grpc/    the gRPC front ends: lstmserve.v1 (ParameterService, InferenceService) and
//            inference.GRPCInferenceService, thin adapters over the engine and oip/
//   http/    the protocol's HTTP/REST front end: the handler (no socket) and its transport
//   access.h, security.h, options.h, metrics.h, log.h: what every part shares
// Start opens the store and starts the engine, the metrics, gRPC (with health and
// reflection) and HTTP; Drain stops them in order.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

#include "lstmserve/server/engine/compute_pool.h"
#include "lstmserve/server/engine/set_registry.h"
#include "lstmserve/server/grpc/services.h"
#include "lstmserve/server/http/http_service.h"
#include "lstmserve/server/metrics.h"
#include "lstmserve/server/options.h"

namespace lstmserve::server {

class Server {
 public:
  // Resolves the device, opens and loads the store, and starts listening. Logs one line per
  // step. INVALID_ARGUMENT for a bad option or a file an option names (TLS, tokens);
  // FAILED_PRECONDITION for a device that is not there or a store folder that is not
  // writable; UNAVAILABLE when it cannot bind (gRPC or metrics).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // "HOST:PORT" with the port actually bound.
  const std::string& address() const { return address_; }
  // "HOST:PORT" of /metrics, or empty when metrics_listen is empty.
  const std::string& metrics_address() const { return metrics_address_; }
  // "HOST:PORT" of the HTTP/REST API, or empty when http_listen is empty.
  const std::string& http_address() const { return http_address_; }
  const Batcher& batcher() const { return *batcher_; }

  // Health goes NOT_SERVING (and the protocol's ready false) and new calls get UNAVAILABLE;
  // the HTTP API stops accepting and answers what it has received; gRPC calls already
  // received have up to drain_timeout to finish, then are cancelled. Returns when the
  // server has stopped.
  void Drain();

 private:
  Server() = default;
  // The steps of Start, in order: metrics and the store loaded; the engine (batcher,
  // sequence store, protocol logic) and what the front ends share; /metrics; the gRPC
  // services on their port. Each logs its line; the first failure stops Start.
  absl::Status LoadStore(const c10::Device& device);
  absl::Status StartEngine(int batch_threads);
  absl::Status StartMetrics();
  absl::Status StartGrpc(const TlsFiles& tls);

  ServerOptions options_;
  std::string address_;
  std::string metrics_address_;
  std::string http_address_;
  // Destroyed in reverse: the server first (it waits for every call to finish), then the
  // pool (it runs what is queued), then what the pool's tasks use; the metrics last (the
  // destructor stops their HTTP endpoint first, as its scrapes read the others).
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<SetRegistry> registry_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<ServiceContext> context_;
  std::unique_ptr<ComputePool> compute_;
  std::unique_ptr<ModelStatistics> statistics_;  // before the batcher and the engine, which record in it
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<SequenceStore> sequences_;
  std::unique_ptr<InferenceEngine> engine_;
  std::unique_ptr<oip::OpenInference> oip_;
  std::unique_ptr<ParameterServiceImpl> parameter_service_;
  std::unique_ptr<InferenceServiceImpl> inference_service_;
  std::unique_ptr<OipGrpcService> oip_grpc_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpService> http_;
};

}  // namespace lstmserve::server
