// CPU kernels (float32 arithmetic) behind StackedLstm's fast paths. Internal to the core.
// Raw pointers, no allocation, no LibTorch call: callers own every buffer.
#pragma once

#include <cstdint>

namespace lstmserve::core::kernels {

// out[r, 0:n] = (accumulate ? out[r, 0:n] : 0) + a[r, :] @ w[:, 0:n] for r < rows.
// a is [rows, k] with row stride lda; w is [k, >= n] with row stride ldw; out has row
// stride ldo. Meant for few rows (a batch of 1 to 8): it streams w once per block of 4
// rows, in column tiles that keep the block's outputs in L1. Callers split columns across
// threads.
void SmallGemm(const float* a, int64_t lda, const float* w, int64_t ldw, int64_t k, int64_t n, float* out,
               int64_t ldo, int64_t rows, bool accumulate);

// SmallGemm with w in reduced storage, accumulating in float32:
//  - bfloat16 (its bits as uint16): out (=|+=) a @ float32(w);
//  - int8 with one scale per column: out[r, j] (=|+=) scale[j] * (a[r, :] @ w[:, j]); scale
//    points at the scale of w's first column.
void SmallGemmBf16(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                   int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmInt8(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k,
                   int64_t n, float* out, int64_t ldo, int64_t rows, bool accumulate);

// The AVX-512 builds of SmallGemmBf16 and of SmallGemmInt8's loop (sums[rows, n] += a @ w,
// unscaled), in lstm_kernels_avx512.cc: x86-64 with GCC only (LSTMSERVE_REDUCED_AVX512), to
// be called only on a CPU with x86-64-v4 (HasAvx512 in lstm_kernels.cc).
// The portable builds (target_clones) that the two above use where the CPU lacks x86-64-v4;
// exposed so that tests run them on any CPU.
void SmallGemmBf16Portable(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n,
                           float* out, int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmInt8Portable(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k,
                           int64_t n, float* out, int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmBf16Avx512(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n,
                         float* out, int64_t ldo, int64_t rows, bool accumulate);
void Int8SumsAvx512(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                    int64_t rows);

// The LSTM cell's elementwise part for `rows` rows of hidden size h:
//   gates [rows, 4h] holds the pre-activations in blocks i, f, o, g; bias [4h] (zeros when
//   the set has none); c [rows, h] is read (unless c_is_zero) and overwritten with the new
//   c; h_out [rows, h] gets the new h. No argument may overlap another.
//   Max abs error against exact math is ~3e-7.
void LstmGates(const float* gates, const float* bias, float* c, bool c_is_zero, float* h_out,
               int64_t rows, int64_t h);

// Vectorisable sigmoid and tanh over arrays, exposed for tests.
void SigmoidArray(const float* x, float* y, int64_t n);
void TanhArray(const float* x, float* y, int64_t n);

}  // namespace lstmserve::core::kernels
