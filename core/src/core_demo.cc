// lstmserve-core-demo: creates a seeded stacked-LSTM parameter set and runs a sequence
// through it, printing what was created and how long the run took.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/core/command_line.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/core/threads.h"

ABSL_FLAG(int64_t, layers, 2, "number of stacked LSTM layers");
ABSL_FLAG(int64_t, input_size, 64, "input size I");
ABSL_FLAG(int64_t, hidden_size, 64, "hidden size H");
ABSL_FLAG(int64_t, batch, 1, "batch size B");
ABSL_FLAG(int64_t, steps, 32, "sequence length T");
ABSL_FLAG(uint64_t, seed, 42, "seed of the parameter set (and of the demo's inputs)");
ABSL_FLAG(std::string, fan_convention, "torch", "torch | matmul");
ABSL_FLAG(int, threads, 0, "intra-op threads; 0 = all available cores");

namespace core = lstmserve::core;

int main(int argc, char** argv) {
  core::ParseCommandLineOrExit(argc, argv,
                               "Creates a seeded stacked-LSTM parameter set (bit-exact with PyTorch's "
                               "torch.manual_seed + common_ops.create_weight) and runs one sequence through it.\n"
                               "Usage: lstmserve-core-demo [--layers=2] [--input_size=64] [--hidden_size=64] "
                               "[--batch=1] [--steps=32] [--seed=42]",
                               {"core/src/core_demo.cc"}, 0);
  const int threads = core::SetIntraOpThreads(absl::GetFlag(FLAGS_threads));

  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{};
  spec.lstm->num_layers = absl::GetFlag(FLAGS_layers);
  spec.lstm->input_size = absl::GetFlag(FLAGS_input_size);
  spec.lstm->hidden_size = absl::GetFlag(FLAGS_hidden_size);
  spec.seed = absl::GetFlag(FLAGS_seed);
  auto convention = core::ParseFanConvention(absl::GetFlag(FLAGS_fan_convention));
  if (!convention.ok()) core::UsageErrorExit(convention.status().message());
  spec.fan_convention = *convention;

  auto set = core::CreateParameterSet(spec, core::CreateLimits{});
  if (!set.ok()) {
    std::fprintf(stderr, "lstmserve-core-demo: %s\n", set.status().ToString().c_str());
    return 2;
  }
  std::printf("created %zu tensors, %lld bytes, seed %llu, fan convention %s\n", set->tensors.size(),
              static_cast<long long>(set->byte_size), static_cast<unsigned long long>(spec.seed),
              std::string(core::FanConventionName(spec.fan_convention)).c_str());
  for (const auto& t : set->tensors) {
    std::printf(
        "  %-6s [%lld, %lld]  std %.6f  (kaiming_normal fan_in/relu expects %.6f)\n", t.name.c_str(),
        static_cast<long long>(t.value.size(0)), static_cast<long long>(t.value.size(1)), t.value.std().item<double>(),
        std::sqrt(2.0 / static_cast<double>(spec.fan_convention == core::FanConvention::kTorch ? t.value.size(1)
                                                                                               : t.value.size(0))));
  }
  auto lstm = core::StackedLstm::FromParameterSet(*set);
  if (!lstm.ok()) {
    std::fprintf(stderr, "lstmserve-core-demo: %s\n", lstm.status().ToString().c_str());
    return 1;
  }
  at::Generator gen = at::detail::createCPUGenerator(spec.seed + 1);
  at::Tensor inputs =
      at::empty({absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_batch), lstm->input_size()}).normal_(0, 1, gen);
  const auto start = std::chrono::steady_clock::now();
  auto result = lstm->Run(inputs, {});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!result.ok()) {
    std::fprintf(stderr, "lstmserve-core-demo: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "ran T=%lld B=%lld on %d thread(s) in %.1f us; top-layer h[T-1] mean %.6f, "
      "var %.6f\n",
      static_cast<long long>(inputs.size(0)), static_cast<long long>(inputs.size(1)), threads, seconds * 1e6,
      result->final_state.h.back().mean().item<double>(), result->final_state.h.back().var().item<double>());
  return 0;
}
