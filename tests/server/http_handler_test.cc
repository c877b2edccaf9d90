// The HTTP front end's handler without a socket: a request in, an answer out, over a real
// engine, batcher and store.
#include "lstmserve/server/http/http_handler.h"

#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine_fixture.h"

namespace lstmserve::server {
namespace {

using json = nlohmann::json;

class HttpHandlerTest : public ::testing::Test, protected EngineWithOneSet {
 protected:
  void SetUp() override {
    BatchOptions batching;
    batching.inline_max_work = 0;  // every inference through the queue, where cancellation is seen
    StartEngine(core::LstmTemplate{1, 3, 4}, batching, &ctx_.draining);
    ctx_.registry = registry_.get();
    ctx_.engine = engine_.get();
    ctx_.oip = oip_.get();
  }
  void TearDown() override { StopEngine(); }

  void UseTokens() {
    const auto path = dir_ / "tokens";
    std::ofstream(path) << "a-token-of-twenty-chars\n";
    auto auth = TokenAuthenticator::FromFile(path.string());
    ASSERT_TRUE(auth.ok()) << auth.status();
    auth_ = *std::move(auth);
    ctx_.auth = auth_.get();
  }

  static HttpRequest Request(std::string method, std::string target,
                             std::vector<std::pair<std::string, std::string>> headers = {}, std::string body = "") {
    HttpRequest r;
    r.method = std::move(method);
    r.target = std::move(target);
    r.headers = std::move(headers);
    r.body = std::move(body);
    r.peer = "test";
    return r;
  }

  HttpResponse Handle(HttpRequest request) {
    std::promise<HttpResponse> answer;
    auto future = answer.get_future();
    HttpHandler(&ctx_).Handle(std::move(request), [&](HttpResponse r) { answer.set_value(std::move(r)); });
    return future.get();
  }

  static std::string Error(const HttpResponse& r) {
    EXPECT_EQ(r.content_type, "application/json");
    const json body = json::parse(r.body, nullptr, false);
    EXPECT_TRUE(body.is_object() && body.contains("error")) << r.body;
    return body.is_object() && body.contains("error") ? body["error"].get<std::string>() : "";
  }

  static constexpr const char* kInfer =
      R"({"inputs": [{"name": "INPUT", "shape": [2, 1, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]})";

  std::unique_ptr<TokenAuthenticator> auth_;
  ServiceContext ctx_;
};

TEST_F(HttpHandlerTest, FramingAProxyCouldReadAnotherWayIsRefusedBeforeTheBody) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> headers;
    int status;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{{"Content-Length", "10"}, {"content-length", "10"}}, 400, "more than one Content-Length"},
      {{{"Content-Length", "10"}, {"Content-Length", "12"}}, 400, "more than one Content-Length"},
      {{{"Transfer-Encoding", "chunked"}, {"Content-Length", "3"}}, 400, "both Content-Length and Transfer-Encoding"},
      {{{"Transfer-Encoding", "gzip, chunked"}}, 400, "Transfer-Encoding \"gzip, chunked\" is not supported"},
      {{{"Transfer-Encoding", "chunked"}, {"Transfer-Encoding", "chunked"}}, 400, "is not supported"},
      {{{"Inference-Header-Content-Length", "3"}, {"inference-header-content-length", "4"}},
       400,
       "more than one Inference-Header-Content-Length"},
      {{{"Content-Encoding", "gzip"}}, 415, "Content-Encoding \"gzip\" is not supported"},
  };
  HttpHandler handler(&ctx_);
  for (const Case& c : cases) {
    const auto refused = handler.Admit(Request("POST", "/v2/models/m/infer", c.headers));
    ASSERT_TRUE(refused.has_value()) << c.says;
    EXPECT_EQ(refused->status, c.status) << c.says;
    EXPECT_NE(Error(*refused).find(c.says), std::string::npos) << Error(*refused);
  }
  EXPECT_FALSE(handler.Admit(Request("POST", "/v2/models/m/infer", {{"Content-Length", "10"}})).has_value());
  EXPECT_FALSE(handler.Admit(Request("POST", "/v2/models/m/infer", {{"Transfer-Encoding", "Chunked"}})).has_value());
  EXPECT_FALSE(handler.Admit(Request("POST", "/v2/models/m/infer", {{"Content-Encoding", "identity"}})).has_value());
}

