// The access table (access.h), the token check, the HTTP router's route names and the HTTP
// status mapping, without a socket.
#include "lstmserve/server/access.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>

#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include "inference/grpc_service.pb.h"
#include "lstmserve/server/http/http_handler.h"
#include "lstmserve/v1/inference_service.pb.h"
#include "lstmserve/v1/parameter_service.pb.h"

namespace lstmserve::server {
namespace {

constexpr const char* kToken = "a-token-of-twenty-chars";

std::unique_ptr<TokenAuthenticator> Tokens(const std::string& text) {
  const auto path =
      std::filesystem::temp_directory_path() / ("lstmserve-tokens-" + std::to_string(std::random_device()()));
  std::ofstream(path) << text;
  auto auth = TokenAuthenticator::FromFile(path.string());
  std::filesystem::remove(path);
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : nullptr;
}

// Every method of every service the server registers has an entry, and every entry names a
// method that exists: a method added to a .proto is closed until declared, and the table
// holds no stale name.
TEST(AccessTest, TheTableDeclaresEveryMethodOfEveryService) {
  // Reference each file so that its descriptors are linked in.
  const google::protobuf::FileDescriptor* files[] = {v1::CreateParameterSetRequest::descriptor()->file(),
                                                     v1::StepRequest::descriptor()->file(),
                                                     inference::ModelInferRequest::descriptor()->file()};
  std::set<std::string> declared;
  for (const Method& m : GrpcMethods()) declared.insert(std::string(m.service) + "/" + m.name);
  std::set<std::string> ours;
  for (const auto* file : files) {
    ASSERT_NE(file, nullptr);
    for (int s = 0; s < file->service_count(); ++s) {
      const auto* service = file->service(s);
      for (int i = 0; i < service->method_count(); ++i) {
        const std::string path = service->full_name() + "/" + service->method(i)->name();
        ours.insert(path);
        EXPECT_TRUE(declared.count(path)) << path << " is not in the access table";
        EXPECT_EQ(std::string(FindGrpcMethod("/" + path).name), service->method(i)->name());
      }
    }
  }
  for (const std::string& path : declared) {
    if (path.rfind("grpc.", 0) == 0) continue;  // gRPC's own services, not in these files
    EXPECT_TRUE(ours.count(path)) << path << " is declared but no service has it";
  }
  EXPECT_EQ(ours.size(), 23u);
}

TEST(AccessTest, ProbesAreOpenAndEverythingElseIsGuarded) {
  std::set<std::string> probes;
  for (const Method& m : GrpcMethods()) {
    if (m.access == Access::kProbe) probes.insert(std::string(m.service) + "/" + m.name);
  }
  EXPECT_EQ(probes, (std::set<std::string>{"inference.GRPCInferenceService/ServerLive",
                                           "inference.GRPCInferenceService/ServerReady", "grpc.health.v1.Health/Check",
                                           "grpc.health.v1.Health/Watch",
                                           "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}));
  std::set<std::string> http_probes;
  for (const Method& m : HttpRoutes()) {
    if (m.access == Access::kProbe) http_probes.insert(m.name);
  }
  EXPECT_EQ(http_probes, (std::set<std::string>{"ServerLive", "ServerReady"}));
  // Unknown names fail closed.
  EXPECT_EQ(FindGrpcMethod("/lstmserve.v1.ParameterService/DropEverything").access, Access::kGuarded);
  EXPECT_EQ(FindGrpcMethod("no-slash").access, Access::kGuarded);
  EXPECT_EQ(FindGrpcMethod("/inference.GRPCInferenceService/ServerLiveX").access, Access::kGuarded);
  EXPECT_EQ(FindHttpRoute("").access, Access::kGuarded);
}

TEST(AccessTest, CheckAccessAsksForATokenOnlyWhereDeclared) {
  const auto auth = Tokens(std::string("# a comment\n\n") + kToken + "\n");
  ASSERT_NE(auth, nullptr);
  const Method infer = FindHttpRoute("ModelInfer");
  const Method live = FindHttpRoute("ServerLive");
  EXPECT_TRUE(CheckAccess(nullptr, infer, std::nullopt).ok()) << "a server without tokens";
  EXPECT_TRUE(CheckAccess(auth.get(), live, std::nullopt).ok());
  EXPECT_TRUE(CheckAccess(auth.get(), infer, std::string("Bearer ") + kToken).ok());
  for (const auto& value :
       {std::optional<std::string>(), std::optional<std::string>("Bearer wrong-token-of-20-chars"),
        std::optional<std::string>(kToken), std::optional<std::string>("Basic abc"),
        std::optional<std::string>(std::string("Bearer ") + kToken + "x"), std::optional<std::string>("")}) {
    const absl::Status s =
        CheckAccess(auth.get(), infer, value ? std::optional<absl::string_view>(*value) : std::nullopt);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << (value ? *value : "(none)");
    EXPECT_EQ(s.message().find(kToken), absl::string_view::npos) << "never echoes a token: " << s;
  }
}

TEST(AccessTest, TokenFilesAreChecked) {
  EXPECT_EQ(TokenAuthenticator::FromFile("/nonexistent/tokens").status().code(), absl::StatusCode::kInvalidArgument);
  const auto path =
      std::filesystem::temp_directory_path() / ("lstmserve-tokens-" + std::to_string(std::random_device()()));
  for (const char* text : {"", "# only a comment\n\n", "short\n"}) {
    std::ofstream(path) << text;
    EXPECT_EQ(TokenAuthenticator::FromFile(path.string()).status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << text << "'";
  }
  std::filesystem::remove(path);
}

TEST(AccessTest, EveryHttpRouteIsReachedByItsPathAndNothingElse) {
  struct Case {
    const char* method;
    const char* path;
    const char* route;
  };
  const Case cases[] = {
      {"GET", "/v2", "ServerMetadata"},
      {"GET", "/v2/health/live", "ServerLive"},
      {"GET", "/v2/health/ready", "ServerReady"},
      {"GET", "/v2/health/ready?x=1", "ServerReady"},
      {"GET", "/v2/models/m", "ModelMetadata"},
      {"GET", "/v2/models/m/versions/1", "ModelMetadata"},
      {"GET", "/v2/models/m/ready", "ModelReady"},
      {"GET", "/v2/models/m/versions/1/ready", "ModelReady"},
      {"GET", "/v2/models/m/config", "ModelConfig"},
      {"POST", "/v2/models/m/infer", "ModelInfer"},
      {"POST", "/v2/models/m/versions/1/infer", "ModelInfer"},
      {"GET", "/v2/models/stats", "ModelStatistics"},
      {"GET", "/v2/models/m/stats", "ModelStatistics"},
      {"GET", "/v2/models/m/versions/1/stats", "ModelStatistics"},
      {"POST", "/v2/repository/index", "RepositoryIndex"},
      {"POST", "/v2/repository/models/m/load", "RepositoryModelLoad"},
      {"POST", "/v2/repository/models/m/unload", "RepositoryModelUnload"},
      {"GET", "/v2/repository/index", ""},
      {"GET", "/v2/repository/models/m/load", ""},
      {"POST", "/v2/repository/models//load", ""},
      {"POST", "/v2/repository/models/m/drop", ""},
      {"POST", "/v2/repository/models/m/x/load", ""},
      {"POST", "/v2/models/m/stats", ""},
      {"POST", "/v2/health/live", ""},
      {"GET", "/v2/models/m/infer", ""},
      {"GET", "/v2/models/", ""},
      {"GET", "/v2/models/m/other", ""},
      {"GET", "/v2/models/m/versions//ready", ""},
      {"GET", "/v2/health/live/x", ""},
      {"GET", "/metrics", ""},
      {"DELETE", "/v2/models/m", ""},
  };
  std::set<std::string> reached;
  for (const Case& c : cases) {
    EXPECT_EQ(HttpRouteName(c.method, c.path), c.route) << c.method << " " << c.path;
    if (*c.route) reached.insert(c.route);
  }
  std::set<std::string> routes;
  for (const Method& m : HttpRoutes()) routes.insert(m.name);
  EXPECT_EQ(reached, routes) << "every route in the table has a path";
}

TEST(AccessTest, HttpStatusesFollowTheCodes) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kOk), 200);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kCancelled), 499);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDataLoss), 500);
}

}  // namespace
}  // namespace lstmserve::server
