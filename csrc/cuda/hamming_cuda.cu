// CUDA kernels for kdkit::hamming_distance and kdkit::hamming_topk.
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

#include <algorithm>
#include <cstdint>
#include <limits>

namespace kdkit {
namespace {

using u64 = unsigned long long;
using u32 = unsigned int;
using u8 = unsigned char;

constexpr int kThreads = 256;                    // threads per block
constexpr int kItemsPerThread = 16;              // database codes per thread
constexpr int kChunk = kThreads * kItemsPerThread;  // database codes per block
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedBins = 12288;            // 48 KiB of int32 bins
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kTempBudgetBytes = int64_t(256) << 20;  // per query chunk

// ---------------------------------------------------------------- popcount
__device__ __forceinline__ int popc(u64 x) { return __popcll(x); }
__device__ __forceinline__ int popc(u32 x) { return __popc(x); }
__device__ __forceinline__ int popc(u8 x) { return __popc(static_cast<u32>(x)); }

// A query row held in registers (NW > 0 words known at compile time) ...
template <typename W, int NW>
struct QueryCode {
  W w[NW];
  __device__ __forceinline__ void load(const W* __restrict__ q, int64_t /*nw*/) {
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = q[i];
  }
  __device__ __forceinline__ int dist(const W* __restrict__ d, int64_t /*nw*/) const {
    int s = 0;
#pragma unroll
    for (int i = 0; i < NW; ++i) s += popc(static_cast<W>(w[i] ^ d[i]));
    return s;
  }
};

// ... or read through the cache (runtime word count).
template <typename W>
struct QueryCode<W, 0> {
  const W* __restrict__ q;
  __device__ __forceinline__ void load(const W* __restrict__ p, int64_t /*nw*/) { q = p; }
  __device__ __forceinline__ int dist(const W* __restrict__ d, int64_t nw) const {
    int s = 0;
    for (int64_t i = 0; i < nw; ++i) s += popc(static_cast<W>(q[i] ^ d[i]));
    return s;
  }
};

template <typename W, int NW>
struct WordTag {
  using word = W;
  static constexpr int nw = NW;
};

// Calls fn(WordTag<W, NW>{}) for the widest word type the rows allow.
template <typename Fn>
void dispatch_word(int64_t bytes, const void* a, const void* b, Fn&& fn) {
  const auto pa = reinterpret_cast<uintptr_t>(a);
  const auto pb = reinterpret_cast<uintptr_t>(b);
  if (bytes % 8 == 0 && pa % 8 == 0 && pb % 8 == 0) {
    switch (bytes / 8) {
      case 1: fn(WordTag<u64, 1>{}); return;
      case 2: fn(WordTag<u64, 2>{}); return;
      case 4: fn(WordTag<u64, 4>{}); return;
      case 8: fn(WordTag<u64, 8>{}); return;
      case 16: fn(WordTag<u64, 16>{}); return;
      default: fn(WordTag<u64, 0>{}); return;
    }
  }
  if (bytes % 4 == 0 && pa % 4 == 0 && pb % 4 == 0) {
    fn(WordTag<u32, 0>{});
    return;
  }
  fn(WordTag<u8, 0>{});
}

__device__ __forceinline__ int64_t make_key(int d, int64_t idx) {
  return (static_cast<int64_t>(d) << 32) | idx;
}

// ------------------------------------------------------------ kernels
// Grid: x = database chunk of kChunk codes, y = query row within the chunk.

template <typename W, int NW>
__global__ void __launch_bounds__(kThreads)
hamming_distance_kernel(const W* __restrict__ q, const W* __restrict__ db,
                        int32_t* __restrict__ out, int64_t q0, int64_t n, int64_t nw) {
  const int64_t qi = q0 + blockIdx.y;
  QueryCode<W, NW> qc;
  qc.load(q + qi * nw, nw);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  int32_t* __restrict__ row = out + qi * n;
#pragma unroll 4
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t j = base + static_cast<int64_t>(it) * kThreads;
    if (j < n) row[j] = qc.dist(db + j * nw, nw);
  }
}

template <typename W, int NW, bool kShared>
__global__ void __launch_bounds__(kThreads)
topk_histogram_kernel(const W* __restrict__ q, const W* __restrict__ db,
                      int32_t* __restrict__ hist, int64_t q0, int64_t n, int64_t nw,
                      int nbins) {
  extern __shared__ int32_t sh_hist[];
  const int64_t r = blockIdx.y;
  QueryCode<W, NW> qc;
  qc.load(q + (q0 + r) * nw, nw);
  int32_t* __restrict__ ghist = hist + r * nbins;
  if (kShared) {
    for (int b = threadIdx.x; b < nbins; b += kThreads) sh_hist[b] = 0;
    __syncthreads();
  }
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
#pragma unroll 4
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t j = base + static_cast<int64_t>(it) * kThreads;
    if (j < n) {
      const int d = qc.dist(db + j * nw, nw);
      if (kShared) {
        atomicAdd(&sh_hist[d], 1);
      } else {
        atomicAdd(&ghist[d], 1);
      }
    }
  }
  if (kShared) {
    __syncthreads();
    for (int b = threadIdx.x; b < nbins; b += kThreads) {
      const int32_t c = sh_hist[b];
      if (c != 0) atomicAdd(&ghist[b], c);
    }
  }
}

