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
void SmallGemm(const float* a, int64_t lda, const float* w, int64_t ldw, int64_t k, int64_t n, float* out, int64_t ldo,
               int64_t rows, bool accumulate);

// SmallGemm with w in reduced storage, accumulating in float32:
//  - bfloat16 (its bits as uint16): out (=|+=) a @ float32(w);
//  - int8 with one scale per column: out[r, j] (=|+=) scale[j] * (a[r, :] @ w[:, j]); scale
//    points at the scale of w's first column.
void SmallGemmBf16(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                   int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmInt8(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k, int64_t n,
                   float* out, int64_t ldo, int64_t rows, bool accumulate);

// The AVX-512 builds of SmallGemmBf16 and of SmallGemmInt8's loop (sums[rows, n] += a @ w,
// unscaled), in lstm_kernels_avx512.cc: x86-64 with GCC only (LSTMSERVE_REDUCED_AVX512), to
// be called only on a CPU with x86-64-v4 (HasAvx512 in lstm_kernels.cc).
// The portable builds (target_clones) that the two above use where the CPU lacks x86-64-v4;
// exposed so that tests run them on any CPU.
void SmallGemmBf16Portable(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n,
                           float* out, int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmInt8Portable(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k,
                           int64_t n, float* out, int64_t ldo, int64_t rows, bool accumulate);
void SmallGemmBf16Avx512(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                         int64_t ldo, int64_t rows, bool accumulate);
void Int8SumsAvx512(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                    int64_t rows);
// The same two for x86-64-v3 (AVX2 + FMA), in lstm_kernels_avx2.cc, called only at that level.
void SmallGemmBf16Avx2(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                       int64_t ldo, int64_t rows, bool accumulate);
void Int8SumsAvx2(const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                  int64_t rows);

// ---- Packed GEMMs of reduced weights, for every batch size on CPUs that have them ----
// int8 weights run on vpdpbusd (AVX512-VNNI) with the activations quantized per row, bf16
// weights on vdpbf16ps (AVX512-BF16) with the activations rounded to bf16: 4x and 2x the
// multiply-adds per instruction of float32 FMAs. packed_gemm_avx512.cc; the CPU must have
// x86-64-v4 and the extension (HasPackedInt8Vnni, HasPackedBf16Avx512; false off GCC x86-64).
// Both are also true on every x86-64-v3 CPU (AVX2 + FMA) without the extension, where the
// GEMMs are Int8GemmPackedAvx2 and Bf16GemmPackedAvx2 (same bits); HasPackedInt8Vnni and
// HasPackedBf16Avx512 say which build runs.
bool HasPackedInt8();
bool HasPackedInt8Vnni();
// The YMM build with AVX-VNNI (Int8GemmPackedAvxVnni), at the avx2_vnni level.
bool HasPackedInt8AvxVnni();
bool HasPackedBf16();
bool HasPackedBf16Avx512();
// The AVX-512F build of the bf16 GEMM that widens the weights in registers
// (Bf16GemmPackedWidened): on AVX-512 CPUs without AVX512-BF16, and on Intel cores, whose
// vdpbf16ps runs at half the FMA's rate (HasPackedBf16Avx512 is then false); or as
// SetBf16Kernel (isa.h) chooses.
bool HasPackedBf16Widened();
// The packed float32 GEMM (F32GemmPackedAvx512, F32GemmPackedAvx2): on every x86-64-v3 CPU
// (GCC x86-64); HasPackedF32Avx512 says whether the AVX-512 build runs.
bool HasPackedF32();
bool HasPackedF32Avx512();

// The weight [k, n] is packed in panels of 16 columns; in each, groups of G consecutive k of
// a column lie side by side (G = 4 for int8, 2 for bf16), zero padded to whole panels and
// groups. Rows of rounded activations hold whole groups too (RowStride).
constexpr int64_t kPanelColumns = 16;
constexpr int64_t kInt8Group = 4;
constexpr int64_t kBf16Group = 2;
// Past this k an int8 sum could pass int32 (255 * 127 * k >= 2^31 from k = 66,313); such
// layers use widened weights.
constexpr int64_t kMaxPackedInt8K = 65536;
inline int64_t Panels(int64_t n) { return (n + kPanelColumns - 1) / kPanelColumns; }
inline int64_t RowStride(int64_t k, int64_t group) { return (k + group - 1) / group * group; }
inline int64_t PackedElements(int64_t k, int64_t n, int64_t group) {
  return Panels(n) * RowStride(k, group) * kPanelColumns;
}
// w [k, n] with row stride ldw into packed[PackedElements(k, n, G)]; PackInt8 also writes
// column_sums[n] = sum over k of w[:, j] (the kernel's correction for its unsigned activations).
void PackInt8(const int8_t* w, int64_t ldw, int64_t k, int64_t n, int8_t* packed, int32_t* column_sums);
void PackBf16(const uint16_t* w, int64_t ldw, int64_t k, int64_t n, uint16_t* packed);
// Group 1: panel p holds w[i, 16 p .. 16 p + 15] for i = 0 .. k - 1, one 64-byte line per i.
void PackF32(const float* w, int64_t ldw, int64_t k, int64_t n, float* packed);

// Each row r of a [rows, k] in `terms` int8 terms (1 or 2): s = max |a[r, :]| / 127 and
// qh = round(a / s) (ties to even, as torch.round(a / s)); with two terms also s_lo = s / 254
// and ql = round((a - qh * s) / s_lo) (the residual fused-multiplied, clamped to +-127), so
// a ~ s * qh + s_lo * ql, 254 times finer than one term. q gets `terms` rows per row r, from
// row terms * r: qh + 128 (then ql + 128; unsigned, for vpdpbusd), the rest of each row's
// stride 128; row_scale[terms * r] = s (then s_lo). A row of zeros gets scales 0; a row with
// a NaN or an infinity gets scales NaN (its outputs are NaN, as they would be in float32).
void QuantizeRowsInt8Avx512(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, uint8_t* q, int64_t ldq,
                            float* row_scale);
// q[r, i] = bf16(a[r, i]), round to nearest even; the rest of the row's stride 0.
void RoundRowsBf16Avx512(const float* a, int64_t lda, int64_t rows, int64_t k, uint16_t* q, int64_t ldq);
// For the panels [p0, p1) (columns 16 p0 .. min(n, 16 p1)) and every row r < rows:
//   int8: out[r, j] (=|+=) (s * float(Qh) (+ s_lo * float(Ql))) * column_scale[j], Qh and Ql
//         the exact integer sums of (q - 128) * w over the row's terms
//   bf16: out[r, j] (=|+=) sum_i q[r, i] * w[i, j], float32 accumulation in vdpbf16ps's order.
// Callers split panels or rows across threads. Integer sums are exact and each row is summed
// on its own, so a row's results do not depend on the other rows or on the split.
void Int8GemmPackedAvx512(const uint8_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                          const int8_t* packed, const int32_t* column_sums, const float* column_scale, int64_t k,
                          int64_t n, int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);
// The int8 GEMM for x86-64-v3, in packed_gemm_avx2.cc (same packed weights; column_sums not
// needed): q holds the same rounding as QuantizeRowsInt8Avx512's, as int16 and without the
// 128 offset (qh, then ql; ldq int16 per term row), and every output bit equals
// Int8GemmPackedAvx512's. The integer sums come from vpmaddwd on int16, exact where
// vpmaddubsw would saturate.
void QuantizeRowsInt8Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, int16_t* q, int64_t ldq,
                          float* row_scale);
void Int8GemmPackedAvx2(const int16_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                        const int8_t* packed, const float* column_scale, int64_t k, int64_t n, int64_t p0, int64_t p1,
                        float* out, int64_t ldo, bool accumulate);
// The int8 GEMM for x86-64-v3 CPUs with AVX-VNNI (vpdpbusd on YMM: Intel Alder Lake and
// later client cores, Sierra Forest, AMD Zen 5), also in packed_gemm_avx2.cc: the arguments
// and every output bit of Int8GemmPackedAvx512, q rounded by the overload of
// QuantizeRowsInt8Avx2 that writes bytes (QuantizeRowsInt8Avx512's bytes).
void QuantizeRowsInt8Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, int terms, uint8_t* q, int64_t ldq,
                          float* row_scale);
