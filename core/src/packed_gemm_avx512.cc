// The packed GEMMs of reduced-storage sets for batches past the small kernels: int8 weights
// with vpdpbusd (AVX512-VNNI, 64 multiply-adds per instruction) and bfloat16 weights with
// vdpbf16ps (AVX512-BF16, 32), both four and two times the float32 FMA's 16. This file alone
// is compiled for x86-64-v4 with VNNI and BF16 (core/CMakeLists.txt); lstm_kernels.cc calls
// it only where the CPU has them.
//
// The weight [k, n] is packed once per set (PackInt8, PackBf16): panels of 16 columns, and in
// each panel groups of G consecutive k per column side by side (G = 4 int8 or 2 bf16), so one
// 64-byte load gives an instruction 16 columns by G rows of weights. The activations are
// rounded per call (QuantizeRowsInt8, RoundRowsBf16) into rows of whole groups; a tile of MR
// rows by NB panels keeps MR x NB accumulators in registers over all of k.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "lstm_kernels.h"
#include "packed_rounding.h"
#include "tile_store_avx512.h"

namespace lstmserve::core::kernels {
namespace {

constexpr int kRowsPerTile = 6;    // MR: 6 x 4 accumulators + 4 weight vectors + 1 broadcast
constexpr int kPanelsPerTile = 4;  // NB: 64 columns

inline int32_t LoadGroup(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The two dot products: each takes a row's group (4 bytes: 4 int8 or 2 bf16, broadcast) and
// a panel's group (64 bytes: 16 columns of it) into 16 accumulators.
struct Int8Dot {
  using Acc = __m512i;
  static Acc Zero() { return _mm512_setzero_si512(); }
  static Acc Add(Acc acc, __m512i a, __m512i b) { return _mm512_dpbusd_epi32(acc, a, b); }
};
struct Bf16Dot {
  using Acc = __m512;
  static Acc Zero() { return _mm512_setzero_ps(); }
  static Acc Add(Acc acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};

// acc[r][i] = sum over the groups of row r of q (stride ldq bytes) dotted with panel i
// (stride panel_bytes): MR x NB accumulators in registers over all of k.
template <typename Dot, int MR, int NB>
inline __attribute__((always_inline)) void Accumulate(const uint8_t* q, int64_t ldq, const uint8_t* panels,
                                                      int64_t panel_bytes, int64_t groups,
                                                      typename Dot::Acc (&acc)[MR][NB]) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) acc[r][i] = Dot::Zero();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i b[NB];
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) b[i] = _mm512_loadu_si512(panels + i * panel_bytes + g * 64);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i a = _mm512_set1_epi32(LoadGroup(q + r * ldq + 4 * g));
#pragma GCC unroll 4
      for (int i = 0; i < NB; ++i) acc[r][i] = Dot::Add(acc[r][i], a, b[i]);
    }
  }
}

// MP rows of activations, each TERMS rows of q (one term, or two: hi and lo), by NB
// panels; each output row gets (s * acc[hi] (+ s_lo * acc[lo])) * column_scale.
template <int TERMS, int MP, int NB>
void Int8Tile(const uint8_t* q, int64_t ldq, const float* row_scale, const int8_t* panels, int64_t panel_bytes,
              int64_t groups, const int32_t* column_sums, const float* column_scale, int64_t j0, int64_t n, float* out,
              int64_t ldo, bool accumulate) {
  __m512i acc[TERMS * MP][NB];
  Accumulate<Int8Dot>(q, ldq, reinterpret_cast<const uint8_t*>(panels), panel_bytes, groups, acc);
  // q holds x / s + 128 as unsigned bytes: subtract 128 * (the column's sum of weights).
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) {
    const int64_t j = j0 + 16 * i;
    if (j >= n) break;
    const __mmask16 m = ColumnMask(j, n);
    const __m512i correction = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, column_sums + j), 7);
    const __m512 cs = _mm512_maskz_loadu_ps(m, column_scale + j);
