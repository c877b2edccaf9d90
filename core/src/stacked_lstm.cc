#include "lstmserve/core/stacked_lstm.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstm_kernels.h"
#include "lstmserve/core/blas.h"
#include "lstmserve/core/isa.h"
#include "lstmserve/core/status.h"
#include "lstmserve/core/threads.h"

namespace lstmserve::core {
namespace {

// Where no packed GEMM serves a set (below x86-64-v3), batches up to this size take the
// small-batch kernels on CPU. Measured per 2-layer step (2 threads): at B=4 they match or
// beat BLAS for H=64..1024 (H=512: 231 vs 575 us), at B=8 BLAS wins at every size (H=1024:
// 2.7 vs 4.4 ms).
constexpr int64_t kSmallBatchMax = 4;
// The input projection of a layer is computed for at most this many bytes of gates at a
// time: the slice each step then reads is still in cache (M went from 161 to 211 GFLOP/s
// against 32 MiB chunks), and memory stays bounded for long sequences.
constexpr int64_t kProjectionChunkBytes = int64_t{4} << 20;
// Rows of gate math below which splitting across threads costs more than it saves.
constexpr int64_t kGateUnitsPerTask = 4096;
// oneDNN's RNN (LibTorch 2.x, at::lstm) repacks the weights on every call: 2.3 ms for M's
// 2 layers, 60 ms for L's 4, so it loses on single steps (L, B=256, 1 step: 108 vs 51 ms for
// the BLAS path) and wins on sequences of large batches (M: 61 vs 82 ms; L: 1.85 vs 2.34 s;
// B=32, H=256, 20 steps: 7.8 vs 11.4 ms; but B=16, H=64, 32 steps: 1.32 vs 1.26 ms). Measured
// on 2 threads of this project's AMD EPYC.
constexpr int64_t kOneDnnMinBatch = 32;
constexpr int64_t kOneDnnMinSteps = 16;
// On CUDA, the fused step kernel (it streams the weights once per step for every row) takes
// batches of up to kCudaFusedMaxBatch when forced (cuda::kFusedMaxRows), and auto gives it
// batches of up to kCudaFusedAutoMaxBatch: past 2 rows cuBLAS's tiles use the weights better.
// Measured on an H200 (deploy/gpu-check.sh, tests/bench/compare --device cuda, float32, L
// = 4 layers of 1024, 20 steps): fused against gemm B=1 968 vs 1253 us, B=2 991 vs 1283,
// B=4 2349 vs 1305, B=8 4988 vs 1399; S (B=1, H=64) 52 vs 88 us.
constexpr int64_t kCudaFusedMaxBatch = 8;
constexpr int64_t kCudaFusedAutoMaxBatch = 2;

std::string ShapeString(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

// A block of a layer's weight in its storage: the first element, and for int8 the scale of
// the first column.
struct WeightView {
  const void* data;
  WeightStorage storage;
  const float* scale;

  int64_t ElementSize() const {
    return storage == WeightStorage::kDType ? 4 : storage == WeightStorage::kBFloat16 ? 2 : 1;
  }
  // The block from row k0 on, of a weight with ld columns.
  WeightView Rows(int64_t k0, int64_t ld) const {
    return {static_cast<const char*>(data) + k0 * ld * ElementSize(), storage, scale};
  }
  // The block from column j0 on.
  WeightView Columns(int64_t j0) const {
    return {static_cast<const char*>(data) + j0 * ElementSize(), storage, scale == nullptr ? nullptr : scale + j0};
  }
  const float* Floats() const { return static_cast<const float*>(data); }
};

// kernels::SmallGemm for the view's storage.
void SmallGemm(const float* a, int64_t lda, const WeightView& w, int64_t ldw, int64_t k, int64_t n, float* out,
               int64_t ldo, int64_t rows, bool accumulate) {
  switch (w.storage) {
    case WeightStorage::kDType: kernels::SmallGemm(a, lda, w.Floats(), ldw, k, n, out, ldo, rows, accumulate); return;
    case WeightStorage::kBFloat16:
      kernels::SmallGemmBf16(a, lda, static_cast<const uint16_t*>(w.data), ldw, k, n, out, ldo, rows, accumulate);
      return;
    case WeightStorage::kInt8:
      kernels::SmallGemmInt8(a, lda, static_cast<const int8_t*>(w.data), w.scale, ldw, k, n, out, ldo, rows,
                             accumulate);
      return;
  }
}

// Row-major out[rows, n] (=|+=) a[rows, k] @ w[k, n], all contiguous. The small kernel for
// small batches (any storage); otherwise LibTorch's GEMM (BLAS, float32 weights only) on
// tensor headers that borrow the buffers.
void Gemm(bool small, const float* a, int64_t rows, int64_t k, const WeightView& w, int64_t n, float* out,
          bool accumulate) {
  if (small) {
    constexpr int64_t kParallelMin = int64_t{1} << 18, kParallelMax = int64_t{1} << 21;
    const int threads = at::get_num_threads();
    // A few rows over a weight past 8 MiB are bound by memory: each thread streams a
    // contiguous block of w's rows into partial sums (contiguous streams keep the
    // prefetchers going; splitting columns gave each thread strided half-rows and was slower
    // than one thread), then the partials are added. L at B=1, 2 threads: 6.1 -> 3.9 ms.
    if (rows <= kSmallBatchMax && k * n > kParallelMax && threads > 1) {
      const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, k / 64));
      thread_local std::vector<float> partials;  // this (the calling) thread's; the workers get a pointer
      partials.assign(static_cast<size_t>(parts * rows * n), 0.0f);
      float* const sums = partials.data();
      at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t k0 = k * p / parts, k1 = k * (p + 1) / parts;
          SmallGemm(a + k0, k, w.Rows(k0, n), n, k1 - k0, n, sums + p * rows * n, n, rows, true);
        }
      });
      if (!accumulate) std::fill(out, out + rows * n, 0.0f);
      for (int64_t p = 0; p < parts; ++p) {
        const float* part = sums + p * rows * n;
        for (int64_t j = 0; j < rows * n; ++j) out[j] += part[j];
      }
      return;
    }
    // Mid-sized weights: split the columns across the intra-op threads (each its own
    // outputs). Measured on 2 threads: H=512 B=1 75 vs 106 us.
    if (k * n < kParallelMin || k * n > kParallelMax || threads == 1) {
      SmallGemm(a, k, w, n, k, n, out, n, rows, accumulate);
      return;
    }
    constexpr int64_t kColumnsPerTask = 512;
    at::parallel_for(0, (n + kColumnsPerTask - 1) / kColumnsPerTask, 1, [&](int64_t t0, int64_t t1) {
      const int64_t j0 = t0 * kColumnsPerTask, j1 = std::min(n, t1 * kColumnsPerTask);
      SmallGemm(a, k, w.Columns(j0), n, k, j1 - j0, out + j0, n, rows, accumulate);
    });
    return;
  }
  const at::Tensor ta = at::from_blob(const_cast<float*>(a), {rows, k});
  const at::Tensor tw = at::from_blob(const_cast<float*>(w.Floats()), {k, n});
  at::Tensor tout = at::from_blob(out, {rows, n});
  if (accumulate) {
    tout.addmm_(ta, tw);
  } else {
    at::mm_out(tout, ta, tw);
  }
}

