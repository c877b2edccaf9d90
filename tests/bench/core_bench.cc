// lstmserve-core-bench: the core's stacked LSTM on the four reference workloads, beside one
// GEMM of the step's shape [B, I + H] x [I + H, 4H] (the roofline), in one binary.
//
//   lstmserve-core-bench [--threads=N] [Google Benchmark flags, e.g. --benchmark_filter=M]
//
// Benchmarks, per workload W:
//   core/W         the default path (Step for 1 step, Run for sequences)
//   core_steps/W   T separate Step calls carrying the state (the autoregressive case)
//   core_<path>/W  one path forced (small_batch, blas, generic)
//   gemm/W         at::mm_out of the step's shape, into a preallocated output
// Counter FLOPS is the stacked-LSTM arithmetic (2 * B * (in_l + H) * 4H per layer-step).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>

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
    {"S", 1, 64, 64, 2, 1},
    {"S32", 1, 64, 64, 2, 32},
    {"M", 64, 128, 256, 2, 100},
    {"L", 256, 1024, 1024, 4, 20},
};

struct Fixture {
  core::StackedLstm lstm;
  at::Tensor inputs;  // [T, B, I]
  core::LstmState state;
};

Fixture MakeFixture(const Workload& w) {
  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{};
  spec.lstm->num_layers = w.layers;
  spec.lstm->input_size = w.input;
  spec.lstm->hidden_size = w.hidden;
  spec.seed = 1;
  auto set = core::CreateParameterSet(spec, {});
  if (!set.ok()) std::abort();
  auto lstm = core::StackedLstm::FromParameterSet(*set);
  if (!lstm.ok()) std::abort();
  at::Generator gen = at::detail::createCPUGenerator(2);
  Fixture f{*std::move(lstm), at::empty({w.steps, w.batch, w.input}).normal_(0, 1, gen), {}};
  for (int64_t l = 0; l < w.layers; ++l) {
    f.state.c.push_back(at::empty({w.batch, w.hidden}).normal_(0, 1, gen));
    f.state.h.push_back(at::empty({w.batch, w.hidden}).uniform_(-1, 1, gen));
  }
  return f;
}

void SetFlops(benchmark::State& state, const Fixture& f, const Workload& w) {
  state.counters["FLOPS"] = benchmark::Counter(f.lstm.StepFlops(w.batch) * w.steps,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void BenchCore(benchmark::State& state, Workload w, core::LstmPath path) {
  Fixture f = MakeFixture(w);
  for (auto _ : state) {
    if (w.steps == 1) {
      auto out = f.lstm.Step(f.inputs[0], f.state, path);
      benchmark::DoNotOptimize(out);
    } else {
      auto out = f.lstm.Run(f.inputs, f.state, /*want_outputs=*/true, path);
      benchmark::DoNotOptimize(out);
    }
  }
  SetFlops(state, f, w);
}

void BenchSteps(benchmark::State& state, Workload w) {
  Fixture f = MakeFixture(w);
  for (auto _ : state) {
    core::LstmState s = f.state;
    for (int64_t t = 0; t < w.steps; ++t) s = *f.lstm.Step(f.inputs[t], s);
    benchmark::DoNotOptimize(s);
  }
  SetFlops(state, f, w);
}

void BenchGemm(benchmark::State& state, Workload w) {
  at::Generator gen = at::detail::createCPUGenerator(3);
  const int64_t k = w.input + w.hidden, n = 4 * w.hidden;
  const at::Tensor a = at::empty({w.batch, k}).normal_(0, 1, gen);
  const at::Tensor b = at::empty({k, n}).normal_(0, 1, gen);
  at::Tensor out = at::empty({w.batch, n});
  for (auto _ : state) {
    at::mm_out(out, a, b);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(2.0 * w.batch * k * n, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--help") == 0) {
      std::printf(
          "lstmserve-core-bench: the core's stacked LSTM on workloads S, S32, M, L and the GEMM "
          "roofline.\n  --threads=N  intra-op threads (default: all available cores)\n"
          "Google Benchmark's flags follow:\n");
      args.push_back(argv[i]);
    } else {
      args.push_back(argv[i]);
    }
  }
  const int used = core::SetIntraOpThreads(threads);
  benchmark::AddCustomContext("intra_op_threads", std::to_string(used));
  for (const Workload& w : kWorkloads) {
    const std::string name = w.name;
    benchmark::RegisterBenchmark(("core/" + name).c_str(), BenchCore, w, core::LstmPath::kAuto)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
    if (w.steps > 1) {
      benchmark::RegisterBenchmark(("core_steps/" + name).c_str(), BenchSteps, w)
          ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    const std::pair<const char*, core::LstmPath> paths[] = {{"small_batch", core::LstmPath::kSmallBatch},
                                                            {"blas", core::LstmPath::kBlas},
                                                            {"generic", core::LstmPath::kGeneric}};
    for (const auto& [path_name, path] : paths) {
      benchmark::RegisterBenchmark(("core_" + std::string(path_name) + "/" + name).c_str(), BenchCore, w, path)
          ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    benchmark::RegisterBenchmark(("gemm/" + name).c_str(), BenchGemm, w)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
