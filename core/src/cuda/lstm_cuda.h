// CUDA kernels behind StackedLstm's GPU path. Internal to the core; compiled by nvcc only in
// builds whose LibTorch has CUDA (LSTMSERVE_WITH_CUDA). Plain C++ interface: raw device
// pointers, an element type, a stream. No LibTorch header, so nvcc compiles this file alone.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace lstmserve::core::cuda {

// Element type of parameters, inputs and h. The cell state c is always float32.
enum class Elem { kFloat32, kFloat16, kBFloat16 };

// The LSTM cell's elementwise part after the GEMMs, for `rows` rows of hidden size `hidden`:
//   pre = proj[r, :] + (rec ? rec[r, :] : 0)   (blocks i, f, o, g of width `hidden`,
//                                               summed in float32)
//   c[r, j] = sigmoid(i) * tanh(g) + sigmoid(f) * (c_is_zero ? 0 : c[r, j])
//   h_out[r, j] = sigmoid(o) * tanh(c[r, j])
// proj and rec are [rows, 4 * hidden] (row stride 4 * hidden), c is float32 [rows, hidden],
// h_out is [rows, hidden]. proj, rec and h_out have element type `elem`.
cudaError_t LstmGates(Elem elem, const void* proj, const void* rec, float* c, bool c_is_zero, void* h_out, int64_t rows,
                      int64_t hidden, cudaStream_t stream);

// One layer of one step for a small batch, fused: the GEMV [x, h_prev] @ w, the bias and the
// cell math in one kernel that reads w once (the step is bound by the weights' bytes).
//   x [rows, in], h_prev [rows, hidden] (nullptr: zeros), w [in + hidden, 4 * hidden]
//   row-major, bias [4 * hidden] or nullptr, c float32 [rows, hidden] (read unless
//   c_is_zero, then written), h_out [rows, hidden]. Element type `elem` for all but c.
// `rows` <= kFusedMaxRows. `partials` is float32 scratch of FusedStepScratchFloats() and
// `counters` int32 scratch of FusedStepCounters(), zeroed before the first launch; the kernel
// leaves them zero again, so one zeroing serves every launch on the same stream.
constexpr int kFusedMaxRows = 8;
int64_t FusedStepScratchFloats(int64_t in, int64_t hidden, int64_t rows, int sm_count);
int64_t FusedStepCounters(int64_t hidden);
cudaError_t FusedLstmStep(Elem elem, const void* x, int64_t in, const void* h_prev, int64_t hidden, const void* w,
                          const void* bias, float* c, bool c_is_zero, void* h_out, int64_t rows, float* partials,
                          int* counters, int sm_count, cudaStream_t stream);

}  // namespace lstmserve::core::cuda
