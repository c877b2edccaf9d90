// The packed int8 and bf16 GEMMs for CPUs without AVX512-VNNI or AVX512-BF16 (x86-64-v3:
// AVX2 + FMA, as on AMD Zen 2 and 3, or an AVX-512 CPU without them, or any CPU capped to
// avx2): the same packed weights as the AVX-512 kernels (packed_gemm_avx512.cc), the
// activations rounded exactly as they round them, and every output bit equal to theirs.
// This file alone is compiled for x86-64-v3 (core/CMakeLists.txt). It also holds the packed
// float32 GEMM's AVX2 build (F32GemmPackedAvx2, at the end of the file), whose outputs are
// the AVX-512 build's bits (lstm_kernels_avx512.cc): one FMA chain per output in k's order.
//
// int8 (Int8GemmPackedAvx2): AVX2 has no instruction that multiplies unsigned by signed bytes into 32-bit sums without
// saturating (vpmaddubsw saturates at 16 bits: 255 * -128 * 2 does not fit), so the integer
// sums are formed by vpmaddwd on 16-bit values: the rounded activations are stored as int16
// (qh itself, in [-128, 127], not qh + 128), the weights are sign-extended to int16 as they are
// loaded, and each vpmaddwd adds 16 exact products into 8 int32 lanes, two per column (k
// pairs 0-1 and 2-3 of a group of 4). The sums are exact, so they are the VNNI kernel's sums,
// and the float32 epilogue is the same arithmetic in the same order: the same bits.
//
// A tile is 6 rows by 8 columns (half a 16-column panel): 6 x 2 accumulators, 2 weight
// vectors (4 columns x 4 k each) and 1 broadcast of a row's 4 activations fill 15 of the
// 16 YMM registers; 1 and 2 rows take 4 and 2 halves. A vpmaddwd + vpaddd pair does 16
// multiply-adds, a float32 FMA 8; on this project's Zen 5 EPYC lstmserve-cpu-peak measured
// the pairs at 345 GOP/s against the FMAs' 258 GFLOP/s (1.34x float32's rate), and the
// weights are a quarter of float32's bytes.
// At --isa=avx2 there, int8 took 0.68-0.69 of float32's time on L and 0.72-0.73 on M
// (README, "Reduced-precision weights"). The tile for bf16 is float32's: 6 rows by one panel
// (12 accumulators), or for 1 and 2 rows 4 and 2 panels.
//
// bfloat16 weights (Bf16GemmPackedAvx2): vdpbf16ps (AVX512-BF16) computes, per 32-bit lane,
// acc = fma(a_odd, w_odd, acc) and then fma(a_even, w_even, acc) with denormal inputs read
// as zero and denormal results flushed (DAZ, FTZ), whatever MXCSR says. Here the same two
// FMAs in that order run on the weights widened in registers (a shift and a mask per 8
// columns x 2 k), with MXCSR's DAZ and FTZ set while the sums run: the BF16 kernel's bits
// again (tested against vdpbf16ps, denormals included), at float32's FMA rate and half its
// weight bytes. The weights are widened one k at a time (a shift pair for the odd k, one
// shift for the even), so that the 12 accumulators of float32's 6-row tile fit: with both
// k widened at once only 5 rows did, and M at --isa=avx2 took 1.17x float32's time.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "lstm_kernels.h"
#include "packed_rounding.h"

