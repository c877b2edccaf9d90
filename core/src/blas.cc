#include "lstmserve/core/blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lstmserve::core {
namespace {

// Set in the re-executed process: the reason for the change, and a stop to a second one.
constexpr char kReexecMarker[] = "LSTMSERVE_BLAS_REEXEC";

// OpenBLAS's x86-64 kernel families by the widest vectors they use.
enum class Family { kUnknown, kSse, kAvx, kAvx2, kAvx512 };

Family FamilyOf(absl::string_view core) {
  const std::string c = absl::AsciiStrToLower(core);
  for (const char* name : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai", "coppermine",
                           "northwood", "banias", "opteron", "opteron_sse3", "barcelona", "bobcat", "generic"}) {
    if (c == name) return Family::kSse;
  }
  for (const char* name : {"sandybridge", "bulldozer", "piledriver", "steamroller"}) {
    if (c == name) return Family::kAvx;
  }
  for (const char* name : {"haswell", "zen", "excavator"}) {
    if (c == name) return Family::kAvx2;
  }
  for (const char* name : {"skylakex", "cooperlake", "sapphirerapids"}) {
    if (c == name) return Family::kAvx512;
  }
  return Family::kUnknown;
}

Family WidestOf(const CpuFeatures& cpu) {
  if (cpu.avx512) return Family::kAvx512;
  if (cpu.avx2_fma) return Family::kAvx2;
  if (cpu.avx) return Family::kAvx;
  return Family::kSse;
}

// The names a user may ask for, as OpenBLAS spells them, and what each needs.
struct Named {
  const char* name;
  bool (*runs_on)(const CpuFeatures&);
  const char* needs;
};
constexpr Named kRequestable[] = {
    {"Prescott", [](const CpuFeatures&) { return true; }, "SSE3"},
    {"Nehalem", [](const CpuFeatures&) { return true; }, "SSE4.2"},
    {"Sandybridge", [](const CpuFeatures& c) { return c.avx; }, "AVX"},
    {"Haswell", [](const CpuFeatures& c) { return c.avx2_fma; }, "AVX2 and FMA"},
    {"Zen", [](const CpuFeatures& c) { return c.avx2_fma; }, "AVX2 and FMA"},
    {"SkylakeX", [](const CpuFeatures& c) { return c.avx512; }, "AVX-512 (F, BW, DQ, VL)"},
    {"Cooperlake", [](const CpuFeatures& c) { return c.avx512 && c.avx512_bf16; }, "AVX-512 with BF16"},
};

template <typename Fn>
Fn Symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

}  // namespace

BlasInfo DescribeBlas() {
  BlasInfo info;
  if (auto corename = Symbol<char* (*)()>("openblas_get_corename")) {
    info.library = "openblas";
    info.core = corename();
    if (auto config = Symbol<char* (*)()>("openblas_get_config")) info.config = config();
    return info;
  }
  if (auto version = Symbol<void (*)(char*, int)>("MKL_Get_Version_String")) {
    info.library = "mkl";
    char text[256] = {};
    version(text, sizeof(text) - 1);
    info.config = text;
    return info;
  }
  info.library = "unknown";
  return info;
}

CpuFeatures DetectCpuFeatures() {
  CpuFeatures cpu;
#if defined(__x86_64__)
  __builtin_cpu_init();
  cpu.avx = __builtin_cpu_supports("avx");
  cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  cpu.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return cpu;
}

