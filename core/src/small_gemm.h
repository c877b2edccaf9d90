// The small-batch GEMM's loop nests, as templates over the weight's element type (float,
// bfloat16 bits, int8) and over how 16 weights are loaded. Internal to the core, included by
// lstm_kernels.cc (compiled once per instruction set through target_clones) and by
// lstm_kernels_avx512.cc (compiled for x86-64-v4 only). Everything here has internal linkage
// and uses no library template, so no function compiled for AVX-512 can be linked in place
// of a portable one.
#pragma once

#include <cstdint>

namespace lstmserve::core::kernels {
namespace {

inline float BitsToFloat(int32_t bits) {
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}
inline int32_t FloatToBits(float f) {
  int32_t bits;
  __builtin_memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// One weight element as float32: float32 as is, bfloat16 (its bits as uint16) widened
// exactly, int8 as its integer value (the caller applies the column scale).
inline float WeightValue(float w) { return w; }
inline float WeightValue(uint16_t w) { return BitsToFloat(static_cast<int32_t>(static_cast<uint32_t>(w) << 16)); }
inline float WeightValue(int8_t w) { return static_cast<float>(w); }

// out[r, 0:n] += a[r, :] @ w[:, 0:n] for kRows rows; w and out have row strides ldw, ldo.
template <int kRows, class T>
inline void GemmBlock(const float* a, int64_t lda, const T* w, int64_t ldw, int64_t k, int64_t n, float* out,
                      int64_t ldo) {
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* wr = w + kk * ldw;
    float av[kRows];
    for (int r = 0; r < kRows; ++r) av[r] = a[r * lda + kk];
    for (int r = 0; r < kRows; ++r) {
      float* o = out + r * ldo;
      const float s = av[r];
      for (int64_t j = 0; j < n; ++j) o[j] += s * WeightValue(wr[j]);
    }
  }
}

// 16 floats: one AVX-512 register, two AVX2 ones, four SSE ones (GCC vector extension, so
// each clone of the kernels below gets its own instructions).
typedef float V16 __attribute__((vector_size(64)));
// always_inline: each clone must get these in its own instruction set (an out-of-line call
// would pass V16 through memory in the baseline ABI).
#define LSTMSERVE_INLINE inline __attribute__((always_inline))
LSTMSERVE_INLINE V16 LoadV(const float* p) {
  V16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
LSTMSERVE_INLINE void StoreV(float* p, V16 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// 16 weights as float32 (see WeightValue): a plain load, a widening shift (bfloat16), or a
// sign extension and conversion (int8).
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef int8_t I8x16 __attribute__((vector_size(16)));
typedef int16_t I16x16 __attribute__((vector_size(32)));
typedef int32_t I32x16 __attribute__((vector_size(64)));
LSTMSERVE_INLINE V16 LoadW(const float* p) { return LoadV(p); }
LSTMSERVE_INLINE V16 LoadW(const uint16_t* p) {
  U16x16 half;
  __builtin_memcpy(&half, p, sizeof(half));
  const U32x16 bits = __builtin_convertvector(half, U32x16) << 16;
  V16 v;
  __builtin_memcpy(&v, &bits, sizeof(v));
  return v;
}
// The weight loads of the kernels below, as a policy (a load written for one instruction
// set can be plugged in where the portable one is slow).
struct PortableLoad {
  template <class T>
  LSTMSERVE_INLINE static V16 Get(const T* p);
};
LSTMSERVE_INLINE V16 LoadW(const int8_t* p) {
  I8x16 q;
  __builtin_memcpy(&q, p, sizeof(q));
  // Widened one step at a time: GCC 12 scalarises int8 -> float and int8 -> int32 (16 byte
  // extracts), but emits vpmovsxbw, vpmovsxwd and vcvtdq2ps for these steps.
  return __builtin_convertvector(__builtin_convertvector(__builtin_convertvector(q, I16x16), I32x16), V16);
}
template <class T>
V16 PortableLoad::Get(const T* p) {
  return LoadW(p);
}

// out[r, 0:16C] += a[r, :] @ w[:, 0:16C] for kR rows, with the kR x C accumulators held in
// registers over the whole k loop (GemmBlock loads and stores its outputs once per k).
// C independent FMA chains per row hide the FMA latency: 8 for one row, 4 for several.
template <int kR, int kC, class Load, class T>
LSTMSERVE_INLINE void RegisterBlock(const float* a, int64_t lda, const T* w, int64_t ldw, int64_t k, float* out,
                                    int64_t ldo) {
  V16 acc[kR][kC];
#pragma GCC unroll 8
  for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) acc[r][c] = LoadV(out + r * ldo + 16 * c);
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* wr = w + kk * ldw;
    V16 wv[kC];
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) wv[c] = Load::Get(wr + 16 * c);
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      const float s = a[r * lda + kk];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) acc[r][c] += s * wv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) StoreV(out + r * ldo + 16 * c, acc[r][c]);
  }
}

