// Initialization diagnostics of the core against what the variance formulas predict.
#include "lstmserve/core/diagnostics.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

namespace lstmserve::core {
namespace {

std::vector<NamedTensor> Chain(int layers, int64_t width, double std, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<NamedTensor> out;
  for (int l = 0; l < layers; ++l) {
    out.push_back({"w" + std::to_string(l), at::empty({width, width}).normal_(0, std, gen)});
  }
  return out;
}

TEST(DiagnosticsTest, ALinearChainScalesTheVarianceByFanInTimesWeightVariance) {
  ProbeOptions probe;
  probe.samples = 2048;
  ChainOptions chain;
  chain.activation = Activation::kLinear;
  // var(W) = 2 / fan_in: the variance doubles at each layer, forward; backward too (the
  // gradient reaching layer l's input has passed 3 - l weights).
  auto stats = AnalyzeChain(Chain(3, 128, std::sqrt(2.0 / 128), 1), chain, probe);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 3u);
  for (int l = 0; l < 3; ++l) {
    EXPECT_NEAR((*stats)[l].forward_variance, std::pow(2.0, l + 1), 0.12 * std::pow(2.0, l + 1)) << l;
    EXPECT_NEAR((*stats)[l].gradient_variance, std::pow(2.0, 3 - l), 0.12 * std::pow(2.0, 3 - l)) << l;
    EXPECT_EQ((*stats)[l].dead_fraction, 0);
  }
}

TEST(DiagnosticsTest, TheSameProbeSeedGivesTheSameFigures) {
  ProbeOptions probe;
  probe.seed = 9;
  const auto weights = Chain(4, 32, 0.2, 2);
  auto a = AnalyzeChain(weights, {}, probe);
  auto b = AnalyzeChain(weights, {}, probe);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t l = 0; l < a->size(); ++l) {
    EXPECT_EQ((*a)[l].forward_variance, (*b)[l].forward_variance);
    EXPECT_EQ((*a)[l].gradient_variance, (*b)[l].gradient_variance);
  }
  probe.seed = 10;
  auto c = AnalyzeChain(weights, {}, probe);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*a)[0].forward_variance, (*c)[0].forward_variance);
}

TEST(DiagnosticsTest, LayoutsWidthsAndLimits) {
  std::vector<NamedTensor> weights = {{"a", at::randn({16, 8})}, {"b", at::randn({4, 16})}};
  auto stats = AnalyzeChain(weights, {}, {});  // [out, in]: 8 -> 16 -> 4
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*stats)[0].fan_in, 8);
  EXPECT_EQ((*stats)[1].fan_out, 4);
  weights.push_back({"c", at::randn({3, 3})});
  EXPECT_EQ(AnalyzeChain(weights, {}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  weights.back() = {"c", at::randn({2, 2, 2})};
  EXPECT_EQ(AnalyzeChain(weights, {}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  ProbeOptions big;
  big.samples = 1 << 20;
  big.max_work = 1 << 20;
  EXPECT_EQ(AnalyzeChain(Chain(2, 64, 0.1, 3), {}, big).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(DiagnosticsTest, LstmGateVarianceAtTheFirstStepIsInputSizeTimesWeightVariance) {
  // One step from zero states: z = x W_x, so var(z) = I var(W).
  at::Generator gen = at::detail::createCPUGenerator(4);
  const int64_t input = 48, hidden = 32;
  auto lstm = StackedLstm::Create({at::empty({input + hidden, 4 * hidden}).normal_(0, 0.1, gen)});
  ASSERT_TRUE(lstm.ok());
  ProbeOptions probe;
  probe.samples = 4096;
  probe.steps = 1;
  auto stats = AnalyzeLstm(*lstm, probe);
  ASSERT_TRUE(stats.ok()) << stats.status();
  for (double v : (*stats)[0].gate_variance) EXPECT_NEAR(v, input * 0.01, 0.08 * input * 0.01);
  EXPECT_GT((*stats)[0].h_variance, 0);
  EXPECT_LT((*stats)[0].sigmoid_saturated, 0.01);
}

}  // namespace
}  // namespace lstmserve::core
