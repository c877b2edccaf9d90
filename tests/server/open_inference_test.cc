// The Open Inference Protocol's logic (oip::OpenInference) over a real engine, batcher and
// store, without a socket: what both of its front ends (gRPC and HTTP) rely on.
#include "lstmserve/server/oip/open_inference.h"

#include <filesystem>
#include <future>
#include <optional>
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
  // A sequence that was never started: a lifecycle error, saying how to start it.
  oip::InferRequest r;
  r.model = "m";
  r.inputs.push_back(Input("INPUT", at::zeros({2, 1, 3})));
  r.sequence_key = "u:3";
  auto got = Infer(r);
  EXPECT_TRUE(absl::IsFailedPrecondition(got.status())) << got.status();
  EXPECT_NE(got.status().message().find("sequence 3 was never started"), std::string::npos) << got.status();
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

// A request of sequence "s:q" on m of T steps with inputs filled with `value`.
oip::InferRequest SequenceRequest(float value, int64_t steps, std::optional<uint64_t> step, bool start = false,
                                  bool end = false) {
  oip::InferRequest r;
  r.model = "m";
  r.sequence_key = "s:q";
  r.sequence_start = start;
  r.sequence_end = end;
  r.sequence_step = step;
  oip::Tensor t;
  t.name = "INPUT";
  t.datatype = "FP32";
  t.shape = {steps, 1, 3};
  t.data = core::TensorBytes(at::full({steps, 1, 3}, value));
  r.inputs.push_back(std::move(t));
  return r;
}

TEST_F(OpenInferenceTest, WithSequenceStepARetryIsAnsweredAgainBitForBitAndNeverAppliedTwice) {
  auto first = Infer(SequenceRequest(0.5f, 2, 0, /*start=*/true));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->sequence_step, 2u);
  auto second = Infer(SequenceRequest(-0.25f, 3, 2));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->sequence_step, 5u);
  // The second request again (its answer lost): the same bytes, the sequence still at 5.
  auto retry = Infer(SequenceRequest(-0.25f, 3, 2));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->sequence_step, 5u);
  ASSERT_EQ(retry->outputs.size(), second->outputs.size());
  for (size_t i = 0; i < retry->outputs.size(); ++i) EXPECT_EQ(retry->outputs[i].data, second->outputs[i].data);
  // The start again is an old request now, and not the last one: refused, naming both counts.
  auto old = Infer(SequenceRequest(0.5f, 2, 0, /*start=*/false));
  EXPECT_TRUE(absl::IsFailedPrecondition(old.status())) << old.status();
  EXPECT_NE(old.status().message().find("has taken 5 steps, and this request's sequence_step is 0"), std::string::npos)
      << old.status();
  // Different inputs under the last request's step: not a retry.
  auto other = Infer(SequenceRequest(0.75f, 3, 2));
  EXPECT_TRUE(absl::IsFailedPrecondition(other.status())) << other.status();
  // A gap.
  auto gap = Infer(SequenceRequest(0.5f, 1, 9));
  EXPECT_NE(gap.status().message().find("sequence_step is 9 (steps are missing in between)"), std::string::npos)
      << gap.status();
  // The next one goes on from 5, and equals the whole sequence in one request.
  auto third = Infer(SequenceRequest(1.0f, 1, 5, false, /*end=*/true));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->sequence_step, 6u);
  // The ending request again: answered from the ended sequence's trace.
  auto third_again = Infer(SequenceRequest(1.0f, 1, 5, false, /*end=*/true));
  ASSERT_TRUE(third_again.ok()) << third_again.status();
  EXPECT_EQ(Output(*third_again, "OUTPUT").equal(Output(*third, "OUTPUT")), true);
  auto after_end = Infer(SequenceRequest(1.0f, 1, 6));
  EXPECT_TRUE(absl::IsFailedPrecondition(after_end.status()));
  EXPECT_NE(after_end.status().message().find("ended after 6 steps"), std::string::npos) << after_end.status();

  oip::InferRequest whole;
  whole.model = "m";
  at::Tensor x = at::cat({at::full({2, 1, 3}, 0.5f), at::full({3, 1, 3}, -0.25f), at::full({1, 1, 3}, 1.0f)});
  whole.inputs.push_back(Input("INPUT", x));
  auto one = Infer(whole);
  ASSERT_TRUE(one.ok());
  EXPECT_TRUE(Output(*one, "OUTPUT").slice(0, 5, 6).equal(Output(*third, "OUTPUT")));
  EXPECT_EQ(sequences_->stats().steps, 3);  // retries are not computed
}