#pragma GCC unroll 8
    for (int r = 0; r < MP; ++r) {
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[TERMS * r][i], correction)),
                               _mm512_set1_ps(row_scale[TERMS * r]));
      if (TERMS == 2) {
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[TERMS * r + 1][i], correction));
        v = _mm512_fmadd_ps(lo, _mm512_set1_ps(row_scale[TERMS * r + 1]), v);
      }
      float* o = out + r * ldo + j;
      const __m512 result = accumulate ? _mm512_fmadd_ps(v, cs, _mm512_maskz_loadu_ps(m, o)) : _mm512_mul_ps(v, cs);
      _mm512_mask_storeu_ps(o, m, result);
    }
  }
}

template <int MR, int NB>
void Bf16Tile(const uint16_t* q, int64_t ldq, const uint16_t* panels, int64_t panel_elements, int64_t groups,
              int64_t j0, int64_t n, float* out, int64_t ldo, bool accumulate) {
  __m512 acc[MR][NB];
  Accumulate<Bf16Dot>(reinterpret_cast<const uint8_t*>(q), 2 * ldq, reinterpret_cast<const uint8_t*>(panels),
                      2 * panel_elements, groups, acc);
  StoreTile(acc, j0, n, out, ldo, accumulate);
}

// Tables of the tiles by (rows - 1, panels - 1), for the edges.
using Int8TileFn = void (*)(const uint8_t*, int64_t, const float*, const int8_t*, int64_t, int64_t, const int32_t*,
                            const float*, int64_t, int64_t, float*, int64_t, bool);
using Bf16TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, int64_t, int64_t, float*,
                            int64_t, bool);

#define LSTMSERVE_TILE_ROW(T, r) \
  { &T<r, 1>, &T<r, 2>, &T<r, 3>, &T<r, 4> }
#define LSTMSERVE_INT8_ROW(terms, r) \
  { &Int8Tile<terms, r, 1>, &Int8Tile<terms, r, 2>, &Int8Tile<terms, r, 3>, &Int8Tile<terms, r, 4> }
constexpr Int8TileFn kInt8Tiles1[kRowsPerTile][kPanelsPerTile] = {LSTMSERVE_INT8_ROW(1, 1), LSTMSERVE_INT8_ROW(1, 2),
                                                                  LSTMSERVE_INT8_ROW(1, 3), LSTMSERVE_INT8_ROW(1, 4),
                                                                  LSTMSERVE_INT8_ROW(1, 5), LSTMSERVE_INT8_ROW(1, 6)};
constexpr Int8TileFn kInt8Tiles2[kRowsPerTile / 2][kPanelsPerTile] = {
    LSTMSERVE_INT8_ROW(2, 1), LSTMSERVE_INT8_ROW(2, 2), LSTMSERVE_INT8_ROW(2, 3)};
#undef LSTMSERVE_INT8_ROW
constexpr Bf16TileFn kBf16Tiles[kRowsPerTile][kPanelsPerTile] = {
    LSTMSERVE_TILE_ROW(Bf16Tile, 1), LSTMSERVE_TILE_ROW(Bf16Tile, 2), LSTMSERVE_TILE_ROW(Bf16Tile, 3),
    LSTMSERVE_TILE_ROW(Bf16Tile, 4), LSTMSERVE_TILE_ROW(Bf16Tile, 5), LSTMSERVE_TILE_ROW(Bf16Tile, 6)};
#undef LSTMSERVE_TILE_ROW

// Whether x[0, k) has no NaN and no infinity (x * 0 is 0 for every finite x, else NaN).
bool RowIsFinite(const float* x, int64_t k) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    sum = _mm512_add_ps(sum, _mm512_mul_ps(_mm512_maskz_loadu_ps(ColumnMask(i, k), x + i), _mm512_setzero_ps()));
  }
  return _mm512_reduce_add_ps(sum) == 0.0f;
}

}  // namespace

