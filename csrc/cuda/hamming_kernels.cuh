// Device code of kdkit's Hamming CUDA ops (included by hamming_cuda.cu only).
//
// Kept apart from the host code so that the kernels can also be compiled by a
// host C++ compiler against a small CUDA emulation for logic tests on machines
// without a GPU (see the note in hamming_cuda.cu).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../ap_args.h"  // ApCut

#ifndef KDKIT_DYN_SHARED
#define KDKIT_DYN_SHARED(T, name) extern __shared__ T name[]
#endif

namespace kdkit {
namespace hamming_detail {

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
  KDKIT_DYN_SHARED(int32_t, sh_hist);
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

// ------------------------------------------------------------ average precision
// One block of kApWarps warps per query; warp w owns the index-contiguous database segment
// [w * seg, (w + 1) * seg). The ranking is by (distance, index), so an item's rank is
//   (items at a smaller distance) + (items at its distance in earlier segments)
//   + (items at its distance earlier in its own segment) + 1,
// and its rank among the relevant items likewise. Pass 1 counts, per segment, the items
// and the relevant items at each distance; a prefix turns the counts into each segment's
// starting cursor per distance; pass 2 walks each segment in index order, 32 items at a
// time, ranks them with a warp match on the distance, and advances the cursors.
// The sum of hit / rank runs in a fixed order (per thread, then a fixed tree), so the
// result is deterministic; it equals the CPU op's up to the order of a double sum.

constexpr int kApWarps = 8;
constexpr int kApThreads = 32 * kApWarps;
constexpr int kApRows = kApWarps + 1;             // per-segment rows + one row of totals
constexpr int kApMaxSharedBytes = 48 * 1024;      // counts in shared memory up to here

__device__ __forceinline__ bool ap_relevant(const u64* __restrict__ qlab,
                                            const u64* __restrict__ dlab, int64_t j,
                                            int64_t wlab) {
  u64 any = 0;
  for (int64_t w = 0; w < wlab; ++w) any |= qlab[w] & dlab[j * wlab + w];
  return any != 0;
}

// counts: 2 * kApRows * nbins int32 (items, then relevant items), in dynamic shared memory
// when `scratch` is null, else the block's slice of `scratch`.
template <typename W, int NW>
__global__ void __launch_bounds__(kApThreads)
average_precision_kernel(const W* __restrict__ q, const W* __restrict__ db,
                         const u64* __restrict__ qlabels, const u64* __restrict__ dlabels,
                         int32_t* __restrict__ scratch, double* __restrict__ out, int64_t q0,
                         int64_t n, int64_t nw, int64_t wlab, int nbins, int64_t k,
                         ApCut cut) {
  KDKIT_DYN_SHARED(int32_t, sh_counts);
  __shared__ double sh_sum[kApWarps];
  __shared__ int32_t sh_kept[kApWarps];
  __shared__ int32_t sh_any_relevant;
  const int64_t qi = q0 + blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const u32 lane_lt = (1u << lane) - 1u;
  int32_t* __restrict__ cnt =
      scratch == nullptr ? sh_counts
                         : scratch + static_cast<int64_t>(blockIdx.x) * 2 * kApRows * nbins;
  int32_t* __restrict__ rel = cnt + kApRows * nbins;
  for (int i = threadIdx.x; i < 2 * kApRows * nbins; i += kApThreads) cnt[i] = 0;
  __syncthreads();

  QueryCode<W, NW> qc;
  qc.load(q + qi * nw, nw);
  const u64* __restrict__ qlab = qlabels + qi * wlab;
  const int64_t seg = (n + kApWarps - 1) / kApWarps;
  const int64_t s0 = std::min<int64_t>(n, warp * seg), s1 = std::min<int64_t>(n, s0 + seg);
  int32_t* __restrict__ my_cnt = cnt + warp * nbins;
  int32_t* __restrict__ my_rel = rel + warp * nbins;

  // pass 1: per-segment counts by distance
  for (int64_t j = s0 + lane; j < s1; j += 32) {
    const int d = qc.dist(db + j * nw, nw);
    atomicAdd(&my_cnt[d], 1);
    if (ap_relevant(qlab, dlabels, j, wlab)) atomicAdd(&my_rel[d], 1);
  }
  __syncthreads();

  // prefix: within each distance over segments (row kApWarps takes the totals) ...
  int32_t* __restrict__ tot_cnt = cnt + kApWarps * nbins;
  int32_t* __restrict__ tot_rel = rel + kApWarps * nbins;
  for (int d = threadIdx.x; d < nbins; d += kApThreads) {
    int32_t c = 0, r = 0;
    for (int w = 0; w < kApWarps; ++w) {
      const int32_t cw = cnt[w * nbins + d], rw = rel[w * nbins + d];
      cnt[w * nbins + d] = c;
      rel[w * nbins + d] = r;
      c += cw;
      r += rw;
    }
    tot_cnt[d] = c;
    tot_rel[d] = r;
  }
  __syncthreads();
  // ... then over distances (the totals become "before distance d")
  if (threadIdx.x == 0) {
    int32_t before = 0, before_rel = 0;
    for (int d = 0; d < nbins; ++d) {
      const int32_t c = tot_cnt[d], r = tot_rel[d];
      tot_cnt[d] = before;
      tot_rel[d] = before_rel;
      before += c;
      before_rel += r;
    }
    sh_any_relevant = before_rel > 0;
  }
  __syncthreads();
  if (!sh_any_relevant) {  // uniform: no relevant item, AP 0
    if (threadIdx.x == 0) out[qi] = 0.0;
    return;
  }
  for (int d = threadIdx.x; d < nbins; d += kApThreads) {
    const int32_t bc = tot_cnt[d], br = tot_rel[d];
    for (int w = 0; w < kApWarps; ++w) {
      cnt[w * nbins + d] += bc;
      rel[w * nbins + d] += br;
    }
  }
  __syncthreads();

  // pass 2: exact ranks in index order, 32 items at a time per segment
  double sum = 0.0;
  int32_t kept = 0;
  for (int64_t b = s0; b < s1; b += 32) {
    const int64_t j = b + lane;
    const bool valid = j < s1;
    const int d = valid ? qc.dist(db + j * nw, nw) : -1;
    const bool r = valid && ap_relevant(qlab, dlabels, j, wlab);
    const u32 same = __match_any_sync(0xffffffffu, d);
    const u32 rel_lanes = __ballot_sync(0xffffffffu, r);
    int32_t add_cnt = 0, add_rel = 0;
    if (valid) {
      if (r) {
        const int32_t rank = my_cnt[d] + __popc(same & lane_lt) + 1;
        const int32_t hit = my_rel[d] + __popc(same & rel_lanes & lane_lt) + 1;
        const bool keep = cut == ApCut::All || (cut == ApCut::Truncated ? rank <= k : hit <= k);
        if (keep) {
          sum += static_cast<double>(hit) / static_cast<double>(rank);
          ++kept;
        }
      }
      if (lane == 31 - __clz(same)) {  // the group's last lane advances its cursors
        add_cnt = __popc(same);
        add_rel = __popc(same & rel_lanes);
      }
    }
    __syncwarp();
    if (add_cnt != 0) {
      my_cnt[d] += add_cnt;
      my_rel[d] += add_rel;
    }
    __syncwarp();
  }

  // fixed-order reduction: lanes by shuffle, then warps in order
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    sum += __shfl_down_sync(0xffffffffu, sum, o);
    kept += __shfl_down_sync(0xffffffffu, kept, o);
  }
  if (lane == 0) {
    sh_sum[warp] = sum;
    sh_kept[warp] = kept;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    int64_t m = 0;
    for (int w = 0; w < kApWarps; ++w) {
      s += sh_sum[w];
      m += sh_kept[w];
    }
    out[qi] = m > 0 ? s / static_cast<double>(m) : 0.0;
  }
}

}  // namespace hamming_detail
}  // namespace kdkit
