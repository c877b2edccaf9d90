// Every method of every gRPC service the server registers, and every HTTP route, against the
// real server with bearer tokens: without a token and with a wrong one a guarded method
// answers UNAUTHENTICATED (HTTP 401 with a JSON error) before it reads its body, which is
// not a valid message; a probe answers; with a right token the same body reaches the parser
// (INVALID_ARGUMENT / 400).
#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "inference/grpc_service.pb.h"
#include "lstmserve/server/access.h"
#include "lstmserve/server/http/http_handler.h"
#include "lstmserve/v1/inference_service.pb.h"
#include "lstmserve/v1/parameter_service.pb.h"
#include "server_process.h"

namespace lstmserve {
namespace {

using testing::ServerProcess;
using testing::TempDir;

constexpr const char* kToken = "auth-test-token-0123456789";
constexpr const char* kWrongToken = "auth-test-token-9876543210";
// Not a protobuf message (a field with wire type 7) and not JSON.
const std::string kGarbage = "\x0f\xff\xff{not json";

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    std::ofstream(dir_->path() + "/tokens") << kToken << "\n";
    auto server =
        ServerProcess::Start(dir_->path() + "/store", {"--auth_tokens_file=" + dir_->path() + "/tokens"}, dir_->path());
    if (server.ok())
      server_ = server->release();
    else
      error_ = new std::string(server.status().ToString());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr) << *error_; }

  // One call of `path` through a generic stub: one message `body`, then half-close, read
  // until the server ends it (bounded by a 5 s deadline). Works for every method type.
  static grpc::Status Call(const std::string& path, const std::optional<std::string>& token,
                           std::string* first_reply = nullptr) {
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    grpc::GenericStub stub(channel);
    grpc::CompletionQueue cq;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (token) context.AddMetadata("authorization", "Bearer " + *token);
    auto call = stub.PrepareCall(&context, path, &cq);
    void* tag = nullptr;
    bool ok = false;
    auto step = [&](int id) {
      EXPECT_TRUE(cq.Next(&tag, &ok));
      EXPECT_EQ(tag, reinterpret_cast<void*>(static_cast<intptr_t>(id)));
      return ok;
    };
    call->StartCall(reinterpret_cast<void*>(1));
    if (step(1)) {
      grpc::Slice slice(kGarbage);
      grpc::ByteBuffer message(&slice, 1);
      call->Write(message, reinterpret_cast<void*>(2));
      if (step(2)) {
        call->WritesDone(reinterpret_cast<void*>(3));
        step(3);
      }
      grpc::ByteBuffer reply;
      for (int i = 0; i < 100; ++i) {
        call->Read(&reply, reinterpret_cast<void*>(4));
        if (!step(4)) break;
        if (i == 0 && first_reply != nullptr) {
          std::vector<grpc::Slice> slices;
          (void)reply.Dump(&slices);
          for (const auto& slice : slices)
            first_reply->append(reinterpret_cast<const char*>(slice.begin()), slice.size());
        }
      }
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    step(5);
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }

  static TempDir* dir_;
  static ServerProcess* server_;
  static std::string* error_;
};

TempDir* AuthTest::dir_ = nullptr;
ServerProcess* AuthTest::server_ = nullptr;
std::string* AuthTest::error_ = nullptr;

