// StackedLstm: input validation, agreement of the fast paths, kernel accuracy, GPU path.
#include "lstmserve/core/stacked_lstm.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "lstm_kernels.h"
#include "lstm_spec.h"
#include "lstmserve/core/device.h"
#include "lstmserve/core/threads.h"

namespace lstmserve::core {
namespace {

at::Generator Gen(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

StackedLstm MakeLstm(int64_t layers, int64_t input, int64_t hidden, bool bias, uint64_t seed = 3) {
  return *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(layers, input, hidden, bias, seed), {}));
}

// Per-layer states of `layers` layers: c ~ N(0, 1), h ~ U(-1, 1), each [batch, hidden].
LstmState RandomState(int64_t layers, int64_t batch, int64_t hidden, at::Generator& gen) {
  LstmState state;
  for (int64_t l = 0; l < layers; ++l) state.c.push_back(at::empty({batch, hidden}).normal_(0, 1, gen));
  for (int64_t l = 0; l < layers; ++l) state.h.push_back(at::empty({batch, hidden}).uniform_(-1, 1, gen));
  return state;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat).cpu() - b.to(at::kFloat).cpu()).abs().max().item<double>();
}

TEST(StackedLstmCreateTest, RejectsMalformedWeights) {
  EXPECT_EQ(StackedLstm::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StackedLstm::Create({at::zeros({8, 6})}).status().code(), absl::StatusCode::kInvalidArgument)
      << "4H must be a multiple of 4";
  EXPECT_EQ(StackedLstm::Create({at::zeros({2, 8})}).status().code(), absl::StatusCode::kInvalidArgument)
      << "input size 0";
  auto wrong_layer = StackedLstm::Create({at::zeros({5, 8}), at::zeros({5, 8})});
  EXPECT_EQ(wrong_layer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_layer.status().message().find("w_1 must be [4, 8]"), std::string::npos) << wrong_layer.status();
  EXPECT_EQ(StackedLstm::Create({at::zeros({5, 8})}, {at::zeros({4})}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StackedLstm::Create({at::zeros({5, 8}, at::kDouble)}).status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = StackedLstm::Create({at::zeros({5, 8}), at::zeros({4, 8})}, {at::zeros({8}), at::zeros({8})});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->input_size(), 3);
  EXPECT_EQ(ok->hidden_size(), 2);
  EXPECT_EQ(ok->num_layers(), 2);
}

TEST(StackedLstmCreateTest, FromParameterSetNeedsTheTemplateNames) {
  ParameterSet set;
  set.tensors.push_back({"weights", at::zeros({5, 8})});
  EXPECT_EQ(StackedLstm::FromParameterSet(set).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StackedLstmInputTest, RejectsBadInputsAndStatesWithPreciseMessages) {
  const StackedLstm lstm = MakeLstm(2, 4, 3, false);
  auto expect = [](const absl::Status& s, absl::StatusCode code, const std::string& part) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(part), std::string::npos) << "expected '" << part << "' in " << s;
  };
  expect(lstm.Step(at::zeros({4}), {}).status(), absl::StatusCode::kInvalidArgument, "2-D");
  expect(lstm.Step(at::zeros({2, 5}), {}).status(), absl::StatusCode::kInvalidArgument, "[steps >= 1, batch >= 1, 4]");
  expect(lstm.Step(at::zeros({0, 4}), {}).status(), absl::StatusCode::kInvalidArgument, "batch >= 1");
  expect(lstm.Run(at::zeros({0, 1, 4}), {}).status(), absl::StatusCode::kInvalidArgument, "steps >= 1");
  expect(lstm.Run(at::zeros({2, 4}), {}).status(), absl::StatusCode::kInvalidArgument, "3-D");
  expect(lstm.Step(at::zeros({2, 4}, at::kDouble), {}).status(), absl::StatusCode::kInvalidArgument, "Double");
  LstmState one_layer{{at::zeros({2, 3})}, {}};
  expect(lstm.Step(at::zeros({2, 4}), one_layer).status(), absl::StatusCode::kInvalidArgument,
         "1 c states for 2 layers");
  LstmState wrong_batch{{}, {at::zeros({3, 3}), at::zeros({3, 3})}};
  expect(lstm.Step(at::zeros({2, 4}), wrong_batch).status(), absl::StatusCode::kInvalidArgument, "h[0] must be [2, 3]");
}

