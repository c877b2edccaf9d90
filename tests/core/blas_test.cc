// The choice of OpenBLAS's kernels: a pure function of what was asked, the environment, what
// OpenBLAS chose and the CPU's vector extensions.
#include "lstmserve/core/blas.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace lstmserve::core {
namespace {

CpuFeatures Avx512Cpu() { return {true, true, true, true}; }
CpuFeatures Avx2Cpu() { return {true, true, false, false}; }
CpuFeatures SseCpu() { return {false, false, false, false}; }

std::string Auto(const std::optional<std::string>& env, const char* running, const CpuFeatures& cpu) {
  auto choice = ChooseOpenBlasCore("auto", env, running, cpu);
  EXPECT_TRUE(choice.ok()) << choice.status();
  return choice.ok() ? choice->coretype : "error";
}

TEST(BlasChoiceTest, AutoReplacesAFallbackNarrowerThanTheCpu) {
  // The review's machine: an Intel Xeon OpenBLAS 0.3.21 does not know, Prescott kernels.
  EXPECT_EQ(Auto(std::nullopt, "Prescott", Avx512Cpu()), "SkylakeX");
  EXPECT_EQ(Auto(std::nullopt, "Nehalem", Avx2Cpu()), "Haswell");
  EXPECT_EQ(Auto(std::nullopt, "Sandybridge", Avx512Cpu()), "SkylakeX");
  EXPECT_EQ(Auto(std::nullopt, "Haswell", Avx512Cpu()), "SkylakeX");
  auto choice = ChooseOpenBlasCore("auto", std::nullopt, "Prescott", Avx512Cpu());
  ASSERT_TRUE(choice.ok());
  EXPECT_TRUE(absl::StrContains(choice->reason, "had chosen Prescott")) << choice->reason;
}

TEST(BlasChoiceTest, AutoKeepsWhatIsAlreadyTheWidestTheEnvironmentsChoiceAndWhatItDoesNotKnow) {
  EXPECT_EQ(Auto(std::nullopt, "SkylakeX", Avx512Cpu()), "");
  EXPECT_EQ(Auto(std::nullopt, "Cooperlake", Avx512Cpu()), "");
  EXPECT_EQ(Auto(std::nullopt, "Haswell", Avx2Cpu()), "");
  EXPECT_EQ(Auto(std::nullopt, "Zen", Avx2Cpu()), "");
  EXPECT_EQ(Auto(std::nullopt, "Prescott", SseCpu()), "");
  // Set on purpose (older OpenBLAS builds compute wrong results on some CPUs): kept.
  EXPECT_EQ(Auto(std::string("Haswell"), "Haswell", Avx512Cpu()), "");
  EXPECT_EQ(Auto(std::string("Prescott"), "Prescott", Avx512Cpu()), "");
  EXPECT_EQ(Auto(std::nullopt, "SomeFutureCore", Avx512Cpu()), "");
  // Not OpenBLAS (LibTorch 2.x's MKL): nothing to do.
  EXPECT_EQ(Auto(std::nullopt, "", Avx512Cpu()), "");
}

TEST(BlasChoiceTest, KeepAndExplicitNames) {
  auto keep = ChooseOpenBlasCore("keep", std::nullopt, "Prescott", Avx512Cpu());
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(keep->coretype, "");
  auto named = ChooseOpenBlasCore("haswell", std::string("Prescott"), "Prescott", Avx512Cpu());
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->coretype, "Haswell");  // an explicit flag wins over the environment
  auto same = ChooseOpenBlasCore("SkylakeX", std::nullopt, "SkylakeX", Avx512Cpu());
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->coretype, "");  // already running
  auto mkl = ChooseOpenBlasCore("Haswell", std::nullopt, "", Avx512Cpu());
  ASSERT_TRUE(mkl.ok());
  EXPECT_EQ(mkl->coretype, "");
  EXPECT_TRUE(absl::StrContains(mkl->reason, "not OpenBLAS")) << mkl->reason;
}

TEST(BlasChoiceTest, ANameTheCpuCannotRunOrThatIsUnknownIsRefused) {
  auto too_wide = ChooseOpenBlasCore("SkylakeX", std::nullopt, "Haswell", Avx2Cpu());
  EXPECT_EQ(too_wide.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(too_wide.status().message(), "AVX-512")) << too_wide.status();
  auto bf16 = ChooseOpenBlasCore("Cooperlake", std::nullopt, "Haswell", CpuFeatures{true, true, true, false});
  EXPECT_EQ(bf16.status().code(), absl::StatusCode::kInvalidArgument);
  auto unknown = ChooseOpenBlasCore("Pentium4", std::nullopt, "Haswell", Avx512Cpu());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "SkylakeX")) << unknown.status();
}

TEST(BlasChoiceTest, DescribeBlasNamesTheLibraryLibTorchCalls) {
  const BlasInfo blas = DescribeBlas();
  EXPECT_TRUE(blas.library == "openblas" || blas.library == "mkl") << blas.library;
  if (blas.library == "openblas") {
    EXPECT_FALSE(blas.core.empty());
  }
}

}  // namespace
}  // namespace lstmserve::core
