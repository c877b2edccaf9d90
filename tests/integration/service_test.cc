// The real lstmserve binary over loopback, driven through the C++ client and raw stubs:
// sets equal the reference's bits, inference equals stack_lstm, sets survive restarts, a
// drain loses no call in flight, and every RPC answers bad input with the right code.
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/client/client.h"
#include "lstmserve/wire/conversions.h"
#include "reference_data.h"
#include "server_process.h"

namespace lstmserve {
namespace {

using testing::Field;
using testing::ServerProcess;
using testing::TempDir;

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return 1e30;
  return (a - b).abs().max().item<double>();
}

std::vector<at::Tensor> Tensors(const c10::IValue& list) {
  std::vector<at::Tensor> out;
  for (const auto& v : testing::Items(list)) out.push_back(v.toTensor());
  return out;
}

v1::ParameterSetSpec LstmSpec(int64_t layers, int64_t input, int64_t hidden, uint64_t seed) {
  v1::ParameterSetSpec spec;
  spec.mutable_lstm()->set_num_layers(layers);
  spec.mutable_lstm()->set_input_size(input);
  spec.mutable_lstm()->set_hidden_size(hidden);
  spec.set_seed(seed);
  return spec;
}

std::unique_ptr<client::Client> Connect(const ServerProcess& server) {
  client::ClientOptions options;
  options.target = server.address();
  return client::Client::Connect(options);
}

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::empty(shape).normal_(0, 1, gen);
}

// One server for the suite (restarts and drains start their own).
class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    store_ = new TempDir();
    auto server = ServerProcess::Start(store_->path(), {"--max_set_bytes=100000000"});
    if (server.ok())
      server_ = server->release();
    else
      start_error_ = new std::string(server.status().ToString());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete store_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << *start_error_;
    client_ = Connect(*server_);
  }
  static TempDir* store_;
  static ServerProcess* server_;
  static std::string* start_error_;
  std::unique_ptr<client::Client> client_;
};
TempDir* ServiceTest::store_ = nullptr;
ServerProcess* ServiceTest::server_ = nullptr;
std::string* ServiceTest::start_error_ = nullptr;

TEST_F(ServiceTest, HealthIsServing) {
  auto health = client_->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, "SERVING");
}

TEST_F(ServiceTest, CreatedSetsAreBitIdenticalToTheReference) {
  struct Case {
    int64_t layers, input, hidden;
    uint64_t seed;
  };
  for (const Case& c : {Case{1, 3, 2, 0}, Case{2, 64, 64, 42}, Case{3, 10, 20, 123456789}}) {
    const std::string id = absl::StrCat("ref-", c.layers, "-", c.input, "-", c.hidden, "-", c.seed);
    auto created = client_->Create(LstmSpec(c.layers, c.input, c.hidden, c.seed), id);
    ASSERT_TRUE(created.ok()) << created.status();
    EXPECT_EQ(created->id(), id);
    EXPECT_EQ(created->lstm().num_layers(), c.layers);
    v1::ParameterSet meta;
    auto exported = client_->Export(id, &meta);  // the client verifies the checksum
    ASSERT_TRUE(exported.ok()) << exported.status();
    EXPECT_EQ(meta.checksum(), created->checksum());
    TempDir dir;
    const std::string file = dir.path() + "/set.safetensors";
    ASSERT_TRUE(client::WriteTensorFile(file, exported->tensors).ok());
    const std::string cmd =
        absl::StrCat(LSTMSERVE_PYTHON, " ", LSTMSERVE_READ_SAFETENSORS, " ", file, " --reference-dir '",
                     LSTMSERVE_REFERENCE_DIR, "' --seed ", c.seed, " --lstm ", c.layers, ",", c.input, ",", c.hidden);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

TEST_F(ServiceTest, SameSpecAndSeedGiveTheSameChecksum) {
  auto a = client_->Create(LstmSpec(2, 8, 8, 5), "same-a");
  auto b = client_->Create(LstmSpec(2, 8, 8, 5), "same-b");
  auto c = client_->Create(LstmSpec(2, 8, 8, 6), "same-c");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->checksum(), b->checksum());
  EXPECT_NE(a->checksum(), c->checksum());
}

TEST_F(ServiceTest, StepAndRunMatchStackLstmWithin1e5) {
  auto reference = testing::LoadReference();
  ASSERT_TRUE(reference.ok()) << reference.status();
  int index = 0;
  for (const auto& item : testing::Items(Field(*reference, "lstm_runs"))) {
    const std::string id = absl::StrCat("run-", index++);
    std::vector<core::NamedTensor> tensors;
    const auto weights = Tensors(Field(item, "weights"));
    const auto biases = Tensors(Field(item, "biases"));
    for (size_t l = 0; l < weights.size(); ++l) tensors.push_back({core::LstmWeightName(l), weights[l]});
    for (size_t l = 0; l < biases.size(); ++l) tensors.push_back({core::LstmBiasName(l), biases[l]});
    auto imported = client_->Import(tensors, id);
    ASSERT_TRUE(imported.ok()) << imported.status();
    ASSERT_TRUE(imported->has_lstm());
    core::LstmState initial;
    if (!Field(item, "zero_state").toBool()) {
      initial.c = Tensors(Field(item, "c0"));
      initial.h = Tensors(Field(item, "h0"));
    }
    const at::Tensor x = Field(item, "x").toTensor();
    auto step = client_->Step(id, x[0], initial);
    ASSERT_TRUE(step.ok()) << step.status();
    const auto step_h = Tensors(Field(item, "step_h"));
    const auto step_c = Tensors(Field(item, "step_c"));
    for (size_t l = 0; l < step_h.size(); ++l) {
      EXPECT_LE(MaxAbsDiff(step->h[l], step_h[l]), 1e-5) << id << " step h[" << l << "]";
      EXPECT_LE(MaxAbsDiff(step->c[l], step_c[l]), 1e-5) << id << " step c[" << l << "]";
    }
    auto run = client_->Run(id, x, initial);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_LE(MaxAbsDiff(run->outputs, Field(item, "seq_out").toTensor()), 1e-5) << id;
    const auto seq_c = Tensors(Field(item, "seq_c"));
    EXPECT_LE(MaxAbsDiff(run->final_state.c.back(), seq_c.back()), 1e-5) << id;
    auto final_only = client_->Run(id, x, initial, /*final_state_only=*/true);
    ASSERT_TRUE(final_only.ok());
    EXPECT_FALSE(final_only->outputs.defined());
    // Not bit-equal on the BLAS path: the top layer's h lands in a scratch buffer instead of
    // the outputs, and OpenBLAS's results depend on operand alignment in the last bits.
    EXPECT_LE(MaxAbsDiff(final_only->final_state.h.back(), run->final_state.h.back()), 1e-6);
  }
}

TEST_F(ServiceTest, SessionKeepsStateLikeChainedSteps) {
  ASSERT_TRUE(client_->Create(LstmSpec(2, 6, 5, 9), "session-set").ok());
  auto session = client_->OpenSession("session-set", 3, {}, /*return_state=*/true);
  ASSERT_TRUE(session.ok()) << session.status();
  core::LstmState chained;
  for (int t = 0; t < 5; ++t) {
    const at::Tensor x = Randn({3, 6}, 100 + t);
    core::LstmState state;
    auto out = (*session)->Step(x, &state);
    ASSERT_TRUE(out.ok()) << out.status();
    auto step = client_->Step("session-set", x, chained);
    ASSERT_TRUE(step.ok());
    chained = *step;
    EXPECT_TRUE(at::equal(*out, chained.h.back())) << "step " << t;
    EXPECT_TRUE(at::equal(state.c[0], chained.c[0])) << "step " << t;
  }
  EXPECT_TRUE((*session)->Close().ok());
}

TEST_F(ServiceTest, ListPagesThroughEverySetInIdOrder) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(client_->Create(LstmSpec(1, 2, 2, i), absl::StrCat("page-", i)).ok());
  auto all = client_->List(/*page_size=*/2);
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> ids;
  for (const auto& s : *all) ids.push_back(s.id());
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  for (int i = 0; i < 5; ++i) EXPECT_NE(std::find(ids.begin(), ids.end(), absl::StrCat("page-", i)), ids.end());
}

