// The Open Inference Protocol's logic (oip::OpenInference) over a real engine, batcher and
// store, without a socket: what both of its front ends (gRPC and HTTP) rely on.
#include "lstmserve/server/oip/open_inference.h"

#include <filesystem>
#include <future>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "engine_fixture.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/tensor_bytes.h"

namespace lstmserve::server {
namespace {

class OpenInferenceTest : public ::testing::Test, protected EngineWithOneSet {
 protected:
  void SetUp() override { StartEngine(core::LstmTemplate{2, 3, 4}, BatchOptions()); }
  void TearDown() override { StopEngine(); }

  static oip::Tensor Input(const std::string& name, const at::Tensor& t) {
    oip::Tensor out;
    out.name = name;
    out.datatype = "FP32";
    out.shape.assign(t.sizes().begin(), t.sizes().end());
    out.data = core::TensorBytes(t);
    return out;
  }
  absl::StatusOr<oip::InferResponse> Infer(oip::InferRequest request) {
    std::promise<absl::StatusOr<oip::InferResponse>> answer;
    auto future = answer.get_future();
    oip_->Infer(std::move(request), CallControl(),
                [&](absl::StatusOr<oip::InferResponse> r) { answer.set_value(std::move(r)); });
    return future.get();
  }
  static at::Tensor Output(const oip::InferResponse& r, const std::string& name) {
    for (const auto& t : r.outputs) {
      if (t.name == name) {
        return at::from_blob(const_cast<char*>(t.data.data()), t.shape, at::kFloat).clone();
      }
    }
    return at::Tensor();
  }
};

TEST_F(OpenInferenceTest, MetadataDescribesTheSetAsAModel) {
  auto m = oip_->Metadata("m", "");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->inputs.size(), 3u);
  EXPECT_EQ(m->inputs[0].shape, (std::vector<int64_t>{-1, -1, 3}));
  EXPECT_EQ(m->inputs[1].shape, (std::vector<int64_t>{2, -1, 4}));
  EXPECT_TRUE(m->inputs[1].optional);
  EXPECT_EQ(m->outputs[0].name, "OUTPUT");
  EXPECT_TRUE(absl::IsNotFound(oip_->Metadata("m", "2").status()));
  EXPECT_TRUE(absl::IsNotFound(oip_->Metadata("nope", "").status()));
  EXPECT_TRUE(oip_->Ready("m", "1"));
  EXPECT_FALSE(oip_->Ready("nope", ""));
}

TEST_F(OpenInferenceTest, ASequenceInPiecesEqualsOneRequestBitForBit) {
  const at::Tensor x = at::randn({5, 2, 3}, at::TensorOptions().dtype(at::kFloat));
  oip::InferRequest whole;
  whole.model = "m";
  whole.inputs.push_back(Input("INPUT", x));
  auto expected = Infer(whole);
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::vector<at::Tensor> pieces;
  for (int64_t t = 0; t < 5; ++t) {
    oip::InferRequest step;
    step.model = "m";
    step.inputs.push_back(Input("INPUT", x.slice(0, t, t + 1).contiguous()));
    step.outputs = {"OUTPUT"};
    step.sequence_key = oip::SequenceKey(uint64_t{9});
    step.sequence_start = t == 0;
    step.sequence_end = t == 4;
    auto r = Infer(step);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->outputs.size(), 1u);
    pieces.push_back(Output(*r, "OUTPUT"));
  }
  EXPECT_TRUE(at::equal(at::cat(pieces), Output(*expected, "OUTPUT")));
  EXPECT_EQ(sequences_->stats().active, 0);  // ended
  EXPECT_EQ(sequences_->stats().steps, 5);
}

TEST_F(OpenInferenceTest, BadRequestsNameWhatIsWrong) {
  struct Case {
    std::function<void(oip::InferRequest&)> change;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.inputs[0].name = "X"; }, "unexpected input 'X'"},
      {[](auto& r) { r.inputs[0].datatype = "FP16"; }, "takes FP32"},
      {[](auto& r) { r.inputs[0].data.pop_back(); }, "INPUT.data has 23 bytes"},
      {[](auto& r) { r.inputs[0].shape = {6}; }, "expected [T, B, 3]"},
      {[](auto& r) { r.inputs.push_back(r.inputs[0]); }, "given twice"},
      {[](auto& r) { r.outputs = {"Y"}; }, "unexpected output 'Y'"},
      {[](auto& r) { r.sequence_start = true; }, "need a sequence_id"},
      {[](auto& r) { r.sequence_key = "u:3"; }, "is not open"},
      // The model m has L = 2, H = 4; INPUT has B = 1. The state in the protocol's terms.
      {[](auto& r) {
         r.inputs.push_back(Input("C0", at::zeros({2, 2, 4})));
         r.inputs.push_back(Input("H0", at::zeros({2, 2, 4})));
       },
       "C0 has shape [2, 2, 4]; expected [L, B, H] = [2, 1, 4] (L layers of model 'm', B from INPUT)"},
      {[](auto& r) {
         r.inputs.push_back(Input("C0", at::zeros({2, 1, 4})));
         r.inputs.push_back(Input("H0", at::zeros({2, 1, 5})));
       },
       "H0 has shape [2, 1, 5]; expected [L, B, H] = [2, 1, 4]"},
  };
  for (const auto& c : cases) {
    oip::InferRequest r;
    r.model = "m";
    r.inputs.push_back(Input("INPUT", at::zeros({2, 1, 3})));
    c.change(r);
    auto got = Infer(r);
    EXPECT_TRUE(absl::IsInvalidArgument(got.status())) << c.fragment << ": " << got.status();
    EXPECT_NE(got.status().message().find(c.fragment), std::string::npos) << got.status().message();
  }
}

TEST_F(OpenInferenceTest, ASequenceThatChangesItsBatchSizeIsToldSoAndKeepsItsState) {
  oip::InferRequest first;
  first.model = "m";
  first.sequence_key = "s:seq";
  first.sequence_start = true;
  first.inputs.push_back(Input("INPUT", at::ones({1, 2, 3})));
  ASSERT_TRUE(Infer(first).ok());
  oip::InferRequest wider = first;
  wider.sequence_start = false;
  wider.inputs[0] = Input("INPUT", at::ones({1, 3, 3}));
  auto got = Infer(wider);
  ASSERT_TRUE(absl::IsInvalidArgument(got.status())) << got.status();
  EXPECT_NE(got.status().message().find("sequence seq runs with batch size B = 2; this request's INPUT has B = 3"),
            std::string::npos)
      << got.status().message();
  // The sequence is where it was: a request with B = 2 goes on from it.
  oip::InferRequest next = first;
  next.sequence_start = false;
  EXPECT_TRUE(Infer(next).ok());
}

}  // namespace
}  // namespace lstmserve::server
