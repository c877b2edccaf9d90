// The int8 rounding's per-row scales, shared by the packed GEMMs' AVX-512 and AVX2 builds
// (packed_gemm_avx512.cc, packed_gemm_avx2.cc), which must round every row alike. Internal
// linkage, as small_gemm.h: each file compiles its own copy for its instruction set.
#pragma once

#include <algorithm>
#include <limits>

namespace lstmserve::core::kernels {
namespace {

// Writes a row's scales from max |row| and whether the row is finite: s = amax / 127, then
// with two terms s_lo = s / 254 (QuantizeRowsInt8Avx512 in lstm_kernels.h). False when the
// row rounds to zeros: all zeros (scales 0), or a NaN or an infinity (scales NaN, so that
// its outputs are NaN, as float32 arithmetic would make them).
inline bool Int8RowScales(float amax, bool finite, int terms, float* scales) {
  const float s = amax / 127.0f;
  if (!finite || s == 0.0f) {
    std::fill(scales, scales + terms, finite ? 0.0f : std::numeric_limits<float>::quiet_NaN());
    return false;
  }
  scales[0] = s;
  if (terms == 2) scales[1] = s / 254.0f;
  return true;
}

}  // namespace
}  // namespace lstmserve::core::kernels
