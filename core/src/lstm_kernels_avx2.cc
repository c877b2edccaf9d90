// The reduced-storage small-batch GEMMs for AVX2 CPUs without AVX-512 (or capped below it):
// this file alone is compiled for x86-64-v3 (core/CMakeLists.txt), and lstm_kernels.cc calls
// it only at that level. The portable loads widen 8 weights in vector steps (int8: two
// sign extensions and a conversion); here one vpmovsxbd from memory and one vcvtdq2ps
// (int8), or one vpmovzxwd from memory and a shift (bfloat16).
#include <immintrin.h>

#include "lstm_kernels.h"
#include "small_gemm.h"

namespace lstmserve::core::kernels {
namespace {

struct Int8Avx2Load {
  template <int N>
  LSTMSERVE_INLINE static VecF<8> Get(const int8_t* p) {
    static_assert(N == 8, "one YMM register");
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    VecF<8> v;
    __builtin_memcpy(&v, &f, sizeof(v));
    return v;
  }
};

struct Bf16Avx2Load {
  template <int N>
  LSTMSERVE_INLINE static VecF<8> Get(const uint16_t* p) {
    static_assert(N == 8, "one YMM register");
    const __m256i bits =
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
    VecF<8> v;
    __builtin_memcpy(&v, &bits, sizeof(v));
    return v;
  }
};

}  // namespace

void SmallGemmBf16Avx2(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                       int64_t ldo, int64_t rows, bool accumulate) {
  SmallGemmT<Bf16Avx2Load, 8>(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
}

void Int8SumsAvx2(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                  int64_t rows) {
  SmallGemmT<Int8Avx2Load, 8>(a, lda, w, ldw, k, n, sums, n, rows, /*accumulate=*/true);
}

}  // namespace lstmserve::core::kernels