void Int8GemmPackedAvxVnni(const uint8_t* q, int64_t ldq, const float* row_scale, int64_t rows, int terms,
                           const int8_t* packed, const int32_t* column_sums, const float* column_scale, int64_t k,
                           int64_t n, int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);
void Bf16GemmPackedAvx512(const uint16_t* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                          int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);
// The bf16 GEMM for x86-64-v3, in packed_gemm_avx2.cc (same packed weights): q holds the
// same rounding as RoundRowsBf16Avx512's (vcvtneps2bf16's: a denormal becomes a signed zero,
// a NaN is quieted), as float32 values (ldq floats per row), and every output bit equals
// Bf16GemmPackedAvx512's (vdpbf16ps's two FMAs per lane, odd k first, under DAZ and FTZ).
void RoundRowsBf16Avx2(const float* a, int64_t lda, int64_t rows, int64_t k, float* q, int64_t ldq);
void Bf16GemmPackedAvx2(const float* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                        int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);
// The same on ZMM registers with AVX-512F only (lstm_kernels_avx512.cc), the same q and bits.
void Bf16GemmPackedWidened(const float* q, int64_t ldq, int64_t rows, const uint16_t* packed, int64_t k, int64_t n,
                           int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);

// Float32 weights packed by PackF32, for the panels [p0, p1) and every row r < rows:
//   out[r, j] (=|+=) fma(a[r, k-1], w[k-1, j], ... fma(a[r, 1], w[1, j], a[r, 0] * w[0, j]))
// one FMA chain per output in k's order from 0, added to out (accumulate) only at the end.
// Both builds (lstm_kernels_avx512.cc, packed_gemm_avx2.cc) compute exactly that, so a row's
// bits depend neither on the other rows, nor on the split, nor on the build.
void F32GemmPackedAvx512(const float* a, int64_t lda, int64_t rows, const float* packed, int64_t k, int64_t n,
                         int64_t p0, int64_t p1, float* out, int64_t ldo, bool accumulate);
void F32GemmPackedAvx2(const float* a, int64_t lda, int64_t rows, const float* packed, int64_t k, int64_t n, int64_t p0,
                       int64_t p1, float* out, int64_t ldo, bool accumulate);

// The LSTM cell's elementwise part for `rows` rows of hidden size h:
//   gates [rows, 4h] holds the pre-activations in blocks i, f, o, g; bias [4h] (zeros when
//   the set has none); c [rows, h] is read (unless c_is_zero) and overwritten with the new
//   c; h_out [rows, h] gets the new h. No argument may overlap another.
//   Max abs error against exact math is ~3e-7.
void LstmGates(const float* gates, const float* bias, float* c, bool c_is_zero, float* h_out, int64_t rows, int64_t h);

// Vectorisable sigmoid and tanh over arrays, exposed for tests.
void SigmoidArray(const float* x, float* y, int64_t n);
void TanhArray(const float* x, float* y, int64_t n);

}  // namespace lstmserve::core::kernels
