// The small-batch GEMM's loop nests, as templates over the weight's element type (float,
// bfloat16 bits, int8), the vector width N and how N weights are loaded. Internal to the
// core, included by lstm_kernels.cc (compiled once per instruction set through target
// attributes, LSTMSERVE_KERNEL), lstm_kernels_avx512.cc (x86-64-v4 only) and
// lstm_kernels_avx2.cc (x86-64-v3 only). Everything here has internal linkage and uses no
// library template, so no function compiled for AVX-512 can be linked in place of a
// portable one.
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

// N floats in one vector: 16 fill an AVX-512 register, 8 an AVX2 one, 4 an SSE one (GCC's
// vector extension, so each clone of the kernels below gets its own instructions). Each
// clone blocks its loops for its own register file: 16-float vectors split in two on AVX2
// would need twice the 16 YMM registers an AVX-512 block holds, and spill.
template <class T, int N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <int N>
using VecF = typename VecOf<float, N>::type;
typedef VecF<16> V16;
// always_inline: each clone must get these in its own instruction set (an out-of-line call
// would pass vectors through memory in the baseline ABI).
#define LSTMSERVE_INLINE inline __attribute__((always_inline))
template <int N = 16>
LSTMSERVE_INLINE VecF<N> LoadV(const float* p) {
  VecF<N> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <int N>
LSTMSERVE_INLINE void StoreV(float* p, VecF<N> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// N weights as float32 (see WeightValue): a plain load, a widening shift (bfloat16), or a
// sign extension and conversion (int8).
template <int N>
LSTMSERVE_INLINE VecF<N> LoadW(const float* p) {
  return LoadV<N>(p);
}
template <int N>
LSTMSERVE_INLINE VecF<N> LoadW(const uint16_t* p) {
  typename VecOf<uint16_t, N>::type half;
  __builtin_memcpy(&half, p, sizeof(half));
  const auto bits = __builtin_convertvector(half, typename VecOf<uint32_t, N>::type) << 16;
  VecF<N> v;
  __builtin_memcpy(&v, &bits, sizeof(v));
  return v;
}
template <int N>
LSTMSERVE_INLINE VecF<N> LoadW(const int8_t* p) {
  typename VecOf<int8_t, N>::type q;
  __builtin_memcpy(&q, p, sizeof(q));
  // Widened one step at a time: GCC 12 scalarises int8 -> float and int8 -> int32 (byte
  // extracts), but emits vpmovsxbw, vpmovsxwd and vcvtdq2ps for these steps.
  const auto wide = __builtin_convertvector(q, typename VecOf<int16_t, N>::type);
  return __builtin_convertvector(__builtin_convertvector(wide, typename VecOf<int32_t, N>::type), VecF<N>);
}
// The weight loads of the kernels below, as a policy (a load written for one instruction
// set can be plugged in where the portable one is slow): Get<N>(p) gives N weights.
struct PortableLoad {
  template <int N, class T>
  LSTMSERVE_INLINE static VecF<N> Get(const T* p) {
    return LoadW<N>(p);
  }
};

// out[r, 0:N*C] += a[r, :] @ w[:, 0:N*C] for kR rows, with the kR x C accumulators held in
// registers over the whole k loop (GemmBlock loads and stores its outputs once per k).
// C independent FMA chains per row hide the FMA latency: 8 for one row, 2 to 4 for several.
template <int N, int kR, int kC, class Load, class T>
LSTMSERVE_INLINE void RegisterBlock(const float* a, int64_t lda, const T* w, int64_t ldw, int64_t k, float* out,
                                    int64_t ldo) {
  VecF<N> acc[kR][kC];
#pragma GCC unroll 8
  for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) acc[r][c] = LoadV<N>(out + r * ldo + N * c);
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* wr = w + kk * ldw;
    VecF<N> wv[kC];
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) wv[c] = Load::template Get<N>(wr + N * c);
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
    for (int c = 0; c < kC; ++c) StoreV<N>(out + r * ldo + N * c, acc[r][c]);
  }
}

// out[0:n] += a[0:k] @ w[0:k, 0:n] for one row, streaming w from memory: 8 rows of w at a
// time against each N outputs, so out is loaded and stored once per 8 rows (GemmBlock<1>
// does it once per row, which bounds it well below memory bandwidth) and the prefetchers
// follow 8 sequential streams. L at B=1 (four [2048, 4096] weights), one thread: 10.5 -> 5.5 ms.
template <int N, class Load, class T>
LSTMSERVE_INLINE void GemvRowBlocks(const float* a, const T* w, int64_t ldw, int64_t k, int64_t n, float* out) {
  constexpr int kRowsAtOnce = 8;
  const int64_t vec_n = n - n % N;
  int64_t kk = 0;
  for (; kk + kRowsAtOnce <= k; kk += kRowsAtOnce) {
    const T* wr = w + kk * ldw;
    float s[kRowsAtOnce];
#pragma GCC unroll 8
    for (int r = 0; r < kRowsAtOnce; ++r) s[r] = a[kk + r];
    for (int64_t j = 0; j < vec_n; j += N) {
      VecF<N> acc = LoadV<N>(out + j);
#pragma GCC unroll 8
      for (int r = 0; r < kRowsAtOnce; ++r) acc += s[r] * Load::template Get<N>(wr + r * ldw + j);
      StoreV<N>(out + j, acc);
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

// N is the clone's vector width in floats (16 AVX-512, 8 AVX2, 4 SSE); the blocks use at most
// half (N = 16: 8 + 8 of 32 ZMM) or all (N < 16: 12 to 16 of 16) of the vector registers.
template <class Load, int N = 16, class T>
LSTMSERVE_INLINE void SmallGemmT(const float* a, int64_t lda, const T* w, int64_t ldw, int64_t k, int64_t n, float* out,
                                 int64_t ldo, int64_t rows, bool accumulate) {
  if (!accumulate) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) out[r * ldo + j] = 0.0f;
  }
  if (k * n <= kRegisterBlockMaxFloats) {
    // Register-blocked: S (I = H = 64, B = 1) one step 7.8 -> 6.3 us, 32 steps 124 -> 68 us
    // (tests/bench, 2 threads, this project's AMD EPYC, the AVX-512 clone).
    constexpr int kRowC = 8;                  // one row: 8 chains
    constexpr int kBlockC = N == 16 ? 4 : 2;  // 4 rows: 4 x 4 ZMM, or 4 x 2 YMM/XMM
    int64_t j = 0;
    if (rows == 1) {
      for (; j + kRowC * N <= n; j += kRowC * N) RegisterBlock<N, 1, kRowC, Load>(a, lda, w + j, ldw, k, out + j, ldo);
    }
    for (; j + kBlockC * N <= n; j += kBlockC * N) {
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) {
        RegisterBlock<N, 4, kBlockC, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo);
      }
      switch (rows - r) {
        case 3: RegisterBlock<N, 3, kBlockC, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        case 2: RegisterBlock<N, 2, kBlockC, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        case 1: RegisterBlock<N, 1, kBlockC, Load>(a + r * lda, lda, w + j, ldw, k, out + r * ldo + j, ldo); break;
        default: break;
      }
    }
    if (j == n) return;
    w += j;  // the last n % 64 columns: the general loop below
    out += j;
    n -= j;
  }
  if (rows == 1) {
    GemvRowBlocks<N, Load>(a, w, ldw, k, n, out);
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