TEST_F(ServiceTest, ExportImportRoundTripAndDelete) {
  ASSERT_TRUE(client_->Create(LstmSpec(2, 4, 3, 1), "round").ok());
  v1::ParameterSet meta;
  auto exported = client_->Export("round", &meta);
  ASSERT_TRUE(exported.ok());
  auto imported = client_->Import(exported->tensors, "round-copy", meta.checksum(), /*chunk_bytes=*/7);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->checksum(), meta.checksum());
  EXPECT_EQ(imported->origin(), v1::SET_ORIGIN_IMPORTED);
  auto wrong = client_->Import(exported->tensors, "round-wrong", "sha256:00");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument) << wrong.status();
  EXPECT_EQ(client_->Get("round-wrong").status().code(), absl::StatusCode::kNotFound)
      << "a refused import stored something";
  ASSERT_TRUE(client_->Delete("round-copy").ok());
  EXPECT_EQ(client_->Get("round-copy").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Delete("round-copy").code(), absl::StatusCode::kNotFound);
}

// Every RPC, malformed: the code and a message naming the problem.
TEST_F(ServiceTest, BadInputGetsTheRightCodeAndAUsefulMessage) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto params = v1::ParameterService::NewStub(channel);
  auto infer = v1::InferenceService::NewStub(channel);
  ASSERT_TRUE(client_->Create(LstmSpec(2, 4, 3, 1), "bad-input-set").ok());
  v1::ParameterSetSpec list_spec;
  auto* t = list_spec.mutable_tensor_list()->add_tensors();
  t->set_name("linear");
  t->add_shape(3);
  t->add_shape(2);
  ASSERT_TRUE(client_->Create(list_spec, "not-an-lstm").ok());

  auto create = [&](std::function<void(v1::CreateParameterSetRequest&)> edit) {
    v1::CreateParameterSetRequest r;
    *r.mutable_spec() = LstmSpec(1, 2, 2, 1);
    edit(r);
    v1::CreateParameterSetResponse resp;
    grpc::ClientContext ctx;
    return params->CreateParameterSet(&ctx, r, &resp);
  };
  auto step = [&](std::function<void(v1::StepRequest&)> edit) {
    v1::StepRequest r;
    r.set_parameter_set_id("bad-input-set");
    wire::TensorToProto(at::zeros({2, 4}), r.mutable_x());
    edit(r);
    v1::StepResponse resp;
    grpc::ClientContext ctx;
    return infer->Step(&ctx, r, &resp);
  };
  auto run = [&](std::function<void(v1::RunRequest&)> edit) {
    v1::RunRequest r;
    r.set_parameter_set_id("bad-input-set");
    wire::TensorToProto(at::zeros({3, 2, 4}), r.mutable_inputs());
    edit(r);
    v1::RunResponse resp;
    grpc::ClientContext ctx;
    return infer->Run(&ctx, r, &resp);
  };
  const float nan = std::nanf("");
  struct Case {
    std::string what;
    std::function<grpc::Status()> call;
    grpc::StatusCode code;
    std::string message_part;
  };
  std::vector<Case> cases = {
      {"create without spec", [&] { return create([](auto& r) { r.clear_spec(); }); }, grpc::INVALID_ARGUMENT,
       "spec is not set"},
      {"create without layout", [&] { return create([](auto& r) { r.mutable_spec()->clear_lstm(); }); },
       grpc::INVALID_ARGUMENT, "no layout"},
      {"create 0 layers", [&] { return create([](auto& r) { r.mutable_spec()->mutable_lstm()->set_num_layers(0); }); },
       grpc::INVALID_ARGUMENT, "num_layers must be >= 1"},
      {"create negative hidden",
       [&] { return create([](auto& r) { r.mutable_spec()->mutable_lstm()->set_hidden_size(-4); }); },
       grpc::INVALID_ARGUMENT, "hidden_size must be >= 1"},
      {"create overflowing sizes",
       [&] { return create([](auto& r) { r.mutable_spec()->mutable_lstm()->set_hidden_size(int64_t{1} << 62); }); },
       grpc::INVALID_ARGUMENT, "overflow"},
      {"create over the set limit",
       [&] { return create([](auto& r) { r.mutable_spec()->mutable_lstm()->set_hidden_size(4096); }); },
       grpc::RESOURCE_EXHAUSTED, "limit"},
      {"create id ../x", [&] { return create([](auto& r) { r.set_parameter_set_id("../x"); }); },
       grpc::INVALID_ARGUMENT, "parameter_set_id"},
      {"create duplicate id", [&] { return create([](auto& r) { r.set_parameter_set_id("bad-input-set"); }); },
       grpc::ALREADY_EXISTS, "already exists"},
      {"create bfloat16 on CPU",
       [&] { return create([](auto& r) { r.mutable_spec()->set_dtype(v1::DATA_TYPE_BFLOAT16); }); },
       grpc::INVALID_ARGUMENT, "CUDA only"},
      {"create unknown fan convention",
       [&] { return create([](auto& r) { r.mutable_spec()->set_fan_convention(static_cast<v1::FanConvention>(9)); }); },
       grpc::INVALID_ARGUMENT, "fan_convention"},
      {"create trunc_normal a > b",
       [&] {
         return create([](auto& r) {
           auto* tn = r.mutable_spec()->mutable_lstm()->mutable_weight_initializer()->mutable_trunc_normal();
           tn->set_a(1);
           tn->set_b(-1);
         });
       },
       grpc::INVALID_ARGUMENT, "a must be < b"},
      {"create normal std < 0",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->mutable_lstm()->mutable_weight_initializer()->mutable_normal()->set_std(-1);
         });
       },
       grpc::INVALID_ARGUMENT, "std must be >= 0"},
      {"create orthogonal bias",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->mutable_lstm()->set_bias(true);
           r.mutable_spec()->mutable_lstm()->mutable_bias_initializer()->mutable_orthogonal();
         });
       },
       grpc::INVALID_ARGUMENT, "orthogonal needs"},
      {"create duplicate tensor names",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->clear_lstm();
           for (int i = 0; i < 2; ++i) {
             auto* x = r.mutable_spec()->mutable_tensor_list()->add_tensors();
             x->set_name("a");
             x->add_shape(2);
             x->mutable_initializer()->mutable_zeros();
           }
         });
       },
       grpc::INVALID_ARGUMENT, "used twice"},
      {"create empty tensor list", [&] { return create([](auto& r) { r.mutable_spec()->mutable_tensor_list(); }); },
       grpc::INVALID_ARGUMENT, "tensor_list.tensors is empty"},
      {"get unknown",
       [&] {
         v1::GetParameterSetRequest r;
         r.set_parameter_set_id("nope");
         v1::GetParameterSetResponse o;
         grpc::ClientContext c;
         return params->GetParameterSet(&c, r, &o);
       },
       grpc::NOT_FOUND, "not found"},
      {"get empty id",
       [&] {
         v1::GetParameterSetRequest r;
         v1::GetParameterSetResponse o;
         grpc::ClientContext c;
         return params->GetParameterSet(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "is empty"},
      {"list negative page",
       [&] {
         v1::ListParameterSetsRequest r;
         r.set_page_size(-1);
         v1::ListParameterSetsResponse o;
         grpc::ClientContext c;
         return params->ListParameterSets(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "page_size"},
      {"list bad token",
       [&] {
         v1::ListParameterSetsRequest r;
         r.set_page_token("garbage");
         v1::ListParameterSetsResponse o;
         grpc::ClientContext c;
         return params->ListParameterSets(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "page_token"},
      {"delete unknown",
       [&] {
         v1::DeleteParameterSetRequest r;
         r.set_parameter_set_id("nope");
         v1::DeleteParameterSetResponse o;
         grpc::ClientContext c;
         return params->DeleteParameterSet(&c, r, &o);
       },
       grpc::NOT_FOUND, "not found"},
      {"step unknown set", [&] { return step([](auto& r) { r.set_parameter_set_id("nope"); }); }, grpc::NOT_FOUND,
       "not found"},
      {"step on a non-LSTM set", [&] { return step([](auto& r) { r.set_parameter_set_id("not-an-lstm"); }); },
       grpc::FAILED_PRECONDITION, "not a stacked LSTM"},
      {"step without x", [&] { return step([](auto& r) { r.clear_x(); }); }, grpc::INVALID_ARGUMENT, "x is not set"},
      {"step dtype unset", [&] { return step([](auto& r) { r.mutable_x()->set_dtype(v1::DATA_TYPE_UNSPECIFIED); }); },
       grpc::INVALID_ARGUMENT, "x.dtype is not set"},
      {"step dtype differs", [&] { return step([](auto& r) { r.mutable_x()->set_dtype(v1::DATA_TYPE_FLOAT16); }); },
       grpc::INVALID_ARGUMENT, "the parameter set is float32"},
      {"step data length", [&] { return step([](auto& r) { r.mutable_x()->mutable_data()->pop_back(); }); },
       grpc::INVALID_ARGUMENT, "x.data has 31 bytes"},
      {"step negative size", [&] { return step([](auto& r) { r.mutable_x()->set_shape(0, -2); }); },
       grpc::INVALID_ARGUMENT, "sizes must be >= 1"},
      {"step empty batch",
       [&] {
         return step([](auto& r) {
           r.mutable_x()->set_shape(0, 0);
           r.mutable_x()->clear_data();
         });
       },
       grpc::INVALID_ARGUMENT, "sizes must be >= 1"},
      {"step overflowing shape",
       [&] {
         return step([](auto& r) {
           r.mutable_x()->set_shape(0, int64_t{1} << 40);
           r.mutable_x()->set_shape(1, int64_t{1} << 40);
         });
       },
       grpc::INVALID_ARGUMENT, "more elements than an int64"},
      {"step over --max_tensor_elements",
       [&] { return step([](auto& r) { r.mutable_x()->set_shape(0, int64_t{1} << 40); }); }, grpc::RESOURCE_EXHAUSTED,
       "exceeds the limit of"},
      {"step wrong input size",
       [&] { return step([](auto& r) {
               wire::TensorToProto(at::zeros({2, 5}), r.mutable_x());
             }); },
       grpc::INVALID_ARGUMENT, "x is [2, 5]; the set's x must be [batch, 4] (its input_size)"},
      {"step NaN input",
       [&] {
         return step([&](auto& r) {
           auto x = at::zeros({2, 4});
           x[0][1] = nan;
           wire::TensorToProto(x, r.mutable_x());
         });
       },
       grpc::INVALID_ARGUMENT, "NaN or infinity"},
      {"step wrong number of layers",
       [&] { return step([](auto& r) {
               wire::TensorToProto(at::zeros({2, 3}), r.add_c());
             }); }, grpc::INVALID_ARGUMENT,
       "c has 1 tensors; the set has 2 layers"},
      {"step state of wrong batch",
       [&] {
         return step([](auto& r) {
           for (int l = 0; l < 2; ++l) wire::TensorToProto(at::zeros({5, 3}), r.add_h());
         });
       },
       grpc::INVALID_ARGUMENT, "h[0] must be [2, 3]"},
      {"run 2-D inputs",
       [&] { return run([](auto& r) {
               wire::TensorToProto(at::zeros({2, 4}), r.mutable_inputs());
             }); },
       grpc::INVALID_ARGUMENT, "3-D"},
      {"run without inputs", [&] { return run([](auto& r) { r.clear_inputs(); }); }, grpc::INVALID_ARGUMENT,
       "inputs is not set"},
      {"run infinite input",
       [&] {
         return run([](auto& r) {
           auto x = at::zeros({3, 2, 4});
           x[2][1][3] = INFINITY;
           wire::TensorToProto(x, r.mutable_inputs());
         });
       },
       grpc::INVALID_ARGUMENT, "NaN or infinity"},
      {"run rank 9",
       [&] {
         return run([](auto& r) {
           r.mutable_inputs()->clear_shape();
           for (int i = 0; i < 9; ++i) r.mutable_inputs()->add_shape(1);
         });
       },
       grpc::INVALID_ARGUMENT, "rank 9"},
      {"run huge T", [&] { return run([](auto& r) { r.mutable_inputs()->set_shape(0, int64_t{1} << 50); }); },
       grpc::RESOURCE_EXHAUSTED, "exceeds the limit"},
      {"run T past int64", [&] { return run([](auto& r) { r.mutable_inputs()->set_shape(0, int64_t{1} << 62); }); },
       grpc::INVALID_ARGUMENT, "more elements than an int64"},
      {"run negative T", [&] { return run([](auto& r) { r.mutable_inputs()->set_shape(0, -3); }); },
       grpc::INVALID_ARGUMENT, "sizes must be >= 1"},
      {"run wrong dtype", [&] { return run([](auto& r) { r.mutable_inputs()->set_dtype(v1::DATA_TYPE_BFLOAT16); }); },
       grpc::INVALID_ARGUMENT, "the parameter set is float32"},
      {"run dtype out of range",
       [&] { return run([](auto& r) { r.mutable_inputs()->set_dtype(static_cast<v1::DataType>(77)); }); },
       grpc::INVALID_ARGUMENT, "dtype"},
      {"run unknown set", [&] { return run([](auto& r) { r.set_parameter_set_id("gone"); }); }, grpc::NOT_FOUND,
       "not found"},
      {"run id ../x", [&] { return run([](auto& r) { r.set_parameter_set_id("../x"); }); }, grpc::INVALID_ARGUMENT,
       "parameter_set_id"},
      {"step 3-D x", [&] { return step([](auto& r) {
                             wire::TensorToProto(at::zeros({1, 2, 4}), r.mutable_x());
                           }); },
       grpc::INVALID_ARGUMENT, "x must be [batch, 4]"},
      {"step 3 h for 2 layers",
       [&] {
         return step([](auto& r) {
           for (int l = 0; l < 3; ++l) wire::TensorToProto(at::zeros({2, 3}), r.add_h());
         });
       },
       grpc::INVALID_ARGUMENT, "h has 3 tensors; the set has 2 layers"},
      {"step state of wrong dtype",
       [&] {
         return step([](auto& r) {
           for (int l = 0; l < 2; ++l) {
             wire::TensorToProto(at::zeros({2, 3}), r.add_c());
             wire::TensorToProto(at::zeros({2, 3}).to(at::kHalf), r.add_h());
           }
         });
       },
       grpc::INVALID_ARGUMENT, "h[0]"},
      {"step oversized message",
       [&] { return step([](auto& r) {
               wire::TensorToProto(at::zeros({2, 9'000'000}), r.mutable_x());
             }); },
       grpc::RESOURCE_EXHAUSTED, "larger than max"},
      {"create id too long", [&] { return create([](auto& r) { r.set_parameter_set_id(std::string(64, 'a')); }); },
       grpc::INVALID_ARGUMENT, "too long"},
      {"create id with a slash", [&] { return create([](auto& r) { r.set_parameter_set_id("a/b"); }); },
       grpc::INVALID_ARGUMENT, "parameter_set_id"},
      {"create dtype out of range",
       [&] { return create([](auto& r) { r.mutable_spec()->set_dtype(static_cast<v1::DataType>(42)); }); },
       grpc::INVALID_ARGUMENT, "dtype"},
      {"create constant past float32",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->mutable_lstm()->mutable_weight_initializer()->mutable_constant()->set_value(9e307);
         });
       },
       grpc::INVALID_ARGUMENT, "magnitude at most 1e30"},
      {"create empty Initializer",
       [&] { return create([](auto& r) { r.mutable_spec()->mutable_lstm()->mutable_weight_initializer(); }); },
       grpc::INVALID_ARGUMENT, "spec.lstm.weight_initializer is set but names no initializer"},
      {"create sparse on 1-D",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->clear_lstm();
           auto* x = r.mutable_spec()->mutable_tensor_list()->add_tensors();
           x->set_name("v");
           x->add_shape(4);
           x->mutable_initializer()->mutable_sparse()->set_sparsity(0.5);
         });
       },
       grpc::INVALID_ARGUMENT, "sparse needs a tensor of 2 dimensions"},
      {"create tensor of rank 0",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->clear_lstm();
           r.mutable_spec()->mutable_tensor_list()->add_tensors()->set_name("scalar");
         });
       },
       grpc::INVALID_ARGUMENT, "shape"},
      {"create tensor name ../w",
       [&] {
         return create([](auto& r) {
           r.mutable_spec()->clear_lstm();
           auto* x = r.mutable_spec()->mutable_tensor_list()->add_tensors();
           x->set_name("../w");
           x->add_shape(2);
         });
       },
       grpc::INVALID_ARGUMENT, "name"},
      {"get id ../x",
       [&] {
         v1::GetParameterSetRequest r;
         r.set_parameter_set_id("../x");
         v1::GetParameterSetResponse o;
         grpc::ClientContext c;
         return params->GetParameterSet(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "parameter_set_id"},
      {"delete id ../../etc",
       [&] {
         v1::DeleteParameterSetRequest r;
         r.set_parameter_set_id("../../etc");
         v1::DeleteParameterSetResponse o;
         grpc::ClientContext c;
         return params->DeleteParameterSet(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "parameter_set_id"},
      {"list page too large",
       [&] {
         v1::ListParameterSetsRequest r;
         r.set_page_size(1 << 30);
         v1::ListParameterSetsResponse o;
         grpc::ClientContext c;
         return params->ListParameterSets(&c, r, &o);
       },
       grpc::INVALID_ARGUMENT, "page_size"},
  };
  const auto run_cases = [&] {
    for (const Case& c : cases) {
      const grpc::Status status = c.call();
      EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
      EXPECT_NE(status.error_message().find(c.message_part), std::string::npos)
          << c.what << ": expected '" << c.message_part << "' in '" << status.error_message() << "'";
    }
  };
  run_cases();
  EXPECT_GE(cases.size(), 55u);
  // The same bad input again and again: the server's memory stays where it was.
  const auto rss = [&] {
    std::ifstream status(absl::StrCat("/proc/", server_->pid(), "/status"));
    for (std::string line; std::getline(status, line);) {
      if (absl::StartsWith(line, "VmRSS:")) return std::stol(line.substr(6)) * 1024;
    }
    return 0L;
  };
  run_cases();  // warm-up: gRPC's and the allocator's pools
  // The 72 MB oversized message is left out of the repeats: its transient buffers move
  // glibc's mmap threshold, and resident memory then shows the allocator's cache, not a leak.
  cases.erase(
      std::remove_if(cases.begin(), cases.end(), [](const Case& c) { return c.what == "step oversized message"; }),
      cases.end());
  run_cases();
  const long before = rss();
  for (int round = 0; round < 20; ++round) run_cases();
  const long after = rss();
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer holds freed memory in quarantine (256 MiB), so resident memory grows
  // by design there; the Release build checks it.
  (void)before;
  (void)after;
#else
  EXPECT_LT(after, before + before / 20) << "resident memory " << before << " -> " << after << " bytes over 20 rounds";
#endif
  {  // export: unknown set, and a chunk size out of range
    v1::ExportParameterSetRequest r;
    r.set_parameter_set_id("nope");
    grpc::ClientContext ctx;
    auto reader = params->ExportParameterSet(&ctx, r);
    v1::ExportParameterSetResponse m;
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::NOT_FOUND);
    r.set_parameter_set_id("bad-input-set");
    r.set_chunk_bytes(int64_t{1} << 40);
    grpc::ClientContext ctx2;
    auto reader2 = params->ExportParameterSet(&ctx2, r);
    while (reader2->Read(&m)) {
    }
    EXPECT_EQ(reader2->Finish().error_code(), grpc::INVALID_ARGUMENT);
  }
  auto import = [&](std::vector<v1::ImportParameterSetRequest> messages) {
    grpc::ClientContext ctx;
    v1::ImportParameterSetResponse resp;
    auto writer = params->ImportParameterSet(&ctx, &resp);
    for (const auto& m : messages)
      if (!writer->Write(m)) break;
    writer->WritesDone();
    return writer->Finish();
  };
  v1::ImportParameterSetRequest header;
  header.mutable_header()->set_parameter_set_id("broken-import");
  auto* info = header.mutable_header()->add_tensors();
  info->set_name("w");
  info->add_shape(4);
  info->set_dtype(v1::DATA_TYPE_FLOAT32);
  v1::ImportParameterSetRequest half;
  half.mutable_chunk()->set_tensor_index(0);
  half.mutable_chunk()->set_data(std::string(8, '\0'));
  v1::ImportParameterSetRequest overrun = half;
  overrun.mutable_chunk()->set_data(std::string(20, '\0'));
  EXPECT_EQ(import({half}).error_code(), grpc::INVALID_ARGUMENT) << "chunk before header";
  EXPECT_EQ(import({header, half}).error_code(), grpc::INVALID_ARGUMENT) << "stream ended halfway";
  EXPECT_EQ(import({header, overrun}).error_code(), grpc::INVALID_ARGUMENT) << "chunk overruns";
  EXPECT_EQ(client_->Get("broken-import").status().code(), absl::StatusCode::kNotFound)
      << "a broken import stored something";
  {  // a client that goes away in the middle of an import: nothing is stored
    grpc::ClientContext ctx;
    v1::ImportParameterSetResponse resp;
    auto writer = params->ImportParameterSet(&ctx, &resp);
    writer->Write(header);
    writer->Write(half);
    ctx.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::CANCELLED);
  }
  v1::ImportParameterSetRequest bad_id = header;
  bad_id.mutable_header()->set_parameter_set_id("../escape");
  v1::ImportParameterSetRequest full = half;
  full.mutable_chunk()->set_data(std::string(16, '\0'));
  EXPECT_EQ(import({bad_id, full}).error_code(), grpc::INVALID_ARGUMENT) << "import id ../escape";
  v1::ImportParameterSetRequest bad_sum = header;
  bad_sum.mutable_header()->set_checksum("sha256:0000");
  const grpc::Status sum_status = import({bad_sum, full});
  EXPECT_EQ(sum_status.error_code(), grpc::INVALID_ARGUMENT) << "import checksum mismatch";
  EXPECT_NE(sum_status.error_message().find("nothing was stored"), std::string::npos) << sum_status.error_message();
  v1::ImportParameterSetRequest huge = header;  // 1 TiB declared: over a server limit, not a bad request
  huge.mutable_header()->mutable_tensors(0)->set_shape(0, int64_t{1} << 38);
  const grpc::Status huge_status = import({huge});
  EXPECT_EQ(huge_status.error_code(), grpc::RESOURCE_EXHAUSTED) << huge_status.error_message();
  EXPECT_TRUE(absl::StrContains(huge_status.error_message(), "bytes per set")) << huge_status.error_message();
  v1::ImportParameterSetRequest twice = header;
  *twice.mutable_header()->add_tensors() = twice.header().tensors(0);
  EXPECT_EQ(import({twice}).error_code(), grpc::INVALID_ARGUMENT) << "import duplicate tensor names";
  v1::ImportParameterSetRequest no_dtype = header;
  no_dtype.mutable_header()->mutable_tensors(0)->set_dtype(v1::DATA_TYPE_UNSPECIFIED);
  EXPECT_EQ(import({no_dtype}).error_code(), grpc::INVALID_ARGUMENT) << "import tensor without dtype";
  EXPECT_EQ(client_->Get("broken-import").status().code(), absl::StatusCode::kNotFound)
      << "a broken import stored something";
  EXPECT_FALSE(std::filesystem::exists(store_->path() + "/../escape.safetensors"));
  {  // an export of a set deleted while it streams: the export completes with the whole set
    ASSERT_TRUE(client_->Create(LstmSpec(2, 64, 64, 9), "doomed").ok());
    auto expected = client_->Export("doomed");
    ASSERT_TRUE(expected.ok());
    v1::ExportParameterSetRequest r;
    r.set_parameter_set_id("doomed");
    r.set_chunk_bytes(4096);
    grpc::ClientContext ctx;
    auto reader = params->ExportParameterSet(&ctx, r);
    v1::ExportParameterSetResponse m;
    ASSERT_TRUE(reader->Read(&m));
    ASSERT_TRUE(client_->Delete("doomed").ok());
    int64_t bytes = 0;
    while (reader->Read(&m)) bytes += static_cast<int64_t>(m.chunk().data().size());
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_GT(bytes, 0);
    EXPECT_TRUE(absl::IsNotFound(client_->Get("doomed").status()));
  }
  {  // sessions beyond their limits
    for (int64_t batch : {int64_t{0}, int64_t{-1}, int64_t{1} << 40}) {
      grpc::ClientContext ctx;
      auto stream = infer->Session(&ctx);
      v1::SessionRequest start;
      start.mutable_start()->set_parameter_set_id("bad-input-set");
      start.mutable_start()->set_batch_size(batch);
      stream->Write(start);
      stream->WritesDone();
      EXPECT_EQ(stream->Finish().error_code(), batch > 0 ? grpc::RESOURCE_EXHAUSTED : grpc::INVALID_ARGUMENT)
          << "session batch " << batch;
    }
    grpc::ClientContext ctx;
    auto stream = infer->Session(&ctx);
    v1::SessionRequest start;
    start.mutable_start()->set_parameter_set_id("no-such-set");
    start.mutable_start()->set_batch_size(1);
    stream->Write(start);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::NOT_FOUND);
  }
  {  // session: a first message that is not start, then a step of the wrong batch
    grpc::ClientContext ctx;
    auto stream = infer->Session(&ctx);
    v1::SessionRequest x;
    wire::TensorToProto(at::zeros({2, 4}), x.mutable_x());
    stream->Write(x);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::INVALID_ARGUMENT);
    grpc::ClientContext ctx2;
    auto stream2 = infer->Session(&ctx2);
    v1::SessionRequest start;
    start.mutable_start()->set_parameter_set_id("bad-input-set");
    start.mutable_start()->set_batch_size(3);
    stream2->Write(start);
    stream2->Write(x);
    v1::SessionResponse out;
    EXPECT_FALSE(stream2->Read(&out));
    grpc::Status finished = stream2->Finish();
    EXPECT_EQ(finished.error_code(), grpc::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(finished.error_message(), "x is [2, 4]; the session's x must be [3, 4]"))
        << finished.error_message();
    EXPECT_FALSE(absl::StrContains(finished.error_message(), "steps")) << finished.error_message();
  }
  {  // session: a step of another input size gets the session's wording, not Run's
    grpc::ClientContext ctx;
    auto stream = infer->Session(&ctx);
    v1::SessionRequest start;
    start.mutable_start()->set_parameter_set_id("bad-input-set");
    start.mutable_start()->set_batch_size(2);
    v1::SessionRequest x;
    wire::TensorToProto(at::zeros({2, 7}), x.mutable_x());
    stream->Write(start);
    stream->Write(x);
    v1::SessionResponse out;
    EXPECT_FALSE(stream->Read(&out));
    grpc::Status finished = stream->Finish();
    EXPECT_EQ(finished.error_code(), grpc::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(finished.error_message(), "must be [2, 4] (its batch_size, the set's input_size)"))
        << finished.error_message();
  }
  EXPECT_EQ(*client_->Health(), "SERVING") << "the server must stay healthy after bad input";
}

