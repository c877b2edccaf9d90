// gRPC adapters (callback API) over the set registry and the core.
#pragma once

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/batcher.h"
#include "lstmserve/server/compute_pool.h"
#include "lstmserve/server/session_tracker.h"
#include "lstmserve/server/options.h"
#include "lstmserve/server/security.h"
#include "lstmserve/server/set_registry.h"
#include "lstmserve/v1/inference_service.grpc.pb.h"
#include "lstmserve/v1/parameter_service.grpc.pb.h"

namespace lstmserve::server {

// What the services share. Outlives the services.
struct ServiceContext {
  SetRegistry* registry = nullptr;
  ComputePool* compute = nullptr;  // runs Create (set initialization)
  Batcher* batcher = nullptr;      // runs Step, Run and Session steps
  SessionTracker* sessions = nullptr;
  const TokenAuthenticator* auth = nullptr;  // null: no token needed
  ServerOptions options;
  core::CreateLimits create_limits;
};

class ParameterServiceImpl final : public v1::ParameterService::CallbackService {
 public:
  explicit ParameterServiceImpl(ServiceContext* context) : ctx_(context) {}

  grpc::ServerUnaryReactor* CreateParameterSet(grpc::CallbackServerContext* context,
                                               const v1::CreateParameterSetRequest* request,
                                               v1::CreateParameterSetResponse* response) override;
  grpc::ServerUnaryReactor* GetParameterSet(grpc::CallbackServerContext* context,
                                            const v1::GetParameterSetRequest* request,
                                            v1::GetParameterSetResponse* response) override;
  grpc::ServerUnaryReactor* ListParameterSets(grpc::CallbackServerContext* context,
                                              const v1::ListParameterSetsRequest* request,
                                              v1::ListParameterSetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteParameterSet(grpc::CallbackServerContext* context,
                                               const v1::DeleteParameterSetRequest* request,
                                               v1::DeleteParameterSetResponse* response) override;
  grpc::ServerWriteReactor<v1::ExportParameterSetResponse>* ExportParameterSet(
      grpc::CallbackServerContext* context, const v1::ExportParameterSetRequest* request) override;
  grpc::ServerReadReactor<v1::ImportParameterSetRequest>* ImportParameterSet(
      grpc::CallbackServerContext* context, v1::ImportParameterSetResponse* response) override;
  grpc::ServerUnaryReactor* AnalyzeParameterSet(grpc::CallbackServerContext* context,
                                                const v1::AnalyzeParameterSetRequest* request,
                                                v1::AnalyzeParameterSetResponse* response) override;

 private:
  ServiceContext* ctx_;
};

class InferenceServiceImpl final : public v1::InferenceService::CallbackService {
 public:
  explicit InferenceServiceImpl(ServiceContext* context) : ctx_(context) {}

  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context, const v1::StepRequest* request,
                                 v1::StepResponse* response) override;
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context, const v1::RunRequest* request,
                                v1::RunResponse* response) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* context) override;

 private:
  ServiceContext* ctx_;
};

// The set's metadata as the wire shows it.
void EntryToProto(const SetEntry& entry, v1::ParameterSet* out);

}  // namespace lstmserve::server