absl::StatusOr<BlasCoreChoice> ChooseOpenBlasCore(absl::string_view requested, const std::optional<std::string>& env,
                                                  absl::string_view running, const CpuFeatures& cpu) {
  BlasCoreChoice choice;
  if (requested == "keep") {
    choice.reason = "kept (--blas_coretype=keep)";
    return choice;
  }
  if (requested != "auto") {
    for (const Named& n : kRequestable) {
      if (!absl::EqualsIgnoreCase(requested, n.name)) continue;
      if (!n.runs_on(cpu)) {
        return absl::InvalidArgumentError(absl::StrCat("--blas_coretype=", requested, ": OpenBLAS's ", n.name,
                                                       " kernels need ", n.needs, ", which this CPU lacks"));
      }
      if (running.empty()) {
        choice.reason = absl::StrCat("--blas_coretype=", n.name, " has no effect: LibTorch's BLAS is not OpenBLAS");
        return choice;
      }
      if (absl::EqualsIgnoreCase(running, n.name)) {
        choice.reason = absl::StrCat("as asked (--blas_coretype=", n.name, ")");
        return choice;
      }
      choice.coretype = n.name;
      choice.reason = absl::StrCat("--blas_coretype=", n.name, " (OpenBLAS had chosen ", running, ")");
      return choice;
    }
    std::string known;
    for (const Named& n : kRequestable) absl::StrAppend(&known, known.empty() ? "" : ", ", n.name);
    return absl::InvalidArgumentError(
        absl::StrCat("--blas_coretype=", requested, " is not auto, keep or one of ", known));
  }
  if (running.empty()) {
    choice.reason = "not OpenBLAS: its own dispatch";
    return choice;
  }
  if (env.has_value()) {
    choice.reason = absl::StrCat("OPENBLAS_CORETYPE=", *env, " set by the environment: kept");
    return choice;
  }
  const Family have = FamilyOf(running);
  const Family best = WidestOf(cpu);
  if (have == Family::kUnknown) {
    choice.reason = absl::StrCat("OpenBLAS's own choice (", running, ") kept");
    return choice;
  }
  if (have >= best) {
    choice.reason = absl::StrCat("OpenBLAS's own choice, which uses the CPU's widest vectors");
    return choice;
  }
  choice.coretype = best == Family::kAvx512 ? "SkylakeX" : best == Family::kAvx2 ? "Haswell" : "Sandybridge";
  choice.reason = absl::StrCat("OpenBLAS had chosen ", running, ", whose kernels use narrower vectors than this CPU's ",
                               best == Family::kAvx512 ? "AVX-512"
                               : best == Family::kAvx2 ? "AVX2"
                                                       : "AVX",
                               " (a CPU it does not know): set OPENBLAS_CORETYPE=", choice.coretype,
                               " (--blas_coretype=keep to leave it)");
  return choice;
}

absl::StatusOr<BlasSetup> PrepareBlasEnvironment(absl::string_view requested) {
  const BlasInfo blas = DescribeBlas();
  const char* env_value = std::getenv("OPENBLAS_CORETYPE");
  const char* marker = std::getenv(kReexecMarker);
  std::optional<std::string> env;
  if (env_value != nullptr && *env_value != '\0') env = env_value;
  const std::string running = blas.library == "openblas" ? blas.core : "";
  auto choice = ChooseOpenBlasCore(requested, env, running, DetectCpuFeatures());
  if (!choice.ok()) return choice.status();
  BlasSetup setup;
  const std::string now = absl::StrCat("blas: ", blas.library, blas.core.empty() ? "" : " core=", blas.core,
                                       blas.config.empty() ? "" : " (", blas.config, blas.config.empty() ? "" : ")");
  if (marker != nullptr) {  // the re-executed process: say why, and never again
    setup.log_line = absl::StrCat(now, "; ", marker);
    ::unsetenv(kReexecMarker);
    return setup;
  }
  setup.log_line = absl::StrCat(now, "; ", choice->reason);
  if (choice->coretype.empty()) return setup;
  ::setenv("OPENBLAS_CORETYPE", choice->coretype.c_str(), 1);
  ::setenv(kReexecMarker, choice->reason.c_str(), 1);
  setup.restart = true;
  return setup;
}

void AbandonBlasRestart() { ::unsetenv(kReexecMarker); }

}  // namespace lstmserve::core
