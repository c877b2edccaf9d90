// Initializer formulas, names, fans and every validation rule.
#include "lstmserve/core/initializer.h"

#include <cmath>
#include <limits>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "lstmserve/core/threads.h"

namespace lstmserve::core {
namespace {

TEST(CalculateGainTest, MatchesTorchTable) {
  EXPECT_EQ(CalculateGain(Nonlinearity::kLinear), 1.0);
  EXPECT_EQ(CalculateGain(Nonlinearity::kConv2d), 1.0);
  EXPECT_EQ(CalculateGain(Nonlinearity::kConvTranspose3d), 1.0);
  EXPECT_EQ(CalculateGain(Nonlinearity::kSigmoid), 1.0);
  EXPECT_EQ(CalculateGain(Nonlinearity::kTanh), 5.0 / 3);
  EXPECT_EQ(CalculateGain(Nonlinearity::kRelu), std::sqrt(2.0));
  EXPECT_EQ(CalculateGain(Nonlinearity::kSelu), 0.75);
  EXPECT_EQ(CalculateGain(Nonlinearity::kLeakyRelu), std::sqrt(2.0 / (1 + 0.01 * 0.01)));
  EXPECT_EQ(CalculateGain(Nonlinearity::kLeakyRelu, 0.2), std::sqrt(2.0 / 1.04));
  EXPECT_EQ(CalculateGain(Nonlinearity::kLeakyRelu, 0.0), std::sqrt(2.0));
}

TEST(ComputeFansTest, TorchConventionReadsSize1AsFanIn) {
  auto fans = ComputeFans({8, 3, 5, 5}, FanConvention::kTorch);
  ASSERT_TRUE(fans.ok());
  EXPECT_EQ(fans->fan_in, 3 * 25);
  EXPECT_EQ(fans->fan_out, 8 * 25);
  fans = ComputeFans({384, 1024}, FanConvention::kTorch);
  EXPECT_EQ(fans->fan_in, 1024);  // the LSTM's [I + H, 4H]: torch takes 4H as fan_in
  EXPECT_EQ(fans->fan_out, 384);
}

TEST(ComputeFansTest, MatmulConventionReadsRowsAsFanIn) {
  auto fans = ComputeFans({384, 1024}, FanConvention::kMatmul);
  ASSERT_TRUE(fans.ok());
  EXPECT_EQ(fans->fan_in, 384);
  EXPECT_EQ(fans->fan_out, 1024);
}

TEST(ComputeFansTest, RejectsOneDimensionAZeroFanAndOverflow) {
  EXPECT_EQ(ComputeFans({5}, FanConvention::kTorch).status().code(), absl::StatusCode::kInvalidArgument);
  auto zero = ComputeFans({4, 0}, FanConvention::kTorch);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("fan of 0"), std::string::npos) << zero.status();
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(ComputeFans({2, big, big}, FanConvention::kTorch).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NamesTest, ParseAndPrintRoundTrip) {
  for (const char* name : {"uniform", "normal", "constant", "zeros", "ones", "xavier_uniform", "xavier_normal",
                           "kaiming_uniform", "kaiming_normal", "orthogonal", "trunc_normal"}) {
    auto kind = ParseInitKind(name);
    ASSERT_TRUE(kind.ok()) << name;
    EXPECT_EQ(InitKindName(*kind), name);
  }
  EXPECT_EQ(*ParseInitKind("kaiming_normal_"), InitKind::kKaimingNormal);  // torch's spelling
  for (const char* name : {"linear", "conv1d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"}) {
    auto n = ParseNonlinearity(name);
    ASSERT_TRUE(n.ok()) << name;
    EXPECT_EQ(NonlinearityName(*n), name);
  }
  EXPECT_EQ(*ParseFanMode("fan_out"), FanMode::kFanOut);
  EXPECT_EQ(*ParseFanConvention("matmul"), FanConvention::kMatmul);
}

TEST(NamesTest, UnknownNamesListTheKnownOnes) {
  auto kind = ParseInitKind("he_normal");
  ASSERT_EQ(kind.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(kind.status().message().find("kaiming_normal"), std::string::npos) << kind.status();
  EXPECT_EQ(ParseNonlinearity("gelu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseFanMode("fan_avg").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseFanConvention("tf").status().code(), absl::StatusCode::kInvalidArgument);
}

struct InvalidCase {
  const char* what;
  Initializer init;
  std::vector<int64_t> shape;
  const char* message_part;
};

TEST(ValidateInitializerTest, EveryRuleGivesInvalidArgumentWithAPreciseMessage) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<InvalidCase> cases = {
      {"normal std < 0", Initializer::Normal(0, -1), {4, 4}, "std must be >= 0"},
      {"normal NaN mean", Initializer::Normal(nan, 1), {4, 4}, "finite"},
      {"trunc_normal std < 0", Initializer::TruncNormal(0, -0.5), {4, 4}, "std must be > 0"},
      {"trunc_normal std = 0", Initializer::TruncNormal(0, 0), {4, 4}, "std must be > 0"},
      {"trunc_normal a > b", Initializer::TruncNormal(0, 1, 2, -2), {4, 4}, "a must be < b"},
      {"trunc_normal inf b", Initializer::TruncNormal(0, 1, -2, inf), {4, 4}, "finite"},
      {"uniform a > b", Initializer::Uniform(1, 0), {4}, "a must be <= b"},
      {"uniform too wide", Initializer::Uniform(-3e38, 3e38), {4}, "magnitude at most 1e30"},
      {"constant past float32", Initializer::Constant(8.98846567431158e307), {4}, "magnitude at most 1e30"},
      {"constant NaN", Initializer::Constant(nan), {4}, "finite"},
      {"orthogonal on 1-D", Initializer::Orthogonal(), {6}, "at least 2 dimensions"},
      {"eye on 3-D", Initializer::Eye(), {2, 2, 2}, "eye needs a tensor of 2 dimensions"},
      {"dirac on 2-D", Initializer::Dirac(), {4, 4}, "3, 4 or 5 dimensions"},
      {"dirac groups 0", Initializer::Dirac(0), {4, 4, 3}, "groups must be >= 1"},
      {"dirac groups not dividing", Initializer::Dirac(3), {4, 4, 3}, "divide size(0) = 4"},
      {"sparse sparsity > 1", Initializer::Sparse(1.5), {4, 4}, "must be in [0, 1]"},
      {"sparse sparsity < 0", Initializer::Sparse(-0.5), {4, 4}, "must be in [0, 1]"},
      {"sparse NaN sparsity", Initializer::Sparse(nan), {4, 4}, "must be in [0, 1]"},
      {"sparse std < 0", Initializer::Sparse(0.5, -1), {4, 4}, "std must be >= 0"},
      {"sparse on 3-D", Initializer::Sparse(0.5), {4, 4, 2}, "sparse needs a tensor of 2 dimensions"},
      {"orthogonal inf gain", Initializer::Orthogonal(inf), {6, 6}, "finite"},
      {"xavier negative gain", Initializer::XavierUniform(-2.6e-231), {6, 6}, "gain must be >= 0"},
      {"xavier normal negative gain", Initializer::XavierNormal(-1), {6, 6}, "gain must be >= 0"},
      {"xavier on 1-D", Initializer::XavierUniform(), {6}, "at least 2 dimensions"},
      {"kaiming on 1-D", Initializer::KaimingNormal(), {6}, "at least 2 dimensions"},
      {"kaiming fan of 0", Initializer::KaimingNormal(), {6, 0}, "fan of 0"},
      {"kaiming NaN slope", Initializer::KaimingUniform(nan), {6, 6}, "finite"},
  };
  for (const auto& c : cases) {
    absl::Status status = ValidateInitializer(c.init, c.shape, FanConvention::kTorch);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(status.message().find(c.message_part), std::string::npos)
        << c.what << ": message was '" << status.message() << "'";
  }
}

TEST(ApplyInitializerTest, ValidatesBeforeTouchingTheTensorAndNeverThrows) {
  at::Tensor t = at::full({5}, 7.0f);
  at::Generator gen = at::detail::createCPUGenerator(1);
  absl::Status status = ApplyInitializer(t, Initializer::Orthogonal(), FanConvention::kTorch, gen);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(at::all(t == 7.0f).item<bool>()) << "a refused initializer must leave the tensor alone";
}

TEST(ApplyInitializerTest, DrawsOnlyFromTheGivenGenerator) {
  // The process-wide generator must neither feed nor be advanced by a creation.
  at::manual_seed(5);
  const at::Tensor before = at::randn({8});
  at::manual_seed(5);
  at::Tensor t = at::empty({64, 32});
  at::Generator gen = at::detail::createCPUGenerator(123);
  ASSERT_TRUE(ApplyInitializer(t, Initializer::KaimingNormal(), FanConvention::kTorch, gen).ok());
  EXPECT_TRUE(at::equal(at::randn({8}), before)) << "the global RNG was advanced";
  at::Tensor again = at::empty({64, 32});
  at::Generator gen2 = at::detail::createCPUGenerator(123);
  at::manual_seed(999);
  ASSERT_TRUE(ApplyInitializer(again, Initializer::KaimingNormal(), FanConvention::kTorch, gen2).ok());
  EXPECT_TRUE(at::equal(t, again)) << "the global seed changed the draws";
}

TEST(ApplyInitializerTest, StatisticsFollowTheFormulas) {
  // Large tensors: sample std within 2% of the formula (many thousands of draws).
  at::Generator gen = at::detail::createCPUGenerator(7);
  at::Tensor t = at::empty({512, 256});
  ASSERT_TRUE(ApplyInitializer(t, Initializer::KaimingNormal(0, FanMode::kFanIn, Nonlinearity::kRelu),
                               FanConvention::kTorch, gen)
                  .ok());
  EXPECT_NEAR(t.std().item<double>(), std::sqrt(2.0 / 256), 0.02 * std::sqrt(2.0 / 256));
  ASSERT_TRUE(ApplyInitializer(t, Initializer::KaimingNormal(0, FanMode::kFanIn, Nonlinearity::kRelu),
                               FanConvention::kMatmul, gen)
                  .ok());
  EXPECT_NEAR(t.std().item<double>(), std::sqrt(2.0 / 512), 0.02 * std::sqrt(2.0 / 512));
  ASSERT_TRUE(ApplyInitializer(t, Initializer::XavierUniform(), FanConvention::kTorch, gen).ok());
  const double bound = std::sqrt(6.0 / (512 + 256));
  EXPECT_LE(t.abs().max().item<double>(), bound);
  EXPECT_GE(t.abs().max().item<double>(), 0.99 * bound);
  ASSERT_TRUE(ApplyInitializer(t, Initializer::TruncNormal(0.5, 1.0, 0.0, 1.0), FanConvention::kTorch, gen).ok());
  EXPECT_GE(t.min().item<double>(), 0.0);
  EXPECT_LE(t.max().item<double>(), 1.0);
  at::Tensor q = at::empty({64, 128});
  ASSERT_TRUE(ApplyInitializer(q, Initializer::Orthogonal(), FanConvention::kTorch, gen).ok());
  EXPECT_TRUE(at::allclose(at::mm(q, q.t()), at::eye(64), 1e-5, 1e-5)) << "rows are not orthonormal";
}

TEST(ApplyInitializerTest, OrthogonalBitsDoNotDependOnTheThreadCount) {
  // OpenBLAS's threaded QR changes bits with the thread count; the core pins it to one.
  auto make = [](int threads) {
    SetIntraOpThreads(threads);
    at::Tensor t = at::empty({128, 128});
    at::Generator gen = at::detail::createCPUGenerator(3);
    EXPECT_TRUE(ApplyInitializer(t, Initializer::Orthogonal(), FanConvention::kTorch, gen).ok());
    return t;
  };
  const at::Tensor one = make(1);
  const at::Tensor two = make(2);
  SetIntraOpThreads(0);
  EXPECT_TRUE(at::equal(one, two));
}

// The review's finding: on a fresh server (--threads=0, 2 threads) the first orthogonal
// request gave the 2-thread QR bits. A new thread's first ATen parallel call applies the
// configured thread count and undid the one-thread pin. The first call on a fresh thread
// must give the same bits as later ones.
TEST(ApplyInitializerTest, OrthogonalFirstCallOnAFreshThreadIsPinnedToo) {
  SetIntraOpThreads(2);
  auto make = [] {
    at::Tensor t = at::empty({130, 517});
    at::Generator gen = at::detail::createCPUGenerator(1);
    EXPECT_TRUE(ApplyInitializer(t, Initializer::Orthogonal(), FanConvention::kTorch, gen).ok());
    return t;
  };
  at::Tensor first, second;
  std::thread([&] {
    first = make();
    second = make();
  }).join();
  SetIntraOpThreads(1);
  const at::Tensor one_thread = make();
  SetIntraOpThreads(0);
  EXPECT_TRUE(at::equal(first, second)) << "the first call on a thread differs from the second";
  EXPECT_TRUE(at::equal(first, one_thread)) << "the first call did not run on one thread";
}

TEST(DescribeInitializerTest, NamesKindAndParameters) {
  EXPECT_EQ(DescribeInitializer(Initializer::DefaultWeight()), "kaiming_normal(a=0, mode=fan_in, nonlinearity=relu)");
  EXPECT_EQ(DescribeInitializer(Initializer::DefaultBias()), "constant(value=0)");
}

}  // namespace
}  // namespace lstmserve::core
