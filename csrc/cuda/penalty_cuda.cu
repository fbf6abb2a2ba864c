// CUDA kernels for kdkit::binarization_penalty and its backward.
//
// Forward, one fused pass over h: per element e = h - sgn(h) (sgn(0) = +1),
// loss term e^2 and gradient factor 2 e * scale (scale = 1/numel for mean, 1
// otherwise). Reductions accumulate in at::opmath_type (float for
// float/half/bfloat16, double for double) in a fixed-size grid whose per-block
// partial sums are then added by a single block in a fixed order, so the loss
// is deterministic (no float atomics). No host synchronisation anywhere.

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include "../check.h"
#include "penalty_kernels.cuh"

#include <algorithm>
#include <cstdint>

namespace kdkit {
namespace {

using namespace penalty_detail;  // NOLINT: kernels and constants of this op

inline int64_t num_blocks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads));
}

void check_reduction(const char* op, int64_t reduction) {
  KDKIT_CHECK(reduction == kNone || reduction == kMean || reduction == kSum, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

void check_float(const char* op, const at::Tensor& t, const char* name) {
  KDKIT_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  KDKIT_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got device ",
              t.device());
  const auto st = t.scalar_type();
  KDKIT_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              op, ": ", name, " must be float32, float16, bfloat16 or float64 on CUDA, got dtype ",
              st);
}

std::tuple<at::Tensor, at::Tensor> binarization_penalty_cuda(const at::Tensor& h,
                                                             int64_t reduction) {
  check_reduction("binarization_penalty", reduction);
  check_float("binarization_penalty", h, "h");
  // Empty h (as on CPU): 'none' -> empty, 'sum' -> 0, 'mean' -> NaN (0 / 0 in the finalize).
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor hc = h.contiguous();
  const int64_t n = hc.numel();
  at::Tensor grad_factor = at::empty(hc.sizes(), hc.options());
  at::Tensor loss = reduction == kNone ? at::empty(hc.sizes(), hc.options())
                                       : at::empty({}, hc.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = num_blocks(n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hc.scalar_type(),
                                  "binarization_penalty_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_factor.mutable_data_ptr<scalar_t>();
    if (reduction == kNone) {
      penalty_forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          hp, loss.mutable_data_ptr<scalar_t>(), gp, nullptr, n, acc_t(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const acc_t scale = reduction == kMean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
      const acc_t divisor = reduction == kMean ? static_cast<acc_t>(n) : acc_t(1);
      const auto acc_dtype = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
      at::Tensor partial = at::empty({blocks}, hc.options().dtype(acc_dtype));
      acc_t* pp = static_cast<acc_t*>(partial.data_ptr());
      penalty_forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          hp, nullptr, gp, pp, n, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      penalty_finalize_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
          pp, blocks, loss.mutable_data_ptr<scalar_t>(), divisor);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return std::make_tuple(loss, grad_factor);
}

at::Tensor binarization_penalty_backward_cuda(const at::Tensor& grad_output,
                                              const at::Tensor& grad_factor,
                                              int64_t reduction) {
  constexpr const char* op = "binarization_penalty_backward";
  check_reduction(op, reduction);
  check_float(op, grad_factor, "grad_factor");
  KDKIT_CHECK(grad_output.defined(), op, ": grad_output must be a defined tensor");
  KDKIT_CHECK(grad_output.device() == grad_factor.device(), op,
              ": grad_output and grad_factor must be on the same device, got grad_output on ",
              grad_output.device(), " and grad_factor on ", grad_factor.device());
  KDKIT_CHECK(at::isFloatingType(grad_output.scalar_type()), op,
              ": grad_output must be a floating point tensor, got dtype ",
              grad_output.scalar_type());
  if (reduction == kNone) {
    KDKIT_CHECK(grad_output.sizes() == grad_factor.sizes(), op,
                ": grad_output must have the shape of grad_factor for reduction 'none', got ",
                grad_output.sizes(), " and ", grad_factor.sizes());
  } else {
    KDKIT_CHECK(grad_output.numel() == 1, op,
                ": grad_output must hold a single value for reduction 'mean'/'sum', got shape ",
                grad_output.sizes());
  }
  const c10::cuda::CUDAGuard guard(grad_factor.device());
  const at::Tensor gf = grad_factor.contiguous();
  // No host sync: a scalar grad_output stays on the device and is read by the kernel.
  const at::Tensor go = grad_output.to(gf.scalar_type()).contiguous();
  at::Tensor out = at::empty(gf.sizes(), gf.options());
  const int64_t n = gf.numel();
  if (n == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(int64_t(1) << 20, (n + kThreads - 1) / kThreads));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gf.scalar_type(),
                                  "binarization_penalty_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    penalty_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), reduction != kNone, gf.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkit, CUDA, m) {
  m.impl("binarization_penalty", &binarization_penalty_cuda);
  m.impl("binarization_penalty_backward", &binarization_penalty_backward_cuda);
}

}  // namespace kdkit