namespace lstmserve::core::kernels {
namespace {

constexpr int kRowsPerTile = 6;
// Rows whose activations stay in L2 while every panel of the call passes over them (120 rows
// of k = 1024 are 240 KiB of int16).
constexpr int64_t kRowsPerBlock = 120;

// Lanes i < min(8, n - j) set.
inline __m256i ColumnMask(int64_t j, int64_t n) {
  const int left = static_cast<int>(std::min<int64_t>(8, n - j));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// o[i] = v[i] for the lanes of m, all 8 when `full`: a plain store then, and vmaskmovps only
// for a tail (its store is microcoded on AMD: with it on every output, the bf16 epilogue took
// 10% of M's time at --isa=avx2).
inline void StoreLanes(float* o, __m256i m, bool full, __m256 v) {
  if (full) {
    _mm256_storeu_ps(o, v);
  } else {
    _mm256_maskstore_ps(o, m, v);
  }
}
inline __m256 LoadLanes(const float* o, __m256i m, bool full) {
  return full ? _mm256_loadu_ps(o) : _mm256_maskload_ps(o, m);
}

inline int64_t Load64(const int16_t* p) {
  int64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc += p, in acc's register: GCC 12 otherwise adds into p's register and copies it back
// (a vmovdqa per accumulator per group, or a spill).
inline __attribute__((always_inline)) void AddTo(__m256i& acc, __m256i p) {
  asm("vpaddd %1, %0, %0" : "+x"(acc) : "x"(p));
}

// Halves (8 columns) per tile by (terms, rows): a tile keeps about 8 accumulators, and a row
// alone takes 4 halves (32 columns), so that a step at B = 1 makes a few tile calls, not one
// per 8 columns.
constexpr int kInt8HalvesPerTile[2][kRowsPerTile] = {{4, 2, 1, 1, 1, 1}, {2, 1, 1, 0, 0, 0}};

// acc[r][2i], acc[r][2i + 1] = the two int32 partial sums per column of row r (q + r * ldq,
// int16) dotted with the 8 columns at w[i] (groups of 64 bytes apart: 4 columns x 4 k, then
// the next 4 columns).
template <int MR, int NH>
inline __attribute__((always_inline)) void Accumulate(const int16_t* q, int64_t ldq, const int8_t* const (&w)[NH],
                                                      int64_t groups, __m256i (&acc)[MR][2 * NH]) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < 2 * NH; ++c) acc[r][c] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < NH; ++i) {
      const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i] + g * 64)));
      const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i] + g * 64 + 16)));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256i a = _mm256_set1_epi64x(Load64(q + r * ldq + 4 * g));
        AddTo(acc[r][2 * i], _mm256_madd_epi16(a, b0));
        AddTo(acc[r][2 * i + 1], _mm256_madd_epi16(a, b1));
      }
    }
  }
}

// The 8 columns' sums from their pairs: hadd gives columns 0 1 4 5 | 2 3 6 7.
inline __m256 ColumnSums(__m256i pairs0, __m256i pairs1) {
  return _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_hadd_epi32(pairs0, pairs1), 0xD8));
}

// out (=|+=) (s * Qh (+ s_lo * Ql)) * column_scale for MP rows by NH halves of panels from
// half h0 (columns from 8 h0), Qh and Ql the exact integer sums as floats, sum(TERMS * r +
// term, i, m) for half i (m: its columns' mask): Int8Tile's epilogue in
// packed_gemm_avx512.cc, lane for lane, for both int8 GEMMs on YMM. (The sums are formed as
// they are stored: formed all first, they kept GCC 12 from holding the accumulators in
// registers over k, and AVX-VNNI's int8 M took 30 ms against 20.)
template <int TERMS, int MP, int NH, typename Sum>
inline __attribute__((always_inline)) void Int8Epilogue(Sum sum, const float* row_scale, const float* column_scale,
                                                        int64_t h0, int64_t n, float* out, int64_t ldo,
                                                        bool accumulate) {
#pragma GCC unroll 8
  for (int i = 0; i < NH; ++i) {
    const int64_t j0 = 8 * (h0 + i);
    if (j0 >= n) break;
    const __m256i m = ColumnMask(j0, n);
    const bool full = j0 + 8 <= n;
    const __m256 cs = _mm256_maskload_ps(column_scale + j0, m);
#pragma GCC unroll 8
    for (int r = 0; r < MP; ++r) {
      __m256 v = _mm256_mul_ps(sum(TERMS * r, i, m), _mm256_set1_ps(row_scale[TERMS * r]));
      if (TERMS == 2) v = _mm256_fmadd_ps(sum(TERMS * r + 1, i, m), _mm256_set1_ps(row_scale[TERMS * r + 1]), v);
      float* o = out + r * ldo + j0;
      StoreLanes(o, m, full, accumulate ? _mm256_fmadd_ps(v, cs, LoadLanes(o, m, full)) : _mm256_mul_ps(v, cs));
    }
  }
}