TEST_F(OpenInferenceTest, ASetReCreatedUnderTheSameIdNeverContinuesAnOldSequence) {
  ASSERT_TRUE(Infer(SequenceRequest(0.5f, 1, std::nullopt, /*start=*/true)).ok());
  ASSERT_TRUE(registry_->Delete("m").ok());
  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{2, 3, 4};
  spec.seed = 6;  // other weights
  auto set = core::CreateParameterSet(spec, core::CreateLimits());
  ASSERT_TRUE(set.ok());
  core::StoredSet stored;
  stored.id = "m";
  stored.set = *std::move(set);
  stored.checksum = core::ComputeChecksum(stored.set);
  ASSERT_TRUE(registry_->Add(std::move(stored)).ok());
  auto got = Infer(SequenceRequest(0.5f, 1, std::nullopt));
  EXPECT_TRUE(absl::IsFailedPrecondition(got.status())) << got.status();
  EXPECT_NE(got.status().message().find("model 'm' was deleted and re-created since sequence q started"),
            std::string::npos)
      << got.status();
  // Started again, it runs on the new set.
  EXPECT_TRUE(Infer(SequenceRequest(0.5f, 1, std::nullopt, /*start=*/true)).ok());
  EXPECT_TRUE(Infer(SequenceRequest(0.5f, 1, std::nullopt)).ok());
}

TEST_F(OpenInferenceTest, SequenceStepIsForSequencesAndAStartsIsZero) {
  oip::InferRequest lone = SequenceRequest(0.5f, 1, 0);
  lone.sequence_key.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(Infer(lone).status()));
  auto start = Infer(SequenceRequest(0.5f, 1, 4, /*start=*/true));
  EXPECT_TRUE(absl::IsInvalidArgument(start.status())) << start.status();
  EXPECT_NE(start.status().message().find("a start's sequence_step is 0"), std::string::npos) << start.status();
}

TEST_F(OpenInferenceTest, StatisticsCountEachRequestAndSplitItsTime) {
  oip::InferRequest good;
  good.model = "m";
  good.inputs.push_back(Input("INPUT", at::ones({3, 2, 3})));
  ASSERT_TRUE(Infer(good).ok());
  ASSERT_TRUE(Infer(good).ok());
  oip::InferRequest bad = good;
  bad.inputs[0].shape = {3, 2, 4};
  EXPECT_TRUE(absl::IsInvalidArgument(Infer(bad).status()));
  oip::InferRequest unknown = good;
  unknown.model = "nope";
  EXPECT_TRUE(absl::IsNotFound(Infer(unknown).status()));  // no model's failure

  auto stats = oip_->Statistics("m", "");
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 1u);
  const ModelStats& m = stats->front();
  EXPECT_EQ(m.name, "m");
  EXPECT_EQ(m.success.count, 2u);
  EXPECT_GT(m.success.ns, 0u);
  EXPECT_EQ(m.fail.count, 1u);
  EXPECT_EQ(m.execution_count, 2u);
  EXPECT_EQ(m.inference_count, 4u);  // rows: B = 2, twice
  for (const StatDuration* d : {&m.queue, &m.compute_input, &m.compute_infer, &m.compute_output}) {
    EXPECT_EQ(d->count, 2u);
  }
  EXPECT_GT(m.compute_infer.ns, 0u);
  // The phases lie within the requests' times.
  EXPECT_LE(m.queue.ns + m.compute_input.ns + m.compute_infer.ns + m.compute_output.ns, m.success.ns);
  ASSERT_EQ(m.batch_stats.size(), 1u);
  EXPECT_EQ(m.batch_stats[0].batch_size, 2u);
  EXPECT_EQ(m.batch_stats[0].compute_infer.count, 2u);
  EXPECT_GT(m.last_inference_ms, 0u);

  auto all = oip_->Statistics("", "");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->front().success.count, 2u);
  EXPECT_TRUE(absl::IsNotFound(oip_->Statistics("nope", "").status()));
  EXPECT_TRUE(absl::IsNotFound(oip_->Statistics("m", "2").status()));
}

