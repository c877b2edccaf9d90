#include "lstmserve/server/access.h"

#include "absl/strings/strip.h"

namespace lstmserve::server {
namespace {

constexpr const char* kParameters = "lstmserve.v1.ParameterService";
constexpr const char* kInference = "lstmserve.v1.InferenceService";
constexpr const char* kOip = "inference.GRPCInferenceService";

constexpr Method kGrpc[] = {
    {kParameters, "CreateParameterSet", Access::kGuarded},
    {kParameters, "GetParameterSet", Access::kGuarded},
    {kParameters, "ListParameterSets", Access::kGuarded},
    {kParameters, "DeleteParameterSet", Access::kGuarded},
    {kParameters, "ExportParameterSet", Access::kGuarded},
    {kParameters, "ImportParameterSet", Access::kGuarded},
    {kParameters, "AnalyzeParameterSet", Access::kGuarded},
    {kInference, "Step", Access::kGuarded},
    {kInference, "Run", Access::kGuarded},
    {kInference, "Session", Access::kGuarded},
    {kInference, "GetSequence", Access::kGuarded},
    {kOip, "ServerLive", Access::kProbe},
    {kOip, "ServerReady", Access::kProbe},
    {kOip, "ModelReady", Access::kGuarded},
    {kOip, "ServerMetadata", Access::kGuarded},
    {kOip, "ModelMetadata", Access::kGuarded},
    {kOip, "ModelInfer", Access::kGuarded},
    {kOip, "ModelStreamInfer", Access::kGuarded},
    {kOip, "ModelConfig", Access::kGuarded},
    {kOip, "ModelStatistics", Access::kGuarded},
    {kOip, "RepositoryIndex", Access::kGuarded},
    {kOip, "RepositoryModelLoad", Access::kGuarded},
    {kOip, "RepositoryModelUnload", Access::kGuarded},
    // gRPC's own: Kubernetes' grpc probes and grpcurl call them without a token.
    {"grpc.health.v1.Health", "Check", Access::kProbe},
    {"grpc.health.v1.Health", "Watch", Access::kProbe},
    {"grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", Access::kProbe},
};

constexpr Method kHttp[] = {
    {kHttpService, "ServerLive", Access::kProbe},
    {kHttpService, "ServerReady", Access::kProbe},
    {kHttpService, "ServerMetadata", Access::kGuarded},
    {kHttpService, "ModelReady", Access::kGuarded},
    {kHttpService, "ModelMetadata", Access::kGuarded},
    {kHttpService, "ModelConfig", Access::kGuarded},
    {kHttpService, "ModelInfer", Access::kGuarded},
    {kHttpService, "ModelStatistics", Access::kGuarded},
    {kHttpService, "RepositoryIndex", Access::kGuarded},
    {kHttpService, "RepositoryModelLoad", Access::kGuarded},
    {kHttpService, "RepositoryModelUnload", Access::kGuarded},
};

}  // namespace

absl::Span<const Method> GrpcMethods() { return kGrpc; }
absl::Span<const Method> HttpRoutes() { return kHttp; }

Method FindGrpcMethod(absl::string_view service, absl::string_view name) {
  for (const Method& m : kGrpc) {
    if (service == m.service && name == m.name) return m;
  }
  return {"", "", Access::kGuarded};
}

Method FindGrpcMethod(absl::string_view path) {
  absl::ConsumePrefix(&path, "/");
  const size_t slash = path.find('/');
  if (slash == absl::string_view::npos) return {"", "", Access::kGuarded};
  return FindGrpcMethod(path.substr(0, slash), path.substr(slash + 1));
}

Method FindHttpRoute(absl::string_view name) {
  for (const Method& m : kHttp) {
    if (name == m.name) return m;
  }
  return {kHttpService, "", Access::kGuarded};
}

absl::Status CheckAccess(const TokenAuthenticator* auth, const Method& method,
                         std::optional<absl::string_view> authorization) {
  if (auth == nullptr || method.access == Access::kProbe) return absl::OkStatus();
  return auth->Check(authorization);
}

}  // namespace lstmserve::server
