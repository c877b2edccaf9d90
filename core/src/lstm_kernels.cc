#include "lstm_kernels.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "lstmserve/core/isa.h"
#include "small_gemm.h"

// Each exported kernel is compiled three times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 +
// FMA) and the baseline, and each call runs the one for core::KernelIsa(): the CPU's level,
// or lower under a cap (isa.h), so one binary serves every x86-64 CPU and every level's
// kernels can run on one machine. LSTMSERVE_KERNEL(name, (params), (args), body) defines
// nameV4, nameV3 and nameBase with the body (as a template on kVec, the clone's vector width
// in floats: 16, 8 or 4, for blocking by its registers), and name, which dispatches.
// clang-format off
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LSTMSERVE_KERNEL(NAME, PARAMS, ARGS, ...)                                \
  template <int kVec> LSTMSERVE_INLINE void NAME##Body PARAMS __VA_ARGS__        \
  __attribute__((target("arch=x86-64-v4"))) void NAME##V4 PARAMS { NAME##Body<16> ARGS; } \
  __attribute__((target("arch=x86-64-v3"))) void NAME##V3 PARAMS { NAME##Body<8> ARGS; }  \
  void NAME##Base PARAMS { NAME##Body<4> ARGS; }                                 \
  void NAME PARAMS {                                                             \
    switch (KernelIsa()) {                                                       \
      case IsaLevel::kAvx512: return NAME##V4 ARGS;                              \
      case IsaLevel::kAvx2Vnni:                                                  \
      case IsaLevel::kAvx2: return NAME##V3 ARGS;                                \
      default: return NAME##Base ARGS;                                           \
    }                                                                            \
  }