// MP rows of activations (each TERMS rows of q) by NH halves of panels from half h0 (columns
// from 8 h0); each output gets (s * Qh (+ s_lo * Ql)) * column_scale, as Int8Tile in
// packed_gemm_avx512.cc.
template <int TERMS, int MP, int NH>
void Int8Tile(const int16_t* q, int64_t ldq, const float* row_scale, const int8_t* packed, int64_t panel_bytes,
              int64_t h0, int64_t groups, const float* column_scale, int64_t n, float* out, int64_t ldo,
              bool accumulate) {
  const int8_t* w[NH];
#pragma GCC unroll 4
  for (int i = 0; i < NH; ++i) w[i] = packed + (h0 + i) / 2 * panel_bytes + (h0 + i) % 2 * 32;
  __m256i acc[TERMS * MP][2 * NH];
  Accumulate(q, ldq, w, groups, acc);
  Int8Epilogue<TERMS, MP, NH>([&](int row, int i, __m256i) { return ColumnSums(acc[row][2 * i], acc[row][2 * i + 1]); },
                              row_scale, column_scale, h0, n, out, ldo, accumulate);
}

using TileFn = void (*)(const int16_t*, int64_t, const float*, const int8_t*, int64_t, int64_t, int64_t, const float*,
                        int64_t, float*, int64_t, bool);
// By (terms - 1, rows - 1, halves - 1), halves up to kInt8HalvesPerTile.
constexpr TileFn kInt8Tiles[2][kRowsPerTile][4] = {
    {{&Int8Tile<1, 1, 1>, &Int8Tile<1, 1, 2>, &Int8Tile<1, 1, 3>, &Int8Tile<1, 1, 4>},
     {&Int8Tile<1, 2, 1>, &Int8Tile<1, 2, 2>, nullptr, nullptr},
     {&Int8Tile<1, 3, 1>, nullptr, nullptr, nullptr},
     {&Int8Tile<1, 4, 1>, nullptr, nullptr, nullptr},
     {&Int8Tile<1, 5, 1>, nullptr, nullptr, nullptr},
     {&Int8Tile<1, 6, 1>, nullptr, nullptr, nullptr}},
    {{&Int8Tile<2, 1, 1>, &Int8Tile<2, 1, 2>, nullptr, nullptr},
     {&Int8Tile<2, 2, 1>, nullptr, nullptr, nullptr},
     {&Int8Tile<2, 3, 1>, nullptr, nullptr, nullptr},
     {nullptr, nullptr, nullptr, nullptr},
     {nullptr, nullptr, nullptr, nullptr},
     {nullptr, nullptr, nullptr, nullptr}}};

// Whether x[0, k) has no NaN and no infinity (x * 0 is 0 for every finite x, else NaN).
bool RowIsFinite(const float* x, int64_t k) {
  __m256 sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_maskload_ps(x + i, ColumnMask(i, k)), _mm256_setzero_ps()));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total == 0.0f;
}

float MaxAbs(const float* x, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 amax = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_maskload_ps(x + i, ColumnMask(i, k))));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, amax);
  return *std::max_element(lanes, lanes + 8);
}

// 8 int32 (in int16 range) to int16 at p, the first `count` of them.
inline void StoreInt16(int16_t* p, __m256i v, int64_t count) {
  const __m128i packed = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0x08));
  if (count >= 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
    return;
  }
  int16_t lanes[8];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lanes), packed);
  std::copy(lanes, lanes + count, p);
}

// ---- bfloat16 ----

constexpr int kBf16RowsPerTile = 6;
constexpr unsigned kFlushDenormals = 0x8040;  // MXCSR: FTZ (bit 15) and DAZ (bit 6)
// Panels per tile by rows: every output lane is one chain of dependent FMAs (vdpbf16ps's
// order), so a tile needs about 8 accumulators in flight to cover the FMA's latency; a
// row alone takes 4 panels (S at B=1: 4.2 us with one panel, as float32's 3.2 with four).
constexpr int kBf16PanelsPerTile[kBf16RowsPerTile] = {4, 2, 1, 1, 1, 1};