TEST_F(OpenInferenceTest, UnloadKeepsTheFileRefusesInferenceUntilLoadAndTheIndexSaysSo) {
  oip::InferRequest request;
  request.model = "m";
  request.inputs.push_back(Input("INPUT", at::ones({1, 1, 3})));
  auto before = Infer(request);
  ASSERT_TRUE(before.ok()) << before.status();

  auto index = oip_->RepositoryIndex("", false);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->size(), 1u);
  EXPECT_EQ(index->front().name, "m");
  EXPECT_EQ(index->front().state, "READY");

  ASSERT_TRUE(oip_->Unload("", "m", {"unload_dependents"}).ok());
  EXPECT_FALSE(oip_->Ready("m", ""));
  auto refused = Infer(request);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("is unloaded; load it first"), std::string::npos) << refused.status();
  index = oip_->RepositoryIndex("", false);
  ASSERT_TRUE(index.ok() && index->size() == 1u);
  EXPECT_EQ(index->front().state, "UNAVAILABLE");
  EXPECT_EQ(index->front().reason, "unloaded");
  EXPECT_TRUE(oip_->RepositoryIndex("", /*ready_only=*/true)->empty());
  EXPECT_EQ(registry_->total_bytes(), 0);

  ASSERT_TRUE(oip_->Load("", "m", {}).ok());
  EXPECT_TRUE(oip_->Ready("m", ""));
  auto after = Infer(request);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(at::equal(Output(*after, "OUTPUT"), Output(*before, "OUTPUT")));

  // What each call refuses.
  EXPECT_TRUE(absl::IsNotFound(oip_->Unload("", "nope", {}))) << oip_->Unload("", "nope", {});
  EXPECT_TRUE(absl::IsNotFound(oip_->Load("", "nope", {})));
  EXPECT_TRUE(absl::IsInvalidArgument(oip_->Load("", "m", {"config"})));
  EXPECT_TRUE(absl::IsInvalidArgument(oip_->Unload("", "m", {"force"})));
  EXPECT_TRUE(absl::IsNotFound(oip_->Load("other", "m", {})));
  EXPECT_TRUE(absl::IsNotFound(oip_->RepositoryIndex("other", false).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(oip_->Load("", "../m", {})));
}

// A budget that holds two sets of m's size but not three: the least recently used goes,
// and comes back from its file on its next use, with the same bits.
class SetMemoryTest : public ::testing::Test, protected EngineWithOneSet {
 protected:
  static core::ParameterSetSpec Spec(uint64_t seed) {
    core::ParameterSetSpec spec;
    spec.lstm = core::LstmTemplate{2, 3, 4};
    spec.seed = seed;
    return spec;
  }
  void SetUp() override {
    auto set = core::CreateParameterSet(Spec(5), core::CreateLimits());
    ASSERT_TRUE(set.ok()) << set.status();
    size_ = set->byte_size;
    StartEngine(Spec(5).lstm.value(), BatchOptions(), nullptr, 3 * size_ - 1);
  }
  void TearDown() override { StopEngine(); }
  void Add(const std::string& id, uint64_t seed) {
    auto set = core::CreateParameterSet(Spec(seed), core::CreateLimits());
    ASSERT_TRUE(set.ok()) << set.status();
    core::StoredSet stored;
    stored.id = id;
    stored.set = *std::move(set);
    auto added = registry_->Add(std::move(stored));
    ASSERT_TRUE(added.ok()) << added.status();
  }
  std::vector<std::string> Held() const {
    std::vector<std::string> out;
    for (const auto& e : registry_->Index()) {
      if (e.held) out.push_back(e.id);
    }
    return out;
  }
  int64_t size_ = 0;
};

TEST_F(SetMemoryTest, TheLeastRecentlyUsedSetGoesAndComesBackOnItsNextUse) {
  Add("a", 6);
  EXPECT_EQ(Held(), (std::vector<std::string>{"a", "m"}));
  auto m_before = registry_->Get("m");  // m is now more recent than a
  ASSERT_TRUE(m_before.ok());
  Add("b", 7);
  EXPECT_EQ(Held(), (std::vector<std::string>{"b", "m"}));
  EXPECT_LE(registry_->total_bytes(), 3 * size_ - 1);
  auto a = registry_->Get("a");  // read again from its file; m, used before b, goes
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(Held(), (std::vector<std::string>{"a", "b"}));
  auto again = core::CreateParameterSet(Spec(6), core::CreateLimits());
  ASSERT_TRUE(again.ok());
  ASSERT_EQ((*a)->stored.set.tensors.size(), again->tensors.size());
  for (size_t i = 0; i < again->tensors.size(); ++i) {
    EXPECT_TRUE(at::equal((*a)->stored.set.tensors[i].value, again->tensors[i].value)) << again->tensors[i].name;
  }
  // A call holding an entry keeps it usable after it leaves memory.
  EXPECT_TRUE((*m_before)->lstm.has_value());

  // Only a set larger than the whole budget is refused.
  core::ParameterSetSpec big = Spec(8);
  big.lstm->hidden_size = 64;
  auto huge = core::CreateParameterSet(big, core::CreateLimits());
  ASSERT_TRUE(huge.ok());
  core::StoredSet stored;
  stored.id = "huge";
  stored.set = *std::move(huge);
  auto refused = registry_->Add(std::move(stored));
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("--max_total_set_bytes"), std::string::npos) << refused.status();
}

}  // namespace
}  // namespace lstmserve::server
