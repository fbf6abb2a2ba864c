// Device code of kdkit's binarization-penalty CUDA ops (included by penalty_cuda.cu only).
//
// Kept apart from the host code so that the kernels can also be compiled by a
// host C++ compiler against a small CUDA emulation for logic tests on machines
// without a GPU.
#pragma once

#include <cstdint>

namespace kdkit {
namespace penalty_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 2048;  // fixed cap: partial-sum layout depends on numel only
constexpr int kUnroll = 4;            // independent loads per thread per loop step

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

template <typename acc_t>
__device__ __forceinline__ acc_t block_reduce_sum(acc_t v, acc_t* sh) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += sh[w];
  }
  return total;  // valid in thread 0
}

// loss_elem != nullptr: reduction "none" (elementwise loss), no partial sums.
// partial != nullptr: one partial sum per block.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_forward_kernel(const scalar_t* __restrict__ h, scalar_t* __restrict__ loss_elem,
                       scalar_t* __restrict__ grad, acc_t* __restrict__ partial, int64_t n,
                       acc_t grad_scale) {
  __shared__ acc_t sh[kWarps];
  acc_t sum = acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  auto one = [&](int64_t i, acc_t x) {
    const acc_t e = x - (x >= acc_t(0) ? acc_t(1) : acc_t(-1));
    const acc_t sq = e * e;
    if (loss_elem != nullptr) {
      loss_elem[i] = static_cast<scalar_t>(sq);
    } else {
      sum += sq;
    }
    grad[i] = static_cast<scalar_t>(acc_t(2) * e * grad_scale);
  };
  int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  // kUnroll loads in flight per thread (one alone leaves the memory system idle); the
  // elements are still summed in the order of the plain grid-stride loop.
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    acc_t x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) x[u] = static_cast<acc_t>(h[i + u * stride]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) one(i + u * stride, x[u]);
  }
  for (; i < n; i += stride) one(i, static_cast<acc_t>(h[i]));
  if (partial != nullptr) {
    const acc_t total = block_reduce_sum<acc_t>(sum, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_finalize_kernel(const acc_t* __restrict__ partial, int64_t nparts,
                        scalar_t* __restrict__ loss, acc_t divisor) {
  __shared__ acc_t sh[kWarps];
  acc_t sum = acc_t(0);
  for (int64_t i = threadIdx.x; i < nparts; i += kThreads) sum += partial[i];
  const acc_t total = block_reduce_sum<acc_t>(sum, sh);
  if (threadIdx.x == 0) loss[0] = static_cast<scalar_t>(total / divisor);
}

// go_scalar: grad_output holds one value (mean/sum), else elementwise (none).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_backward_kernel(const scalar_t* __restrict__ grad_output, bool go_scalar,
                        const scalar_t* __restrict__ grad_factor, scalar_t* __restrict__ out,
                        int64_t n) {
  const acc_t g0 = go_scalar ? static_cast<acc_t>(grad_output[0]) : acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    acc_t f[kUnroll], g[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      f[u] = static_cast<acc_t>(grad_factor[i + u * stride]);
      g[u] = go_scalar ? g0 : static_cast<acc_t>(grad_output[i + u * stride]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) out[i + u * stride] = static_cast<scalar_t>(g[u] * f[u]);
  }
  for (; i < n; i += stride) {
    const acc_t g = go_scalar ? g0 : static_cast<acc_t>(grad_output[i]);
    out[i] = static_cast<scalar_t>(g * static_cast<acc_t>(grad_factor[i]));
  }
}

}  // namespace penalty_detail
}  // namespace kdkit
