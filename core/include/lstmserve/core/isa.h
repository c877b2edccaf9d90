// The x86-64 level the core's own CPU kernels run at, and a cap on it, so that each level's
// kernels are tested and measured on any machine (an AVX-512 CPU runs the AVX2 kernels when
// capped at avx2).
//
// Levels: avx512 (x86-64-v4: AVX-512 F, BW, CD, DQ, VL; the packed int8 and bf16 GEMMs also
// need AVX512-VNNI and AVX512-BF16), avx2_vnni (x86-64-v3 and AVX-VNNI, which no x86-64
// level includes: the avx2 kernels, but the packed int8 GEMM on YMM vpdpbusd), avx2
// (x86-64-v3: AVX2 + FMA), baseline (x86-64). The level run is the lower of the CPU's and
// the cap. The cap comes from SetIsaCap, or else
// from LSTMSERVE_ISA in the environment, read at the first kernel call.
//
// The BLAS (MKL, OpenBLAS) and oneDNN pick their own kernels: IsaEnvironment gives the
// variables that cap them at a level, which take effect only when set before those
// libraries first run (OpenBLAS: before the process loads it), so a process sets them and
// starts again (lstmserve's --isa does so, as for --blas_coretype).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lstmserve::core {

enum class IsaLevel { kBaseline = 0, kAvx2 = 1, kAvx2Vnni = 2, kAvx512 = 3 };

// "baseline", "avx2", "avx2_vnni", "avx512"; "native" (no cap) is the CPU's level.
absl::StatusOr<IsaLevel> ParseIsaLevel(absl::string_view name);
const char* IsaLevelName(IsaLevel level);

// The CPU's level.
IsaLevel CpuIsaLevel();
// The level the kernels run at: min(CPU, cap); avx2 where that is avx2_vnni on a CPU without
// AVX-VNNI (an AVX-512 CPU such as Zen 4 or Skylake, capped at avx2_vnni).
IsaLevel KernelIsa();
// Caps the kernels from now on (the CPU's level when higher than it).
void SetIsaCap(IsaLevel cap);

// Which AVX-512 build of the packed bf16 GEMM runs (lstm_kernels.h; the same bits either
// way): kAuto chooses by the CPU, vdpbf16ps where it has AVX512-BF16 except on Intel's cores
// (whose vdpbf16ps runs at half the FMA's rate), else the weights widened to float32 FMAs;
// kDot takes vdpbf16ps wherever the CPU has it, kWidened the widened build. So that both are
// tested and measured on any AVX-512 machine (lstmserve-core-bench --bf16_kernel).
enum class Bf16Kernel { kAuto, kDot, kWidened };
// "auto", "dot", "widened".
absl::StatusOr<Bf16Kernel> ParseBf16Kernel(absl::string_view name);
void SetBf16Kernel(Bf16Kernel kernel);
Bf16Kernel Bf16KernelChoice();

// The environment that caps MKL, oneDNN and OpenBLAS at `level` (MKL_ENABLE_INSTRUCTIONS,
// DNNL_MAX_CPU_ISA, OPENBLAS_CORETYPE).
std::vector<std::pair<std::string, std::string>> IsaEnvironment(IsaLevel level);

// A process's --isa flag: parses `name` ("native": no cap from the flag, LSTMSERVE_ISA in the
// environment still applies), caps the kernels, and puts the libraries' caps in
// the environment (the variables not already set). Returns whether it changed the
// environment, when the process should start again (execv) so that OpenBLAS, which reads it
// as it loads, sees it; also exports LSTMSERVE_ISA, so the restarted process keeps the cap.
absl::StatusOr<bool> PrepareIsaEnvironment(absl::string_view name);

}  // namespace lstmserve::core