TEST(ServiceLifecycleTest, SetsSurviveARestart) {
  TempDir store;
  core::SequenceResult before;
  std::string checksum;
  const at::Tensor x = Randn({7, 2, 5}, 3);
  {
    auto server = ServerProcess::Start(store.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = Connect(**server);
    auto created = client->Create(LstmSpec(2, 5, 4, 77), "durable");
    ASSERT_TRUE(created.ok()) << created.status();
    checksum = created->checksum();
    before = *client->Run("durable", x);
    client.reset();  // an idle connection would hold the graceful shutdown for ~5 s
    EXPECT_EQ((*server)->Stop(SIGTERM), 0) << "SIGTERM must exit 0";
  }
  auto server = ServerProcess::Start(store.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  auto got = client->Get("durable");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->checksum(), checksum);
  EXPECT_EQ(got->spec().seed(), 77u) << "the spec is kept with the set";
  auto after = client->Run("durable", x);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(at::equal(after->outputs, before.outputs));
  client.reset();
  EXPECT_EQ((*server)->Stop(SIGINT), 0) << "SIGINT must exit 0";
}

TEST(ServiceLifecycleTest, DrainLetsEveryCallInFlightFinish) {
  TempDir store;
  // Batching off: four merged calls would legitimately differ from a lone call in the last
  // bits, and this test also guards bit-reproducibility across calls on a compute thread.
  auto server = ServerProcess::Start(store.path(), {"--drain_timeout=60s", "--noenable_batching"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  ASSERT_TRUE(client->Create(LstmSpec(2, 256, 256, 1), "heavy").ok());
  const at::Tensor inputs = Randn({100, 64, 256}, 5);
  auto reference = client->Run("heavy", inputs, {}, true);
  ASSERT_TRUE(reference.ok());
  std::vector<std::future<absl::StatusOr<core::SequenceResult>>> calls;
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::async(std::launch::async, [&] { return client->Run("heavy", inputs, {}, true); }));
  }
  // All four calls have reached the batcher (each is queued, or has started: its queue wait
  // is observed), besides the reference call: a fixed sleep was too short on a loaded
  // machine under ASan, where a call still on its way at SIGTERM is refused.
  for (int tries = 0; tries < 600; ++tries) {
    auto scrape = (*server)->ScrapeMetrics();
    ASSERT_TRUE(scrape.ok()) << scrape.status();
    const double arrived = ServerProcess::MetricValue(*scrape, "lstmserve_batch_queue_wait_seconds_count") +
                           ServerProcess::MetricValue(*scrape, "lstmserve_batch_queue_depth");
    if (arrived >= 5) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const pid_t pid = (*server)->pid();
  kill(pid, SIGTERM);
  for (auto& call : calls) {
    auto result = call.get();
    ASSERT_TRUE(result.ok()) << "a call in flight was lost: " << result.status();
    // Bit-equal to the first call on the server's compute thread (which once ran its first
    // GEMM with OpenMP's default thread count and differed by 1e-7).
    EXPECT_TRUE(at::equal(result->final_state.h.back(), reference->final_state.h.back()))
        << MaxAbsDiff(result->final_state.h.back(), reference->final_state.h.back());
  }
  EXPECT_EQ((*server)->Stop(SIGTERM), 0);
  EXPECT_EQ(client->Health().status().code(), absl::StatusCode::kUnavailable) << "new calls are refused";
}

TEST(ServiceLifecycleTest, ACallWhoseDeadlinePassesWhileQueuedGetsDeadlineExceeded) {
  TempDir store;
  auto server = ServerProcess::Start(store.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  ASSERT_TRUE(client->Create(LstmSpec(2, 256, 256, 1), "slow").ok());
  auto heavy = std::async(std::launch::async, [&] { return client->Run("slow", Randn({200, 64, 256}, 5), {}, true); });
  // Wait until the heavy call holds the compute thread: the batcher has taken it from the
  // queue (its queue wait is observed when its batch starts).
  ASSERT_TRUE((*server)->WaitForMetric("lstmserve_batch_queue_wait_seconds_count", 1));
  auto stub =
      v1::InferenceService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  v1::StepRequest request;
  request.set_parameter_set_id("slow");
  wire::TensorToProto(at::zeros({1, 256}), request.mutable_x());
  v1::StepResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(20));
  EXPECT_EQ(stub->Step(&context, request, &response).error_code(), grpc::DEADLINE_EXCEEDED);
  EXPECT_TRUE(heavy.get().ok());
  EXPECT_TRUE(client->Step("slow", at::zeros({1, 256})).ok()) << "the server keeps serving";
  // The server dropped the expired call before computing it (and said so).
  EXPECT_NE((*server)->Log().find("rpc=Step"), std::string::npos) << (*server)->Log();
  EXPECT_NE((*server)->Log().find("the deadline passed while the request waited for a batch; not computed"),
            std::string::npos)
      << (*server)->Log();
}

// Review finding 7: under --max_message_bytes=1MiB the default chunk (1 MiB of data plus its
// framing) did not fit, so nothing could be exported. The default now fits the limit, and a
// chunk_bytes that cannot is refused at the request with the limit named.
TEST(ExportLimitsTest, ChunksFitTheMessageLimitAndLargerChunkBytesAreRefused) {
  TempDir store;
  auto server = ServerProcess::Start(store.path(), {"--max_message_bytes=1048576"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  auto made = client->Create(LstmSpec(2, 256, 256, 5), "big");  // 2 x 2 MiB of weights
  ASSERT_TRUE(made.ok()) << made.status();
  auto exported = client->Export("big");
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_EQ(exported->tensors.size(), 2u);
  EXPECT_EQ(exported->tensors[0].value.sizes(), (std::vector<int64_t>{512, 1024}));

  auto params =
      v1::ParameterService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  v1::ExportParameterSetRequest r;
  r.set_parameter_set_id("big");
  r.set_chunk_bytes(int64_t{1} << 20);
  grpc::ClientContext ctx;
  auto reader = params->ExportParameterSet(&ctx, r);
  v1::ExportParameterSetResponse m;
  while (reader->Read(&m)) {
  }
  const grpc::Status refused = reader->Finish();
  EXPECT_EQ(refused.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("--max_message_bytes"), std::string::npos) << refused.error_message();
}

// Scaling out: two servers on one store folder, as two pods on one ReadWriteMany volume.
TEST(ScaleOutTest, TwoServersSharingAStoreServeEachOthersSetsAndSeeDeletes) {
  TempDir store;
  auto a = ServerProcess::Start(store.path());
  auto b = ServerProcess::Start(store.path());
  ASSERT_TRUE(a.ok() && b.ok());
  auto ca = Connect(**a);
  auto cb = Connect(**b);
  const at::Tensor x = Randn({2, 8}, 3);

  // Created through A: B gets it, lists it, and computes what A computes.
  auto made = ca->Create(LstmSpec(2, 8, 16, 11), "shared");
  ASSERT_TRUE(made.ok()) << made.status();
  auto seen = cb->Get("shared");
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->checksum(), made->checksum());
  auto listed = cb->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().id(), "shared");
  auto step_a = ca->Step("shared", x);
  auto step_b = cb->Step("shared", x);
  ASSERT_TRUE(step_a.ok() && step_b.ok());
  EXPECT_TRUE(at::equal(step_a->h.back(), step_b->h.back()));

  // Both try to create the same id at once: exactly one wins.
  auto race_a = std::async(std::launch::async, [&] { return ca->Create(LstmSpec(1, 4, 4, 1), "race"); });
  auto race_b = std::async(std::launch::async, [&] { return cb->Create(LstmSpec(1, 4, 4, 2), "race"); });
  const auto ra = race_a.get();
  const auto rb = race_b.get();
  EXPECT_NE(ra.ok(), rb.ok());
  EXPECT_TRUE(absl::IsAlreadyExists(ra.ok() ? rb.status() : ra.status()));

  // Deleted through A: B, which holds it in memory, stops serving it at once.
  ASSERT_TRUE(ca->Delete("shared").ok());
  EXPECT_TRUE(absl::IsNotFound(cb->Get("shared").status()));
  EXPECT_TRUE(absl::IsNotFound(cb->Step("shared", x).status()));
  auto after = cb->List();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), 1u);  // "race" only

  // Made again through B under the same id with another seed: A serves the new one.
  auto again = cb->Create(LstmSpec(2, 8, 16, 12), "shared");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->checksum(), made->checksum());
  auto fresh = ca->Get("shared");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->checksum(), again->checksum());
  auto fresh_step = ca->Step("shared", x);
  ASSERT_TRUE(fresh_step.ok());
  EXPECT_FALSE(at::equal(fresh_step->h.back(), step_a->h.back()));
}