// out[rows, n] (=|+=) a[rows, k] @ w, w a weight packed for the core's GEMMs: float32, or
// reduced for the dot-product kernels (column_sums and scale: int8's, else null). Reduced:
// many rows (32 tasks of 6 per thread) are split across the intra-op threads by rows, each
// thread rounding its own rows and then multiplying them by all of w (the rounding is then
// parallel too, and no thread waits between the two); fewer rows by column panels, so that
// each thread streams its part of w. Until 2026-12-05 the row split began at 8 tasks, and
// M's 64 rows split 36 / 28: column panels took bf16 M from 57.1-63.7 to 54.7-56.3 ms at
// --isa=avx2, int8 M from 11.6 to 9.2 ms natively (lstmserve-core-bench). Float32 (nothing
// to round) by column panels whenever there are enough: the threads then get equal shares,
// where 6-row tasks split M's 64 rows 36 / 28 (lstmserve-core-bench, minimums of 5: M
// 25.7-26.0 against 26.9 ms, L_B32 112 against 116 ms; L, minimums of 3: 750-763 against
// 770-790 ms).
void PackedGemm(WeightStorage storage, int int8_terms, const float* a, int64_t rows, int64_t k,
                const at::Tensor& packed, const int32_t* column_sums, const float* scale, int64_t n, float* out,
                bool accumulate) {
#ifndef LSTMSERVE_REDUCED_AVX512
  TORCH_CHECK(false, "this build of lstmserve has no packed GEMMs");  // UsesPackedGemm() is false
#else
  const bool f32 = storage == WeightStorage::kDType;
  const bool int8 = storage == WeightStorage::kInt8;
  // Without VNNI (BF16) the rounding is held as int16 (float32): the AVX2 builds.
  // AVX-VNNI (avx2_vnni, never with AVX512-VNNI's avx512): the AVX-512 kernel's bytes and
  // sums, on YMM.
  const bool int8_ymm_vnni = int8 && kernels::HasPackedInt8AvxVnni();
  const bool int8_avx2 = int8 && !kernels::HasPackedInt8Vnni() && !int8_ymm_vnni;
  const bool bf16 = storage == WeightStorage::kBFloat16;
  const bool bf16_widened = bf16 && kernels::HasPackedBf16Widened();
  const bool bf16_avx2 = bf16 && !kernels::HasPackedBf16Avx512() && !bf16_widened;
  // Both float32-shaped bf16 builds take the rounding as float32 values.
  const bool bf16_floats = bf16_avx2 || bf16_widened;
  const int64_t ldq = kernels::RowStride(k, int8 ? kernels::kInt8Group : kernels::kBf16Group);
  // Row r's rounding starts at q + r * row_elements, 16-bit elements: room for int8's two
  // terms of ldq bytes (or of ldq int16 on AVX2), or for ldq bf16 (or ldq float32 for the
  // float32-shaped builds, AVX2's and the widened ZMM one);
  // its scales at row_scale + 2 * r.
  const int64_t row_elements = int8_avx2 || bf16_floats ? 2 * ldq : ldq;
  // Up to 2 MiB of rounded rows stay allocated per thread (as Scratch's floats); more (a long
  // sequence's input projection) lasts the call.
  constexpr int64_t kCachedElements = int64_t{1} << 20;
  thread_local std::vector<uint16_t> cached;
  std::vector<uint16_t> call_buffer;
  std::vector<uint16_t>& rounded = rows * row_elements <= kCachedElements ? cached : call_buffer;
  thread_local std::vector<float> row_scales;
  // Float32 reads a as it is: nothing to round, no scales.
  rounded.resize(static_cast<size_t>(f32 ? 0 : rows * row_elements));
  row_scales.resize(static_cast<size_t>(f32 ? 0 : 2 * rows));
  // The workers see this thread's buffers through pointers (a thread_local named in the
  // lambda would be each worker's own).
  uint16_t* const q = rounded.data();
  float* const row_scale = row_scales.data();
  const int8_t* const w8 = int8 ? packed.data_ptr<int8_t>() : nullptr;
  const uint16_t* const w16 = int8 || f32 ? nullptr : reinterpret_cast<const uint16_t*>(packed.data_ptr());
  const float* const w32 = f32 ? packed.data_ptr<float>() : nullptr;
  const auto round_rows = [&](int64_t r0, int64_t r1) {
    if (f32) return;
    if (int8_avx2) {
      kernels::QuantizeRowsInt8Avx2(a + r0 * k, k, r1 - r0, k, int8_terms,
                                    reinterpret_cast<int16_t*>(q + r0 * row_elements), ldq, row_scale + 2 * r0);
    } else if (int8_ymm_vnni) {
      kernels::QuantizeRowsInt8Avx2(a + r0 * k, k, r1 - r0, k, int8_terms, reinterpret_cast<uint8_t*>(q + r0 * ldq),
                                    ldq, row_scale + 2 * r0);
    } else if (int8) {
      kernels::QuantizeRowsInt8Avx512(a + r0 * k, k, r1 - r0, k, int8_terms, reinterpret_cast<uint8_t*>(q + r0 * ldq),
                                      ldq, row_scale + 2 * r0);
    } else if (bf16_floats) {
      kernels::RoundRowsBf16Avx2(a + r0 * k, k, r1 - r0, k, reinterpret_cast<float*>(q + r0 * row_elements), ldq);
    } else {
      kernels::RoundRowsBf16Avx512(a + r0 * k, k, r1 - r0, k, q + r0 * ldq, ldq);
    }
  };
  const auto multiply = [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    if (f32) {
      (kernels::HasPackedF32Avx512() ? kernels::F32GemmPackedAvx512 : kernels::F32GemmPackedAvx2)(
          a + r0 * k, k, r1 - r0, w32, k, n, p0, p1, out + r0 * n, n, accumulate);
    } else if (int8_avx2) {
      kernels::Int8GemmPackedAvx2(reinterpret_cast<const int16_t*>(q + r0 * row_elements), ldq, row_scale + 2 * r0,
                                  r1 - r0, int8_terms, w8, scale, k, n, p0, p1, out + r0 * n, n, accumulate);
    } else if (int8_ymm_vnni) {
      kernels::Int8GemmPackedAvxVnni(reinterpret_cast<const uint8_t*>(q + r0 * ldq), ldq, row_scale + 2 * r0, r1 - r0,
                                     int8_terms, w8, column_sums, scale, k, n, p0, p1, out + r0 * n, n, accumulate);
    } else if (int8) {
      kernels::Int8GemmPackedAvx512(reinterpret_cast<const uint8_t*>(q + r0 * ldq), ldq, row_scale + 2 * r0, r1 - r0,
                                    int8_terms, w8, column_sums, scale, k, n, p0, p1, out + r0 * n, n, accumulate);
    } else if (bf16_floats) {
      (bf16_widened ? kernels::Bf16GemmPackedWidened : kernels::Bf16GemmPackedAvx2)(
          reinterpret_cast<const float*>(q + r0 * row_elements), ldq, r1 - r0, w16, k, n, p0, p1, out + r0 * n, n,
          accumulate);
    } else {
      kernels::Bf16GemmPackedAvx512(q + r0 * ldq, ldq, r1 - r0, w16, k, n, p0, p1, out + r0 * n, n, accumulate);
    }
  };
  const int64_t panels = kernels::Panels(n);
  constexpr int64_t kRowsPerTask = 6, kPanelsPerTask = 4;
  // Per thread, enough 6-row tasks that one more on a thread costs it no more than ~3%.
  constexpr int64_t kRowsPerTaskSplit = 32 * kRowsPerTask;
  // Below this many multiply-adds a thread's wake-up costs more than it saves (S at B=1).
  constexpr int64_t kParallelMin = int64_t{1} << 18;
  if (rows * k * n < kParallelMin || at::get_num_threads() == 1) {
    round_rows(0, rows);
    multiply(0, rows, 0, panels);
    return;
  }
  // Reduced sets split many rows by rows (each thread rounds its own), once the tasks of 6
  // rows split evenly enough.
  const int64_t threads = at::get_num_threads();
  const bool by_rows = panels < kPanelsPerTask * threads || (!f32 && rows >= kRowsPerTaskSplit * threads);
  if (by_rows) {
    at::parallel_for(0, (rows + kRowsPerTask - 1) / kRowsPerTask, 1, [&](int64_t t0, int64_t t1) {
      const int64_t r0 = t0 * kRowsPerTask, r1 = std::min(rows, t1 * kRowsPerTask);
      round_rows(r0, r1);
      multiply(r0, r1, 0, panels);
    });
    return;
  }
  round_rows(0, rows);
  at::parallel_for(0, (panels + kPanelsPerTask - 1) / kPanelsPerTask, 1, [&](int64_t t0, int64_t t1) {
    multiply(0, rows, t0 * kPanelsPerTask, std::min(panels, t1 * kPanelsPerTask));
  });
#endif
}