#else
#define LSTMSERVE_KERNEL(NAME, PARAMS, ARGS, ...) \
  template <int kVec> LSTMSERVE_INLINE void NAME##Body PARAMS __VA_ARGS__ \
  void NAME PARAMS { NAME##Body<16> ARGS; }
#endif
// clang-format on

namespace lstmserve::core::kernels {
namespace {

// exp(x) for x clamped to [-87, 88]: Cody-Waite reduction by ln 2, then Cephes' degree-6
// polynomial (relative error ~1e-7). Branch-free so that loops calling it vectorise.
inline float Exp(float x) {
  // Ternaries, not std::min/max: GCC if-converts these into vector blends.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x / ln2 to the nearest integer with the 1.5 * 2^23 trick (no rounding instruction).
  const float kShift = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  const int32_t ni = FloatToBits(shifted) - FloatToBits(kShift);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * BitsToFloat((ni + 127) << 23);
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }
inline float Tanh(float x) { return 2.0f / (1.0f + Exp(-2.0f * x)) - 1.0f; }

}  // namespace

LSTMSERVE_KERNEL(SmallGemm,
                 (const float* a, int64_t lda, const float* w, int64_t ldw, int64_t k, int64_t n, float* out,
                  int64_t ldo, int64_t rows, bool accumulate),
                 (a, lda, w, ldw, k, n, out, ldo, rows, accumulate),
                 { SmallGemmT<PortableLoad, kVec>(a, lda, w, ldw, k, n, out, ldo, rows, accumulate); })

namespace {

#ifdef LSTMSERVE_REDUCED_AVX512
// x86-64-v4, what lstm_kernels_avx512.cc was compiled for, and not capped below it.
bool HasAvx512() { return KernelIsa() == IsaLevel::kAvx512; }
// x86-64-v3, what lstm_kernels_avx2.cc was compiled for, as the level the kernels run at
// (avx2_vnni adds AVX-VNNI to it, for the packed int8 GEMM only).
bool AtAvx2() { return KernelIsa() == IsaLevel::kAvx2 || KernelIsa() == IsaLevel::kAvx2Vnni; }
#endif

}  // namespace

LSTMSERVE_KERNEL(SmallGemmBf16Portable,
                 (const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                  int64_t ldo, int64_t rows, bool accumulate),
                 (a, lda, w, ldw, k, n, out, ldo, rows, accumulate),
                 { SmallGemmT<PortableLoad, kVec>(a, lda, w, ldw, k, n, out, ldo, rows, accumulate); })

void SmallGemmBf16(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, int64_t n, float* out,
                   int64_t ldo, int64_t rows, bool accumulate) {
#ifdef LSTMSERVE_REDUCED_AVX512
  if (HasAvx512()) return SmallGemmBf16Avx512(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
  if (AtAvx2()) return SmallGemmBf16Avx2(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
#endif
  SmallGemmBf16Portable(a, lda, w, ldw, k, n, out, ldo, rows, accumulate);
}

namespace {

// out (=|+=) scale * sums over rows of n, sums [rows, n].
void ApplyScales(const float* sums, const float* scale, int64_t n, float* out, int64_t ldo, int64_t rows,
                 bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * ldo;
    const float* sr = sums + r * n;
    if (accumulate) {
      for (int64_t j = 0; j < n; ++j) o[j] += scale[j] * sr[j];
    } else {
      for (int64_t j = 0; j < n; ++j) o[j] = scale[j] * sr[j];
    }
  }
}

LSTMSERVE_KERNEL(Int8Sums,
                 (const float* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t k, int64_t n, float* sums,
                  int64_t rows),
                 (a, lda, w, ldw, k, n, sums, rows),
                 { SmallGemmT<PortableLoad, kVec>(a, lda, w, ldw, k, n, sums, n, rows, /*accumulate=*/true); })

using Int8SumsFn = void (*)(const float*, int64_t, const int8_t*, int64_t, int64_t, int64_t, float*, int64_t);

// The integer-weighted sums first (with `sums_fn`), then one multiply by the column's scale.
void ScaledInt8Gemm(Int8SumsFn sums_fn, const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw,
                    int64_t k, int64_t n, float* out, int64_t ldo, int64_t rows, bool accumulate) {
  thread_local std::vector<float> sums;
  sums.assign(static_cast<size_t>(rows * n), 0.0f);
  sums_fn(a, lda, w, ldw, k, n, sums.data(), rows);
  ApplyScales(sums.data(), scale, n, out, ldo, rows, accumulate);
}

}  // namespace

void SmallGemmInt8(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k, int64_t n,
                   float* out, int64_t ldo, int64_t rows, bool accumulate) {
#ifdef LSTMSERVE_REDUCED_AVX512
  const Int8SumsFn sums_fn = HasAvx512() ? &Int8SumsAvx512 : AtAvx2() ? &Int8SumsAvx2 : &Int8Sums;
#else
  const Int8SumsFn sums_fn = &Int8Sums;
#endif
  ScaledInt8Gemm(sums_fn, a, lda, w, scale, ldw, k, n, out, ldo, rows, accumulate);
}

void SmallGemmInt8Portable(const float* a, int64_t lda, const int8_t* w, const float* scale, int64_t ldw, int64_t k,
                           int64_t n, float* out, int64_t ldo, int64_t rows, bool accumulate) {
  ScaledInt8Gemm(&Int8Sums, a, lda, w, scale, ldw, k, n, out, ldo, rows, accumulate);
}

bool HasPackedInt8Vnni() {
#ifdef LSTMSERVE_REDUCED_AVX512
  static const bool cpu = __builtin_cpu_supports("avx512vnni");
  return cpu && HasAvx512();
#else
  return false;
#endif
}

bool HasPackedInt8AvxVnni() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return KernelIsa() == IsaLevel::kAvx2Vnni;  // the CPU has AVX-VNNI (KernelIsa)
#else
  return false;
#endif
}

bool HasPackedInt8() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return HasPackedInt8Vnni() || KernelIsa() >= IsaLevel::kAvx2;
#else
  return false;
#endif
}

bool HasPackedBf16Avx512() {
#ifdef LSTMSERVE_REDUCED_AVX512
  // Intel's vdpbf16ps zmm issues once per ~2 cycles and holds both FMA pipes (Emerald Rapids:
  // 43 multiply-adds per ns against the FMA's 88): Intel cores take the widened build.
  static const bool cpu = __builtin_cpu_supports("avx512bf16");
  static const bool intel = __builtin_cpu_is("intel");
  const Bf16Kernel choice = Bf16KernelChoice();
  return cpu && HasAvx512() && (choice == Bf16Kernel::kDot || (choice == Bf16Kernel::kAuto && !intel));
#else
  return false;
#endif
}

bool HasPackedBf16Widened() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return HasAvx512() && !HasPackedBf16Avx512();
#else
  return false;
#endif
}