TEST_F(AuthTest, EveryGrpcMethodChecksItsTokenBeforeItParses) {
  const google::protobuf::FileDescriptor* files[] = {v1::CreateParameterSetRequest::descriptor()->file(),
                                                     v1::StepRequest::descriptor()->file(),
                                                     inference::ModelInferRequest::descriptor()->file()};
  int guarded = 0;
  for (const auto* file : files) {
    for (int s = 0; s < file->service_count(); ++s) {
      const auto* service = file->service(s);
      for (int i = 0; i < service->method_count(); ++i) {
        const std::string path = "/" + service->full_name() + "/" + service->method(i)->name();
        const bool probe = server::FindGrpcMethod(path).access == server::Access::kProbe;
        for (const auto& token : {std::optional<std::string>(), std::optional<std::string>(kWrongToken)}) {
          const grpc::Status s = Call(path, token);
          if (probe) {
            EXPECT_NE(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << path << ": a probe needs no token";
          } else {
            EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
                << path << (token ? " (wrong token): " : " (no token): ") << s.error_message();
            EXPECT_NE(s.error_message().find("token"), std::string::npos) << path << ": " << s.error_message();
          }
        }
        // With a right token the garbage reaches the parser.
        std::string reply;
        const grpc::Status parsed = Call(path, std::string(kToken), &reply);
        if (service->method(i)->name() == "ModelStreamInfer") {
          // The protocol's stream answers each request's error in a message and goes on.
          inference::ModelStreamInferResponse answer;
          ASSERT_TRUE(answer.ParseFromString(reply)) << path;
          EXPECT_NE(answer.error_message().find("could not be parsed"), std::string::npos) << answer.error_message();
        } else {
          EXPECT_EQ(parsed.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path << ": " << parsed.error_message();
        }
        guarded += probe ? 0 : 1;
      }
    }
  }
  EXPECT_EQ(guarded, 21);
}

TEST_F(AuthTest, GrpcHealthAndReflectionAreProbes) {
  for (const char* path :
       {"/grpc.health.v1.Health/Check", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}) {
    EXPECT_NE(Call(path, std::nullopt).error_code(), grpc::StatusCode::UNAUTHENTICATED) << path;
  }
  // A method no service has never reaches the server's code: gRPC answers it itself.
  EXPECT_EQ(Call("/lstmserve.v1.ParameterService/NoSuchMethod", std::nullopt).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(AuthTest, EveryHttpRouteChecksItsTokenBeforeItReadsTheBody) {
  struct Route {
    const char* method;
    const char* path;
    int with_token;  // the status with a right token
  };
  const std::map<std::string, Route> routes = {
      {"ServerLive", {"GET", "/v2/health/live", 200}},
      {"ServerReady", {"GET", "/v2/health/ready", 200}},
      {"ServerMetadata", {"GET", "/v2", 200}},
      {"ModelMetadata", {"GET", "/v2/models/none", 404}},
      {"ModelReady", {"GET", "/v2/models/none/ready", 400}},
      {"ModelConfig", {"GET", "/v2/models/none/config", 404}},
      {"ModelInfer", {"POST", "/v2/models/none/infer", 400}},  // the garbage body does not parse
      {"ModelStatistics", {"GET", "/v2/models/none/stats", 404}},
      {"RepositoryIndex", {"POST", "/v2/repository/index", 400}},
      {"RepositoryModelLoad", {"POST", "/v2/repository/models/none/load", 400}},
      {"RepositoryModelUnload", {"POST", "/v2/repository/models/none/unload", 400}},
  };
  const std::string& address = server_->http_address();
  ASSERT_FALSE(address.empty());
  httplib::Client http(address.substr(0, address.rfind(':')), std::stoi(address.substr(address.rfind(':') + 1)));
  http.set_read_timeout(10, 0);
  for (const server::Method& m : server::HttpRoutes()) {
    ASSERT_TRUE(routes.count(m.name)) << m.name << " has no case here";
    const Route& r = routes.at(m.name);
    ASSERT_EQ(server::HttpRouteName(r.method, r.path), m.name);
    auto send = [&](const std::optional<std::string>& token) {
      httplib::Headers headers;
      if (token) headers.emplace("Authorization", "Bearer " + *token);
      return std::string(r.method) == "POST" ? http.Post(r.path, headers, kGarbage, "application/json")
                                             : http.Get(r.path, headers);
    };
    for (const auto& token : {std::optional<std::string>(), std::optional<std::string>(kWrongToken)}) {
      auto res = send(token);
      ASSERT_TRUE(res) << m.name;
      if (m.access == server::Access::kProbe) {
        EXPECT_EQ(res->status, 200) << m.name;
      } else {
        EXPECT_EQ(res->status, 401) << m.name << (token ? " (wrong token)" : " (no token)");
        EXPECT_NE(res->body.find("\"error\""), std::string::npos) << m.name << ": " << res->body;
      }
    }
    auto res = send(std::string(kToken));
    ASSERT_TRUE(res) << m.name;
    EXPECT_EQ(res->status, r.with_token) << m.name << ": " << res->body;
  }
}

}  // namespace
}  // namespace lstmserve