void Gates(const float* gates, const float* bias, float* c, bool c_is_zero, float* h_out, int64_t batch, int64_t hidden,
           bool parallel) {
  if (!parallel) {
    kernels::LstmGates(gates, bias, c, c_is_zero, h_out, batch, hidden);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGateUnitsPerTask / hidden);
  at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
    kernels::LstmGates(gates + b0 * 4 * hidden, bias, c + b0 * hidden, c_is_zero, h_out + b0 * hidden, b1 - b0, hidden);
  });
}

// A float32 CPU tensor [rows, cols], allocated without going through the dispatcher (a
// small step makes four of these; at::empty costs about twice as much each).
at::Tensor EmptyFloat(int64_t rows, int64_t cols) {
  return at::Tensor(at::detail::empty_cpu({rows, cols}, at::kFloat));
}

// dst = src for float32 CPU tensors of one shape (a plain copy when src is contiguous:
// Tensor::copy_ costs a dispatch and a TensorIterator, about a microsecond).
void CopyFloat(const at::Tensor& src, at::Tensor& dst) {
  if (src.is_contiguous() && src.scalar_type() == at::kFloat && src.device().is_cpu()) {
    std::memcpy(dst.data_ptr<float>(), src.data_ptr<float>(), static_cast<size_t>(dst.numel()) * sizeof(float));
  } else {
    dst.copy_(src);
  }
}

// Working memory of one call. Small requests reuse a per-thread buffer, so a B=1 step
// allocates nothing but its results; large ones take a tensor for the call.
float* Scratch(int64_t floats, at::Tensor& holder) {
  constexpr int64_t kCachedFloats = int64_t{1} << 20;  // 4 MiB per thread at most
  if (floats <= kCachedFloats) {
    thread_local std::vector<float> cache;
    if (static_cast<int64_t>(cache.size()) < floats) cache.resize(floats);
    return cache.data();
  }
  holder = at::empty({floats}, at::kFloat);
  return holder.data_ptr<float>();
}

}  // namespace

const char* LstmPathName(LstmPath path) {
  switch (path) {
    case LstmPath::kAuto: return "auto";
    case LstmPath::kSmallBatch: return "small_batch";
    case LstmPath::kBlas: return "blas";
    case LstmPath::kGeneric: return "generic";
    case LstmPath::kOneDnn: return "onednn";
    case LstmPath::kCudaFused: return "cuda_fused";
    case LstmPath::kCudaGemm: return "cuda_gemm";
  }
  return "unknown";
}

absl::StatusOr<LstmPath> ParseLstmPath(absl::string_view name) {
  for (LstmPath path : {LstmPath::kAuto, LstmPath::kSmallBatch, LstmPath::kBlas, LstmPath::kGeneric, LstmPath::kOneDnn,
                        LstmPath::kCudaFused, LstmPath::kCudaGemm}) {
    if (name == LstmPathName(path)) return path;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown LSTM path \"", name,
                                                 "\"; choose auto, small_batch, blas, onednn, generic, cuda_fused or "
                                                 "cuda_gemm"));
}

std::string DescribeCpuKernels() {
  // The level each kernel call runs at (lstm_kernels.cc): x86-64-v4, x86-64-v3 (with AVX-VNNI
  // for the int8 GEMM at avx2_vnni) or the baseline, the CPU's unless capped (isa.h).
  const IsaLevel level = KernelIsa();
  const char* clone = level == IsaLevel::kAvx512     ? "x86-64-v4 (AVX-512)"
                      : level == IsaLevel::kAvx2Vnni ? "x86-64-v3 (AVX2 + FMA) and AVX-VNNI"
                      : level == IsaLevel::kAvx2     ? "x86-64-v3 (AVX2 + FMA)"
                                                     : "baseline";
  const std::string capped =
      level == CpuIsaLevel() ? "" : absl::StrCat(", capped from ", IsaLevelName(CpuIsaLevel()), " (LSTMSERVE_ISA)");
  const char* int8 = kernels::HasPackedInt8Vnni()      ? "AVX512-VNNI"
                     : kernels::HasPackedInt8AvxVnni() ? "AVX-VNNI"
                     : kernels::HasPackedInt8()        ? "AVX2"
                                                       : "no";
  const char* bf16 = kernels::HasPackedBf16Avx512()    ? "AVX512-BF16"
                     : kernels::HasPackedBf16Widened() ? "AVX-512 widened"
                     : kernels::HasPackedBf16()        ? "AVX2"
                                                       : "no";
  const char* f32 = kernels::HasPackedF32Avx512() ? "AVX-512" : kernels::HasPackedF32() ? "AVX2" : "no";
  return absl::StrCat("small-batch kernels ", clone, capped, "; packed f32 GEMM ", f32, "; packed int8 GEMM ", int8,
                      "; packed bf16 GEMM ", bf16, "; oneDNN LSTM ", OneDnnLstmAvailable() ? "yes" : "no");
}

