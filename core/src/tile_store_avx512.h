// The epilogue the AVX-512 GEMM tiles share (lstm_kernels_avx512.cc, packed_gemm_avx512.cc):
// include it only from files compiled for x86-64-v4.
#ifndef LSTMSERVE_CORE_SRC_TILE_STORE_AVX512_H_
#define LSTMSERVE_CORE_SRC_TILE_STORE_AVX512_H_

#include <immintrin.h>

#include <cstdint>

namespace lstmserve::core::kernels {

// Lanes i < min(16, n - j) set.
inline __mmask16 ColumnMask(int64_t j, int64_t n) {
  const int64_t left = n - j;
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// out[r, j0 + 16 i + lane] = acc[r][i] (accumulate: out + acc) for the columns below n.
template <int MR, int NB>
inline __attribute__((always_inline)) void StoreTile(const __m512 (&acc)[MR][NB], int64_t j0, int64_t n, float* out,
                                                     int64_t ldo, bool accumulate) {
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) {
    const int64_t j = j0 + 16 * i;
    if (j >= n) break;
    const __mmask16 m = ColumnMask(j, n);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* o = out + r * ldo + j;
      _mm512_mask_storeu_ps(o, m, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), acc[r][i]) : acc[r][i]);
    }
  }
}

}  // namespace lstmserve::core::kernels

#endif  // LSTMSERVE_CORE_SRC_TILE_STORE_AVX512_H_
