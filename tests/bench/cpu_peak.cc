// lstmserve-cpu-peak: the limits every core figure of tests/bench/compare is a fraction of:
// this machine's float32 FMA peak (the ceiling of compute-bound work: M, L at large batch),
// its bf16 and int8 dot-product peaks where the CPU has them, and its memory bandwidth (the
// ceiling of a batch-1 step, which reads every weight once: L reads 134 MB of float32).
//
//   lstmserve-cpu-peak [--threads=N]     (default: every core available to the process)
//
// Compute: each thread runs 12 independent chains of one instruction (enough to hide its
// latency) for a fixed count: 256-bit FMA (AVX2), 512-bit FMA (AVX-512F), 512-bit VDPBF16PS
// (AVX512_BF16: 2 bf16 products per float32 lane) and VPDPBUSD (AVX512_VNNI: 4 int8 products
// per int32 lane); an operation is a multiply or an add (a product-and-add is 2). Without
// VNNI, the int8 GEMM's AVX2 build (core/src/packed_gemm_avx2.cc) runs VPMADDWD + VPADDD
// pairs (16 int16 products into int32 lanes): 8 accumulators fed by 4 rows x 2 weight
// vectors, the kernel's own shape.
// Bandwidth: each thread sums its share of a 1 GiB buffer (read-only, as a step reads its
// weights), best of 5 passes. Prints one line per figure.
#include <immintrin.h>

#include <algorithm>
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

__attribute__((target("avx512f,avx512bf16"))) float ChainsBf16() {
  __m512 a[12];
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);  // 1, ~6e-8
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(static_cast<float>(i));
  for (long n = 0; n < kIterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbf16_ps(a[i], b, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512vnni"))) float ChainsInt8() {
  __m512i a[12];
  const __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(1);
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
  for (long n = 0; n < kIterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  }
  __m512i s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, a[i]);
  return static_cast<float>(_mm512_reduce_add_epi32(s));
}

__attribute__((target("avx2"))) float ChainsInt16() {
  __m256i acc[8], x[4];
  __m256i b0 = _mm256_set1_epi16(1), b1 = _mm256_set1_epi16(2);
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_si256();
  for (int i = 0; i < 4; ++i) x[i] = _mm256_set1_epi16(static_cast<int16_t>(i + 1));
  for (long n = 0; n < kIterations; ++n) {
    // The weights "change" every iteration, as in the kernel, so the products are not hoisted.
    asm volatile("" : "+x"(b0), "+x"(b1));
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      acc[2 * r] = _mm256_add_epi32(acc[2 * r], _mm256_madd_epi16(x[r], b0));
      acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], _mm256_madd_epi16(x[r], b1));
    }
  }
  __m256i s = acc[0];
  for (int i = 1; i < 8; ++i) s = _mm256_add_epi32(s, acc[i]);
  return static_cast<float>(_mm256_extract_epi32(s, 0));
}

// `ops` per instruction (or pair) per thread, `count` of them per iteration; `unit` names them.
void Measure(const char* name, double ops, const char* unit, float (*chains)(), int threads, int count = 12) {
  std::vector<std::thread> pool;
  std::vector<float> sinks(threads);
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sinks[t] = chains(); });
  for (auto& t : pool) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double total = ops * count * kIterations * threads;
  std::printf("%s: %.1f %s on %d thread(s) (%.3f s; %g)\n", name, total / seconds / 1e9, unit, threads, seconds,
              static_cast<double>(sinks[0]));
}

// Sums n floats with 4 independent 16-wide accumulators (n a multiple of 64), so that the
// loads, not the adds, bound it: the figure is the memory's, not the loop's.
__attribute__((target("avx512f"))) double SumFloats512(const float* p, size_t n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (size_t i = 0; i < n; i += 64) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[j] = _mm512_add_ps(acc[j], _mm512_loadu_ps(p + i + 16 * j));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

__attribute__((target("avx2"))) double SumFloats256(const float* p, size_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (size_t i = 0; i < n; i += 32) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_loadu_ps(p + i + 8 * j));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  double s = 0;
  for (float v : out) s += v;
  return s;
}

double SumFloats(const float* p, size_t n) {
  n -= n % 64;
  return __builtin_cpu_supports("avx512f") ? SumFloats512(p, n) : SumFloats256(p, n);
}

// Read bandwidth: `threads` threads sum disjoint parts of one buffer; the best of 5 passes.
void MeasureBandwidth(int threads) {
  constexpr size_t kBytes = size_t{1} << 30;
  const size_t count = kBytes / sizeof(float);
  std::vector<float> buffer(count, 1.0f);  // written once: every page is real memory
  std::vector<double> sums(threads);
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = count / threads * t, end = t + 1 == threads ? count : count / threads * (t + 1);
        sums[t] = SumFloats(buffer.data() + begin, end - begin);
      });
    }
    for (auto& t : pool) t.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(kBytes) / seconds);
  }
  std::printf("memory read bandwidth: %.1f GB/s on %d thread(s) (1 GiB, best of 5; %g)\n", best / 1e9, threads,
              sums[0]);
  // L (in = H = 1024, 4 layers): 4 weights of [2048, 4096] read once per batch-1 step.
  const double l_bytes = 4.0 * 2048 * 4096 * 4;
  std::printf("  so an L step at B=1 (%.0f MB of float32 weights) takes at least %.2f ms; bf16 %.2f ms, int8 %.2f ms\n",
              l_bytes / 1e6, l_bytes / best * 1e3, l_bytes / 2 / best * 1e3, l_bytes / 4 / best * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = lstmserve::core::AvailableCores();
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else {
      std::printf(
          "lstmserve-cpu-peak: float32 FMA, bf16, int8 and AVX2 int16 dot-product peaks and memory bandwidth of this "
          "machine.\n  --threads=N  threads (default: %d, the cores available)\n",
          lstmserve::core::AvailableCores());
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (threads < 1) threads = 1;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    Measure("256-bit (AVX2+FMA)", 2.0 * 8, "GFLOP/s float32 FMA peak", Chains256, threads);
  }
  if (__builtin_cpu_supports("avx2")) {
    Measure("256-bit int16 dot (AVX2 VPMADDWD+VPADDD)", 2.0 * 16, "GOP/s int16 dot-product peak", ChainsInt16, threads,
            8);
  }
  if (__builtin_cpu_supports("avx512f"))
    Measure("512-bit (AVX-512F)", 2.0 * 16, "GFLOP/s float32 FMA peak", Chains512, threads);
  if (__builtin_cpu_supports("avx512bf16")) {
    Measure("512-bit bf16 dot (AVX512_BF16)", 2.0 * 32, "GFLOP/s bf16 dot-product peak", ChainsBf16, threads);
  }
  if (__builtin_cpu_supports("avx512vnni")) {
    Measure("512-bit int8 dot (AVX512_VNNI)", 2.0 * 64, "GOP/s int8 dot-product peak", ChainsInt8, threads);
  }
  MeasureBandwidth(threads);
  return 0;
}
