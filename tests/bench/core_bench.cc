// lstmserve-core-bench: the core's stacked LSTM on the four reference workloads, beside one
// GEMM of the step's shape [B, I + H] x [I + H, 4H] (the roofline), in one binary.
//
//   lstmserve-core-bench [--threads=N] [--device=cpu|cuda[:N]] [--dtype=float32|float16|bfloat16]
//                        [--isa=native|avx512|avx2_vnni|avx2|baseline] [--bf16_kernel=auto|dot|widened]
//                        [Google Benchmark flags, e.g. --benchmark_filter=M]
//
// Benchmarks, per workload W:
//   core/W         the default path (Step for 1 step, Run for sequences)
//   core_steps/W   T separate Step calls carrying the state (the autoregressive case)
//   core_<path>/W  one path forced (CPU: small_batch, blas, generic, onednn; CUDA: cuda_fused,
//                  cuda_gemm, generic)
//   core_bf16/W, core_int8/W  the default path on the same set with bfloat16 or int8 weight
//                  storage (CPU, float32 only)
//   gemm/W         at::mm_out of the step's shape, into a preallocated output
// On CUDA every iteration ends with a device synchronisation (the time is the work's, not
// its queueing), and the workloads L_B1 .. L_B1024 add a batch sweep of L.
// Counter FLOPS is the stacked-LSTM arithmetic (2 * B * (in_l + H) * 4H per layer-step).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>

#include "lstmserve/core/blas.h"
#include "lstmserve/core/device.h"
#include "lstmserve/core/isa.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/core/threads.h"

namespace core = lstmserve::core;

