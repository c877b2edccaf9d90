// The reduced-storage small-batch GEMMs for AVX-512 CPUs: this file alone is compiled for
// x86-64-v4 (core/CMakeLists.txt), and lstm_kernels.cc calls it only where the CPU has it.
// The portable int8 load widens in three vector steps (7 shuffles per 16 weights, which
// bound L at B=1 to ~1.75 ms); here one vpmovsxbd from memory and one vcvtdq2ps do it
// (0.97 ms). bfloat16 gets one vpmovzxwd from memory and a shift.
//
// Also the packed float32 GEMM's AVX-512 build (F32GemmPackedAvx512) and the packed bf16
// GEMM's build that widens the weights (Bf16GemmPackedWidened): they need AVX-512F only, so
// they live here rather than with the VNNI and BF16 kernels.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "lstm_kernels.h"
#include "small_gemm.h"
#include "tile_store_avx512.h"

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
// all of k (8 x 3 = 24 of the 32 ZMM registers, 3 for a step's weights, the rows' values
// broadcast from memory into the FMAs); a tile's panels stay in L2 while every tile of rows
// passes over them. 8 x 3 against 6 x 4 (until 2026-12-06), this GEMM built both ways and
// alternated, one Emerald Rapids thread: [64, 256] x [256, 512] (a thread's share of M's
// step) at 213-220 against 191-194 GFLOP/s, [256, 1024] x [1024, 2048] (of L's) at 200-203
// against 185-186, a 1024-row input projection [1024, 128] x [128, 512] at 193-194 against
// 196-197; 12 x 2 and 4 x 6 were slower; on Zen 4 the two tied. A call of fewer
// rows takes more panels per tile (one row: 8), so that 8 or more FMA chains are in
// flight, as many as two FMA pipes of 4-cycle latency need. One row by 4 panels: [1, 64] x
// [64, 256] in 0.42 us, 1 x [256, 1024] in 7.7 us; by 8: 0.40 and 7.6 us, 2 rows 0.66
// against 0.71 us (16 panels were slower: 0.47 us, 13.6 us with 16 weight streams).
constexpr int kF32RowsPerTile = 8;
constexpr int kF32MaxPanelsPerTile = 8;
// By rows - 1: the most panels a tile of that many rows takes.
constexpr std::array<int, kF32RowsPerTile> kF32PanelsPerTile = {8, 8, 6, 4, 4, 4, 3, 3};
// One row takes more than 4 panels only while the call's weights are at most this many bytes
// (in L2), in float32 or bf16: streamed from L3, 8 float32 streams were slower than 4 (M_B1,
// each thread's 512 KiB of a step: 1.06 against 0.93 ms; S32, 64 KiB: 33 against 38 us).
constexpr int64_t kWidePanelsMaxBytes = int64_t{256} << 10;

// The tiles' shared steps: acc = 0; and acc[r][i] += x[r * ldx] * w[i] for every row r (one
// FMA each, the row's value broadcast).
template <int MR, int NB>
inline __attribute__((always_inline)) void ZeroTile(__m512 (&acc)[MR][NB]) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) acc[r][i] = _mm512_setzero_ps();
}
template <int MR, int NB>
inline __attribute__((always_inline)) void RowsFma(__m512 (&acc)[MR][NB], const __m512 (&w)[NB], const float* x,
                                                   int64_t ldx) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m512 v = _mm512_set1_ps(x[r * ldx]);
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) acc[r][i] = _mm512_fmadd_ps(v, w[i], acc[r][i]);
  }
}

template <int MR, int NB>
void F32Tile(const float* a, int64_t lda, const float* panels, int64_t panel_floats, int64_t k, int64_t j0, int64_t n,
             float* out, int64_t ldo, bool accumulate) {
  __m512 acc[MR][NB];
  ZeroTile(acc);
  for (int64_t g = 0; g < k; ++g) {
    __m512 w[NB];
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) w[i] = _mm512_loadu_ps(panels + i * panel_floats + 16 * g);
    RowsFma(acc, w, a + g, lda);
  }
  StoreTile(acc, j0, n, out, ldo, accumulate);
}

