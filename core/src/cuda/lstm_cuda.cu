// CUDA kernels of the core's GPU path; see lstm_cuda.h.
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lstm_cuda.h"

namespace lstmserve::core::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float Load(const T* p);
template <>
__device__ __forceinline__ float Load<float>(const float* p) {
  return *p;
}
template <>
__device__ __forceinline__ float Load<__half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float Load<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T>
__device__ __forceinline__ void Store(T* p, float v);
template <>
__device__ __forceinline__ void Store<float>(float* p, float v) {
  *p = v;
}
template <>
__device__ __forceinline__ void Store<__half>(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void Store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// Accurate float32 functions (not the fast intrinsics): the GPU path answers to the same
// 1e-5 bound against the reference as the CPU paths.
__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// pre[g] for gates i, f, o, g -> new c (returned) and h.
__device__ __forceinline__ float Cell(const float pre[4], float c_prev, float* h) {
  const float c = Sigmoid(pre[0]) * tanhf(pre[3]) + Sigmoid(pre[1]) * c_prev;
  *h = Sigmoid(pre[2]) * tanhf(c);
  return c;
}

template <typename T>
__global__ void GatesKernel(const T* proj, const T* rec, float* c, bool c_is_zero, T* h_out, int64_t rows,
                            int64_t hidden) {
  const int64_t n = rows * hidden;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / hidden, j = e - r * hidden;
    float pre[4];
    for (int g = 0; g < 4; ++g) {
      const int64_t at = r * 4 * hidden + g * hidden + j;
      pre[g] = Load(proj + at) + (rec != nullptr ? Load(rec + at) : 0.0f);
    }
    float h;
    c[e] = Cell(pre, c_is_zero ? 0.0f : c[e], &h);
    Store(h_out + e, h);
  }
}

constexpr int kTile = 32;             // hidden units per block (one per lane: coalesced weight rows)
constexpr int kWarps = 8;             // warps per block, each a slice of the K rows
constexpr int kMinRowsPerBlock = 64;  // fewest K rows a block takes when K is split

// Blocks along K: enough blocks in all for about two per SM, each with >= 64 rows of K.
int KBlocks(int64_t k, int64_t hidden, int sm_count) {
  const int64_t tiles = (hidden + kTile - 1) / kTile;
  const int64_t want = std::max<int64_t>(1, (2 * static_cast<int64_t>(std::max(sm_count, 1)) + tiles - 1) / tiles);
  const int64_t most = std::max<int64_t>(1, k / kMinRowsPerBlock);
  return static_cast<int>(std::min(want, most));
}

// Grid (tiles, k_blocks), block (32, kWarps). Lane tx owns hidden unit j of the tile; warp ty
// sums rows k = k0 + ty, k0 + ty + kWarps, ... of its block's K range for every batch row and
// gate. The warps' sums meet in shared memory; with several K blocks, each block leaves its
// sums in `partials`, and the last block of a tile to finish (counted in `counters`) adds
// them up and applies the cell.
template <typename T, int kRows>
__global__ void __launch_bounds__(kTile* kWarps)
    FusedStepKernel(const T* __restrict__ x, int64_t in, const T* __restrict__ h_prev, int64_t hidden,
                    const T* __restrict__ w, const T* __restrict__ bias, float* __restrict__ c, bool c_is_zero,
                    T* __restrict__ h_out, int rows, float* __restrict__ partials, int* __restrict__ counters) {
  __shared__ float sums[kWarps][kRows * 4][kTile];
  __shared__ bool last;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  const bool valid = j < hidden;
  const int64_t k_total = h_prev != nullptr ? in + hidden : in;  // zero state: skip its rows
  const int64_t k_chunk = (k_total + gridDim.y - 1) / gridDim.y;
  const int64_t k0 = blockIdx.y * k_chunk, k1 = min(k_total, k0 + k_chunk);
  const int64_t ldw = 4 * hidden;

  float acc[kRows][4];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int g = 0; g < 4; ++g) acc[r][g] = 0.0f;
  if (valid) {
    for (int64_t k = k0 + ty; k < k1; k += kWarps) {
      const T* wr = w + k * ldw + j;
      const float w0 = Load(wr), w1 = Load(wr + hidden), w2 = Load(wr + 2 * hidden), w3 = Load(wr + 3 * hidden);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        const float a = k < in ? Load(x + r * in + k) : Load(h_prev + r * hidden + (k - in));
        acc[r][0] = fmaf(a, w0, acc[r][0]);
        acc[r][1] = fmaf(a, w1, acc[r][1]);
        acc[r][2] = fmaf(a, w2, acc[r][2]);
        acc[r][3] = fmaf(a, w3, acc[r][3]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int g = 0; g < 4; ++g) sums[ty][r * 4 + g][tx] = acc[r][g];
  __syncthreads();
  // Sum the warps' slices: output o = (r * 4 + g) * 32 + lane, spread over the block.
  const int tid = ty * kTile + tx;
  for (int o = tid; o < kRows * 4 * kTile; o += kTile * kWarps) {
    const int rg = o / kTile, lane = o % kTile;
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) s += sums[v][rg][lane];
    sums[0][rg][lane] = s;  // each (rg, lane) is read and written by this thread alone
  }
  __syncthreads();

  if (gridDim.y > 1) {
    // Leave this block's sums; the last block of the tile adds them up.
    const int64_t slice = static_cast<int64_t>(rows) * 4 * hidden;
    for (int o = tid; o < rows * 4 * kTile; o += kTile * kWarps) {
      const int rg = o / kTile, lane = o % kTile;
      const int64_t jj = static_cast<int64_t>(blockIdx.x) * kTile + lane;
      if (jj < hidden) partials[blockIdx.y * slice + rg * hidden + jj] = sums[0][rg][lane];
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&counters[blockIdx.x], 1) == static_cast<int>(gridDim.y) - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int o = tid; o < rows * 4 * kTile; o += kTile * kWarps) {
      const int rg = o / kTile, lane = o % kTile;
      const int64_t jj = static_cast<int64_t>(blockIdx.x) * kTile + lane;
      float s = 0.0f;
      if (jj < hidden) {
        for (unsigned b = 0; b < gridDim.y; ++b) s += __ldcg(partials + b * slice + rg * hidden + jj);
      }
      sums[0][rg][lane] = s;
    }
    if (tid == 0) counters[blockIdx.x] = 0;  // ready for the next launch on this stream
    __syncthreads();
  }

  // The cell, one (row, unit) per thread.
  for (int o = tid; o < rows * kTile; o += kTile * kWarps) {
    const int r = o / kTile, lane = o % kTile;
    const int64_t jj = static_cast<int64_t>(blockIdx.x) * kTile + lane;
    if (jj >= hidden) continue;
    float pre[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      pre[g] = sums[0][r * 4 + g][lane] + (bias != nullptr ? Load(bias + g * hidden + jj) : 0.0f);
    }
    const int64_t e = r * hidden + jj;
    float h;
    c[e] = Cell(pre, c_is_zero ? 0.0f : c[e], &h);
    Store(h_out + e, h);
  }
}