namespace {

struct Workload {
  const char* name;
  int64_t batch, input, hidden, layers, steps;
};
constexpr Workload kWorkloads[] = {
    {"S", 1, 64, 64, 2, 1},        {"S32", 1, 64, 64, 2, 32},   {"M", 64, 128, 256, 2, 100},
    {"L", 256, 1024, 1024, 4, 20}, {"L1", 1, 1024, 1024, 4, 1},  // one step of L at B=1: reads 134 MB of weights,
                                                                 // bandwidth-bound
};
// The batch sweep of L, on CUDA only (on 2 CPU cores B=1024 takes seconds per call).
constexpr int64_t kSweepBatches[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
// On the CPU, the small batches where `auto` picks between the small-batch kernels and BLAS
// (ChoosePath's thresholds per ISA level are read off these).
constexpr Workload kCpuSmallBatches[] = {
    {"S32_B2", 2, 64, 64, 2, 32},
    {"S32_B4", 4, 64, 64, 2, 32},
    {"M_B1", 1, 128, 256, 2, 100},
    {"M_B4", 4, 128, 256, 2, 100},
    {"L1_B2", 2, 1024, 1024, 4, 1},
    {"L1_B4", 4, 1024, 1024, 4, 1},
    // Past the small-batch kernels: where the packed float32 GEMM takes over.
    {"S32_B8", 8, 64, 64, 2, 32},
    {"M_B16", 16, 128, 256, 2, 100},
    {"L1_B8", 8, 1024, 1024, 4, 1},
    {"L_B32", 32, 1024, 1024, 4, 20},
};

// Where and in what dtype the benchmarks run (--device, --dtype).
c10::Device g_device(c10::kCPU);
core::DType g_dtype = core::DType::kFloat32;

struct Fixture {
  core::StackedLstm lstm;
  at::Tensor inputs;  // [T, B, I]
  core::LstmState state;
};

Fixture MakeFixture(const Workload& w, core::WeightStorage storage = core::WeightStorage::kDType) {
  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{};
  spec.lstm->num_layers = w.layers;
  spec.lstm->input_size = w.input;
  spec.lstm->hidden_size = w.hidden;
  spec.seed = 1;
  spec.dtype = g_dtype;
  spec.weight_storage = storage;
  auto set = core::CreateParameterSet(spec, {}, g_device);
  if (!set.ok()) std::abort();
  auto lstm = core::StackedLstm::FromParameterSet(*set);
  if (!lstm.ok()) std::abort();
  at::Generator gen = at::detail::createCPUGenerator(2);
  const auto here = [](at::Tensor t) { return t.to(g_device, core::ToScalarType(g_dtype)); };
  Fixture f{*std::move(lstm), here(at::empty({w.steps, w.batch, w.input}).normal_(0, 1, gen)), {}};
  for (int64_t l = 0; l < w.layers; ++l) {
    f.state.c.push_back(here(at::empty({w.batch, w.hidden}).normal_(0, 1, gen)));
    f.state.h.push_back(here(at::empty({w.batch, w.hidden}).uniform_(-1, 1, gen)));
  }
  return f;
}

void Sync() { core::SynchronizeDevice(g_device); }

void SetFlops(benchmark::State& state, const Fixture& f, const Workload& w) {
  state.counters["FLOPS"] =
      benchmark::Counter(f.lstm.StepFlops(w.batch) * w.steps, benchmark::Counter::kIsIterationInvariantRate);
}

void BenchCore(benchmark::State& state, Workload w, core::LstmPath path, core::WeightStorage storage) {
  Fixture f = MakeFixture(w, storage);
  const at::Tensor x0 = f.inputs[0];  // a view made once: Tensor::operator[] costs ~0.5 us
  const auto call = [&] {
    if (w.steps == 1) {
      auto out = f.lstm.Step(x0, f.state, path);
      benchmark::DoNotOptimize(out);
    } else {
      auto out = f.lstm.Run(f.inputs, f.state, /*want_outputs=*/true, path);
      benchmark::DoNotOptimize(out);
    }
    Sync();
  };
  // One call first, untimed: it makes the layouts a path derives once per set (packed
  // weights, oneDNN's reorder), which a serving set has already made. Google Benchmark makes a
  // fixture per run, so a run of one iteration (L) would otherwise time them too.
  call();
  for (auto _ : state) call();
  SetFlops(state, f, w);
}

void BenchSteps(benchmark::State& state, Workload w) {
  Fixture f = MakeFixture(w);
  for (auto _ : state) {
    core::LstmState s = f.state;
    for (int64_t t = 0; t < w.steps; ++t) s = *f.lstm.Step(f.inputs[t], s);
    benchmark::DoNotOptimize(s);
    Sync();
  }
  SetFlops(state, f, w);
}

void BenchGemm(benchmark::State& state, Workload w) {
  at::Generator gen = at::detail::createCPUGenerator(3);
  const int64_t k = w.input + w.hidden, n = 4 * w.hidden;
  const auto options = at::TensorOptions().device(g_device).dtype(core::ToScalarType(g_dtype));
  const at::Tensor a = at::empty({w.batch, k}).normal_(0, 1, gen).to(options);
  const at::Tensor b = at::empty({k, n}).normal_(0, 1, gen).to(options);
  at::Tensor out = at::empty({w.batch, n}, options);
  for (auto _ : state) {
    at::mm_out(out, a, b);
    benchmark::DoNotOptimize(out.data_ptr());
    Sync();
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * w.batch * k * n, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  std::string blas_coretype = "auto";
  std::string isa = "native";
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--blas_coretype=", 16) == 0) {
      blas_coretype = argv[i] + 16;
    } else if (std::strncmp(argv[i], "--isa=", 6) == 0) {
      isa = argv[i] + 6;
    } else if (std::strncmp(argv[i], "--bf16_kernel=", 14) == 0) {
      auto kernel = core::ParseBf16Kernel(argv[i] + 14);
      if (!kernel.ok()) {
        std::fprintf(stderr, "lstmserve-core-bench: %s\n", std::string(kernel.status().message()).c_str());
        return 2;
      }
      core::SetBf16Kernel(*kernel);
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--device=", 9) == 0) {
      auto device = core::ResolveDevice(argv[i] + 9);
      if (!device.ok()) {
        std::fprintf(stderr, "lstmserve-core-bench: %s\n", device.status().ToString().c_str());
        return 2;
      }
      g_device = *device;
    } else if (std::strncmp(argv[i], "--dtype=", 8) == 0) {
      auto dtype = core::ParseDType(argv[i] + 8);
      if (!dtype.ok()) {
        std::fprintf(stderr, "lstmserve-core-bench: %s\n", dtype.status().ToString().c_str());
        return 2;
      }
      g_dtype = *dtype;
    } else if (std::strcmp(argv[i], "--help") == 0) {
      std::printf(
          "lstmserve-core-bench: the core's stacked LSTM on workloads S, S32, M, L and the GEMM "
          "roofline.\n  --threads=N  intra-op threads (default: all available cores)\n"
          "  --device=D   cpu (default), cuda or cuda:N (adds the L batch sweep L_B1..L_B1024)\n"
          "  --dtype=T    float32 (default); float16 or bfloat16 on CUDA\n"
          "  --blas_coretype=auto|keep|NAME  OpenBLAS's kernels, as the server's flag (default auto)\n"
          "  --isa=L      native (default), avx512, avx2_vnni, avx2 or baseline: the highest x86-64 level the core's\n"
          "               kernels, MKL, oneDNN and OpenBLAS may use, as the server's flag\n"
          "  --bf16_kernel=K  auto (default), dot or widened: the AVX-512 build of the packed bf16 GEMM, vdpbf16ps\n"
          "               or the weights widened to float32 FMAs (Intel's choice), the same bits\n"
          "Google Benchmark's flags follow:\n");
      args.push_back(argv[i]);
    } else {
      args.push_back(argv[i]);
    }
  }
  if (auto ok = core::CheckDTypeOnDevice(g_dtype, g_device); !ok.ok()) {
    std::fprintf(stderr, "lstmserve-core-bench: %s\n", ok.ToString().c_str());
    return 2;
  }
  // A lower level's kernels, the libraries' too (they read the environment as they load).
  auto isa_restart = core::PrepareIsaEnvironment(isa);
  if (!isa_restart.ok()) {
    std::fprintf(stderr, "lstmserve-core-bench: %s\n", std::string(isa_restart.status().message()).c_str());
    return 2;
  }
  if (*isa_restart) execv("/proc/self/exe", argv);
  benchmark::AddCustomContext("isa", core::IsaLevelName(core::KernelIsa()));
  // The server's choice of OpenBLAS kernels, so that its figures are the server's.
  auto blas = core::PrepareBlasEnvironment(blas_coretype);
  if (!blas.ok()) {
    std::fprintf(stderr, "lstmserve-core-bench: %s\n", std::string(blas.status().message()).c_str());
    return 2;
  }
  if (blas->restart) {
    execv("/proc/self/exe", argv);
    core::AbandonBlasRestart();
  }
  std::fprintf(stderr, "%s\n", blas->log_line.c_str());
  benchmark::AddCustomContext("blas", core::DescribeBlas().library + " " + core::DescribeBlas().core);
  const int used = core::SetIntraOpThreads(threads);
  benchmark::AddCustomContext("intra_op_threads", std::to_string(used));
  benchmark::AddCustomContext("device", core::DeviceName(g_device));
  benchmark::AddCustomContext("dtype", std::string(core::DTypeName(g_dtype)));
  std::vector<Workload> workloads(std::begin(kWorkloads), std::end(kWorkloads));
  std::vector<std::string> sweep_names;  // owns the names the sweep's workloads point to
  sweep_names.reserve(std::size(kSweepBatches));
  if (g_device.is_cpu()) workloads.insert(workloads.end(), std::begin(kCpuSmallBatches), std::end(kCpuSmallBatches));
  if (g_device.is_cuda()) {
    for (int64_t b : kSweepBatches) {
      sweep_names.push_back("L_B" + std::to_string(b));
      workloads.push_back({sweep_names.back().c_str(), b, 1024, 1024, 4, 20});
    }
  }
  for (const Workload& w : workloads) {
    const std::string name = w.name;
    benchmark::RegisterBenchmark(("core/" + name).c_str(), BenchCore, w, core::LstmPath::kAuto,
                                 core::WeightStorage::kDType)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    const bool sweep = name.rfind("L_B", 0) == 0;  // the sweep: core and the CUDA paths only
    if (w.steps > 1 && !sweep) {
      benchmark::RegisterBenchmark(("core_steps/" + name).c_str(), BenchSteps, w)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
    std::vector<core::LstmPath> paths = {core::LstmPath::kSmallBatch, core::LstmPath::kBlas, core::LstmPath::kGeneric};
    if (core::OneDnnLstmAvailable()) paths.push_back(core::LstmPath::kOneDnn);
    if (g_device.is_cuda()) {
      paths = {core::LstmPath::kCudaGemm};
      if (!sweep) paths.push_back(core::LstmPath::kGeneric);
      if (w.batch <= 8) paths.push_back(core::LstmPath::kCudaFused);
    }
    for (core::LstmPath path : paths) {
      const std::string path_name = core::LstmPathName(path);
      benchmark::RegisterBenchmark(("core_" + std::string(path_name) + "/" + name).c_str(), BenchCore, w, path,
                                   core::WeightStorage::kDType)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
    // The same set with reduced weight storage (CPU, float32 sets).
    if (g_device.is_cpu() && g_dtype == core::DType::kFloat32) {
      for (auto [storage, label] : {std::pair{core::WeightStorage::kBFloat16, "core_bf16/"},
                                    std::pair{core::WeightStorage::kInt8, "core_int8/"}}) {
        benchmark::RegisterBenchmark((label + name).c_str(), BenchCore, w, core::LstmPath::kAuto, storage)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
    }
    benchmark::RegisterBenchmark(("gemm/" + name).c_str(), BenchGemm, w)->Unit(benchmark::kMicrosecond)->UseRealTime();
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