// ---- bfloat16 weights widened to float32 in registers (AVX-512F) ----
//
// On Intel cores vdpbf16ps zmm issues once per ~2 cycles and holds both FMA pipes: 43
// multiply-adds per ns against the FMA's 88 (Emerald Rapids, 12 independent chains), so the
// bf16 tile took 1.6x float32's time there (M, L). This build widens the packed bf16 weights
// in registers (the odd k: the lane with its low half cleared; the even k: the lane shifted
// up) and runs vdpbf16ps's two FMAs per lane, odd k first, under MXCSR's DAZ and FTZ, on
// rows rounded as vcvtneps2bf16 rounds them and held as float32 (RoundRowsBf16Avx2): the
// bits of Bf16GemmPackedAvx512 and Bf16GemmPackedAvx2, at the FMA's rate with half of
// float32's weight bytes. It serves AVX-512 CPUs without AVX512-BF16, and Intel cores.
constexpr unsigned kFlushDenormals = 0x8040;  // MXCSR: FTZ (bit 15) and DAZ (bit 6)

// sums[(r * NB + i) * 16 + j] = row r of q (ldq floats apart) dotted with column j of panel i
// (panel_words apart), in vdpbf16ps's order and with its flushing. Not inlined, and the sums
// go through memory, so that no float operation of the caller runs under the changed MXCSR.
template <int MR, int NB>
__attribute__((noinline)) void Bf16WidenedSums(const float* q, int64_t ldq, const uint32_t* panels, int64_t panel_words,
                                               int64_t groups, float* sums) {
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | kFlushDenormals);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc[MR][NB];
  ZeroTile(acc);
  for (int64_t g = 0; g < groups; ++g) {
    __m512i bits[NB];
    __m512 w[NB];
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) {
      bits[i] = _mm512_loadu_si512(panels + i * panel_words + 16 * g);
      w[i] = _mm512_castsi512_ps(_mm512_and_si512(bits[i], high));
    }
    RowsFma(acc, w, q + 2 * g + 1, ldq);
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) w[i] = _mm512_castsi512_ps(_mm512_slli_epi32(bits[i], 16));
    RowsFma(acc, w, q + 2 * g, ldq);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) _mm512_storeu_ps(sums + (r * NB + i) * 16, acc[r][i]);
  _mm_setcsr(csr);
}

template <int MR, int NB>
void Bf16WidenedTile(const float* q, int64_t ldq, const uint32_t* panels, int64_t panel_words, int64_t groups,
                     int64_t j0, int64_t n, float* out, int64_t ldo, bool accumulate) {
  float sums[MR * NB * 16];
  Bf16WidenedSums<MR, NB>(q, ldq, panels, panel_words, groups, sums);
  __m512 acc[MR][NB];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) acc[r][i] = _mm512_loadu_ps(sums + (r * NB + i) * 16);
  StoreTile(acc, j0, n, out, ldo, accumulate);
}

using F32TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                           bool);
using Bf16WidenedTileFn = void (*)(const float*, int64_t, const uint32_t*, int64_t, int64_t, int64_t, int64_t, float*,
                                   int64_t, bool);

