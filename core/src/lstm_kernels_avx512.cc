// The reduced-storage small-batch GEMMs for AVX-512 CPUs: this file alone is compiled for
// x86-64-v4 (core/CMakeLists.txt), and lstm_kernels.cc calls it only where the CPU has it.
// The portable int8 load widens in three vector steps (7 shuffles per 16 weights, which
// bound L at B=1 to ~1.75 ms); here one vpmovsxbd from memory and one vcvtdq2ps do it
// (0.97 ms). bfloat16 gets one vpmovzxwd from memory and a shift.
//
// Also the packed float32 GEMM's AVX-512 build (F32GemmPackedAvx512): it needs AVX-512F
// only, so it lives here rather than with the VNNI and BF16 kernels.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

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

// The packed float32 GEMM: a tile of MR rows by NB panels keeps MR x NB accumulators over
// all of k (6 x 4 = 24 of the 32 ZMM registers, 4 for a step's weights, the rows' values
// broadcast from memory into the FMAs); panels of 4 stay in L2 while every tile of rows
// passes over them. A call of fewer than 6 rows takes more panels per tile (one row: 8), so
// that 8 or more FMA chains are in flight, as many as two FMA pipes of 4-cycle latency
// need. One row by 4 panels: [1, 64] x [64, 256] in 0.42 us, 1 x [256, 1024] in 7.7 us;
// by 8: 0.40 and 7.6 us, 2 rows 0.66 against 0.71 us (16 panels were slower: 0.47 us, 13.6
// us with 16 weight streams).
constexpr int kF32RowsPerTile = 6;
constexpr int kF32MaxPanelsPerTile = 8;
// By rows - 1: the most panels a tile of that many rows takes.
constexpr int kF32PanelsPerTile[kF32RowsPerTile] = {8, 8, 6, 4, 4, 4};
// One row takes 8 panels only while the call's weights are at most this many bytes (in L2):
// streamed from L3, 8 streams were slower than 4 (M_B1, each thread's 512 KiB of a step:
// 1.06 against 0.93 ms; S32, 64 KiB: 33 against 38 us).
constexpr int64_t kF32WidePanelsMaxBytes = int64_t{256} << 10;

template <int MR, int NB>
void F32Tile(const float* a, int64_t lda, const float* panels, int64_t panel_floats, int64_t k, int64_t j0, int64_t n,
             float* out, int64_t ldo, bool accumulate) {
  __m512 acc[MR][NB];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) acc[r][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < k; ++g) {
    __m512 w[NB];
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) w[i] = _mm512_loadu_ps(panels + i * panel_floats + 16 * g);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + g]);
#pragma GCC unroll 16
      for (int i = 0; i < NB; ++i) acc[r][i] = _mm512_fmadd_ps(x, w[i], acc[r][i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) {
    const int64_t j = j0 + 16 * i;
    if (j >= n) break;
    const int64_t left = n - j;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* o = out + r * ldo + j;
      _mm512_mask_storeu_ps(o, m, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), acc[r][i]) : acc[r][i]);
    }
  }
}

using F32TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                           bool);
// By (rows - 1, panels - 1); null past kF32PanelsPerTile[rows - 1].
template <int MR, int... I>
constexpr std::array<F32TileFn, kF32MaxPanelsPerTile> F32TileRow(std::integer_sequence<int, I...>) {
  return {(I < kF32PanelsPerTile[MR - 1] ? &F32Tile<MR, (I < kF32PanelsPerTile[MR - 1] ? I + 1 : 1)> : nullptr)...};
}
template <int... R>
constexpr std::array<std::array<F32TileFn, kF32MaxPanelsPerTile>, kF32RowsPerTile> F32TileTable(
    std::integer_sequence<int, R...>) {
  return {F32TileRow<R + 1>(std::make_integer_sequence<int, kF32MaxPanelsPerTile>())...};
}
constexpr auto kF32Tiles = F32TileTable(std::make_integer_sequence<int, kF32RowsPerTile>());

}  // namespace

void F32GemmPackedAvx512(const float* a, int64_t lda, int64_t rows, const float* packed, int64_t k, int64_t n,
                         int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  if (rows <= 0) return;
  const int64_t panel_floats = k * kPanelColumns;
  int64_t step = kF32PanelsPerTile[std::min<int64_t>(rows, kF32RowsPerTile) - 1];
  if (rows == 1 && (p1 - p0) * panel_floats * int64_t{sizeof(float)} > kF32WidePanelsMaxBytes) step = 4;
  for (int64_t p = p0; p < p1; p += step) {
    const int64_t nb = std::min<int64_t>(step, p1 - p);
    for (int64_t r = 0; r < rows; r += kF32RowsPerTile) {
      const int64_t mr = std::min<int64_t>(kF32RowsPerTile, rows - r);
      kF32Tiles[mr - 1][nb - 1](a + r * lda, lda, packed + p * panel_floats, panel_floats, k, p * kPanelColumns, n,
                                out + r * ldo, ldo, accumulate);
    }
  }
}

void SmallGemmBf16Avx512(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                         int64_t ldo, int64_t rows, bool accumulate) {
  SmallGemmT<Bf16Avx512Load>(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
}

void Int8SumsAvx512(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                    int64_t rows) {
  SmallGemmT<Int8Avx512Load>(a, lda, w, ldw, k, n, sums, n, rows, /*accumulate=*/true);
}

}  // namespace lstmserve::core::kernels