// acc0 += a * w0 and acc1 += a * w1, a = *x broadcast, in one asm block with the broadcast in
// ymm15: left to itself, GCC 12 kept 12 accumulators, 2 weight vectors and a broadcast in the
// 16 registers only by copying accumulators (2 to 4 vmovaps per 12 FMAs).
inline __attribute__((always_inline)) void RowFma(__m256& acc0, __m256& acc1, const float* x, __m256 w0, __m256 w1) {
  asm("vbroadcastss %2, %%ymm15\n\tvfmadd231ps %3, %%ymm15, %0\n\tvfmadd231ps %4, %%ymm15, %1"
      : "+x"(acc0), "+x"(acc1)
      : "m"(*x), "x"(w0), "x"(w1)
      : "xmm15");
}

// sums[(r * NP + i) * 16 + j] = acc[r][i][j / 8] lane j % 8: a tile's 16-column sums per row.
template <int MR, int NP>
inline __attribute__((always_inline)) void StoreSums(const __m256 (&acc)[MR][NP][2], float* sums) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      _mm256_storeu_ps(sums + (r * NP + i) * 16, acc[r][i][0]);
      _mm256_storeu_ps(sums + (r * NP + i) * 16 + 8, acc[r][i][1]);
    }
  }
}

// sums[(r * NP + i) * 16 + j] = row r of q (floats holding bf16 values, ldq apart) dotted
// with column j of panel i (panel_words apart), in vdpbf16ps's order and with its flushing.
// Not inlined, and the sums go through memory, so that no float operation of the caller
// runs under the changed MXCSR.
template <int MR, int NP>
__attribute__((noinline)) void Bf16Sums(const float* q, int64_t ldq, const uint32_t* panels, int64_t panel_words,
                                        int64_t groups, float* sums) {
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | kFlushDenormals);
  __m256 acc[MR][NP][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t g = 0; g < groups; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      // Each 32-bit lane holds a column's k = 2g (low half) and 2g + 1 (high half): the odd
      // k's weights are the lanes with their low half cleared (one vpand), the even k's the
      // lanes shifted up, widened from memory one k at a time so that 6 rows' 12
      // accumulators, 2 weight vectors, a broadcast and the mask fit the 16 registers.
      // Intel runs vector shifts only on the FMA's two ports, vpand on a third port too:
      // with a right and a left shift for the odd k, one row by 4 panels put 40 operations
      // per k pair on those two ports (20 cycles), with the vpand 24 (12 cycles). Emerald
      // Rapids at --isa=avx2, one thread: [1, 64] x [64, 256] (weights in L1) 0.73 against
      // 0.48 us, float32 0.79; 6 rows, [64, 256] x [256, 1024], 1.16-1.22 against
      // 1.06-1.08 of float32's time.
      const __m256i* w = reinterpret_cast<const __m256i*>(panels + i * panel_words + g * 16);
      const __m256 odd0 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(w), high));
      const __m256 odd1 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(w + 1), high));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) RowFma(acc[r][i][0], acc[r][i][1], q + r * ldq + 2 * g + 1, odd0, odd1);
      const __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(w), 16));
      const __m256 even1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(w + 1), 16));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) RowFma(acc[r][i][0], acc[r][i][1], q + r * ldq + 2 * g, even0, even1);
    }
  }
  StoreSums(acc, sums);
  _mm_setcsr(csr);
}

// out (=|+=) the sums of MR rows by NP panels (columns from j0), as Bf16Tile's epilogue in
// packed_gemm_avx512.cc, under the caller's MXCSR.
template <int MR, int NP>
void AddSums(const float* sums, int64_t j0, int64_t n, float* out, int64_t ldo, bool accumulate) {
  for (int64_t c = 0; c < 2 * NP; ++c) {
    const int64_t j = j0 + 8 * c;
    if (j >= n) break;
    const __m256i m = ColumnMask(j, n);
    const bool full = j + 8 <= n;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 v = _mm256_loadu_ps(sums + r * NP * 16 + 8 * c);
      float* o = out + r * ldo + j;
      StoreLanes(o, m, full, accumulate ? _mm256_add_ps(v, LoadLanes(o, m, full)) : v);
    }
  }
}