bool OneDnnLstmAvailable() {
#if TORCH_VERSION_MAJOR >= 2
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

#ifndef LSTMSERVE_WITH_CUDA
bool BuiltWithCuda() { return false; }

SequenceResult StackedLstm::RunCuda(const at::Tensor&, const LstmState&, bool, bool) const {
  TORCH_CHECK(false, "this build of lstmserve has no CUDA paths");
}
#endif

absl::StatusOr<StackedLstm> StackedLstm::Create(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                                                WeightStorage storage, std::vector<at::Tensor> scales) {
  if (weights.empty()) return absl::InvalidArgumentError("a stacked LSTM needs at least 1 layer");
  const at::Tensor& w0 = weights[0];
  if (!w0.defined() || w0.dim() != 2 || w0.size(1) < 4 || w0.size(1) % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("w_0 must be 2-D [input_size + hidden, 4 * hidden], got ",
                                                   w0.defined() ? ShapeString(w0) : "an undefined tensor"));
  }
  const int64_t hidden = w0.size(1) / 4;
  const int64_t input = w0.size(0) - hidden;
  if (input < 1) {
    return absl::InvalidArgumentError(absl::StrCat("w_0 ", ShapeString(w0), " has ", w0.size(0),
                                                   " rows; it needs input_size + ", hidden, " with input_size >= 1"));
  }
  LSTMSERVE_RETURN_IF_ERROR(FromScalarType(w0.scalar_type()).status());
  const bool reduced = storage != WeightStorage::kDType;
  if (reduced) {
    const at::ScalarType want = storage == WeightStorage::kInt8 ? at::kChar : at::kBFloat16;
    if (w0.scalar_type() != want || !w0.device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("weight storage ", WeightStorageName(storage), " needs ",
                                                     c10::toString(want), " weights on the CPU; w_0 is ",
                                                     c10::toString(w0.scalar_type()), " on ", DeviceName(w0.device())));
    }
  } else if (w0.scalar_type() == at::kChar) {
    return absl::InvalidArgumentError("int8 weights need weight storage int8 (with a scale per column)");
  }
  const size_t scale_count = storage == WeightStorage::kInt8 ? weights.size() : 0;
  if (scales.size() != scale_count) {
    return absl::InvalidArgumentError(absl::StrCat("got ", scales.size(), " weight scales for ", weights.size(),
                                                   " layers; int8 weights need one per layer, others none"));
  }
  for (size_t l = 0; l < scales.size(); ++l) {
    const at::Tensor& sc = scales[l];
    if (!sc.defined() || sc.dim() != 1 || sc.size(0) != w0.size(1) || sc.scalar_type() != at::kFloat ||
        !sc.device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("w_", l, ".scale must be float32 [", w0.size(1), "] on the CPU"));
    }
  }
  const at::ScalarType activation_type = reduced ? at::kFloat : w0.scalar_type();
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const int64_t rows = (l == 0 ? input : hidden) + hidden;
    if (!w.defined() || w.dim() != 2 || w.size(0) != rows || w.size(1) != 4 * hidden) {
      return absl::InvalidArgumentError(absl::StrCat("w_", l, " must be [", rows, ", ", 4 * hidden, "], got ",
                                                     w.defined() ? ShapeString(w) : "an undefined tensor"));
    }
    if (w.scalar_type() != w0.scalar_type() || w.device() != w0.device()) {
      return absl::InvalidArgumentError(absl::StrCat("w_", l, " differs from w_0 in dtype or device"));
    }
  }
  if (!biases.empty() && biases.size() != weights.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", biases.size(), " biases for ", weights.size(), " layers; give one per layer or none"));
  }
  for (size_t l = 0; l < biases.size(); ++l) {
    const at::Tensor& b = biases[l];
    if (!b.defined() || b.dim() != 1 || b.size(0) != 4 * hidden || b.scalar_type() != activation_type ||
        b.device() != w0.device()) {
      return absl::InvalidArgumentError(absl::StrCat("b_", l, " must be [", 4 * hidden, "] of ",
                                                     c10::toString(activation_type), " on the weights' device"));
    }
  }
  StackedLstm lstm;
  lstm.torch_layout_ = std::make_shared<TorchLayout>();
  lstm.input_size_ = input;
  lstm.hidden_size_ = hidden;
  lstm.storage_ = storage;
  lstm.scalar_type_ = activation_type;
  for (auto& w : weights) lstm.weights_.push_back(w.contiguous());
  for (auto& b : biases) lstm.biases_.push_back(b.contiguous());
  for (auto& sc : scales) lstm.scales_.push_back(sc.contiguous());
  lstm.packed_ = std::make_shared<PackedLayout>();
  lstm.widened_ = std::make_shared<WidenedLayout>();
  if (biases.empty() && activation_type == at::kFloat && w0.device().is_cpu()) {
    // the fused kernel always adds one
    lstm.zero_bias_ = at::zeros({4 * hidden}, w0.options().dtype(at::kFloat));
  }
  return lstm;
}

absl::StatusOr<StackedLstm> StackedLstm::FromParameterSet(const ParameterSet& set) {
  std::vector<at::Tensor> weights;
  std::vector<at::Tensor> biases;
  std::vector<at::Tensor> scales;
  for (int64_t l = 0;; ++l) {
    const at::Tensor* w = set.Find(LstmWeightName(l));
    if (w == nullptr) break;
    weights.push_back(*w);
    if (const at::Tensor* b = set.Find(LstmBiasName(l))) biases.push_back(*b);
    if (set.weight_storage == WeightStorage::kInt8) {
      const at::Tensor* sc = set.Find(LstmScaleName(l));
      if (sc == nullptr) return absl::FailedPreconditionError(absl::StrCat("the int8 set lacks ", LstmScaleName(l)));
      scales.push_back(*sc);
    }
  }
  if (weights.empty()) {
    return absl::FailedPreconditionError("the parameter set has no tensor w_0; it is not a stacked-LSTM set");
  }
  if (!biases.empty() && biases.size() != weights.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the parameter set has ", biases.size(), " of ", weights.size(), " biases b_<l>"));
  }
  return Create(std::move(weights), std::move(biases), set.weight_storage, std::move(scales));
}

at::Tensor StackedLstm::FloatWeight(int64_t layer) const {
  if (storage_ == WeightStorage::kDType) return weights_[layer];
  return DequantizeWeight(weights_[layer], scales_.empty() ? nullptr : &scales_[layer]);
}