// out[0:n] += a[0:k] @ w[0:k, 0:n] for one row, streaming w from memory: 8 rows of w at a
// time against each 16 outputs, so out is loaded and stored once per 8 rows (GemmBlock<1>
// does it once per row, which bounds it well below memory bandwidth) and the prefetchers
// follow 8 sequential streams. L at B=1 (four [2048, 4096] weights), one thread: 10.5 -> 5.5 ms.
template <class Load, class T>
LSTMSERVE_INLINE void GemvRowBlocks(const float* a, const T* w, int64_t ldw, int64_t k, int64_t n, float* out) {
  constexpr int kRowsAtOnce = 8;
  const int64_t vec_n = n - n % 16;
  int64_t kk = 0;
  for (; kk + kRowsAtOnce <= k; kk += kRowsAtOnce) {
    const T* wr = w + kk * ldw;
    float s[kRowsAtOnce];
#pragma GCC unroll 8
    for (int r = 0; r < kRowsAtOnce; ++r) s[r] = a[kk + r];
    for (int64_t j = 0; j < vec_n; j += 16) {
      V16 acc = LoadV(out + j);
#pragma GCC unroll 8
      for (int r = 0; r < kRowsAtOnce; ++r) acc += s[r] * Load::Get(wr + r * ldw + j);
      StoreV(out + j, acc);
    }
    for (int64_t j = vec_n; j < n; ++j) {
      float acc = out[j];
      for (int r = 0; r < kRowsAtOnce; ++r) acc += s[r] * WeightValue(wr[r * ldw + j]);
      out[j] = acc;
    }
  }
  for (; kk < k; ++kk) {
    const float s = a[kk];
    const T* wr = w + kk * ldw;
    for (int64_t j = 0; j < n; ++j) out[j] += s * WeightValue(wr[j]);
  }
}

// Weights up to this many floats (1 MiB) stay in L2 across calls, so column tiles that
// revisit every row of w cost nothing; larger ones are streamed row by row instead.
constexpr int64_t kRegisterBlockMaxFloats = int64_t{1} << 18;

template <class Load, class T>
LSTMSERVE_INLINE void SmallGemmT(const float* a, int64_t lda, const T* w, int64_t ldw, int64_t k, int64_t n, float* out,
                                 int64_t ldo, int64_t rows, bool accumulate) {
  if (!accumulate) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) out[r * ldo + j] = 0.0f;
  }
  if (k * n <= kRegisterBlockMaxFloats) {
    // Register-blocked: S (I = H = 64, B = 1) one step 7.8 -> 6.3 us, 32 steps 124 -> 68 us
    // (tests/bench, 2 threads, this project's AMD EPYC, the AVX-512 clone).
    int64_t j = 0;
    if (rows == 1) {
      for (; j + 128 <= n; j += 128) RegisterBlock<1, 8, Load>(a, lda, w + j, ldw, k, out + j, ldo);
    }
    for (; j + 64 <= n; j += 64) {
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) RegisterBlock<4, 4, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo);
      switch (rows - r) {
        case 3: RegisterBlock<3, 4, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        case 2: RegisterBlock<2, 4, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        case 1: RegisterBlock<1, 4, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        default: break;
      }
    }
    if (j == n) return;
    w += j;  // the last n % 64 columns: the general loop below
    out += j;
    n -= j;
  }
  if (rows == 1) {
    GemvRowBlocks<Load>(a, w, ldw, k, n, out);
    return;
  }
  // When a block's output rows do not fit in L1, column tiles keep them there (4 x 512
  // floats) while w streams by. Otherwise w is read row by row in one sequential stream,
  // which the prefetcher serves best from memory (tiling B=1 at 4H=4096: 5.4 vs 2.3 ms).
  constexpr int64_t kL1Floats = 8192;
  const int64_t tile = (rows < 4 ? rows : 4) * n <= kL1Floats ? n : 512;
  for (int64_t j0 = 0; j0 < n; j0 += tile) {
    const int64_t nb = tile < n - j0 ? tile : n - j0;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) GemmBlock<4>(a + r * lda, lda, w + j0, ldw, k, nb, out + r * ldo + j0, ldo);
    switch (rows - r) {
      case 3: GemmBlock<3>(a + r * lda, lda, w + j0, ldw, k, nb, out + r * ldo + j0, ldo); break;
      case 2: GemmBlock<2>(a + r * lda, lda, w + j0, ldw, k, nb, out + r * ldo + j0, ldo); break;
      case 1: GemmBlock<1>(a + r * lda, lda, w + j0, ldw, k, nb, out + r * ldo + j0, ldo); break;
      default: break;
    }
  }
}

}  // namespace
}  // namespace lstmserve::core::kernels