// MR rows by NP panels (columns from j0): out (=|+=) the sums, as Bf16Tile in
// packed_gemm_avx512.cc.
template <int MR, int NP>
void Bf16Tile(const float* q, int64_t ldq, const uint32_t* panels, int64_t panel_words, int64_t groups, int64_t j0,
              int64_t n, float* out, int64_t ldo, bool accumulate) {
  float sums[MR * NP * 16];
  Bf16Sums<MR, NP>(q, ldq, panels, panel_words, groups, sums);
  AddSums<MR, NP>(sums, j0, n, out, ldo, accumulate);
}

using Bf16TileFn = void (*)(const float*, int64_t, const uint32_t*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                            bool);
// By (rows - 1, panels - 1), panels up to kBf16PanelsPerTile[rows - 1].
constexpr Bf16TileFn kBf16Tiles[kBf16RowsPerTile][4] = {
    {&Bf16Tile<1, 1>, &Bf16Tile<1, 2>, &Bf16Tile<1, 3>, &Bf16Tile<1, 4>},
    {&Bf16Tile<2, 1>, &Bf16Tile<2, 2>, nullptr, nullptr},
    {&Bf16Tile<3, 1>, nullptr, nullptr, nullptr},
    {&Bf16Tile<4, 1>, nullptr, nullptr, nullptr},
    {&Bf16Tile<5, 1>, nullptr, nullptr, nullptr},
    {&Bf16Tile<6, 1>, nullptr, nullptr, nullptr}};

// ---- float32 ----

// MR rows by NP panels (columns from j0): out (=|+=) a @ w, each output one FMA chain in k's
// order, as F32Tile in lstm_kernels_avx512.cc (the same bits). 6 rows by one panel keep 12
// accumulators, 2 weight vectors and a broadcast in the 16 YMM registers.
constexpr int kF32RowsPerTile = 6;
constexpr int kF32PanelsPerTile[kF32RowsPerTile] = {4, 2, 1, 1, 1, 1};

template <int MR, int NP>
void F32Tile(const float* a, int64_t lda, const float* panels, int64_t panel_floats, int64_t k, int64_t j0, int64_t n,
             float* out, int64_t ldo, bool accumulate) {
  __m256 acc[MR][NP][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < k; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      const float* w = panels + i * panel_floats + 16 * g;
      const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) RowFma(acc[r][i][0], acc[r][i][1], a + r * lda + g, w0, w1);
    }
  }
  float sums[MR * NP * 16];
  StoreSums(acc, sums);
  AddSums<MR, NP>(sums, j0, n, out, ldo, accumulate);
}

using F32TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                           bool);
// By (rows - 1, panels - 1), panels up to kF32PanelsPerTile[rows - 1].
constexpr F32TileFn kF32Tiles[kF32RowsPerTile][4] = {{&F32Tile<1, 1>, &F32Tile<1, 2>, &F32Tile<1, 3>, &F32Tile<1, 4>},
                                                     {&F32Tile<2, 1>, &F32Tile<2, 2>, nullptr, nullptr},
                                                     {&F32Tile<3, 1>, nullptr, nullptr, nullptr},
                                                     {&F32Tile<4, 1>, nullptr, nullptr, nullptr},
                                                     {&F32Tile<5, 1>, nullptr, nullptr, nullptr},
                                                     {&F32Tile<6, 1>, nullptr, nullptr, nullptr}};

// The tiles of a call: rows [0, rows) in blocks of kRowsPerBlock and tiles of at most
// tile_rows, by column units [u0, u1) (panels or halves) in groups of `group` units, whose
// weights stay in L2 while every tile of rows of the block passes over them. Calls
// tile(r, mr, u, nu) with nu up to units_per_tile(mr).
template <typename UnitsPerTile, typename Tile>
void ForEachTile(int64_t rows, int64_t tile_rows, int64_t u0, int64_t u1, int64_t group, UnitsPerTile units_per_tile,
                 Tile tile) {
  for (int64_t b = 0; b < rows; b += kRowsPerBlock) {
    const int64_t block_end = std::min(rows, b + kRowsPerBlock);
    for (int64_t ug = u0; ug < u1; ug += group) {
      const int64_t ug_end = std::min(u1, ug + group);
      for (int64_t r = b; r < block_end; r += tile_rows) {
        const int64_t mr = std::min(tile_rows, block_end - r);
        const int64_t nu_max = units_per_tile(mr);
        for (int64_t u = ug; u < ug_end; u += nu_max) tile(r, mr, u, std::min(nu_max, ug_end - u));
      }
    }
  }
}