bool StackedLstm::UsesPackedGemm() const {
  switch (storage_) {
    case WeightStorage::kDType: return scalar_type_ == at::kFloat && device().is_cpu() && kernels::HasPackedF32();
    case WeightStorage::kBFloat16: return kernels::HasPackedBf16();
    case WeightStorage::kInt8:
      return kernels::HasPackedInt8() && input_size_ <= kernels::kMaxPackedInt8K &&
             hidden_size_ <= kernels::kMaxPackedInt8K;
  }
  return false;
}

// A reduced set of at most this many weights (1 MiB as float32) keeps a widened copy where
// no packed GEMM serves it (since the AVX2 builds: below x86-64-v3, and int8 layers past
// kMaxPackedInt8K). Measured at --isa=avx2, before those builds, on this project's AVX-512
// EPYC: widening in registers, S took 6.2 (bf16) and 6.5 us (int8) against float32's 4.7, S32 109 and 130
// against 102 us (tests/bench/compare --isa avx2); from M's layers on (0.9M weights) the
// reduced sets win (lstmserve-core-bench --isa=avx2, medians of 3: M_B4 bf16 6.4 and int8
// 7.9 against 8.7 ms; L1_B4 7.8 and 5.7 against 13.4 ms). The copy (at most 1 MiB) counts
// in DerivedBytes, as the other derived layouts do.
constexpr int64_t kWidenedCopyMaxWeights = int64_t{1} << 18;

const std::vector<at::Tensor>* StackedLstm::WidenedCopy() const {
  if (storage_ == WeightStorage::kDType || !device().is_cpu() || UsesPackedGemm()) return nullptr;
  int64_t total = 0;
  for (const auto& w : weights_) total += w.numel();
  if (total > kWidenedCopyMaxWeights) return nullptr;
  std::call_once(widened_->once, [&] {
    for (int64_t l = 0; l < num_layers(); ++l) widened_->w.push_back(FloatWeight(l).contiguous());
    CountDerived({&widened_->w});
  });
  return &widened_->w;
}

void StackedLstm::CountDerived(const std::vector<std::vector<at::Tensor>*>& parts) const {
  int64_t bytes = 0;
  for (const std::vector<at::Tensor>* part : parts) {
    for (const at::Tensor& t : *part) bytes += static_cast<int64_t>(t.nbytes());
  }
  derived_->bytes.fetch_add(bytes, std::memory_order_relaxed);
  if (derived_->listener) derived_->listener(bytes);
}

const StackedLstm::PackedLayout& StackedLstm::Packed() const {
  std::call_once(packed_->once, [&] {
    const int64_t n = 4 * hidden_size_;
    const bool int8 = storage_ == WeightStorage::kInt8;
    const int64_t group = int8 ? kernels::kInt8Group : storage_ == WeightStorage::kBFloat16 ? kernels::kBf16Group : 1;
    const auto pack = [&](const at::Tensor& w, int64_t row0, int64_t k, std::vector<at::Tensor>& into,
                          std::vector<at::Tensor>& sums_into) {
      at::Tensor packed = at::empty({kernels::PackedElements(k, n, group)}, w.options());
      if (storage_ == WeightStorage::kDType) {
        kernels::PackF32(w.data_ptr<float>() + row0 * n, n, k, n, packed.data_ptr<float>());
      } else if (int8) {
        at::Tensor sums = at::empty({n}, w.options().dtype(at::kInt));
        kernels::PackInt8(w.data_ptr<int8_t>() + row0 * n, n, k, n, packed.data_ptr<int8_t>(),
                          sums.data_ptr<int32_t>());
        sums_into.push_back(std::move(sums));
      } else {
        kernels::PackBf16(reinterpret_cast<const uint16_t*>(w.data_ptr()) + row0 * n, n, k, n,
                          reinterpret_cast<uint16_t*>(packed.data_ptr()));
      }
      into.push_back(std::move(packed));
    };
    for (const at::Tensor& w : weights_) {
      const int64_t in = w.size(0) - hidden_size_;
      pack(w, 0, in, packed_->x, packed_->x_sums);
      pack(w, in, hidden_size_, packed_->h, packed_->h_sums);
    }
    CountDerived({&packed_->x, &packed_->h, &packed_->x_sums, &packed_->h_sums});
  });
  return *packed_;
}

const char* StackedLstm::KernelName(int64_t batch, int64_t steps, LstmPath path) const {
  const LstmPath chosen = ChoosePath(batch, steps, path);
  if (chosen == LstmPath::kBlas) {
    switch (storage_) {
      case WeightStorage::kDType: return UsesPackedGemm() ? "packed_f32" : "blas";
      case WeightStorage::kInt8: return UsesPackedGemm() ? "packed_int8" : "blas_widened";
      case WeightStorage::kBFloat16: return UsesPackedGemm() ? "packed_bf16" : "blas_widened";
    }
  }
  return LstmPathName(chosen);
}

double StackedLstm::StepFlops(int64_t batch) const {
  double flops = 0;
  for (const auto& w : weights_) flops += 2.0 * batch * w.size(0) * w.size(1);
  return flops;
}

absl::Status StackedLstm::ValidateState(const LstmState& state, int64_t batch, absl::string_view what,
                                        bool check_device) const {
  for (const auto* part : {&state.c, &state.h}) {
    const char* name = part == &state.c ? "c" : "h";
    if (part->empty()) continue;
    if (static_cast<int64_t>(part->size()) != num_layers()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", part->size(), " ", name, " states for ", num_layers(),
                                                     " layers; give one per layer or none"));
    }
    for (size_t l = 0; l < part->size(); ++l) {
      const at::Tensor& t = (*part)[l];
      if (!t.defined() || t.dim() != 2 || t.size(0) != batch || t.size(1) != hidden_size_) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": ", name, "[", l, "] must be [", batch, ", ",
                                                       hidden_size_, "], got ",
                                                       t.defined() ? ShapeString(t) : "an undefined tensor"));
      }
      if (t.scalar_type() != scalar_type() || (check_device && t.device() != device())) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": ", name, "[", l, "] is ", c10::toString(t.scalar_type()), " on ", DeviceName(t.device()),
            "; the set is ", c10::toString(scalar_type()), " on ", DeviceName(device())));
      }
    }
  }
  return absl::OkStatus();
}