TEST(StackedLstmPathTest, AllPathsAgreeOnLargerBatchesAndLongChunkedSequences) {
  // B=64, H=256: 256 KiB of gates per step, so 150 steps span ten 4 MiB projection chunks
  // and the last one is partial.
  const StackedLstm lstm = MakeLstm(2, 32, 256, true);
  auto gen = Gen(11);
  const at::Tensor x = at::empty({150, 64, 32}).normal_(0, 1, gen);
  const LstmState init = RandomState(2, 64, 256, gen);
  auto generic = lstm.Run(x, init, true, LstmPath::kGeneric);
  ASSERT_TRUE(generic.ok()) << generic.status();
  for (LstmPath path : {LstmPath::kBlas, LstmPath::kSmallBatch, LstmPath::kAuto}) {
    auto run = lstm.Run(x, init, true, path);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_LE(MaxAbsDiff(run->outputs, generic->outputs), 1e-5);
    EXPECT_LE(MaxAbsDiff(run->final_state.c[1], generic->final_state.c[1]), 1e-5);
  }
}

TEST(StackedLstmPathTest, ALargeLayerAtBatchOneSplitAcrossThreadsMatchesGeneric) {
  // [768 + 768, 3072] = 4.7M floats: past 2^21, so one row's GEMV is split by rows of w
  // across the intra-op threads into partial sums (with 2 or more threads).
  SetIntraOpThreads(2);
  const StackedLstm lstm = MakeLstm(2, 768, 768, true);
  auto gen = Gen(12);
  const at::Tensor x = at::empty({3, 1, 768}).normal_(0, 1, gen);
  const LstmState init = RandomState(2, 1, 768, gen);
  auto generic = lstm.Run(x, init, true, LstmPath::kGeneric);
  ASSERT_TRUE(generic.ok()) << generic.status();
  for (LstmPath path : {LstmPath::kSmallBatch, LstmPath::kAuto}) {
    auto run = lstm.Run(x, init, true, path);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_LE(MaxAbsDiff(run->outputs, generic->outputs), 1e-5) << LstmPathName(path);
    EXPECT_LE(MaxAbsDiff(run->final_state.c[1], generic->final_state.c[1]), 1e-5) << LstmPathName(path);
  }
  SetIntraOpThreads(0);
}

TEST(StackedLstmPathTest, RunWithoutOutputsStillReturnsFinalStates) {
  const StackedLstm lstm = MakeLstm(3, 5, 6, false);
  auto gen = Gen(2);
  const at::Tensor x = at::empty({7, 2, 5}).normal_(0, 1, gen);
  auto with = lstm.Run(x, {}, true);
  auto without = lstm.Run(x, {}, false);
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_FALSE(without->outputs.defined());
  EXPECT_TRUE(at::equal(with->final_state.h[2], without->final_state.h[2]));
  EXPECT_TRUE(at::equal(with->outputs[6], with->final_state.h[2]));
}

TEST(StackedLstmPathTest, CallsDoNotModifyTheCallersState) {
  const StackedLstm lstm = MakeLstm(1, 3, 4, false);
  auto gen = Gen(4);
  LstmState state{{at::empty({1, 4}).normal_(0, 1, gen)}, {at::empty({1, 4}).normal_(0, 1, gen)}};
  const at::Tensor c_before = state.c[0].clone();
  ASSERT_TRUE(lstm.Run(at::ones({3, 1, 3}), state).ok());
  EXPECT_TRUE(at::equal(state.c[0], c_before));
}

// Step takes x and the states as they are on the float32 CPU paths (no view, one pass over
// [x, h] @ w per layer when small): strided inputs and states give the same bits as
// contiguous ones, the step equals a one-step Run within rounding, and the caller's state
// is left alone.
TEST(StackedLstmPathTest, StepOnStridedInputsAndStatesMatchesContiguous) {
  const StackedLstm lstm = MakeLstm(2, 5, 6, true);
  auto gen = Gen(8);
  for (LstmPath path : {LstmPath::kSmallBatch, LstmPath::kBlas}) {
    for (int64_t batch : {1, 3}) {
      const at::Tensor x_t = at::empty({5, batch}).normal_(0, 1, gen);
      const at::Tensor c_t = at::empty({6, batch}).normal_(0, 1, gen);
      const at::Tensor h_t = at::empty({6, batch}).normal_(0, 1, gen);
      const LstmState strided{{c_t.t(), c_t.t()}, {h_t.t(), h_t.t()}};
      const LstmState dense{{c_t.t().contiguous(), c_t.t().contiguous()}, {h_t.t().contiguous(), h_t.t().contiguous()}};
      auto a = lstm.Step(x_t.t(), strided, path);
      auto b = lstm.Step(x_t.t().contiguous(), dense, path);
      auto run = lstm.Run(x_t.t().contiguous().unsqueeze(0), dense, false, path);
      ASSERT_TRUE(a.ok() && b.ok() && run.ok()) << a.status() << b.status() << run.status();
      for (int l = 0; l < 2; ++l) {
        EXPECT_TRUE(at::equal(a->h[l], b->h[l])) << LstmPathName(path) << " B=" << batch;
        EXPECT_TRUE(at::equal(a->c[l], b->c[l])) << LstmPathName(path) << " B=" << batch;
        EXPECT_LT((a->h[l] - run->final_state.h[l]).abs().max().item<double>(), 1e-6);
      }
      EXPECT_TRUE(at::equal(strided.c[0], c_t.t())) << "the caller's state is not written";
    }
  }
}

