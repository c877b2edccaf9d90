// The article's argument as properties of sets the core creates: a good initializer keeps the
// forward variance of a deep stack near constant, a bad one makes it explode or vanish.
// Deterministic (fixed seeds); bounds are orders of magnitude apart from the failures.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/threads.h"

namespace lstmserve::core {
namespace {

constexpr int kDepth = 20;
constexpr int kWidth = 256;
constexpr int kSamples = 1024;

// Pre-activation variance at each layer of y = act(x @ W^T), W [out, in] (torch layout),
// for unit-variance inputs.
std::vector<double> ForwardVariances(const Initializer& init, uint64_t seed,
                                     const std::function<at::Tensor(const at::Tensor&)>& act) {
  ParameterSetSpec spec;
  for (int l = 0; l < kDepth; ++l) spec.tensors.push_back({absl::StrCat("layer", l), {kWidth, kWidth}, init});
  spec.seed = seed;
  auto set = CreateParameterSet(spec, {});
  EXPECT_TRUE(set.ok()) << set.status();
  at::Generator gen = at::detail::createCPUGenerator(seed + 1000);
  at::Tensor x = at::empty({kSamples, kWidth}).normal_(0, 1, gen);
  std::vector<double> variances;
  for (const auto& layer : set->tensors) {
    const at::Tensor pre = at::mm(x, layer.value.t());
    variances.push_back(pre.var().item<double>());
    x = act(pre);
  }
  return variances;
}

at::Tensor Relu(const at::Tensor& t) { return at::relu(t); }
at::Tensor Tanh(const at::Tensor& t) { return at::tanh(t); }

class VariancePropertyTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  static void SetUpTestSuite() { SetIntraOpThreads(0); }
};

TEST_P(VariancePropertyTest, HeKeepsReluStackVarianceNearOne) {
  const auto v =
      ForwardVariances(Initializer::KaimingNormal(0, FanMode::kFanIn, Nonlinearity::kRelu), GetParam(), Relu);
  for (int l = 0; l < kDepth; ++l) {
    EXPECT_GE(v[l], 0.25) << "layer " << l;
    EXPECT_LE(v[l], 4.0) << "layer " << l;
  }
}

TEST_P(VariancePropertyTest, HeWithoutTheReluGainHalvesVariancePerLayer) {
  // gain 1 (kaiming 'linear') ignores ReLU's halving: 20 layers lose about 2^-19.
  const auto v =
      ForwardVariances(Initializer::KaimingNormal(0, FanMode::kFanIn, Nonlinearity::kLinear), GetParam(), Relu);
  EXPECT_LT(v.back(), 1e-4);
}

TEST_P(VariancePropertyTest, StandardNormalExplodesAndSmallNormalVanishes) {
  const auto big = ForwardVariances(Initializer::Normal(0, 1), GetParam(), Relu);
  const auto small = ForwardVariances(Initializer::Normal(0, 0.01), GetParam(), Relu);
  EXPECT_GT(big.back(), 1e6);  // inf (float overflow) also counts as exploded
  EXPECT_LT(small.back(), 1e-6);
}

TEST_P(VariancePropertyTest, XavierWithTanhGainKeepsTanhStackVarianceNearOne) {
  const auto v = ForwardVariances(Initializer::XavierUniform(CalculateGain(Nonlinearity::kTanh)), GetParam(), Tanh);
  for (int l = 0; l < kDepth; ++l) {
    EXPECT_GE(v[l], 0.25) << "layer " << l;
    EXPECT_LE(v[l], 4.0) << "layer " << l;
  }
  // N(0, 1) through tanh saturates: the pre-activations' variance sits near the width.
  const auto saturated = ForwardVariances(Initializer::Normal(0, 1), GetParam(), Tanh);
  EXPECT_GT(saturated.back(), 100.0);
}

INSTANTIATE_TEST_SUITE_P(Seeds, VariancePropertyTest, ::testing::Values(0, 1, 2));

// The LSTM layout [I + H, 4H] used as [x, h] @ w: the gate pre-activation variance is
// (I + H) * Var(w) for unit-variance [x, h]. kaiming_normal(fan_in, relu) gives
// Var(w) = 2 / fan_in with fan_in = 4H (torch) or I + H (matmul).
TEST(LstmLayoutVarianceTest, FanConventionsGiveThePredictedGateVariance) {
  const int64_t input = 128, hidden = 256;
  for (FanConvention convention : {FanConvention::kTorch, FanConvention::kMatmul}) {
    ParameterSetSpec spec;
    spec.lstm = LstmTemplate{};
    spec.lstm->input_size = input;
    spec.lstm->hidden_size = hidden;
    spec.fan_convention = convention;
    spec.seed = 17;
    auto set = CreateParameterSet(spec, {});
    ASSERT_TRUE(set.ok());
    at::Generator gen = at::detail::createCPUGenerator(18);
    const at::Tensor xh = at::empty({4096, input + hidden}).normal_(0, 1, gen);
    const double got = at::mm(xh, set->tensors[0].value).var().item<double>();
    const double fan_in = convention == FanConvention::kTorch ? 4 * hidden : input + hidden;
    const double predicted = (input + hidden) * 2.0 / fan_in;
    EXPECT_NEAR(got, predicted, 0.05 * predicted) << FanConventionName(convention);
  }
}

}  // namespace
}  // namespace lstmserve::core