void QuantizeRowsInt8Avx512(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, uint8_t* q, int64_t ldq,
                            float* row_scale) {
  const __m512i offset = _mm512_set1_epi32(128), low = _mm512_set1_epi32(-127), high = _mm512_set1_epi32(127);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
      amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(ColumnMask(i, k), x + i)));
    }
    uint8_t* hi = q + terms * r * ldq;
    uint8_t* lo = hi + ldq;  // two terms only
    float* scales = row_scale + terms * r;
    if (!Int8RowScales(_mm512_reduce_max_ps(amax), RowIsFinite(x, k), terms, scales)) {
      std::memset(hi, 128, static_cast<size_t>(terms * ldq));  // zeros
      continue;
    }
    const __m512 vs = _mm512_set1_ps(scales[0]), vs_lo = _mm512_set1_ps(scales[0] / 254.0f);
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 m = ColumnMask(i, k);
      const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
      // round(x / s), ties to even (the default rounding mode); then the residual's
      const __m512 qh = _mm512_roundscale_ps(_mm512_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_mask_storeu_epi8(hi + i, m, _mm512_cvtusepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(qh), offset)));
      if (terms == 2) {
        const __m512 residual = _mm512_fnmadd_ps(qh, vs, v);
        const __m512i ql =
            _mm512_min_epi32(high, _mm512_max_epi32(low, _mm512_cvtps_epi32(_mm512_div_ps(residual, vs_lo))));
        _mm_mask_storeu_epi8(lo + i, m, _mm512_cvtusepi32_epi8(_mm512_add_epi32(ql, offset)));
      }
    }
    std::memset(hi + k, 128, static_cast<size_t>(ldq - k));
    if (terms == 2) std::memset(lo + k, 128, static_cast<size_t>(ldq - k));
  }
}

void RoundRowsBf16Avx512(const float* a, int64_t lda, int64_t rows, int64_t k, uint16_t* q, int64_t ldq) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    uint16_t* dst = q + r * ldq;
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 m = ColumnMask(i, k);
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
      __m256i bits;
      std::memcpy(&bits, &v, sizeof(bits));
      _mm256_mask_storeu_epi16(dst + i, m, bits);
    }
    std::fill(dst + k, dst + ldq, uint16_t{0});
  }
}

void Int8GemmPackedAvx512(const uint8_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                          const int8_t* packed, const int32_t* column_sums, const float* column_scale, int64_t k,
                          int64_t n, int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 3) / 4, panel_bytes = groups * 64;
  const int64_t tile_rows = kRowsPerTile / terms;
  for (int64_t p = p0; p < p1; p += kPanelsPerTile) {
    const int64_t nb = std::min<int64_t>(kPanelsPerTile, p1 - p);
    for (int64_t r = 0; r < rows; r += tile_rows) {
      const int64_t mp = std::min<int64_t>(tile_rows, rows - r);
      const Int8TileFn tile = terms == 1 ? kInt8Tiles1[mp - 1][nb - 1] : kInt8Tiles2[mp - 1][nb - 1];
      tile(q + terms * r * ldq, ldq, row_scale + terms * r, packed + p * panel_bytes, panel_bytes, groups, column_sums,
           column_scale, p * 16, n, out + r * ldo, ldo, accumulate);
    }
  }
}

void Bf16GemmPackedAvx512(const uint16_t* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                          int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = (k + 1) / 2, panel_elements = groups * 32;
  for (int64_t p = p0; p < p1; p += kPanelsPerTile) {
    const int64_t nb = std::min<int64_t>(kPanelsPerTile, p1 - p);
    for (int64_t r = 0; r < rows; r += kRowsPerTile) {
      const int64_t mr = std::min<int64_t>(kRowsPerTile, rows - r);
      kBf16Tiles[mr - 1][nb - 1](q + r * ldq, ldq, packed + p * panel_elements, panel_elements, groups, p * 16, n,
                                 out + r * ldo, ldo, accumulate);
    }
  }
}

}  // namespace lstmserve::core::kernels