// One thread per query row: d* = smallest d with count(<= d) >= k.
__global__ void topk_threshold_kernel(const int32_t* __restrict__ hist, int64_t rows, int nbins,
                                      int32_t k, int32_t* __restrict__ thr,
                                      int32_t* __restrict__ need) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const int32_t* __restrict__ h = hist + r * nbins;
  int32_t cum = 0;
  int d = nbins - 1;
  for (int b = 0; b < nbins; ++b) {
    const int32_t c = h[b];
    if (cum + c >= k) {
      d = b;
      break;
    }
    cum += c;
  }
  thr[r] = d;
  need[r] = k - cum;  // ties at d* to take, >= 1
}

__device__ __forceinline__ int32_t block_sum(int32_t v, int32_t* sh_warp) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) sh_warp[warp] = v;
  __syncthreads();
  int32_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += sh_warp[w];
  }
  return total;  // valid in thread 0 only
}

// Pass 2: codes strictly below d* (any slot order; the set is fixed), and the
// number of ties at d* per block.
template <typename W, int NW>
__global__ void __launch_bounds__(kThreads)
topk_collect_less_kernel(const W* __restrict__ q, const W* __restrict__ db,
                         const int32_t* __restrict__ thr, int32_t* __restrict__ less_count,
                         int32_t* __restrict__ ties, int64_t* __restrict__ keys,
                         int64_t q0, int64_t n, int64_t nw, int64_t k, int64_t nblk) {
  __shared__ int32_t sh_warp[kWarps];
  const int64_t r = blockIdx.y;
  QueryCode<W, NW> qc;
  qc.load(q + (q0 + r) * nw, nw);
  const int t = thr[r];
  int64_t* __restrict__ krow = keys + r * k;
  int32_t my_ties = 0;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
#pragma unroll 4
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t j = base + static_cast<int64_t>(it) * kThreads;
    if (j < n) {
      const int d = qc.dist(db + j * nw, nw);
      if (d < t) {
        const int32_t slot = atomicAdd(&less_count[r], 1);  // < count(< d*) <= k - 1
        krow[slot] = make_key(d, j);
      } else if (d == t) {
        ++my_ties;
      }
    }
  }
  const int32_t total = block_sum(my_ties, sh_warp);
  if (threadIdx.x == 0) ties[r * nblk + blockIdx.x] = total;
}