// The int8 GEMMs' tiles: rows in tiles of kRowsPerTile / terms, by the halves of panels (8
// columns) of [p0, p1) that hold columns, 8 halves at a time; tile(r, mp, h, nh) with nh up
// to halves[terms - 1][mp - 1].
template <typename Tile>
void ForEachInt8Tile(int64_t rows, int terms, int64_t p0, int64_t p1, int64_t n, const int (&halves)[2][kRowsPerTile],
                     Tile tile) {
  ForEachTile(
      rows, kRowsPerTile / terms, 2 * p0, std::min(2 * p1, (n + 7) / 8), 8,
      [&](int64_t mp) { return int64_t{halves[terms - 1][mp - 1]}; }, tile);
}

}  // namespace

void RoundRowsBf16Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, float* q, int64_t ldq) {
  const __m256i exponent = _mm256_set1_epi32(0x7F800000), mantissa = _mm256_set1_epi32(0x007FFFFF);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u)), quiet = _mm256_set1_epi32(0x00400000);
  const __m256i half = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), zero = _mm256_setzero_si256();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    float* dst = q + r * ldq;
    for (int64_t i = 0; i < k; i += 8) {
      const __m256i m = ColumnMask(i, k);
      const __m256i v = _mm256_castps_si256(_mm256_maskload_ps(x + i, m));
      // vcvtneps2bf16: round to nearest even; a NaN quieted; a denormal to a signed zero.
      const __m256i e = _mm256_and_si256(v, exponent);
      const __m256i nan =
          _mm256_andnot_si256(_mm256_cmpeq_epi32(_mm256_and_si256(v, mantissa), zero), _mm256_cmpeq_epi32(e, exponent));
      const __m256i denormal = _mm256_cmpeq_epi32(e, zero);
      const __m256i rounded = _mm256_and_si256(
          _mm256_add_epi32(v, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(v, 16), one))), high);
      __m256i b = _mm256_blendv_epi8(rounded, _mm256_and_si256(v, sign), denormal);
      b = _mm256_blendv_epi8(b, _mm256_or_si256(_mm256_and_si256(v, high), quiet), nan);
      StoreLanes(dst + i, m, i + 8 <= k, _mm256_castsi256_ps(b));
    }
    std::fill(dst + k, dst + ldq, 0.0f);
  }
}

void Bf16GemmPackedAvx2(const float* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                        int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 1) / 2, panel_words = groups * 16;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(packed);
  ForEachTile(
      rows, kBf16RowsPerTile, p0, p1, 4, [](int64_t mr) { return int64_t{kBf16PanelsPerTile[mr - 1]}; },
      [&](int64_t r, int64_t mr, int64_t p, int64_t np) {
        kBf16Tiles[mr - 1][np - 1](q + r * ldq, ldq, words + p * panel_words, panel_words, groups, p * kPanelColumns, n,
                                   out + r * ldo, ldo, accumulate);
      });
}

void F32GemmPackedAvx2(const float* a, int64_t lda, int64_t rows, const float* packed, int64_t k, int64_t n, int64_t p0,
                       int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t panel_floats = k * kPanelColumns;
  ForEachTile(
      rows, kF32RowsPerTile, p0, p1, 4, [](int64_t mr) { return int64_t{kF32PanelsPerTile[mr - 1]}; },
      [&](int64_t r, int64_t mr, int64_t p, int64_t np) {
        kF32Tiles[mr - 1][np - 1](a + r * lda, lda, packed + p * panel_floats, panel_floats, k, p * kPanelColumns, n,
                                  out + r * ldo, ldo, accumulate);
      });
}