LstmPath StackedLstm::ChoosePath(int64_t batch, int64_t steps, LstmPath requested) const {
  if (requested != LstmPath::kAuto) return requested;
  if (device().is_cuda() && BuiltWithCuda()) {
    return batch <= kCudaFusedAutoMaxBatch ? LstmPath::kCudaFused : LstmPath::kCudaGemm;
  }
  if (scalar_type() != at::kFloat || !device().is_cpu()) return LstmPath::kGeneric;
  // The packed GEMMs (float32, bf16 and int8, on every x86-64-v3 CPU) take every batch size,
  // so that a row's bits never depend on the rows batched with it, nor on the level
  // (avx512, avx2_vnni or avx2). They are also the fastest there at every batch size, or
  // tie. Float32, lstmserve-core-bench --isa=L (one untimed call first), medians of 3 on
  // this project's 2-core AVX-512 EPYC, packed against the small-batch kernels (README,
  // "Instruction-set levels"):
  //   avx512: S 2.76 vs 2.96 us, S32 35.8 vs 47.6 us, S32_B4 75.7 vs 96.6 us (one earlier
  //   round: 100-105 vs 95), M_B4 1.84 vs 3.19 ms, L1 2.28 vs 2.25 ms (memory-bound: one
  //   earlier round 2.30 vs 2.44), L1_B4 2.39 vs 10.3 ms;
  //   avx2: S 3.11 vs 3.17 us, S32 48.2 vs 60.6 us, S32_B4 148 vs 180 us, M_B4 3.57 vs 7.26
  //   ms, L1 2.36 vs 2.62 ms, L1_B4 3.29 vs 11.0 ms;
  // and against oneDNN's LSTM on sequences of large batches (its weights are reordered on
  // every call), avx512: M 25.7 vs 26-29 ms, L 0.75 vs 1.05-1.27 s, M_B16 6.9 vs 7.2-9.0 ms.
  // Reduced sets at B=1: L1 int8 0.94-1.06 -> 0.47-0.82 ms against the small kernels, which
  // widen each weight to float32; S int8 3.8 -> 2.4-2.7 us, bf16 2.8-3.0 us.
  if (UsesPackedGemm()) return LstmPath::kBlas;
  if (storage_ != WeightStorage::kDType) {
    if (batch <= kSmallBatchMax) return LstmPath::kSmallBatch;
    // Without them (below x86-64-v3), long sequences of large batches take oneDNN's LSTM on
    // weights widened per call, as float32 sets do: BLAS on widened weights was slower than
    // float32 there (--isa=avx2, lstmserve-core-bench, before the AVX2 GEMMs: L bf16 2.30 s
    // and int8 2.57 s against 1.97 s).
    return OneDnnLstmAvailable() && batch >= kOneDnnMinBatch && steps >= kOneDnnMinSteps ? LstmPath::kOneDnn
                                                                                         : LstmPath::kBlas;
  }
  // Below x86-64-v3 (or off GCC x86-64), float32: the small-batch kernels at B = 1, where
  // they beat BLAS on the baseline level (SSE2, no FMA; lstmserve-core-bench --isa=baseline,
  // medians of 3: S 6.8 vs 11.9 us, S32 183 vs 266 us, L1 5.9 vs 7.7 ms; S32_B4 767 vs
  // 594 us). They block for each level's registers (small_gemm.h); before the packed
  // float32 GEMM they took every B <= 4 at avx2 and avx512 (S32_B4 236 vs 491 us against MKL
  // at avx2).
  const int64_t small_max = KernelIsa() >= IsaLevel::kAvx2 ? kSmallBatchMax : 1;
  if (batch <= small_max) return LstmPath::kSmallBatch;
  return OneDnnLstmAvailable() && batch >= kOneDnnMinBatch && steps >= kOneDnnMinSteps ? LstmPath::kOneDnn
                                                                                       : LstmPath::kBlas;
}

absl::StatusOr<LstmState> StackedLstm::Step(const at::Tensor& x, const LstmState& prev, LstmPath path) const {
  if (!x.defined() || x.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("x must be 2-D [batch, input_size], got ", x.defined() ? ShapeString(x) : "nothing"));
  }
  // The float32 CPU paths take x as it is: a step then makes no view of it (x.unsqueeze(0)
  // and Run's checks of a 3-D tensor cost about half a microsecond of a 4 us S step).
  const LstmPath chosen = ChoosePath(x.size(0), 1, path);
  if ((chosen == LstmPath::kSmallBatch || chosen == LstmPath::kBlas) && scalar_type() == at::kFloat &&
      device().is_cpu() && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.size(0) >= 1 &&
      x.size(1) == input_size_) {
    LSTMSERVE_RETURN_IF_ERROR(ValidateState(prev, x.size(0), "initial state", /*check_device=*/true));
    return GuardTorch("stacked LSTM", [&]() -> absl::StatusOr<LstmState> {
      InitThreadsOnThisThread();  // as in Run
      c10::InferenceMode inference;
      return RunFloatCpu(x, 1, x.size(0), prev, /*want_outputs=*/false, chosen == LstmPath::kSmallBatch).final_state;
    });
  }
  LSTMSERVE_ASSIGN_OR_RETURN(SequenceResult result, Run(x.unsqueeze(0), prev, /*want_outputs=*/false, path));
  return std::move(result.final_state);
}

absl::Status StackedLstm::CheckRunInputs(const at::Tensor& inputs, const LstmState& initial) const {
  return CheckInputs(inputs, initial, /*check_device=*/true);
}

absl::Status StackedLstm::CheckRunShapes(const at::Tensor& inputs, const LstmState& initial) const {
  return CheckInputs(inputs, initial, /*check_device=*/false);
}

absl::Status StackedLstm::CheckInputs(const at::Tensor& inputs, const LstmState& initial, bool check_device) const {
  if (!inputs.defined() || inputs.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("inputs must be 3-D [steps, batch, input_size], got ",
                                                   inputs.defined() ? ShapeString(inputs) : "nothing"));
  }
  if (inputs.size(0) < 1 || inputs.size(1) < 1 || inputs.size(2) != input_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs ", ShapeString(inputs), " must be [steps >= 1, batch >= 1, ", input_size_, "]"));
  }
  if (inputs.scalar_type() != scalar_type() || (check_device && inputs.device() != device())) {
    return absl::InvalidArgumentError(absl::StrCat("inputs are ", c10::toString(inputs.scalar_type()), " on ",
                                                   DeviceName(inputs.device()), "; the set is ",
                                                   c10::toString(scalar_type()), " on ", DeviceName(device())));
  }
  return ValidateState(initial, inputs.size(1), "initial state", check_device);
}