template <typename T>
cudaError_t LaunchGates(const void* proj, const void* rec, float* c, bool c_is_zero, void* h_out, int64_t rows,
                        int64_t hidden, cudaStream_t stream) {
  const int64_t n = rows * hidden;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  GatesKernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(proj), static_cast<const T*>(rec), c, c_is_zero,
                                                  static_cast<T*>(h_out), rows, hidden);
  return cudaGetLastError();
}

template <typename T, int kRows>
cudaError_t LaunchFusedRows(const void* x, int64_t in, const void* h_prev, int64_t hidden, const void* w,
                            const void* bias, float* c, bool c_is_zero, void* h_out, int64_t rows, float* partials,
                            int* counters, int sm_count, cudaStream_t stream) {
  const int64_t k = h_prev != nullptr ? in + hidden : in;
  const dim3 grid(static_cast<unsigned>((hidden + kTile - 1) / kTile),
                  static_cast<unsigned>(KBlocks(k, hidden, sm_count)));
  const dim3 block(kTile, kWarps);
  FusedStepKernel<T, kRows><<<grid, block, 0, stream>>>(
      static_cast<const T*>(x), in, static_cast<const T*>(h_prev), hidden, static_cast<const T*>(w),
      static_cast<const T*>(bias), c, c_is_zero, static_cast<T*>(h_out), static_cast<int>(rows), partials, counters);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchFused(const void* x, int64_t in, const void* h_prev, int64_t hidden, const void* w, const void* bias,
                        float* c, bool c_is_zero, void* h_out, int64_t rows, float* partials, int* counters,
                        int sm_count, cudaStream_t stream) {
  if (rows <= 1)
    return LaunchFusedRows<T, 1>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters,
                                 sm_count, stream);
  if (rows <= 2)
    return LaunchFusedRows<T, 2>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters,
                                 sm_count, stream);
  if (rows <= 4)
    return LaunchFusedRows<T, 4>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters,
                                 sm_count, stream);
  return LaunchFusedRows<T, 8>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters, sm_count,
                               stream);
}

}  // namespace

cudaError_t LstmGates(Elem elem, const void* proj, const void* rec, float* c, bool c_is_zero, void* h_out, int64_t rows,
                      int64_t hidden, cudaStream_t stream) {
  switch (elem) {
    case Elem::kFloat32: return LaunchGates<float>(proj, rec, c, c_is_zero, h_out, rows, hidden, stream);
    case Elem::kFloat16: return LaunchGates<__half>(proj, rec, c, c_is_zero, h_out, rows, hidden, stream);
    case Elem::kBFloat16: return LaunchGates<__nv_bfloat16>(proj, rec, c, c_is_zero, h_out, rows, hidden, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t FusedStepScratchFloats(int64_t in, int64_t hidden, int64_t rows, int sm_count) {
  return static_cast<int64_t>(KBlocks(in + hidden, hidden, sm_count)) * rows * 4 * hidden;
}

int64_t FusedStepCounters(int64_t hidden) { return (hidden + kTile - 1) / kTile; }

cudaError_t FusedLstmStep(Elem elem, const void* x, int64_t in, const void* h_prev, int64_t hidden, const void* w,
                          const void* bias, float* c, bool c_is_zero, void* h_out, int64_t rows, float* partials,
                          int* counters, int sm_count, cudaStream_t stream) {
  if (rows < 1 || rows > kFusedMaxRows) return cudaErrorInvalidValue;
  switch (elem) {
    case Elem::kFloat32:
      return LaunchFused<float>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters, sm_count,
                                stream);
    case Elem::kFloat16:
      return LaunchFused<__half>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters,
                                 sm_count, stream);
    case Elem::kBFloat16:
      return LaunchFused<__nv_bfloat16>(x, in, h_prev, hidden, w, bias, c, c_is_zero, h_out, rows, partials, counters,
                                        sm_count, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lstmserve::core::cuda