TEST(OverloadTest, PastTheQueueLimitRequestsAreRefusedAtOnceAndTheMemoryBudgetUnloadsTheLeastRecentSet) {
  TempDir store;
  auto server = ServerProcess::Start(
      store.path(), {"--max_queued_requests=1", "--max_total_set_bytes=6000000", "--max_set_bytes=5000000"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  ASSERT_TRUE(client->Create(LstmSpec(2, 256, 256, 1), "busy").ok());  // 4 MiB (budget: 6 MB)
  // One call computing, one waiting: the queue (1) is full.
  auto computing = std::async(std::launch::async, [&] {
    return client->Run("busy", Randn({400, 64, 256}, 5), {}, true);
  });
  ASSERT_TRUE((*server)->WaitForMetric("lstmserve_batch_queue_wait_seconds_count", 1));
  auto waiting = std::async(std::launch::async, [&] { return client->Run("busy", Randn({2, 1, 256}, 6)); });
  ASSERT_TRUE((*server)->WaitForMetric("lstmserve_batch_queue_depth", 1));
  auto refused = client->Step("busy", at::zeros({1, 256}));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "--max_queued_requests")) << refused.status();
  // Refused while the first call still computes: at once, not after waiting its turn.
  EXPECT_EQ(computing.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the refusal came only after the computing call finished";
  EXPECT_TRUE(computing.get().ok());
  EXPECT_TRUE(waiting.get().ok());
  auto scrape = (*server)->ScrapeMetrics();
  ASSERT_TRUE(scrape.ok());
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, "lstmserve_batch_rejections_total{reason=\"queue_full\"}"), 1);
  // The calls took the packed float32 GEMM (x86-64-v3 CPUs) or, for the long run of 64
  // rows, oneDNN's LSTM where the build has it: either's layout (the set's 4 MiB once more:
  // packed panels, or oneDNN's reordered weights) counts in the set's bytes: past the
  // budget, but the set, alone, is still served.
  const double derived = ServerProcess::MetricValue(*scrape, "lstmserve_parameter_set_derived_bytes");
  if (ServerProcess::MetricValue(*scrape, "lstmserve_batch_kernel_total{kernel=\"onednn\"}") > 0 ||
      ServerProcess::MetricValue(*scrape, "lstmserve_batch_kernel_total{kernel=\"packed_f32\"}") > 0) {
    EXPECT_EQ(derived, 4 << 20);
  } else {
    EXPECT_EQ(derived, 0);
  }
  const double tensors = 2 * 512 * 1024 * 4;  // w_0, w_1 [512, 1024]; no biases
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, "lstmserve_parameter_set_bytes"), tensors + derived);

  // The memory budget for sets: a second 4 MiB set does not fit beside the first, so the
  // least recently used leaves memory (its file stays) and loads again on its next use,
  // pushing out the other.
  ASSERT_TRUE(client->Create(LstmSpec(2, 256, 256, 2), "second").ok());
  const std::string unloads = "lstmserve_set_unloads_total{reason=\"memory\"}";
  scrape = (*server)->ScrapeMetrics();
  ASSERT_TRUE(scrape.ok());
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, unloads), 1);
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, "lstmserve_parameter_set_derived_bytes"), 0);
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, "lstmserve_parameter_set_bytes"), tensors);
  auto back = client->Step("busy", at::zeros({1, 256}));
  EXPECT_TRUE(back.ok()) << back.status();
  scrape = (*server)->ScrapeMetrics();
  ASSERT_TRUE(scrape.ok());
  EXPECT_EQ(ServerProcess::MetricValue(*scrape, unloads), 2);
}

