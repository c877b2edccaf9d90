// Float32 CPU kernels behind StackedLstm's fast paths. Internal to the core.
// Raw pointers, no allocation, no LibTorch call: callers own every buffer.
#pragma once

#include <cstdint>

namespace lstmserve::core::kernels {

// out[r, :] = (accumulate ? out[r, :] : 0) + a[r, :] @ w for r < rows.
// a is [rows, k] with row stride lda; w is [k, n] contiguous; out is [rows, n] contiguous.
// Meant for few rows (a batch of 1 to 8, or T * B rows when both are small): it streams w
// once per block of 4 rows.
void SmallGemm(const float* a, int64_t lda, const float* w, int64_t k, int64_t n, float* out,
               int64_t rows, bool accumulate);

// The LSTM cell's elementwise part for `rows` rows of hidden size h:
//   gates [rows, 4h] holds the pre-activations in blocks i, f, o, g; bias [4h] or null;
//   c_prev [rows, h] or null (zeros); writes c_out and h_out ([rows, h] each).
//   c_out may be c_prev (updated in place). Max abs error against exact math is ~2e-7.
void LstmGates(const float* gates, const float* bias, const float* c_prev, float* c_out,
               float* h_out, int64_t rows, int64_t h);

// Vectorisable sigmoid and tanh over arrays, exposed for tests.
void SigmoidArray(const float* x, float* y, int64_t n);
void TanhArray(const float* x, float* y, int64_t n);

}  // namespace lstmserve::core::kernels
