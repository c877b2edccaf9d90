// gRPC adapters (callback API) over the set registry and the core.
#pragma once

#include <atomic>

#include "inference/grpc_service.grpc.pb.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/engine/batcher.h"
#include "lstmserve/server/engine/compute_pool.h"
#include "lstmserve/server/engine/inference_engine.h"
#include "lstmserve/server/engine/set_registry.h"
#include "lstmserve/server/metrics.h"
#include "lstmserve/server/oip/open_inference.h"
#include "lstmserve/server/options.h"
#include "lstmserve/server/security.h"
#include "lstmserve/v1/inference_service.grpc.pb.h"
#include "lstmserve/v1/parameter_service.grpc.pb.h"

namespace lstmserve::server {

// What the services share. Outlives the services.
struct ServiceContext {
  SetRegistry* registry = nullptr;
  ComputePool* compute = nullptr;            // runs Create (set initialization)
  InferenceEngine* engine = nullptr;         // runs Step, Run, Session steps and OIP inferences
  const TokenAuthenticator* auth = nullptr;  // null: no token needed
  Metrics* metrics = nullptr;                // null in tests without one
  const oip::OpenInference* oip = nullptr;   // the Open Inference Protocol's front ends
  ServerOptions options;
  core::CreateLimits create_limits;
  std::atomic<bool> draining{false};  // set by Server::Drain: not ready any more
};

// The generated services with every method raw (grpc::ByteBuffer in and out): the adapters
// parse and serialize their messages themselves, so that a message that does not parse gets
// INVALID_ARGUMENT with a message (see rpc_util.h for why gRPC's parsing cannot give one).
namespace raw {
using PS = v1::ParameterService;
using ParameterService = PS::WithRawCallbackMethod_CreateParameterSet<PS::WithRawCallbackMethod_GetParameterSet<
    PS::WithRawCallbackMethod_ListParameterSets<PS::WithRawCallbackMethod_DeleteParameterSet<
        PS::WithRawCallbackMethod_ExportParameterSet<PS::WithRawCallbackMethod_ImportParameterSet<
            PS::WithRawCallbackMethod_AnalyzeParameterSet<PS::Service>>>>>>>;
using IS = v1::InferenceService;
using InferenceService = IS::WithRawCallbackMethod_Step<IS::WithRawCallbackMethod_Run<
    IS::WithRawCallbackMethod_Session<IS::WithRawCallbackMethod_GetSequence<IS::Service>>>>;
using GIS = inference::GRPCInferenceService;
using OipService =
    GIS::WithRawCallbackMethod_ServerLive<GIS::WithRawCallbackMethod_ServerReady<GIS::WithRawCallbackMethod_ModelReady<
        GIS::WithRawCallbackMethod_ServerMetadata<GIS::WithRawCallbackMethod_ModelMetadata<
            GIS::WithRawCallbackMethod_ModelInfer<GIS::WithRawCallbackMethod_ModelStreamInfer<
                GIS::WithRawCallbackMethod_ModelConfig<GIS::WithRawCallbackMethod_ModelStatistics<
                    GIS::WithRawCallbackMethod_RepositoryIndex<GIS::WithRawCallbackMethod_RepositoryModelLoad<
                        GIS::WithRawCallbackMethod_RepositoryModelUnload<GIS::Service>>>>>>>>>>>>;
}  // namespace raw

class ParameterServiceImpl final : public raw::ParameterService {
 public:
  explicit ParameterServiceImpl(ServiceContext* context) : ctx_(context) {}

  grpc::ServerUnaryReactor* CreateParameterSet(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetParameterSet(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListParameterSets(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                              grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteParameterSet(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExportParameterSet(grpc::CallbackServerContext* context,
                                                                 const grpc::ByteBuffer* request) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* ImportParameterSet(grpc::CallbackServerContext* context,
                                                                grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AnalyzeParameterSet(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                                grpc::ByteBuffer* response) override;

 private:
  ServiceContext* ctx_;
};

class InferenceServiceImpl final : public raw::InferenceService {
 public:
  explicit InferenceServiceImpl(ServiceContext* context) : ctx_(context) {}

  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Session(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetSequence(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;

 private:
  ServiceContext* ctx_;
};

// The Open Inference Protocol's gRPC front end (inference.GRPCInferenceService) over
// ServiceContext::oip. ServerLive and ServerReady need no token (they are probes); the
// other methods do, when the server has tokens.
class OipGrpcService final : public raw::OipService {
 public:
  explicit OipGrpcService(ServiceContext* context) : ctx_(context) {}
  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ModelStreamInfer(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                                grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) override;

 private:
  ServiceContext* ctx_;
};

// The set's metadata as the wire shows it.
void EntryToProto(const SetEntry& entry, v1::ParameterSet* out);

}  // namespace lstmserve::server