TEST_F(HttpHandlerTest, TooManyHeadersAndUnknownRoutesAreRefusedWithJson) {
  HttpHandler handler(&ctx_);
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i <= kMaxHttpHeaders; ++i) many.emplace_back("X-" + std::to_string(i), "1");
  auto refused = handler.Admit(Request("GET", "/v2", many));
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 431);
  EXPECT_NE(Error(*refused).find("at most 100"), std::string::npos);
  many.pop_back();
  EXPECT_FALSE(handler.Admit(Request("GET", "/v2", many)).has_value());

  for (const auto& [method, path] : std::vector<std::pair<std::string, std::string>>{
           {"BREW", "/v2"}, {"GET", "/v3"}, {"DELETE", "/v2/models/m"}, {"GET", "/v2/models/m/infer"}}) {
    refused = handler.Admit(Request(method, path));
    ASSERT_TRUE(refused.has_value()) << method << " " << path;
    EXPECT_EQ(refused->status, 404);
    EXPECT_NE(Error(*refused).find("no such endpoint: " + method + " " + path), std::string::npos);
  }
}

TEST_F(HttpHandlerTest, WithTokensTheTokenIsCheckedFirstAndProbesNeedNone) {
  UseTokens();
  HttpHandler handler(&ctx_);
  // No token: 401 even where the framing or the path is wrong too, so nothing else is told.
  for (const HttpRequest& r :
       {Request("POST", "/v2/models/m/infer"),
        Request("POST", "/v2/models/m/infer", {{"Content-Length", "1"}, {"Content-Length", "2"}}),
        Request("GET", "/nowhere"), Request("GET", "/v2/models/m/ready")}) {
    const auto refused = handler.Admit(r);
    ASSERT_TRUE(refused.has_value()) << r.target;
    EXPECT_EQ(refused->status, 401) << r.target;
    EXPECT_FALSE(Error(*refused).empty());
  }
  EXPECT_EQ(handler.Admit(Request("GET", "/v2", {{"Authorization", "Bearer wrong-token-0123456789"}}))->status, 401);
  EXPECT_FALSE(handler.Admit(Request("GET", "/v2", {{"authorization", "Bearer a-token-of-twenty-chars"}})).has_value());
  EXPECT_FALSE(handler.Admit(Request("GET", "/v2/health/live")).has_value());
  EXPECT_FALSE(handler.Admit(Request("GET", "/v2/health/ready")).has_value());
}

TEST_F(HttpHandlerTest, ProbesAndMetadataAreAnsweredAtOnce) {
  for (const char* path : {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/m", "/v2/models/m/ready",
                           "/v2/models/m/versions/1/config"}) {
    EXPECT_TRUE(HttpHandler::Immediate(Request("GET", path))) << path;
  }
  EXPECT_FALSE(HttpHandler::Immediate(Request("POST", "/v2/models/m/infer")));

  EXPECT_EQ(Handle(Request("GET", "/v2/health/live")).status, 200);
  EXPECT_EQ(Handle(Request("GET", "/v2/health/ready")).status, 200);
  EXPECT_EQ(Handle(Request("GET", "/v2/models/m/ready")).status, 200);
  EXPECT_EQ(Handle(Request("GET", "/v2/models/nope/ready")).status, 400);
  const HttpResponse server = Handle(Request("GET", "/v2?verbose=1"));
  EXPECT_EQ(server.status, 200);
  EXPECT_EQ(json::parse(server.body)["name"], "lstmserve");
  const HttpResponse model = Handle(Request("GET", "/v2/models/m"));
  EXPECT_EQ(model.status, 200);
  EXPECT_EQ(json::parse(model.body)["name"], "m");
  const HttpResponse missing = Handle(Request("GET", "/v2/models/nope"));
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(Error(missing).find("nope"), std::string::npos) << missing.body;
  const HttpResponse bad_name = Handle(Request("GET", "/v2/models/no%20such"));  // the escape is decoded
  EXPECT_EQ(bad_name.status, 400);
  EXPECT_NE(Error(bad_name).find("'no such' has a character outside"), std::string::npos) << bad_name.body;
  ctx_.draining = true;
  EXPECT_EQ(Handle(Request("GET", "/v2/health/ready")).status, 400);
  EXPECT_EQ(Handle(Request("GET", "/v2/models/m/ready")).status, 400);
  EXPECT_EQ(Handle(Request("GET", "/v2/health/live")).status, 200);
}