TEST(SessionLimitsTest, AtMostMaxSessionsAndIdleOnesAreCancelled) {
  TempDir store;
  auto server = ServerProcess::Start(store.path(), {"--max_sessions=2", "--session_idle_timeout=1s"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect(**server);
  ASSERT_TRUE(client->Create(LstmSpec(1, 3, 2, 1), "sess").ok());
  const at::Tensor x = at::ones({1, 3});
  auto a = client->OpenSession("sess", 1);
  auto b = client->OpenSession("sess", 1);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Step(x).ok());
  ASSERT_TRUE((*b)->Step(x).ok());
  auto c = client->OpenSession("sess", 1);
  ASSERT_TRUE(c.ok());
  auto refused = (*c)->Step(x);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE((*b)->Close().ok());
  auto d = client->OpenSession("sess", 1);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE((*d)->Step(x).ok()) << "a closed session frees its place";
  // Keep `d` busy for 2.5 s while `a` says nothing: only `a` is cancelled.
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    ASSERT_TRUE((*d)->Step(x).ok()) << "an active session must not be cancelled";
  }
  auto idle = (*a)->Step(x);
  EXPECT_EQ(idle.status().code(), absl::StatusCode::kCancelled) << idle.status();
}

// Concurrent requests on one set are merged, and each answer is the same request's bits
// computed alone where the server runs the packed float32 GEMM (x86-64-v3 CPUs: each row
// summed on its own), else within 1e-6 (batch sizes cross the small-batch/BLAS boundary).
TEST(BatchingTest, MergedRequestsMatchTheSameRequestsAlone) {
  TempDir store;
  // Without inline computation: this test's calls arrive one by one, and each would find
  // the server idle (InlineTest covers that path).
  auto batched = ServerProcess::Start(store.path() + "/a", {"--batch_timeout_micros=20000", "--inline_max_work=0"});
  auto alone = ServerProcess::Start(store.path() + "/b", {"--noenable_batching"});
  ASSERT_TRUE(batched.ok() && alone.ok());
  auto on = Connect(**batched);
  auto off = Connect(**alone);
  for (auto* c : {on.get(), off.get()}) ASSERT_TRUE(c->Create(LstmSpec(2, 16, 32, 4), "b").ok());
  constexpr int kCalls = 24;
  std::vector<at::Tensor> xs;
  std::vector<core::LstmState> states;
  for (int i = 0; i < kCalls; ++i) {
    xs.push_back(Randn({1 + i % 3, 16}, 50 + i));
    core::LstmState s;
    if (i % 2 == 1) {  // half with states, half without (zeros)
      for (int l = 0; l < 2; ++l) {
        s.c.push_back(Randn({1 + i % 3, 32}, 90 + i));
        s.h.push_back(Randn({1 + i % 3, 32}, 70 + i).tanh());
      }
    }
    states.push_back(s);
  }
  std::vector<std::future<absl::StatusOr<core::LstmState>>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] { return on->Step("b", xs[i], states[i]); }));
  }
  double max_diff = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto merged = calls[i].get();
    auto single = off->Step("b", xs[i], states[i]);
    ASSERT_TRUE(merged.ok() && single.ok()) << merged.status() << single.status();
    for (int l = 0; l < 2; ++l) {
      max_diff = std::max({max_diff, MaxAbsDiff(merged->h[l], single->h[l]), MaxAbsDiff(merged->c[l], single->c[l])});
    }
  }
  auto scrape = (*batched)->ScrapeMetrics();
  ASSERT_TRUE(scrape.ok());
  if (ServerProcess::MetricValue(*scrape, "lstmserve_batch_kernel_total{kernel=\"packed_f32\"}") > 0) {
    EXPECT_EQ(max_diff, 0.0);
  } else {
    EXPECT_LE(max_diff, 1e-6);
  }
  on.reset();
  EXPECT_EQ((*batched)->Stop(SIGTERM), 0);
  // The server's closing line counts requests and batches: fewer batches than requests
  // means requests were merged.
  const std::string log = (*batched)->Log();
  const auto at = log.find("inference: ");
  ASSERT_NE(at, std::string::npos) << log;
  long requests = 0, batches = 0;
  ASSERT_EQ(std::sscanf(log.c_str() + at, "inference: %ld requests in %ld batches", &requests, &batches), 2) << log;
  EXPECT_EQ(requests, kCalls) << log;
  EXPECT_LT(batches, requests) << "nothing was merged: " << log;
}

