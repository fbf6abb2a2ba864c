// CUDA kernels for kdkit::hamming_distance, hamming_topk and hamming_average_precision.
//
// Codes are packed uint8 rows (faiss layout). The distance of a query to a
// database code is popcount(q XOR d) summed over the row, an integer in
// [0, 8 * B]. Rows are read as 64-bit words when the width and the pointers
// allow it (with the word count as a template parameter for the common widths,
// so the query lives in registers), else as 32-bit words, else as bytes.
//
// hamming_topk never materialises the Q x N distance matrix. Per query it runs
// a threshold selection over the integer distances:
//   pass 1  histogram of distances over the database        -> hist (Qc, L+1)
//   thresh  d* with count(< d*) < k <= count(<= d*)          -> thr, need
//   pass 2  every code with dist < d* goes to the key buffer (at most k-1 of
//           them, slot by atomic counter: the *set* is deterministic), and each
//           block counts its ties (dist == d*)                -> ties (Qc, nblk)
//   scan    inclusive prefix sum of ties over blocks (index order)
//   pass 3  blocks whose tie prefix is below `need` rank their ties in index
//           order (warp ballots + block prefix) and store the lowest-index ones
//   sort    the k keys (dist << 32 | idx) of each row: unique keys, so the
//           (distance, index) order is total and the result deterministic,
//           identical to the CPU op for any launch configuration.
// Queries are processed in chunks so temporaries stay bounded.
//
// hamming_average_precision: one block per query, no (Q, N) matrix and no sort; see
// average_precision_kernel in hamming_kernels.cuh.

#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include "../ap_args.h"
#include "../check.h"
#include "hamming_kernels.cuh"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace kdkit {
namespace {

using namespace hamming_detail;  // NOLINT: kernels and constants of this op

// ------------------------------------------------------------ host side

void check_codes(const char* op, const at::Tensor& t, const char* name) {
  KDKIT_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  KDKIT_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got device ",
              t.device());
  KDKIT_CHECK(t.scalar_type() == at::kByte, op, ": ", name,
              " must be uint8 packed codes, got dtype ", t.scalar_type());
  KDKIT_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (num_codes, code_bytes), got ",
              t.dim(), "-D tensor of shape ", t.sizes());
}