TEST(LstmKernelTest, SigmoidAndTanhWithin3e7OfLibTorch) {
  const at::Tensor x = at::linspace(-30, 30, 200001);
  at::Tensor s = at::empty_like(x), t = at::empty_like(x);
  kernels::SigmoidArray(x.data_ptr<float>(), s.data_ptr<float>(), x.numel());
  kernels::TanhArray(x.data_ptr<float>(), t.data_ptr<float>(), x.numel());
  EXPECT_LE(MaxAbsDiff(s, at::sigmoid(x)), 3e-7);
  EXPECT_LE(MaxAbsDiff(t, at::tanh(x)), 3e-7);
  const float extremes[] = {-1e30f, -100.f, 100.f, 1e30f};
  float out[4];
  kernels::SigmoidArray(extremes, out, 4);
  EXPECT_NEAR(out[0], 0.f, 1e-30);
  EXPECT_FLOAT_EQ(out[3], 1.f);
  kernels::TanhArray(extremes, out, 4);
  EXPECT_FLOAT_EQ(out[0], -1.f);
  EXPECT_FLOAT_EQ(out[3], 1.f);
}

TEST(LstmKernelTest, GatesMatchLibTorchIncludingSaturatedInputs) {
  auto gen = Gen(12);
  const int64_t rows = 5, h = 37;
  at::Tensor gates = at::empty({rows, 4 * h}).normal_(0, 3, gen);
  // Saturate some units: huge, tiny and exactly-at-the-clamp pre-activations.
  gates.index_put_({0}, 1e30f);
  gates.index_put_({1}, -1e30f);
  gates.index_put_({2}, 88.0f);
  const at::Tensor bias = at::empty({4 * h}).normal_(0, 1, gen);
  const at::Tensor c_prev = at::empty({rows, h}).normal_(0, 5, gen);
  for (bool zero : {false, true}) {
    at::Tensor c = zero ? at::empty({rows, h}) : c_prev.clone();
    at::Tensor h_out = at::empty({rows, h});
    kernels::LstmGates(gates.data_ptr<float>(), bias.data_ptr<float>(), c.data_ptr<float>(), zero,
                       h_out.data_ptr<float>(), rows, h);
    const auto ifog = (gates + bias).chunk(4, 1);
    const at::Tensor c_ref =
        at::sigmoid(ifog[0]) * at::tanh(ifog[3]) + (zero ? at::zeros_like(c_prev) : at::sigmoid(ifog[1]) * c_prev);
    const at::Tensor h_ref = at::sigmoid(ifog[2]) * at::tanh(c_ref);
    EXPECT_LE(MaxAbsDiff(c, c_ref), 2e-6) << "zero state " << zero;
    EXPECT_LE(MaxAbsDiff(h_out, h_ref), 1e-6) << "zero state " << zero;
    EXPECT_FALSE(at::isnan(h_out).any().item<bool>());
  }
}

TEST(LstmKernelTest, SmallGemmOnAColumnSliceWithStridesAndManyTiles) {
  auto gen = Gen(13);
  const at::Tensor a = at::empty({5, 40}).normal_(0, 1, gen);
  const at::Tensor w = at::empty({40, 1300}).normal_(0, 1, gen);  // 3 column tiles, the last partial
  at::Tensor out = at::zeros({5, 1300});
  // Columns [100, 1250) only, as a thread's share would be.
  kernels::SmallGemm(a.data_ptr<float>(), 40, w.data_ptr<float>() + 100, 1300, 40, 1150, out.data_ptr<float>() + 100,
                     1300, 5, false);
  EXPECT_LE(MaxAbsDiff(out.narrow(1, 100, 1150), at::mm(a, w).narrow(1, 100, 1150)), 1e-4);
  EXPECT_TRUE(at::all(out.narrow(1, 0, 100) == 0).item<bool>()) << "wrote outside its columns";
  EXPECT_TRUE(at::all(out.narrow(1, 1250, 50) == 0).item<bool>()) << "wrote outside its columns";
}

