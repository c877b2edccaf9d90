#include "lstmserve/core/isa.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/blas.h"

namespace lstmserve::core {
namespace {

constexpr int kUnset = -1;
std::atomic<int> cap{kUnset};
std::atomic<Bf16Kernel> bf16_kernel{Bf16Kernel::kAuto};

// AVX-VNNI (VEX vpdpbusd on YMM), which no x86-64 level includes.
bool CpuHasAvxVnni() {
#if defined(__GNUC__) && !defined(__clang__)
  static const bool has = __builtin_cpu_supports("avxvnni");
  return has;
#else
  return false;
#endif
}

}  // namespace

absl::StatusOr<IsaLevel> ParseIsaLevel(absl::string_view name) {
  if (name == "native") return CpuIsaLevel();
  for (IsaLevel level : {IsaLevel::kBaseline, IsaLevel::kAvx2, IsaLevel::kAvx2Vnni, IsaLevel::kAvx512}) {
    if (name == IsaLevelName(level)) return level;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown instruction-set level \"", name, "\"; choose native, avx512, avx2_vnni, avx2 or baseline"));
}

const char* IsaLevelName(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kAvx2Vnni: return "avx2_vnni";
    case IsaLevel::kAvx2: return "avx2";
    default: return "baseline";
  }
}

IsaLevel CpuIsaLevel() {
  static const IsaLevel level = [] {
#if defined(__GNUC__) && !defined(__clang__)
    // The levels exactly as GCC's target("arch=x86-64-vN") compiles for them (v3 also has
    // BMI1/2, LZCNT, MOVBE, F16C; v4 AVX-512 F, BW, CD, DQ, VL).
    if (__builtin_cpu_supports("x86-64-v4")) return IsaLevel::kAvx512;
    if (!__builtin_cpu_supports("x86-64-v3")) return IsaLevel::kBaseline;
    return CpuHasAvxVnni() ? IsaLevel::kAvx2Vnni : IsaLevel::kAvx2;
#else
    const CpuFeatures cpu = DetectCpuFeatures();
    if (cpu.avx512 && __builtin_cpu_supports("avx512cd")) return IsaLevel::kAvx512;
    return cpu.avx2_fma ? IsaLevel::kAvx2 : IsaLevel::kBaseline;
#endif
  }();
  return level;
}

IsaLevel KernelIsa() {
  int c = cap.load(std::memory_order_relaxed);
  if (c == kUnset) {
    c = static_cast<int>(IsaLevel::kAvx512);
    if (const char* env = std::getenv("LSTMSERVE_ISA"); env != nullptr && *env != '\0') {
      auto parsed = ParseIsaLevel(env);
      if (parsed.ok()) {
        c = static_cast<int>(*parsed);
      } else {
        std::fprintf(stderr, "lstmserve: LSTMSERVE_ISA: %s; not capped\n",
                     std::string(parsed.status().message()).c_str());
      }
    }
    int expected = kUnset;
    if (!cap.compare_exchange_strong(expected, c)) c = expected;
  }
  const auto level = static_cast<IsaLevel>(std::min(c, static_cast<int>(CpuIsaLevel())));
  return level == IsaLevel::kAvx2Vnni && !CpuHasAvxVnni() ? IsaLevel::kAvx2 : level;
}

void SetIsaCap(IsaLevel level) { cap.store(static_cast<int>(level)); }

absl::StatusOr<Bf16Kernel> ParseBf16Kernel(absl::string_view name) {
  if (name == "auto") return Bf16Kernel::kAuto;
  if (name == "dot") return Bf16Kernel::kDot;
  if (name == "widened") return Bf16Kernel::kWidened;
  return absl::InvalidArgumentError(absl::StrCat("unknown bf16 kernel \"", name, "\"; choose auto, dot or widened"));
}

void SetBf16Kernel(Bf16Kernel kernel) { bf16_kernel.store(kernel, std::memory_order_relaxed); }

Bf16Kernel Bf16KernelChoice() { return bf16_kernel.load(std::memory_order_relaxed); }

std::vector<std::pair<std::string, std::string>> IsaEnvironment(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAvx512: return {};  // the libraries' own choice: AVX-512 and what the CPU adds
    case IsaLevel::kAvx2Vnni:           // the libraries as at avx2: AVX-VNNI is the core's int8 GEMM's
    case IsaLevel::kAvx2:
      return {{"MKL_ENABLE_INSTRUCTIONS", "AVX2"}, {"DNNL_MAX_CPU_ISA", "AVX2"}, {"OPENBLAS_CORETYPE", "Haswell"}};
    default:
      return {{"MKL_ENABLE_INSTRUCTIONS", "SSE4_2"}, {"DNNL_MAX_CPU_ISA", "SSE41"}, {"OPENBLAS_CORETYPE", "Nehalem"}};
  }
}

absl::StatusOr<bool> PrepareIsaEnvironment(absl::string_view name) {
  auto level = ParseIsaLevel(name);
  if (!level.ok()) return level.status();
  if (name == "native") return false;  // no cap from the flag: LSTMSERVE_ISA still applies
  SetIsaCap(*level);
  bool changed = false;
  if (*level < CpuIsaLevel()) {
    auto env = IsaEnvironment(*level);
    env.emplace_back("LSTMSERVE_ISA", IsaLevelName(*level));
    for (const auto& [key, value] : env) {
      if (std::getenv(key.c_str()) == nullptr) {
        ::setenv(key.c_str(), value.c_str(), 1);
        changed = true;
      }
    }
  }
  return changed;
}

}  // namespace lstmserve::core