namespace {

// Each row's int8 rounding, as QuantizeRowsInt8Avx512's: for the AVX2 GEMM as int16 without
// the offset (Int16Rows), for the AVX-VNNI GEMM as its bytes, offset by 128 (OffsetBytes).
struct Int16Rows {
  using Element = int16_t;
  static constexpr Element kZero = 0;
  static void Store(int16_t* p, __m256i v, int64_t count) { StoreInt16(p, v, count); }
};
struct OffsetBytes {
  using Element = uint8_t;
  static constexpr Element kZero = 128;
  // v + 128, all 8 lanes in [0, 255], as bytes at p, the first `count` of them.
  static void Store(uint8_t* p, __m256i v, int64_t count) {
    v = _mm256_add_epi32(v, _mm256_set1_epi32(128));
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const int64_t bytes = _mm_cvtsi128_si64(_mm_packus_epi16(words, words));
    std::memcpy(p, &bytes, static_cast<size_t>(std::min<int64_t>(8, count)));
  }
};

template <typename Rows>
void QuantizeRows(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, typename Rows::Element* q,
                  int64_t ldq, float* row_scale) {
  const __m256i offset = _mm256_set1_epi32(128), top = _mm256_set1_epi32(255);
  const __m256i low = _mm256_set1_epi32(-127), high = _mm256_set1_epi32(127);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    typename Rows::Element* hi = q + terms * r * ldq;
    typename Rows::Element* lo = hi + ldq;  // two terms only
    float* scales = row_scale + terms * r;
    if (!Int8RowScales(MaxAbs(x, k), RowIsFinite(x, k), terms, scales)) {
      std::fill(hi, hi + terms * ldq, Rows::kZero);
      continue;
    }
    const __m256 vs = _mm256_set1_ps(scales[0]), vs_lo = _mm256_set1_ps(scales[0] / 254.0f);
    for (int64_t i = 0; i < k; i += 8) {
      const __m256 v = _mm256_maskload_ps(x + i, ColumnMask(i, k));
      const __m256 qh = _mm256_round_ps(_mm256_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      // The VNNI kernel stores qh + 128 with unsigned saturation (a qh past 127, possible only
      // for rows of subnormals, becomes 255); the same value, less 128.
      const __m256i qh_int =
          _mm256_sub_epi32(_mm256_min_epu32(_mm256_add_epi32(_mm256_cvtps_epi32(qh), offset), top), offset);
      Rows::Store(hi + i, qh_int, k - i);
      if (terms == 2) {
        const __m256 residual = _mm256_fnmadd_ps(qh, vs, v);
        const __m256i ql =
            _mm256_min_epi32(high, _mm256_max_epi32(low, _mm256_cvtps_epi32(_mm256_div_ps(residual, vs_lo))));
        Rows::Store(lo + i, ql, k - i);
      }
    }
    std::fill(hi + k, hi + ldq, Rows::kZero);
    if (terms == 2) std::fill(lo + k, lo + ldq, Rows::kZero);
  }
}

}  // namespace

void QuantizeRowsInt8Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, int16_t* q, int64_t ldq,
                          float* row_scale) {
  QuantizeRows<Int16Rows>(a, lda, rows, k, terms, q, ldq, row_scale);
}

void QuantizeRowsInt8Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, uint8_t* q, int64_t ldq,
                          float* row_scale) {
  QuantizeRows<OffsetBytes>(a, lda, rows, k, terms, q, ldq, row_scale);
}

void Int8GemmPackedAvx2(const int16_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                        const int8_t* packed, const float* column_scale, int64_t k, int64_t n, int64_t p0, int64_t p1,
                        float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 3) / 4, panel_bytes = groups * 64;
  ForEachInt8Tile(rows, terms, p0, p1, n, kInt8HalvesPerTile, [&](int64_t r, int64_t mp, int64_t h, int64_t nh) {
    kInt8Tiles[terms - 1][mp - 1][nh - 1](q + terms * r * ldq, ldq, row_scale + terms * r, packed, panel_bytes, h,
                                          groups, column_scale, n, out + r * ldo, ldo, accumulate);
  });
}

// ---- int8 with AVX-VNNI ----

