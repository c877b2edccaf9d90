// The BLAS that LibTorch calls on the CPU, and which of OpenBLAS's kernels it runs.
//
// Debian's OpenBLAS 0.3.21 picks its kernels from the CPU at load time. On CPUs newer than
// it knows (an Intel Xeon of family 6 model 207, for one) it falls back to its Prescott
// (SSE3) kernels: a quarter of the machine's float32 GEMM. Setting OPENBLAS_CORETYPE before
// the library loads picks other kernels; some environments set it on purpose (older OpenBLAS
// builds compute wrong results on some CPUs), so a value already set is kept. The choice
// has to be made before the library loads, so a binary that changes it re-executes itself
// once with the variable set (PrepareBlasEnvironment). LibTorch 2.x from PyPI calls MKL, which
// dispatches by itself; nothing is changed there.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lstmserve::core {

// What the process runs now.
struct BlasInfo {
  std::string library;  // "openblas", "mkl" or "unknown"
  std::string core;     // OpenBLAS: openblas_get_corename() (e.g. "Haswell", "Prescott"); else ""
  std::string config;   // OpenBLAS: openblas_get_config(); MKL: its version string
};
BlasInfo DescribeBlas();

// The vector extensions of the CPU that OpenBLAS's kernel families use.
struct CpuFeatures {
  bool avx = false;
  bool avx2_fma = false;
  bool avx512 = false;       // F, BW, DQ and VL: what SkylakeX's kernels use
  bool avx512_bf16 = false;  // Cooperlake's
};
CpuFeatures DetectCpuFeatures();

// The decision: the value to give OPENBLAS_CORETYPE (empty: change nothing) and why.
struct BlasCoreChoice {
  std::string coretype;
  std::string reason;
};

// `requested`: "auto" (default), "keep", or an OpenBLAS core name (case as OpenBLAS spells
// it: Prescott, Nehalem, Sandybridge, Haswell, Zen, SkylakeX, Cooperlake). `env`: the
// OPENBLAS_CORETYPE the process was started with, if any. `running`: the core OpenBLAS
// chose (DescribeBlas().core; empty when the BLAS is not OpenBLAS).
//  - keep, or not OpenBLAS: nothing.
//  - auto: nothing when `env` is set (the environment's choice) or `running` is a core this
//    table does not know; else, when `running` uses a narrower vector family than the CPU
//    has, SkylakeX (AVX-512) or Haswell (AVX2 + FMA).
//  - a name: that core, even over `env`; INVALID_ARGUMENT for an unknown name or one whose
//    instructions the CPU lacks (a kernel the CPU cannot run would crash).
absl::StatusOr<BlasCoreChoice> ChooseOpenBlasCore(absl::string_view requested, const std::optional<std::string>& env,
                                                  absl::string_view running, const CpuFeatures& cpu);

// For main(), before any thread starts: decides with the running process's facts. When
// OPENBLAS_CORETYPE must change it sets it (and a marker that carries the reason to the
// next process and stops a second change) and says `restart`: the caller re-executes
// itself, which is when OpenBLAS reads the variable. `log_line` says what runs and why.
// INVALID_ARGUMENT for a bad `requested`.
struct BlasSetup {
  bool restart = false;
  std::string log_line;
};
absl::StatusOr<BlasSetup> PrepareBlasEnvironment(absl::string_view requested);
// After a failed re-execution: takes the marker back (the process runs on as it is).
void AbandonBlasRestart();

}  // namespace lstmserve::core