// Pass 3: the `need` lowest-index ties at d*, ranked in index order.
template <typename W, int NW>
__global__ void __launch_bounds__(kThreads)
topk_collect_ties_kernel(const W* __restrict__ q, const W* __restrict__ db,
                         const int32_t* __restrict__ thr, const int32_t* __restrict__ need,
                         const int32_t* __restrict__ ties, const int32_t* __restrict__ ties_incl,
                         int64_t* __restrict__ keys, int64_t q0, int64_t n, int64_t nw,
                         int64_t k, int64_t nblk) {
  __shared__ int32_t sh_cnt[kWarps];
  const int64_t r = blockIdx.y;
  const int64_t cell = r * nblk + blockIdx.x;
  const int32_t mine = ties[cell];
  const int32_t nd = need[r];
  int32_t running = ties_incl[cell] - mine;  // ties in earlier blocks
  // Uniform across the block: safe to leave before any barrier.
  if (mine == 0 || running >= nd) return;

  QueryCode<W, NW> qc;
  qc.load(q + (q0 + r) * nw, nw);
  const int t = thr[r];
  int64_t* __restrict__ krow = keys + r * k + (k - nd);  // after the `< d*` keys
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const u32 lane_lt = (1u << lane) - 1u;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t j = base + static_cast<int64_t>(it) * kThreads;
    const bool tie = (j < n) && qc.dist(db + j * nw, nw) == t;
    const u32 ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) sh_cnt[warp] = __popc(ballot);
    __syncthreads();
    int32_t offset = running;
    int32_t total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int32_t c = sh_cnt[w];
      if (w < warp) offset += c;
      total += c;
    }
    if (tie) {
      const int32_t rank = offset + __popc(ballot & lane_lt);
      if (rank < nd) krow[rank] = make_key(t, j);
    }
    running += total;
    __syncthreads();  // sh_cnt is rewritten in the next iteration
    if (running >= nd) break;  // uniform
  }
}

__global__ void topk_decode_kernel(const int64_t* __restrict__ keys, int64_t count,
                                   int32_t* __restrict__ dist, int64_t* __restrict__ idx) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t key = keys[i];
  dist[i] = static_cast<int32_t>(key >> 32);
  idx[i] = key & 0xffffffffLL;
}

// ------------------------------------------------------------ host side

void check_codes(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got device ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kByte, op, ": ", name,
              " must be uint8 packed codes, got dtype ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (num_codes, code_bytes), got ",
              t.dim(), "-D tensor of shape ", t.sizes());
}

// As on CPU: query_codes may have zero rows (empty result); db_codes may not.
void check_pair(const char* op, const at::Tensor& query_codes, const at::Tensor& db_codes) {
  TORCH_CHECK(query_codes.device() == db_codes.device(), op,
              ": query_codes and db_codes must be on the same device, got query_codes on ",
              query_codes.device(), " and db_codes on ", db_codes.device());
  check_codes(op, query_codes, "query_codes");
  check_codes(op, db_codes, "db_codes");
  TORCH_CHECK(query_codes.size(1) == db_codes.size(1), op,
              ": code widths differ: query_codes has ", query_codes.size(1),
              " bytes per code, db_codes has ", db_codes.size(1));
  TORCH_CHECK(query_codes.size(1) > 0, op, ": codes must have at least one byte");
  TORCH_CHECK(db_codes.size(0) > 0, op, ": db_codes is empty");
  TORCH_CHECK(query_codes.size(1) <= (std::numeric_limits<int32_t>::max() - 1) / 8, op,
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
  TORCH_CHECK(k >= 1 && k <= n, "hamming_topk: k=", k, " out of range; expected 1 <= k <= ", n,
              " (the number of db_codes)");
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(),
              "hamming_topk: on CUDA at most 2^31 - 1 db_codes are supported, got ", n);
  const c10::cuda::CUDAGuard guard(query_codes.device());
  const at::Tensor qc = query_codes.contiguous();
  const at::Tensor dc = db_codes.contiguous();
  const int64_t bytes = qc.size(1);
  const int nbins = static_cast<int>(8 * bytes + 1);
  const int64_t nblk = ceil_div(n, kChunk);
  TORCH_CHECK(nblk <= std::numeric_limits<int32_t>::max(), "too many db_codes");

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

}  // namespace

TORCH_LIBRARY_IMPL(kdkit, CUDA, m) {
  m.impl("hamming_distance", &hamming_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
}

}  // namespace kdkit