namespace {

// Halves (8 columns) per tile by (terms, rows): one vpdpbusd accumulator per row and half, 8
// or more per tile; 6 rows by 2 halves keep 12 accumulators, 2 weight vectors and a broadcast.
constexpr int kVnniHalvesPerTile[2][kRowsPerTile] = {{8, 4, 2, 2, 2, 2}, {4, 2, 2, 0, 0, 0}};

// MP rows of activations (each TERMS rows of q: bytes x / s + 128, as the AVX-512 kernel's)
// by NH halves of panels from half h0: the integer sums by vpdpbusd on YMM (AVX-VNNI), then
// Int8Tile's epilogue in packed_gemm_avx512.cc, lane for lane.
template <int TERMS, int MP, int NH>
__attribute__((target("avxvnni"))) void Int8VnniTile(const uint8_t* q, int64_t ldq, const float* row_scale,
                                                     const int8_t* packed, int64_t panel_bytes, int64_t h0,
                                                     int64_t groups, const int32_t* column_sums,
                                                     const float* column_scale, int64_t n, float* out, int64_t ldo,
                                                     bool accumulate) {
  const int8_t* w[NH];
#pragma GCC unroll 8
  for (int i = 0; i < NH; ++i) w[i] = packed + (h0 + i) / 2 * panel_bytes + (h0 + i) % 2 * 32;
  __m256i acc[TERMS * MP][NH];
#pragma GCC unroll 8
  for (int r = 0; r < TERMS * MP; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < NH; ++i) acc[r][i] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i b[NH];
#pragma GCC unroll 8
    for (int i = 0; i < NH; ++i) b[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + g * 64));
#pragma GCC unroll 8
    for (int r = 0; r < TERMS * MP; ++r) {
      int32_t group;
      std::memcpy(&group, q + r * ldq + 4 * g, sizeof(group));
      const __m256i a = _mm256_set1_epi32(group);
#pragma GCC unroll 8
      for (int i = 0; i < NH; ++i) acc[r][i] = _mm256_dpbusd_avx_epi32(acc[r][i], a, b[i]);
    }
  }
  // q holds x / s + 128: subtract 128 * (the column's sum of weights).
  Int8Epilogue<TERMS, MP, NH>(
      [&](int row, int i, __m256i m) {
        const __m256i correction = _mm256_slli_epi32(_mm256_maskload_epi32(column_sums + 8 * (h0 + i), m), 7);
        return _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[row][i], correction));
      },
      row_scale, column_scale, h0, n, out, ldo, accumulate);
}

using VnniTileFn = void (*)(const uint8_t*, int64_t, const float*, const int8_t*, int64_t, int64_t, int64_t,
                            const int32_t*, const float*, int64_t, float*, int64_t, bool);
// By (terms - 1, rows - 1, halves - 1), halves up to kVnniHalvesPerTile; null past it.
template <int TERMS, int MP, int... I>
constexpr std::array<VnniTileFn, 8> VnniTileRow(std::integer_sequence<int, I...>) {
  constexpr int kMax = MP <= kRowsPerTile / TERMS ? kVnniHalvesPerTile[TERMS - 1][MP - 1] : 0;
  return {(I < kMax ? &Int8VnniTile<TERMS, MP, (I < kMax ? I + 1 : 1)> : nullptr)...};
}
template <int TERMS, int... R>
constexpr std::array<std::array<VnniTileFn, 8>, kRowsPerTile> VnniTileTable(std::integer_sequence<int, R...>) {
  return {VnniTileRow<TERMS, R + 1>(std::make_integer_sequence<int, 8>())...};
}
constexpr std::array<std::array<std::array<VnniTileFn, 8>, kRowsPerTile>, 2> kVnniTiles = {
    VnniTileTable<1>(std::make_integer_sequence<int, kRowsPerTile>()),
    VnniTileTable<2>(std::make_integer_sequence<int, kRowsPerTile>())};

}  // namespace

void Int8GemmPackedAvxVnni(const uint8_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                           const int8_t* packed, const int32_t* column_sums, const float* column_scale, int64_t k,
                           int64_t n, int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 3) / 4, panel_bytes = groups * 64;
  ForEachInt8Tile(rows, terms, p0, p1, n, kVnniHalvesPerTile, [&](int64_t r, int64_t mp, int64_t h, int64_t nh) {
    kVnniTiles[terms - 1][mp - 1][nh - 1](q + terms * r * ldq, ldq, row_scale + terms * r, packed, panel_bytes, h,
                                          groups, column_sums, column_scale, n, out + r * ldo, ldo, accumulate);
  });
}

}  // namespace lstmserve::core::kernels