absl::StatusOr<SequenceResult> StackedLstm::Run(const at::Tensor& inputs, const LstmState& initial, bool want_outputs,
                                                LstmPath path) const {
  LSTMSERVE_RETURN_IF_ERROR(CheckRunInputs(inputs, initial));
  const LstmPath chosen = ChoosePath(inputs.size(1), inputs.size(0), path);
  const bool cuda_path = chosen == LstmPath::kCudaFused || chosen == LstmPath::kCudaGemm;
  if (cuda_path) {
    if (!BuiltWithCuda()) {
      return absl::FailedPreconditionError(
          absl::StrCat("path ", LstmPathName(chosen), " needs a CUDA build of lstmserve (LibTorch with CUDA)"));
    }
    if (!device().is_cuda()) {
      return absl::FailedPreconditionError(
          absl::StrCat("path ", LstmPathName(chosen), " needs a set on a CUDA device"));
    }
    if (chosen == LstmPath::kCudaFused && inputs.size(1) > kCudaFusedMaxBatch) {
      return absl::InvalidArgumentError(
          absl::StrCat("path cuda_fused takes a batch of at most ", kCudaFusedMaxBatch, ", got ", inputs.size(1)));
    }
  } else if (chosen != LstmPath::kGeneric && (scalar_type() != at::kFloat || !device().is_cpu())) {
    return absl::FailedPreconditionError("the small-batch, BLAS and oneDNN paths need float32 on the CPU");
  } else if (chosen == LstmPath::kOneDnn && !OneDnnLstmAvailable()) {
    return absl::FailedPreconditionError(
        "path onednn needs LibTorch 2.x with oneDNN (this build has LibTorch " TORCH_VERSION ")");
  }
  return GuardTorch("stacked LSTM", [&]() -> absl::StatusOr<SequenceResult> {
    // OpenMP's thread count is per thread: on a thread's first call, BLAS would run with
    // OpenMP's default until ATen's first parallel_for applies the configured count, and the
    // bits would change between the first call and the next. Apply it up front.
    InitThreadsOnThisThread();
    c10::InferenceMode inference;
    if (chosen == LstmPath::kGeneric) return RunGeneric(inputs, initial, want_outputs);
    if (cuda_path) return RunCuda(inputs, initial, want_outputs, chosen == LstmPath::kCudaFused);
    if (chosen == LstmPath::kOneDnn) return RunOneDnn(inputs, initial, want_outputs);
    return RunFloatCpu(inputs, inputs.size(0), inputs.size(1), initial, want_outputs, chosen == LstmPath::kSmallBatch);
  });
}

// Layer by layer: one GEMM projects a chunk of the layer's inputs (x @ W_x) for many steps,
// then each step adds h_prev @ W_h into its slice and runs the fused gate kernel, which
// updates c in place and writes h straight into the layer's output sequence (the next
// layer's input). The time loop allocates nothing.
//
// Tried and taken out (issue 25): small sequences running layer 0 on one intra-op thread and
// layers 1.. on the other, as layer 0's outputs arrived, with the bits of one thread. The
// core alone gained (S32, lstmserve-core-bench --threads=2: 47-49 -> 35-43 us), the server
// lost: lstmserve-cli bench --rpc=run --steps=32 --input_size=64 --hidden_size=64 against
// --threads=2, 8093 -> 1984 requests/s at concurrency 8 (the second thread takes the core
// that gRPC needs), and at concurrency 1 p50 0.189 -> 0.182 ms, within noise. Splitting each
// step's hidden units across two threads, with a barrier per step, took S32 to 86 us.
SequenceResult StackedLstm::RunFloatCpu(const at::Tensor& inputs, int64_t steps, int64_t batch,
                                        const LstmState& initial, bool want_outputs, bool small) const {
  const int64_t hidden = hidden_size_;
  const int64_t layers = num_layers();
  const bool parallel_gates = !small && batch * hidden >= 2 * kGateUnitsPerTask;
  const int64_t chunk_steps = std::clamp<int64_t>(kProjectionChunkBytes / (batch * 4 * hidden * 4), 1, steps);
  const int64_t gate_floats = chunk_steps * batch * 4 * hidden;
  const int64_t seq_floats = steps * batch * hidden;

  // One small step: [x, h] @ w in one pass over w (one kernel call per layer instead of two,
  // the outputs loaded and stored once). S step: 4.85 -> 4.70 us.
  const bool one_pass = small && steps == 1 && !initial.h.empty();
  const int64_t xh_floats = one_pass ? batch * (std::max(input_size_, hidden) + hidden) : 0;
  at::Tensor scratch_holder;
  float* gates = Scratch(gate_floats + 2 * seq_floats + xh_floats, scratch_holder);
  float* sequences[2] = {gates + gate_floats, gates + gate_floats + seq_floats};
  float* xh = gates + gate_floats + 2 * seq_floats;

  SequenceResult result;
  result.final_state.c.reserve(layers);
  result.final_state.h.reserve(layers);
  if (want_outputs) result.outputs = at::empty({steps, batch, hidden}, at::kFloat);
  const at::Tensor x = inputs.contiguous();
  const float* layer_input = x.data_ptr<float>();
  const PackedLayout* packed = !small && UsesPackedGemm() ? &Packed() : nullptr;
  const std::vector<at::Tensor>* widened_copy = WidenedCopy();
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t in = weights_[l].size(0) - hidden;
    // The small kernels read reduced weights as stored, and so do the packed GEMMs; BLAS gets
    // them widened, per call. A small reduced set's widened copy serves both (WidenedCopy).
    const at::Tensor widened = packed == nullptr && widened_copy != nullptr                      ? (*widened_copy)[l]
                               : small || packed != nullptr || storage_ == WeightStorage::kDType ? at::Tensor()
                                                                                                 : FloatWeight(l);
    const WeightView w_x = widened.defined() ? WeightView{widened.data_ptr(), WeightStorage::kDType, nullptr}
                                             : WeightView{weights_[l].data_ptr(), storage_,
                                                          scales_.empty() ? nullptr : scales_[l].data_ptr<float>()};
    const WeightView w_h = w_x.Rows(in, 4 * hidden);
    const float* bias = (has_bias() ? biases_[l] : zero_bias_).data_ptr<float>();
    // rows [rows, k] (=|+=) times the layer's input weights (x_part) or hidden weights.
    const auto project = [&](const float* rows_in, int64_t rows, bool x_part, float* out, bool accumulate) {
      const int64_t k = x_part ? in : hidden;
      if (packed == nullptr) return Gemm(small, rows_in, rows, k, x_part ? w_x : w_h, 4 * hidden, out, accumulate);
      const float* scale = scales_.empty() ? nullptr : scales_[l].data_ptr<float>();
      const int32_t* sums = storage_ != WeightStorage::kInt8
                                ? nullptr
                                : (x_part ? packed->x_sums[l] : packed->h_sums[l]).data_ptr<int32_t>();
      // int8: the set's inputs (any range, outliers) in two terms; the states h in (-1, 1),
      // which are also the inputs of layers past the first, in one.
      const int int8_terms = x_part && l == 0 ? 2 : 1;
      PackedGemm(storage_, int8_terms, rows_in, rows, k, x_part ? packed->x[l] : packed->h[l], sums, scale, 4 * hidden,
                 out, accumulate);
    };
    float* output = (l == layers - 1 && want_outputs) ? result.outputs.data_ptr<float>() : sequences[l % 2];

    at::Tensor c = EmptyFloat(batch, hidden);
    bool c_is_zero = initial.c.empty();
    if (!c_is_zero) CopyFloat(initial.c[l], c);
    const at::Tensor h0 = initial.h.empty() ? at::Tensor() : initial.h[l].contiguous();
    const float* h_prev = h0.defined() ? h0.data_ptr<float>() : nullptr;
    float* c_data = c.data_ptr<float>();

    if (one_pass) {
      for (int64_t b = 0; b < batch; ++b) {
        std::copy(layer_input + b * in, layer_input + (b + 1) * in, xh + b * (in + hidden));
        std::copy(h_prev + b * hidden, h_prev + (b + 1) * hidden, xh + b * (in + hidden) + in);
      }
      Gemm(small, xh, batch, in + hidden, w_x, 4 * hidden, gates, false);
      Gates(gates, bias, c_data, c_is_zero, output, batch, hidden, parallel_gates);
      h_prev = output;
    }
    for (int64_t t0 = one_pass ? steps : 0; t0 < steps; t0 += chunk_steps) {
      const int64_t n = std::min(chunk_steps, steps - t0);
      project(layer_input + t0 * batch * in, n * batch, /*x_part=*/true, gates, false);
      for (int64_t t = t0; t < t0 + n; ++t) {
        float* step_gates = gates + (t - t0) * batch * 4 * hidden;
        float* h_out = output + t * batch * hidden;
        if (h_prev != nullptr) project(h_prev, batch, /*x_part=*/false, step_gates, true);
        Gates(step_gates, bias, c_data, c_is_zero, h_out, batch, hidden, parallel_gates);
        c_is_zero = false;
        h_prev = h_out;
      }
    }
    result.final_state.c.push_back(std::move(c));
    at::Tensor h = EmptyFloat(batch, hidden);
    std::copy(h_prev, h_prev + batch * hidden, h.data_ptr<float>());
    result.final_state.h.push_back(std::move(h));
    layer_input = output;
  }
  return result;
}