bool HasPackedBf16() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return HasPackedBf16Avx512() || KernelIsa() >= IsaLevel::kAvx2;
#else
  return false;
#endif
}

bool HasPackedF32() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return KernelIsa() >= IsaLevel::kAvx2;
#else
  return false;
#endif
}

bool HasPackedF32Avx512() {
#ifdef LSTMSERVE_REDUCED_AVX512
  return HasAvx512();
#else
  return false;
#endif
}

namespace {

template <typename T>
void Pack(const T* w, int64_t ldw, int64_t k, int64_t n, int64_t group, T* packed) {
  const int64_t stride = RowStride(k, group);
  for (int64_t p = 0; p < Panels(n); ++p) {
    T* panel = packed + p * stride * kPanelColumns;
    for (int64_t g = 0; g < stride / group; ++g) {
      for (int64_t c = 0; c < kPanelColumns; ++c) {
        for (int64_t i = 0; i < group; ++i) {
          const int64_t row = g * group + i, col = p * kPanelColumns + c;
          panel[(g * kPanelColumns + c) * group + i] = row < k && col < n ? w[row * ldw + col] : T{0};
        }
      }
    }
  }
}

}  // namespace

void PackInt8(const int8_t* w, int64_t ldw, int64_t k, int64_t n, int8_t* packed, int32_t* column_sums) {
  Pack(w, ldw, k, n, kInt8Group, packed);
  std::fill(column_sums, column_sums + n, 0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < n; ++j) column_sums[j] += w[i * ldw + j];
  }
}

void PackBf16(const uint16_t* w, int64_t ldw, int64_t k, int64_t n, uint16_t* packed) {
  Pack(w, ldw, k, n, kBf16Group, packed);
}

void PackF32(const float* w, int64_t ldw, int64_t k, int64_t n, float* packed) { Pack(w, ldw, k, n, 1, packed); }

LSTMSERVE_KERNEL(LstmGates,
                 (const float* __restrict gates, const float* __restrict bias, float* __restrict c, bool c_is_zero,
                  float* __restrict h_out, int64_t rows, int64_t h),
                 (gates, bias, c, c_is_zero, h_out, rows, h), {
                   // One pass per row; __restrict and a single in/out c keep GCC from versioning the loop
                   // on 11 possibly aliasing streams (it then refuses to vectorise).
                   for (int64_t r = 0; r < rows; ++r) {
                     const float* __restrict gi = gates + r * 4 * h;
                     const float* __restrict gf = gi + h;
                     const float* __restrict go = gi + 2 * h;
                     const float* __restrict gg = gi + 3 * h;
                     const float* __restrict bi = bias;
                     const float* __restrict bf = bias + h;
                     const float* __restrict bo = bias + 2 * h;
                     const float* __restrict bg = bias + 3 * h;
                     float* __restrict cr = c + r * h;
                     float* __restrict hr = h_out + r * h;
                     if (c_is_zero) {
                       for (int64_t j = 0; j < h; ++j) {
                         const float cn = Sigmoid(gi[j] + bi[j]) * Tanh(gg[j] + bg[j]);
                         cr[j] = cn;
                         hr[j] = Sigmoid(go[j] + bo[j]) * Tanh(cn);
                       }
                     } else {
                       for (int64_t j = 0; j < h; ++j) {
                         const float cn = Sigmoid(gi[j] + bi[j]) * Tanh(gg[j] + bg[j]) + Sigmoid(gf[j] + bf[j]) * cr[j];
                         cr[j] = cn;
                         hr[j] = Sigmoid(go[j] + bo[j]) * Tanh(cn);
                       }
                     }
                   }
                 })

LSTMSERVE_KERNEL(SigmoidArray, (const float* x, float* y, int64_t n), (x, y, n), {
  for (int64_t i = 0; i < n; ++i) y[i] = Sigmoid(x[i]);
})

LSTMSERVE_KERNEL(TanhArray, (const float* x, float* y, int64_t n), (x, y, n), {
  for (int64_t i = 0; i < n; ++i) y[i] = Tanh(x[i]);
})

}  // namespace lstmserve::core::kernels