TEST_F(HttpHandlerTest, AnInferenceIsDecodedComputedAndEncoded) {
  const HttpResponse r = Handle(Request("POST", "/v2/models/m/infer", {}, kInfer));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/json");
  const json body = json::parse(r.body);
  EXPECT_EQ(body["model_name"], "m");
  bool found = false;
  for (const auto& output : body["outputs"]) {
    if (output["name"] != "OUTPUT") continue;
    found = true;
    EXPECT_EQ(output["shape"], json::array({2, 1, 4}));
    EXPECT_EQ(output["data"].size(), 8u);
  }
  EXPECT_TRUE(found) << r.body;
  EXPECT_EQ(batcher_->stats().requests, 1);

  const HttpResponse bad = Handle(Request("POST", "/v2/models/m/infer", {}, "[[[["));
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(Error(bad).find("not valid JSON"), std::string::npos) << bad.body;
}

TEST_F(HttpHandlerTest, TheDecoderRefusesDepthAndBreadthThatWouldCostMemory) {
  struct Case {
    std::string body;
    std::string says;
  };
  const std::string deep(1 << 20, '[');
  std::string wide = R"({"inputs": [], "x": [)";
  for (int i = 0; i < 70000; ++i) wide += "[],";
  wide += "[]]}";
  const std::vector<Case> cases = {
      {deep, "nested over 32 deep"},
      {R"({"inputs": [{"name": "INPUT", "shape": [1], "datatype": "FP32", "data": )" + deep, "nested over 8 lists"},
      {wide, "over 65536 JSON values"},
      {R"({"inputs": [{"name": "INPUT", "shape": [2], "datatype": "FP32", "data": [1, [2]]}]})", "mixes numbers"},
      {R"({"inputs": [{"name": "INPUT", "shape": [2], "datatype": "FP32", "data": [1, "2"]}]})",
       "INPUT.data must hold numbers"},
      {R"({"inputs": [{"name": "INPUT", "shape": [2], "datatype": "FP32", "data": [1, 2], "datatype": "FP16"}]})",
       "names two datatypes"},
  };
  for (const Case& c : cases) {
    const HttpResponse r = Handle(Request("POST", "/v2/models/m/infer", {}, c.body));
    EXPECT_EQ(r.status, 400) << c.says;
    EXPECT_NE(Error(r).find(c.says), std::string::npos) << Error(r);
  }
}

TEST_F(HttpHandlerTest, StatisticsAndTheRepositoryAnswerTritonsJson) {
  for (const char* path : {"/v2/models/stats", "/v2/models/m/stats"}) {
    EXPECT_FALSE(HttpHandler::Immediate(Request("GET", path))) << path << ": goes to a worker";
  }
  EXPECT_FALSE(HttpHandler::Immediate(Request("POST", "/v2/repository/models/m/load")));
  ASSERT_EQ(Handle(Request("POST", "/v2/models/m/infer", {}, kInfer)).status, 200);

  const HttpResponse stats = Handle(Request("GET", "/v2/models/m/versions/1/stats"));
  ASSERT_EQ(stats.status, 200) << stats.body;
  const json m = json::parse(stats.body)["model_stats"][0];
  EXPECT_EQ(m["name"], "m");
  EXPECT_EQ(m["version"], "1");
  EXPECT_EQ(m["inference_count"], 1);
  EXPECT_EQ(m["execution_count"], 1);
  for (const char* phase : {"success", "queue", "compute_input", "compute_infer", "compute_output"}) {
    EXPECT_EQ(m["inference_stats"][phase]["count"], 1) << phase;
  }
  EXPECT_EQ(m["inference_stats"]["fail"]["count"], 0);
  EXPECT_GT(m["inference_stats"]["compute_infer"]["ns"].get<uint64_t>(), 0u);
  EXPECT_EQ(m["batch_stats"][0]["batch_size"], 1);
  EXPECT_EQ(json::parse(Handle(Request("GET", "/v2/models/stats")).body)["model_stats"].size(), 1u);
  EXPECT_EQ(Handle(Request("GET", "/v2/models/nope/stats")).status, 404);

  const auto index = [&](const std::string& body) {
    const HttpResponse r = Handle(Request("POST", "/v2/repository/index", {}, body));
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body, nullptr, false);
  };
  EXPECT_EQ(index(""), json::parse(R"([{"name": "m", "version": "1", "state": "READY", "reason": ""}])"));
  const HttpResponse unload =
      Handle(Request("POST", "/v2/repository/models/m/unload", {}, R"({"parameters": {"unload_dependents": false}})"));
  EXPECT_EQ(unload.status, 200) << unload.body;
  EXPECT_EQ(index("{}")[0]["reason"], "unloaded");
  EXPECT_EQ(index(R"({"ready": true})"), json::array());
  EXPECT_EQ(Handle(Request("POST", "/v2/models/m/infer", {}, kInfer)).status, 400);
  EXPECT_EQ(Handle(Request("POST", "/v2/repository/models/m/load", {}, "{}")).status, 200);
  EXPECT_EQ(index("")[0]["state"], "READY");
  EXPECT_EQ(Handle(Request("POST", "/v2/models/m/infer", {}, kInfer)).status, 200);

  // Bodies the calls refuse, each with its reason.
  const struct {
    const char* path;
    const char* body;
    int status;
    const char* fragment;
  } refused[] = {
      {"/v2/repository/index", "[1]", 400, "must be empty or a JSON object"},
      {"/v2/repository/index", R"({"ready": 1})", 400, "\"ready\" must be a boolean"},
      {"/v2/repository/index", R"({"repository": "x"})", 400, "takes only \"ready\""},
      {"/v2/repository/models/m/load", R"({"parameters": {"config": "{}"}})", 400, "load takes no parameters"},
      {"/v2/repository/models/m/load", R"({"parameters": 3})", 400, "holds only \"parameters\""},
      {"/v2/repository/models/m/unload", R"({"parameters": {"force": true}})", 400, "only the parameter"},
      {"/v2/repository/models/nope/load", "", 404, "'nope' not found"},
      {"/v2/repository/models/nope/unload", "", 404, "'nope' not found"},
  };
  for (const auto& c : refused) {
    const HttpResponse r = Handle(Request("POST", c.path, {}, c.body));
    EXPECT_EQ(r.status, c.status) << c.path << " " << c.body << ": " << r.body;
    EXPECT_NE(Error(r).find(c.fragment), std::string::npos) << r.body;
  }
}