TEST(LstmKernelTest, OneRowOverALargeWeightStreamsItInRowBlocks) {
  // Past 2^18 floats one row takes the row-blocked GEMV: 8 rows of w at a time (37 leaves 5),
  // 16 columns at a time (8200 of the 8300-wide weight's columns, from 50: 8 left over).
  auto gen = Gen(21);
  const at::Tensor a = at::empty({1, 37}).normal_(0, 1, gen);
  const at::Tensor w = at::empty({37, 8300}).normal_(0, 1, gen);
  const at::Tensor expected = at::mm(a, w).narrow(1, 50, 8200);
  at::Tensor out = at::full({1, 8300}, 2.0f);
  kernels::SmallGemm(a.data_ptr<float>(), 37, w.data_ptr<float>() + 50, 8300, 37, 8200, out.data_ptr<float>() + 50,
                     8300, 1, true);
  EXPECT_LE(MaxAbsDiff(out.narrow(1, 50, 8200), expected + 2), 1e-4);
  EXPECT_TRUE(at::all(out.narrow(1, 0, 50) == 2).item<bool>()) << "wrote outside its columns";
  EXPECT_TRUE(at::all(out.narrow(1, 8250, 50) == 2).item<bool>()) << "wrote outside its columns";
  kernels::SmallGemm(a.data_ptr<float>(), 37, w.data_ptr<float>() + 50, 8300, 37, 8200, out.data_ptr<float>() + 50,
                     8300, 1, false);
  EXPECT_LE(MaxAbsDiff(out.narrow(1, 50, 8200), expected), 1e-4);
}

TEST(LstmKernelTest, SmallGemmMatchesMatmulForEveryRowRemainder) {
  auto gen = Gen(8);
  for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 13}) {
    const at::Tensor a = at::empty({rows, 37}).normal_(0, 1, gen);
    const at::Tensor w = at::empty({37, 20}).normal_(0, 1, gen);
    at::Tensor out = at::full({rows, 20}, 1.0f);
    kernels::SmallGemm(a.data_ptr<float>(), 37, w.data_ptr<float>(), 20, 37, 20, out.data_ptr<float>(), 20, rows, true);
    EXPECT_LE(MaxAbsDiff(out, at::mm(a, w) + 1), 1e-4) << rows << " rows";
    kernels::SmallGemm(a.data_ptr<float>(), 37, w.data_ptr<float>(), 20, 37, 20, out.data_ptr<float>(), 20, rows,
                       false);
    EXPECT_LE(MaxAbsDiff(out, at::mm(a, w)), 1e-4) << rows << " rows";
  }
}

TEST(ThreadsTest, SetIntraOpThreadsDefaultsToAvailableCores) {
  EXPECT_GE(AvailableCores(), 1);
  EXPECT_EQ(SetIntraOpThreads(0), AvailableCores());
  EXPECT_EQ(SetIntraOpThreads(1), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  SetIntraOpThreads(0);
}

TEST(GpuStackedLstmTest, CudaMatchesCpuInEveryDtype) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device in this build or machine";
  const StackedLstm cpu = MakeLstm(2, 16, 32, true);
  auto gen = Gen(9);
  const at::Tensor x = at::empty({20, 5, 16}).normal_(0, 1, gen);
  auto expected = cpu.Run(x, {});
  ASSERT_TRUE(expected.ok());
  const c10::Device cuda = *ResolveDevice("cuda");
  for (auto [dtype, tolerance] :
       {std::pair{at::kFloat, 1e-4}, std::pair{at::kHalf, 2e-2}, std::pair{at::kBFloat16, 1e-1}}) {
    ParameterSetSpec spec;
    spec.lstm = LstmTemplate{};
    spec.lstm->num_layers = 2;
    spec.lstm->input_size = 16;
    spec.lstm->hidden_size = 32;
    spec.lstm->bias = true;
    spec.lstm->bias_init = Initializer::Uniform(-0.5, 0.5);
    spec.seed = 3;
    spec.dtype = *FromScalarType(dtype);
    auto set = CreateParameterSet(spec, {}, cuda);
    ASSERT_TRUE(set.ok()) << set.status();
    auto gpu = StackedLstm::FromParameterSet(*set);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    EXPECT_EQ(gpu->Run(x, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << "CPU inputs for a CUDA set must be refused";
    auto got = gpu->Run(x.to(cuda, dtype), {});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(MaxAbsDiff(got->outputs, expected->outputs), tolerance) << c10::toString(dtype);
  }
}

}  // namespace
}  // namespace lstmserve::core