// at::lstm, which LibTorch 2.x runs through oneDNN's RNN primitive on the CPU. Its layout:
// per layer w_ih [4H, in] and w_hh [4H, H] with gate rows i, f, g, o (ours: [in + H, 4H] with
// columns i, f, o, g), b_ih + b_hh (ours: one bias), states stacked [L, B, H].
SequenceResult StackedLstm::RunOneDnn(const at::Tensor& inputs, const LstmState& initial, bool want_outputs) const {
  const int64_t hidden = hidden_size_, layers = num_layers(), batch = inputs.size(1);
  // at::lstm's parameters of layer l from its float32 weight w: w_ih, w_hh[, b_ih, b_hh].
  const auto layer_params = [&](const at::Tensor& w, int64_t l, std::vector<at::Tensor>& params) {
    const auto reorder = [&](const at::Tensor& t, int64_t dim) {  // blocks i, f, o, g -> i, f, g, o
      const auto b = t.split(hidden, dim);
      return at::cat({b[0], b[1], b[3], b[2]}, dim);
    };
    const int64_t in = w.size(0) - hidden;
    params.push_back(reorder(w.narrow(0, 0, in), 1).t().contiguous());
    params.push_back(reorder(w.narrow(0, in, hidden), 1).t().contiguous());
    if (has_bias()) {
      params.push_back(reorder(biases_[l], 0).contiguous());
      params.push_back(at::zeros({4 * hidden}, w.options()));
    }
  };
  SequenceResult result;
  if (storage_ != WeightStorage::kDType) {
    // Reduced weights: one layer at a time, widened for this call only, so that no more
    // than one layer's float32 copy exists at once.
    at::Tensor layer_input = inputs.contiguous();
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<at::Tensor> params;
      layer_params(FloatWeight(l), l, params);
      const at::Tensor h0 =
          initial.h.empty() ? at::zeros({1, batch, hidden}, inputs.options()) : initial.h[l].unsqueeze(0);
      const at::Tensor c0 =
          initial.c.empty() ? at::zeros({1, batch, hidden}, inputs.options()) : initial.c[l].unsqueeze(0);
      auto [outputs, h_n, c_n] = at::lstm(layer_input, {h0, c0}, params, has_bias(), 1, /*dropout=*/0.0,
                                          /*train=*/false, /*bidirectional=*/false, /*batch_first=*/false);
      result.final_state.h.push_back(h_n[0]);
      result.final_state.c.push_back(c_n[0]);
      layer_input = std::move(outputs);
    }
    if (want_outputs) result.outputs = std::move(layer_input);
    return result;
  }
  std::call_once(torch_layout_->once, [&] {
    std::vector<at::Tensor> params;
    for (int64_t l = 0; l < layers; ++l) layer_params(weights_[l], l, params);
    torch_layout_->params = std::move(params);
    CountDerived({&torch_layout_->params});
  });
  const auto stacked = [&](const std::vector<at::Tensor>& per_layer) {
    return per_layer.empty() ? at::zeros({layers, batch, hidden}, inputs.options()) : at::stack(per_layer);
  };
  auto [outputs, h_n, c_n] = at::lstm(inputs.contiguous(), {stacked(initial.h), stacked(initial.c)},
                                      torch_layout_->params, has_bias(), layers, /*dropout=*/0.0,
                                      /*train=*/false, /*bidirectional=*/false, /*batch_first=*/false);
  if (want_outputs) result.outputs = std::move(outputs);
  result.final_state.c = c_n.unbind(0);
  result.final_state.h = h_n.unbind(0);
  return result;
}

// Any device and dtype, with LibTorch ops; the same algorithm as RunFloatCpu.
SequenceResult StackedLstm::RunGeneric(const at::Tensor& inputs, const LstmState& initial, bool want_outputs) const {
  const int64_t batch = inputs.size(1);
  const int64_t hidden = hidden_size_;
  SequenceResult result;
  result.final_state.c.resize(num_layers());
  result.final_state.h.resize(num_layers());
  at::Tensor layer_input = inputs;
  for (int64_t l = 0; l < num_layers(); ++l) {
    const at::Tensor w = FloatWeight(l);
    const int64_t in = w.size(0) - hidden;
    const at::Tensor w_h = w.narrow(0, in, hidden);
    at::Tensor projection = at::matmul(layer_input, w.narrow(0, 0, in));
    if (has_bias()) projection.add_(biases_[l]);
    at::Tensor c = initial.c.empty() ? at::zeros({batch, hidden}, inputs.options()) : initial.c[l];
    at::Tensor h = initial.h.empty() ? at::zeros({batch, hidden}, inputs.options()) : initial.h[l];
    std::vector<at::Tensor> outputs;
    outputs.reserve(inputs.size(0));
    for (int64_t t = 0; t < inputs.size(0); ++t) {
      const at::Tensor gates = at::addmm(projection[t], h, w_h);
      const auto ifog = gates.chunk(4, 1);
      c = at::sigmoid(ifog[0]) * at::tanh(ifog[3]) + at::sigmoid(ifog[1]) * c;
      h = at::sigmoid(ifog[2]) * at::tanh(c);
      outputs.push_back(h);
    }
    result.final_state.c[l] = c;
    result.final_state.h[l] = h;
    layer_input = at::stack(outputs);
  }
  if (want_outputs) result.outputs = layer_input;
  return result;
}

}  // namespace lstmserve::core
