// The reduced-storage small-batch GEMMs for AVX-512 CPUs: this file alone is compiled for
// x86-64-v4 (core/CMakeLists.txt), and lstm_kernels.cc calls it only where the CPU has it.
// The portable int8 load widens in three vector steps (7 shuffles per 16 weights, which
// bound L at B=1 to ~1.75 ms); here one vpmovsxbd from memory and one vcvtdq2ps do it
// (0.97 ms). bfloat16 gets one vpmovzxwd from memory and a shift.
#include <immintrin.h>

#include "lstm_kernels.h"
#include "small_gemm.h"

namespace lstmserve::core::kernels {
namespace {

struct Int8Avx512Load {
  template <int N>
  LSTMSERVE_INLINE static V16 Get(const int8_t* p) {
    static_assert(N == 16, "one ZMM register");
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    V16 v;
    __builtin_memcpy(&v, &f, sizeof(v));
    return v;
  }
};

struct Bf16Avx512Load {
  template <int N>
  LSTMSERVE_INLINE static V16 Get(const uint16_t* p) {
    static_assert(N == 16, "one ZMM register");
    const __m512i bits =
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
    V16 v;
    __builtin_memcpy(&v, &bits, sizeof(v));
    return v;
  }
};

}  // namespace

void SmallGemmBf16Avx512(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                         int64_t ldo, int64_t rows, bool accumulate) {
  SmallGemmT<Bf16Avx512Load>(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
}

void Int8SumsAvx512(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                    int64_t rows) {
  SmallGemmT<Int8Avx512Load>(a, lda, w, ldw, k, n, sums, n, rows, /*accumulate=*/true);
}

}  // namespace lstmserve::core::kernels