// As on CPU: query_codes may have zero rows (empty result); db_codes may not.
void check_pair(const char* op, const at::Tensor& query_codes, const at::Tensor& db_codes) {
  KDKIT_CHECK(query_codes.device() == db_codes.device(), op,
              ": query_codes and db_codes must be on the same device, got query_codes on ",
              query_codes.device(), " and db_codes on ", db_codes.device());
  check_codes(op, query_codes, "query_codes");
  check_codes(op, db_codes, "db_codes");
  KDKIT_CHECK(query_codes.size(1) == db_codes.size(1), op,
              ": code widths differ: query_codes has ", query_codes.size(1),
              " bytes per code, db_codes has ", db_codes.size(1));
  KDKIT_CHECK(query_codes.size(1) > 0, op, ": codes must have at least one byte");
  KDKIT_CHECK(db_codes.size(0) > 0, op, ": db_codes is empty");
  KDKIT_CHECK(query_codes.size(1) <= (std::numeric_limits<int32_t>::max() - 1) / 8, op,
              ": codes are too wide: ", query_codes.size(1), " bytes");
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

at::Tensor hamming_distance_cuda(const at::Tensor& query_codes, const at::Tensor& db_codes) {
  check_pair("hamming_distance", query_codes, db_codes);
  const c10::cuda::CUDAGuard guard(query_codes.device());
  const at::Tensor qc = query_codes.contiguous();
  const at::Tensor dc = db_codes.contiguous();
  const int64_t nq = qc.size(0);
  const int64_t n = dc.size(0);
  const int64_t bytes = qc.size(1);
  at::Tensor out = at::empty({nq, n}, qc.options().dtype(at::kInt));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t nblk = ceil_div(n, kChunk);
  dispatch_word(bytes, qc.data_ptr(), dc.data_ptr(), [&](auto tag) {
    using Tag = decltype(tag);
    using W = typename Tag::word;
    const int64_t nw = bytes / static_cast<int64_t>(sizeof(W));
    const W* qp = static_cast<const W*>(qc.data_ptr());
    const W* dp = static_cast<const W*>(dc.data_ptr());
    for (int64_t q0 = 0; q0 < nq; q0 += kMaxGridY) {
      const int64_t rows = std::min(kMaxGridY, nq - q0);
      const dim3 grid(static_cast<unsigned>(nblk), static_cast<unsigned>(rows));
      hamming_distance_kernel<W, Tag::nw><<<grid, kThreads, 0, stream>>>(
          qp, dp, out.data_ptr<int32_t>(), q0, n, nw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& query_codes,
                                                     const at::Tensor& db_codes, int64_t k) {
  check_pair("hamming_topk", query_codes, db_codes);
  const int64_t nq = query_codes.size(0);
  const int64_t n = db_codes.size(0);
  KDKIT_CHECK(k >= 1 && k <= n, "hamming_topk: k=", k, " out of range; expected 1 <= k <= ", n,
              " (the number of db_codes)");
  KDKIT_CHECK(n <= std::numeric_limits<int32_t>::max(),
              "hamming_topk: on CUDA at most 2^31 - 1 db_codes are supported, got ", n);
  const c10::cuda::CUDAGuard guard(query_codes.device());
  const at::Tensor qc = query_codes.contiguous();
  const at::Tensor dc = db_codes.contiguous();
  const int64_t bytes = qc.size(1);
  const int nbins = static_cast<int>(8 * bytes + 1);
  const int64_t nblk = ceil_div(n, kChunk);
  KDKIT_CHECK(nblk <= std::numeric_limits<int32_t>::max(), "too many db_codes");

  at::Tensor out_dist = at::empty({nq, k}, qc.options().dtype(at::kInt));
  at::Tensor out_idx = at::empty({nq, k}, qc.options().dtype(at::kLong));
  if (nq == 0) return std::make_tuple(out_dist, out_idx);

  // Query chunk: temporaries (histogram, tie counts + prefix, keys, sort output)
  // within the budget, at least one query, at most the grid's y limit.
  const int64_t per_query = 4 * nbins + 8 * nblk + 8 * 2 * k + 3 * 4 + 8 * 2 * k /*sort*/;
  const int64_t chunk = std::max<int64_t>(
      1, std::min<int64_t>({kMaxGridY, nq, kTempBudgetBytes / per_query}));

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto iopt = qc.options().dtype(at::kInt);
  const bool shared_hist = nbins <= kMaxSharedBins;

  dispatch_word(bytes, qc.data_ptr(), dc.data_ptr(), [&](auto tag) {
    using Tag = decltype(tag);
    using W = typename Tag::word;
    constexpr int NW = Tag::nw;
    const int64_t nw = bytes / static_cast<int64_t>(sizeof(W));
    const W* qp = static_cast<const W*>(qc.data_ptr());
    const W* dp = static_cast<const W*>(dc.data_ptr());

    for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
      const int64_t rows = std::min(chunk, nq - q0);
      const dim3 grid(static_cast<unsigned>(nblk), static_cast<unsigned>(rows));

      at::Tensor hist = at::zeros({rows, nbins}, iopt);
      at::Tensor thr = at::empty({rows}, iopt);
      at::Tensor need = at::empty({rows}, iopt);
      at::Tensor less_count = at::zeros({rows}, iopt);
      at::Tensor ties = at::empty({rows, nblk}, iopt);
      at::Tensor keys = at::empty({rows, k}, qc.options().dtype(at::kLong));

      // pass 1: histogram of distances
      if (shared_hist) {
        topk_histogram_kernel<W, NW, true>
            <<<grid, kThreads, nbins * sizeof(int32_t), stream>>>(
                qp, dp, hist.data_ptr<int32_t>(), q0, n, nw, nbins);
      } else {
        topk_histogram_kernel<W, NW, false><<<grid, kThreads, 0, stream>>>(
            qp, dp, hist.data_ptr<int32_t>(), q0, n, nw, nbins);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // threshold distance d* and the number of ties to take at d*
      topk_threshold_kernel<<<static_cast<unsigned>(ceil_div(rows, 128)), 128, 0, stream>>>(
          hist.data_ptr<int32_t>(), rows, nbins, static_cast<int32_t>(k),
          thr.data_ptr<int32_t>(), need.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // pass 2: codes below d*, tie counts per block
      topk_collect_less_kernel<W, NW><<<grid, kThreads, 0, stream>>>(
          qp, dp, thr.data_ptr<int32_t>(), less_count.data_ptr<int32_t>(),
          ties.data_ptr<int32_t>(), keys.data_ptr<int64_t>(), q0, n, nw, k, nblk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // tie prefix over blocks, in index order
      const at::Tensor ties_incl = at::cumsum(ties, /*dim=*/1, at::kInt);

      // pass 3: lowest-index ties at d*
      topk_collect_ties_kernel<W, NW><<<grid, kThreads, 0, stream>>>(
          qp, dp, thr.data_ptr<int32_t>(), need.data_ptr<int32_t>(),
          ties.data_ptr<int32_t>(), ties_incl.data_ptr<int32_t>(), keys.data_ptr<int64_t>(),
          q0, n, nw, k, nblk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // order each row by (distance, index): keys are unique
      const at::Tensor sorted = std::get<0>(at::sort(keys, /*dim=*/1));
      const int64_t count = rows * k;
      topk_decode_kernel<<<static_cast<unsigned>(ceil_div(count, 256)), 256, 0, stream>>>(
          sorted.data_ptr<int64_t>(), count, out_dist.data_ptr<int32_t>() + q0 * k,
          out_idx.data_ptr<int64_t>() + q0 * k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return std::make_tuple(out_dist, out_idx);
}

at::Tensor hamming_average_precision_cuda(const at::Tensor& query_codes, const at::Tensor& db_codes,
                                          const at::Tensor& query_labels,
                                          const at::Tensor& db_labels, int64_t k,
                                          c10::string_view variant) {
  const char* op = "hamming_average_precision";
  check_pair(op, query_codes, db_codes);
  KDKIT_CHECK(query_labels.device() == query_codes.device() && db_labels.device() == query_codes.device(),
              op, ": labels must be on the codes' device ", query_codes.device(), ", got ",
              query_labels.device(), " and ", db_labels.device());
  const ApCut cut = check_ap_arguments(op, query_codes, db_codes, query_labels, db_labels, k, variant);
  const int64_t nq = query_codes.size(0), n = db_codes.size(0), bytes = query_codes.size(1);
  const c10::cuda::CUDAGuard guard(query_codes.device());
  const at::Tensor qc = query_codes.contiguous(), dc = db_codes.contiguous();
  const at::Tensor ql = query_labels.contiguous(), dl = db_labels.contiguous();
  at::Tensor out = at::empty({nq}, qc.options().dtype(at::kDouble));
  if (nq == 0) return out;

  const int nbins = static_cast<int>(8 * bytes + 1);
  const int64_t count_bytes = int64_t(2) * kApRows * nbins * sizeof(int32_t);
  const bool in_shared = count_bytes <= kApMaxSharedBytes;
  // Wide codes: the counts go to global memory, a bounded number of queries at a time.
  const int64_t chunk = in_shared ? nq
                                  : std::max<int64_t>(1, std::min<int64_t>(
                                                             nq, kTempBudgetBytes / count_bytes));
  at::Tensor scratch;
  if (!in_shared) scratch = at::empty({chunk * count_bytes / 4}, qc.options().dtype(at::kInt));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const u64* qlp = reinterpret_cast<const u64*>(ql.data_ptr<int64_t>());
  const u64* dlp = reinterpret_cast<const u64*>(dl.data_ptr<int64_t>());
  const int64_t wlab = ql.size(1);
  dispatch_word(bytes, qc.data_ptr(), dc.data_ptr(), [&](auto tag) {
    using Tag = decltype(tag);
    using W = typename Tag::word;
    const int64_t nw = bytes / static_cast<int64_t>(sizeof(W));
    const W* qp = static_cast<const W*>(qc.data_ptr());
    const W* dp = static_cast<const W*>(dc.data_ptr());
    for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
      const int64_t rows = std::min(chunk, nq - q0);
      average_precision_kernel<W, Tag::nw>
          <<<static_cast<unsigned>(rows), kApThreads, in_shared ? count_bytes : 0, stream>>>(
              qp, dp, qlp, dlp, in_shared ? nullptr : scratch.data_ptr<int32_t>(),
              out.data_ptr<double>(), q0, n, nw, wlab, nbins, k, cut);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkit, CUDA, m) {
  m.impl("hamming_distance", &hamming_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
  m.impl("hamming_average_precision", &hamming_average_precision_cuda);
}

}  // namespace kdkit