// The closing line's counts: requests, batches, and those computed on the receiving thread.
struct ClosingCounts {
  long requests = -1, batches = -1, inlined = -1;
};
ClosingCounts ParseClosingLine(const std::string& log) {
  ClosingCounts counts;
  const auto at = log.find("inference: ");
  if (at == std::string::npos) return counts;
  std::sscanf(log.c_str() + at, "inference: %ld requests in %ld batches", &counts.requests, &counts.batches);
  const auto inlined = log.find(" computed on the receiving thread", at);
  if (inlined == std::string::npos) return counts;
  const auto start = log.rfind(' ', inlined - 1);
  counts.inlined = std::atol(log.c_str() + start + 1);
  return counts;
}

// A lone small request on an idle server is computed on the gRPC thread that received it
// (no batch-thread wake-up), with the same bits as through the queue; a large one, or any
// with --inline_max_work=0, goes through the queue.
TEST(BatchingTest, LoneSmallRequestsRunOnTheReceivingThreadWithTheSameBits) {
  TempDir store;
  auto inline_on = ServerProcess::Start(store.path() + "/a", {});
  auto inline_off = ServerProcess::Start(store.path() + "/b", {"--inline_max_work=0"});
  ASSERT_TRUE(inline_on.ok() && inline_off.ok());
  auto on = Connect(**inline_on);
  auto off = Connect(**inline_off);
  for (auto* c : {on.get(), off.get()}) {
    ASSERT_TRUE(c->Create(LstmSpec(2, 16, 32, 4), "small").ok());
    ASSERT_TRUE(c->Create(LstmSpec(2, 256, 512, 5), "large").ok());
  }
  constexpr int kSmall = 10;
  for (int i = 0; i < kSmall; ++i) {
    const at::Tensor x = Randn({1 + i % 3, 16}, 300 + i);
    auto a = on->Step("small", x);
    auto b = off->Step("small", x);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    EXPECT_TRUE(at::equal(a->h.back(), b->h.back())) << "call " << i;
    EXPECT_TRUE(at::equal(a->c.front(), b->c.front())) << "call " << i;
  }
  // [20, 1, 256] through [768 + 1024, 2048] weights: 73M multiply-adds, past the default 2M.
  ASSERT_TRUE(on->Run("large", Randn({20, 1, 256}, 7)).ok());
  on.reset();
  off.reset();
  EXPECT_EQ((*inline_on)->Stop(SIGTERM), 0);
  EXPECT_EQ((*inline_off)->Stop(SIGTERM), 0);
  const ClosingCounts with = ParseClosingLine((*inline_on)->Log());
  const ClosingCounts without = ParseClosingLine((*inline_off)->Log());
  EXPECT_EQ(with.requests, kSmall + 1) << (*inline_on)->Log();
  EXPECT_EQ(with.inlined, kSmall) << "every small step, not the large run: " << (*inline_on)->Log();
  EXPECT_EQ(without.requests, kSmall) << (*inline_off)->Log();
  EXPECT_EQ(without.inlined, 0) << (*inline_off)->Log();
}

}  // namespace
}  // namespace lstmserve