TEST_F(HttpHandlerTest, DataDecodesTheSameWhereverItsDatatypeIs) {
  // The datatype before the data (decoded straight into its bytes) or after it (kept as
  // numbers until then), flat or nested: the same answer.
  const std::vector<std::string> bodies = {
      kInfer,
      R"({"inputs": [{"data": [1, 2, 3, 4, 5, 6], "name": "INPUT", "shape": [2, 1, 3], "datatype": "FP32"}]})",
      R"({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 1, 3], "data": [[[1, 2, 3]], [[4, 5, 6]]]}]})",
      R"({"inputs": [{"data": [[[1, 2, 3]], [[4, 5, 6]]], "shape": [2, 1, 3], "datatype": "FP32", "name": "INPUT"}]})",
  };
  const std::string expected = Handle(Request("POST", "/v2/models/m/infer", {}, bodies[0])).body;
  for (const std::string& body : bodies) {
    const HttpResponse r = Handle(Request("POST", "/v2/models/m/infer", {}, body));
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, expected) << body;
  }
}

TEST_F(HttpHandlerTest, AnInferenceWhoseClientHasGoneIsNeverComputed) {
  HttpRequest request = Request("POST", "/v2/models/m/infer", {}, kInfer);
  request.cancelled = [] { return true; };
  const HttpResponse r = Handle(std::move(request));
  EXPECT_EQ(r.status, 499);
  EXPECT_NE(Error(r).find("cancelled"), std::string::npos) << r.body;
  EXPECT_EQ(batcher_->stats().cancelled, 1);
  EXPECT_EQ(batcher_->stats().requests, 0);
}

TEST_F(HttpHandlerTest, RoutesNameTheirModelAndVersionDecoded) {
  HttpRoute route = FindHttpRouteOf("POST", "/v2/models/my%2Dmodel/versions/3/infer?x=1");
  EXPECT_EQ(route.name, "ModelInfer");
  EXPECT_EQ(route.model, "my-model");
  EXPECT_EQ(route.version, "3");
  route = FindHttpRouteOf("GET", "/v2/models/a%zzb");
  EXPECT_EQ(route.name, "ModelMetadata");
  EXPECT_EQ(route.model, "a%zzb");  // not an escape: kept as sent
  EXPECT_EQ(route.version, "");
  EXPECT_EQ(FindHttpRouteOf("GET", "/v2/models/m/versions//ready").name, "");
}

}  // namespace
}  // namespace lstmserve::server
