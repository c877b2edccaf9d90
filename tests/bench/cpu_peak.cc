// lstmserve-cpu-peak: this machine's float32 FMA peak, the ceiling every compute-bound figure
// of tests/bench/compare is a fraction of (M and L are compute-bound; S is not).
//
//   lstmserve-cpu-peak [--threads=N]     (default: every core available to the process)
//
// Each thread runs 12 independent chains of fused multiply-adds (enough to hide the FMA
// latency) for a fixed count, with 256-bit (AVX2+FMA) and, where the CPU has it, 512-bit
// (AVX-512F) vectors; FLOPs = 2 per lane per FMA. Prints one line per width.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "lstmserve/core/threads.h"

namespace {

constexpr long kIterations = 100'000'000;  // x 12 FMAs per thread

__attribute__((target("avx2,fma"))) float Chains256() {
  __m256 a[12];
  const __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(static_cast<float>(i));
  for (long n = 0; n < kIterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f"))) float Chains512() {
  __m512 a[12];
  const __m512 b = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(static_cast<float>(i));
  for (long n = 0; n < kIterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

void Measure(const char* name, int lanes, float (*chains)(), int threads) {
  std::vector<std::thread> pool;
  std::vector<float> sinks(threads);
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sinks[t] = chains(); });
  for (auto& t : pool) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flops = 2.0 * lanes * 12.0 * kIterations * threads;
  std::printf("%s: %.1f GFLOP/s float32 FMA peak on %d thread(s) (%.3f s; %g)\n", name, flops / seconds / 1e9,
              threads, seconds, static_cast<double>(sinks[0]));
}

}  // namespace

int main(int argc, char** argv) {
  int threads = lstmserve::core::AvailableCores();
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else {
      std::printf("lstmserve-cpu-peak: float32 FMA peak of this CPU.\n  --threads=N  threads (default: %d, the cores available)\n",
                  lstmserve::core::AvailableCores());
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (threads < 1) threads = 1;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) Measure("256-bit (AVX2+FMA)", 8, Chains256, threads);
  if (__builtin_cpu_supports("avx512f")) Measure("512-bit (AVX-512F)", 16, Chains512, threads);
  return 0;
}