// A kernel's tiles: up to kRows rows, and by rows - 1 the most panels a tile takes.
struct F32Shape {
  using Fn = F32TileFn;
  static constexpr int kRows = kF32RowsPerTile;
  static constexpr int kMaxPanels = kF32MaxPanelsPerTile;
  static constexpr std::array<int, kRows> kPanels = kF32PanelsPerTile;
  template <int MR, int NB>
  static constexpr Fn kTile = &F32Tile<MR, NB>;
};
// The widened bf16 tile: float32's shape, 8 rows by 3 panels (24 accumulators, 3 weight
// vectors, a broadcast). Its first version (the same loop, 2026-12-05) took [64, 256] x
// [256, 1024] on one Emerald Rapids thread in 215-221 us, float32's 6 x 4 tile in 212-230
// and vdpbf16ps's in 367-385; 6 x 4 took 3% more, 12 x 2 up to 25% more.
struct Bf16WidenedShape {
  using Fn = Bf16WidenedTileFn;
  static constexpr int kRows = kF32RowsPerTile;
  static constexpr int kMaxPanels = kF32MaxPanelsPerTile;
  static constexpr std::array<int, kRows> kPanels = kF32PanelsPerTile;
  template <int MR, int NB>
  static constexpr Fn kTile = &Bf16WidenedTile<MR, NB>;
};

// By (rows - 1, panels - 1); null past Shape::kPanels[rows - 1].
template <typename Shape, int MR, int... I>
constexpr std::array<typename Shape::Fn, Shape::kMaxPanels> TileRow(std::integer_sequence<int, I...>) {
  return {
      (I < Shape::kPanels[MR - 1] ? Shape::template kTile<MR, (I < Shape::kPanels[MR - 1] ? I + 1 : 1)> : nullptr)...};
}
template <typename Shape, int... R>
constexpr std::array<std::array<typename Shape::Fn, Shape::kMaxPanels>, Shape::kRows> TileTable(
    std::integer_sequence<int, R...>) {
  return {TileRow<Shape, R + 1>(std::make_integer_sequence<int, Shape::kMaxPanels>())...};
}
template <typename Shape>
constexpr auto kTiles = TileTable<Shape>(std::make_integer_sequence<int, Shape::kRows>());

// The tiles of rows [0, rows) by panels [p0, p1): tile(r, mr, p, np), np up to the shape's
// most for the call's rows; one row takes its widest tile only while the call's weights
// (panel_bytes per panel) fit kWidePanelsMaxBytes.
template <typename Shape, typename Tile>
void ForEachTile(int64_t rows, int64_t p0, int64_t p1, int64_t panel_bytes, Tile tile) {
  if (rows <= 0) return;
  int64_t step = Shape::kPanels[std::min<int64_t>(rows, Shape::kRows) - 1];
  if (rows == 1 && (p1 - p0) * panel_bytes > kWidePanelsMaxBytes) step = 4;
  for (int64_t p = p0; p < p1; p += step) {
    const int64_t np = std::min<int64_t>(step, p1 - p);
    for (int64_t r = 0; r < rows; r += Shape::kRows) tile(r, std::min<int64_t>(Shape::kRows, rows - r), p, np);
  }
}

}  // namespace

void F32GemmPackedAvx512(const float* a, int64_t lda, int64_t rows, const float* packed, int64_t k, int64_t n,
                         int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t panel_floats = k * kPanelColumns;
  ForEachTile<F32Shape>(rows, p0, p1, panel_floats * int64_t{sizeof(float)},
                        [&](int64_t r, int64_t mr, int64_t p, int64_t np) {
                          kTiles<F32Shape>[mr - 1][np - 1](a + r * lda, lda, packed + p * panel_floats, panel_floats, k,
                                                           p * kPanelColumns, n, out + r * ldo, ldo, accumulate);
                        });
}

void Bf16GemmPackedWidened(const float* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                           int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 1) / 2, panel_words = groups * kPanelColumns;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(packed);
  ForEachTile<Bf16WidenedShape>(
      rows, p0, p1, panel_words * int64_t{sizeof(uint32_t)}, [&](int64_t r, int64_t mr, int64_t p, int64_t np) {
        kTiles<Bf16WidenedShape>[mr - 1][np - 1](q + r * ldq, ldq, words + p * panel_words, panel_words, groups,
                                                 p * kPanelColumns, n, out + r * ldo, ldo, accumulate);
      });
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
