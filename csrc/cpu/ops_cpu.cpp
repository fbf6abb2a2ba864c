// CPU implementations of the kdkit ops: argument checks, threading (at::parallel_for),
// cache blocking, runtime ISA dispatch and the top-k merge. The inner loops live in the
// isa_*.cpp files (raw pointers, one copy per ISA).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../ap_args.h"
#include "../check.h"
#include "cpu_ops.h"
#include "isa_kernels.h"

namespace kdkit {
namespace cpu {

// ---------------------------------------------------------------------------------------
// Selection helpers shared by all ISA copies.

void topk_compact(TopkState& s) {
  int32_t keep_at_T = s.k - s.c;  // items with d == T that still belong to the top-k
  int32_t m = 0;
  for (int32_t j = 0; j < s.n; ++j) {
    const int32_t d = s.dist[j];
    bool keep = d < s.T;
    if (!keep && d == s.T && keep_at_T > 0) {
      keep = true;
      --keep_at_T;
    }
    if (keep) {
      s.dist[m] = d;
      s.idx[m] = s.idx[j];
      ++m;
    } else {
      --s.hist[d];
    }
  }
  s.n = m;
}

static void topk_init(TopkState& s, int32_t k, int64_t L, int32_t cap, int32_t* dist,
                      int64_t* idx, int32_t* hist) {
  s.T = (int32_t)L + 1;
  s.c = 0;
  s.k = k;
  s.n = 0;
  s.cap = cap;
  s.dist = dist;
  s.idx = idx;
  s.hist = hist;
  std::fill(hist, hist + L + 2, 0);
}

// Compacts, then writes the k survivors sorted by (distance, index): the buffer is in index
// order, so a counting sort on distance (stable) gives the final order in O(k + T).
static void topk_finish(TopkState& s, int32_t* out_d, int64_t* out_i) {
  topk_compact(s);
  int32_t run = 0;  // all buffered d <= T (hist has L + 2 entries, T <= L + 1)
  for (int32_t d = 0; d <= s.T; ++d) {
    const int32_t h = s.hist[d];
    s.hist[d] = run;
    run += h;
  }
  for (int32_t j = 0; j < s.n; ++j) {
    const int32_t p = s.hist[s.dist[j]]++;
    out_d[p] = s.dist[j];
    out_i[p] = s.idx[j];
  }
}

// ---------------------------------------------------------------------------------------
// ISA selection.

static Isa detect_best_isa() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (kAvx512Compiled && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("popcnt") &&
      __builtin_cpu_supports("avx2"))
    return Isa::avx512;
  if (kAvx2Compiled && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
    return Isa::avx2;
#endif
  return Isa::scalar;
}

static const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512_vpopcntdq";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

static bool parse_isa(const std::string& s, Isa* out, bool* is_auto) {
  *is_auto = false;
  if (s.empty() || s == "auto" || s == "best") {
    *is_auto = true;
    return true;
  }
  if (s == "scalar") *out = Isa::scalar;
  else if (s == "avx2") *out = Isa::avx2;
  else if (s == "avx512" || s == "avx512_vpopcntdq") *out = Isa::avx512;
  else return false;
  return true;
}

static std::atomic<int> g_isa{-1};
static std::once_flag g_isa_once;

static Isa active_isa() {
  std::call_once(g_isa_once, [] {
    const Isa best = detect_best_isa();
    Isa chosen = best;
    const char* env = std::getenv("KDKIT_CPU_ISA");
    if (env != nullptr) {
      Isa req = best;
      bool is_auto = false;
      if (!parse_isa(env, &req, &is_auto)) {
        std::fprintf(stderr,
                     "kdkit: ignoring KDKIT_CPU_ISA=%s (expected scalar|avx2|avx512|auto); "
                     "using %s\n",
                     env, isa_name(best));
      } else if (!is_auto) {
        if ((int)req > (int)best) {
          std::fprintf(stderr, "kdkit: KDKIT_CPU_ISA=%s is not supported here; using %s\n", env,
                       isa_name(best));
        } else {
          chosen = req;
        }
      }
    }
    int expected = -1;
    g_isa.compare_exchange_strong(expected, (int)chosen);
  });
  return (Isa)g_isa.load(std::memory_order_relaxed);
}

static const IsaKernels& kernels() {
  switch (active_isa()) {
    case Isa::avx512: {
      // The AVX-512 table leaves the memory-bound penalty kernels to the AVX2 copies.
      static const IsaKernels merged = {kAvx512Kernels.name, kAvx512Kernels.scan_topk,
                                        kAvx512Kernels.distances, kAvx2Kernels.penalty_f32,
                                        kAvx2Kernels.scale_f32};
      return merged;
    }
    case Isa::avx2: return kAvx2Kernels;
    default: return kScalarKernels;
  }
}

const char* active_isa_name() { return isa_name(active_isa()); }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (int i = (int)detect_best_isa(); i >= 0; --i) out.push_back(isa_name((Isa)i));
  return out;
}

std::string set_isa(const std::string& name) {
  Isa req = Isa::scalar;
  bool is_auto = false;
  if (!parse_isa(name, &req, &is_auto))
    return "unknown CPU ISA '" + name + "'; expected scalar|avx2|avx512|auto";
  active_isa();  // make sure the env default has been applied first
  const Isa best = detect_best_isa();
  if (is_auto) req = best;
  if ((int)req > (int)best)
    return std::string("CPU ISA '") + name + "' is not available on this machine/build (best: " +
           isa_name(best) + ")";
  g_isa.store((int)req);
  return "";
}

// ---------------------------------------------------------------------------------------
// Reusable large CPU buffers.
//
// A fresh multi-hundred-MB tensor costs far more in first-touch page faults than the fused
// penalty kernel itself (glibc serves such sizes with a new mmap every time). The penalty
// ops therefore allocate their large outputs from a few cached storages. A cached storage
// is handed out again only when the cache holds the *only* reference to it (use_count == 1):
// every tensor or view the user or autograd still holds keeps the count above one, so a
// buffer is never reused while anything can observe it. Disable with
// KDKIT_CPU_BUFFER_CACHE=0; release with kdkit.ops._extension.clear_cpu_buffer_cache().

namespace {
constexpr size_t kCacheMinBytes = size_t(1) << 20;
constexpr size_t kCacheSlots = 4;
std::mutex g_cache_mu;
std::vector<c10::Storage> g_cache;

bool cache_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("KDKIT_CPU_BUFFER_CACHE");
    return !(e != nullptr && (std::string(e) == "0" || std::string(e) == "false"));
  }();
  return enabled;
}

at::Tensor tensor_on(c10::Storage storage, at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor t = at::empty({0}, at::TensorOptions().dtype(dtype).device(at::kCPU));
  std::vector<int64_t> strides(sizes.size());
  int64_t st = 1;
  for (int64_t i = (int64_t)sizes.size() - 1; i >= 0; --i) {
    strides[i] = st;
    st *= std::max<int64_t>(sizes[i], 1);
  }
  t.set_(std::move(storage), 0, sizes, strides);
  return t;
}
}  // namespace

static at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t nbytes = (size_t)numel * c10::elementSize(dtype);
  if (!cache_enabled() || nbytes < kCacheMinBytes)
    return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
  std::lock_guard<std::mutex> lock(g_cache_mu);
  int best = -1;
  for (size_t i = 0; i < g_cache.size(); ++i) {
    const auto& s = g_cache[i];
    if (s.use_count() == 1 && s.nbytes() >= nbytes && s.nbytes() <= 2 * nbytes &&
        (best < 0 || s.nbytes() < g_cache[best].nbytes()))
      best = (int)i;
  }
  if (best < 0) {
    c10::Storage fresh(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(),
                       /*resizable=*/true);
    if (g_cache.size() < kCacheSlots) {
      g_cache.push_back(fresh);
    } else {
      // Replace a free slot (prefer the smallest); if all are in use, do not cache.
      int victim = -1;
      for (size_t i = 0; i < g_cache.size(); ++i)
        if (g_cache[i].use_count() == 1 &&
            (victim < 0 || g_cache[i].nbytes() < g_cache[victim].nbytes()))
          victim = (int)i;
      if (victim >= 0) g_cache[victim] = fresh;
    }
    return tensor_on(std::move(fresh), sizes, dtype);
  }
  return tensor_on(g_cache[best], sizes, dtype);
}

void clear_buffer_cache() {
  std::lock_guard<std::mutex> lock(g_cache_mu);
  g_cache.clear();
}

// ---------------------------------------------------------------------------------------
// Argument checks (second line of defence; Python validates first with friendlier text).

static void check_codes(const char* op, const at::Tensor& q, const at::Tensor& db) {
  KDKIT_CHECK(q.device().is_cpu() && db.device().is_cpu(), op,
              ": query_codes and db_codes must both be CPU tensors here, got ", q.device(),
              " and ", db.device());
  KDKIT_CHECK(q.scalar_type() == at::kByte, op, ": query_codes must be uint8, got ",
              q.scalar_type());
  KDKIT_CHECK(db.scalar_type() == at::kByte, op, ": db_codes must be uint8, got ",
              db.scalar_type());
  KDKIT_CHECK(q.dim() == 2, op, ": query_codes must be 2-D (Q, B), got ", q.dim(), "-D");
  KDKIT_CHECK(db.dim() == 2, op, ": db_codes must be 2-D (N, B), got ", db.dim(), "-D");
  KDKIT_CHECK(q.size(1) == db.size(1), op, ": code widths differ: query_codes has ", q.size(1),
              " bytes, db_codes has ", db.size(1));
  KDKIT_CHECK(q.size(1) > 0, op, ": codes must have at least one byte");
  KDKIT_CHECK(db.size(0) > 0, op, ": db_codes is empty");
}

// Cache blocking: a chunk of database codes (~128 KB, L2-resident) is scanned by every query
// of a query block before moving on.
static int64_t chunk_codes(int64_t B) { return std::max<int64_t>(256, (int64_t(1) << 17) / B); }
constexpr int64_t kQueryBlock = 8;

// ---------------------------------------------------------------------------------------
// hamming_distance

static at::Tensor hamming_distance_cpu(const at::Tensor& query, const at::Tensor& db) {
  check_codes("hamming_distance", query, db);
  const at::Tensor q = query.contiguous();
  const at::Tensor d = db.contiguous();
  const int64_t Q = q.size(0), N = d.size(0), B = q.size(1);
  at::Tensor out = at::empty({Q, N}, q.options().dtype(at::kInt));
  if (Q == 0) return out;
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const uint8_t* dp = d.data_ptr<uint8_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const IsaKernels& K = kernels();
  const int64_t ch = chunk_codes(B);
  const int64_t nqb = (Q + kQueryBlock - 1) / kQueryBlock;
  const int64_t nch = (N + ch - 1) / ch;
  at::parallel_for(0, nqb * nch, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t / nch, c = t % nch;
      const int64_t cb = c * ch, ce = std::min(N, cb + ch);
      for (int64_t i = qb * kQueryBlock; i < std::min(Q, (qb + 1) * kQueryBlock); ++i)
        K.distances(qp + i * B, dp, B, cb, ce, op + i * N + cb);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// hamming_topk

// Large k relative to N: compute one query's N distances into a per-thread buffer and do an
// exact counting selection (O(N + L)); never a Q x N matrix.
static void topk_full(const IsaKernels& K, const uint8_t* qp, const uint8_t* dp, int64_t Q,
                      int64_t N, int64_t B, int64_t k, int32_t* od, int64_t* oi) {
  const int64_t L = 8 * B;
  at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
    std::vector<int32_t> dist(N);
    std::vector<int64_t> hist(L + 2);
    for (int64_t qi = q0; qi < q1; ++qi) {
      K.distances(qp + qi * B, dp, B, 0, N, dist.data());
      std::fill(hist.begin(), hist.end(), 0);
      for (int64_t i = 0; i < N; ++i) ++hist[dist[i]];
      int64_t T = 0, below = 0;  // T: k-th smallest distance; below = #{d < T}
      while (below + hist[T] < k) below += hist[T++];
      int64_t run = 0;
      for (int64_t d = 0; d < T; ++d) {
        const int64_t h = hist[d];
        hist[d] = run;
        run += h;
      }
      hist[T] = below;
      int32_t* rd = od + qi * k;
      int64_t* ri = oi + qi * k;
      for (int64_t i = 0; i < N; ++i) {
        const int32_t d = dist[i];
        if (d < T || (d == T && hist[T] < k)) {
          const int64_t p = hist[d]++;
          rd[p] = d;
          ri[p] = i;
        }
      }
    }
  });
}

static std::tuple<at::Tensor, at::Tensor> hamming_topk_cpu(const at::Tensor& query,
                                                           const at::Tensor& db, int64_t k) {
  check_codes("hamming_topk", query, db);
  const int64_t N = db.size(0);
  KDKIT_CHECK(k >= 1 && k <= N, "hamming_topk: k=", k, " out of range; expected 1 <= k <= ", N,
              " (number of db_codes)");
  KDKIT_CHECK(k <= (int64_t)INT32_MAX, "hamming_topk: k too large");
  const at::Tensor q = query.contiguous();
  const at::Tensor d = db.contiguous();
  const int64_t Q = q.size(0), B = q.size(1), L = 8 * B;
  at::Tensor out_d = at::empty({Q, k}, q.options().dtype(at::kInt));
  at::Tensor out_i = at::empty({Q, k}, q.options().dtype(at::kLong));
  if (Q == 0) return {out_d, out_i};
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const uint8_t* dp = d.data_ptr<uint8_t>();
  int32_t* od = out_d.data_ptr<int32_t>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  const IsaKernels& K = kernels();

  if (k > 4096 || k * 8 > N) {
    topk_full(K, qp, dp, Q, N, B, k, od, oi);
    return {out_d, out_i};
  }

  const int64_t ch = chunk_codes(B);
  const int64_t nqb = (Q + kQueryBlock - 1) / kQueryBlock;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  // Few queries: also split the database into P parts and merge the partial top-k lists.
  // The result is the unique (distance, index)-ordered top-k, so it does not depend on P.
  int64_t P = 1;
  if (nqb < 2 * nthreads) {
    P = (2 * nthreads + nqb - 1) / nqb;
    P = std::min(P, std::max<int64_t>(1, N / std::max<int64_t>(ch, 4 * k)));
  }
  const int64_t part = ((N + P - 1) / P + 63) / 64 * 64;
  P = (N + part - 1) / part;
  const int32_t cap = (int32_t)(k + std::max<int64_t>(k, 256));

  std::vector<int32_t> part_d, part_n;
  std::vector<int64_t> part_i;
  if (P > 1) {
    part_d.resize((size_t)(Q * P * k));
    part_i.resize((size_t)(Q * P * k));
    part_n.resize((size_t)(Q * P));
  }

  at::parallel_for(0, nqb * P, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> dist((size_t)(kQueryBlock * cap));
    std::vector<int64_t> idx((size_t)(kQueryBlock * cap));
    std::vector<int32_t> hist((size_t)(kQueryBlock * (L + 2)));
    TopkState st[kQueryBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t / P, p = t % P;
      const int64_t qs = qb * kQueryBlock, qe = std::min(Q, qs + kQueryBlock);
      const int64_t nb = p * part, ne = std::min(N, nb + part);
      const int32_t keff = (int32_t)std::min<int64_t>(k, ne - nb);
      for (int64_t j = 0; j < qe - qs; ++j)
        topk_init(st[j], keff, L, cap, dist.data() + j * cap, idx.data() + j * cap,
                  hist.data() + j * (L + 2));
      for (int64_t cb = nb; cb < ne; cb += ch) {
        const int64_t ce = std::min(ne, cb + ch);
        for (int64_t j = 0; j < qe - qs; ++j) K.scan_topk(qp + (qs + j) * B, dp, B, cb, ce, &st[j]);
      }
      for (int64_t j = 0; j < qe - qs; ++j) {
        const int64_t qi = qs + j;
        if (P == 1) {
          topk_finish(st[j], od + qi * k, oi + qi * k);
        } else {
          const size_t off = (size_t)((qi * P + p) * k);
          topk_finish(st[j], part_d.data() + off, part_i.data() + off);
          part_n[(size_t)(qi * P + p)] = keff;
        }
      }
    }
  });

  if (P > 1) {
    at::parallel_for(0, Q, 16, [&](int64_t q0, int64_t q1) {
      std::vector<int64_t> pos((size_t)P);
      for (int64_t qi = q0; qi < q1; ++qi) {
        std::fill(pos.begin(), pos.end(), 0);
        for (int64_t j = 0; j < k; ++j) {
          int64_t bp = -1;
          int32_t bd = 0;
          int64_t bi = 0;
          for (int64_t p = 0; p < P; ++p) {
            if (pos[p] >= part_n[(size_t)(qi * P + p)]) continue;
            const size_t off = (size_t)((qi * P + p) * k + pos[p]);
            const int32_t dd = part_d[off];
            const int64_t ii = part_i[off];
            if (bp < 0 || dd < bd || (dd == bd && ii < bi)) {
              bp = p;
              bd = dd;
              bi = ii;
            }
          }
          ++pos[bp];
          od[qi * k + j] = bd;
          oi[qi * k + j] = bi;
        }
      }
    });
  }
  return {out_d, out_i};
}

// ---------------------------------------------------------------------------------------
// binarization_penalty

constexpr int64_t kPenaltyBlock = int64_t(1) << 16;  // multiple of 256: fixed summation order

static double penalty_f64_block(const double* h, double* g, double* loss, int64_t n,
                                double gscale) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double x = h[i + j];
      const double r = x - (x >= 0.0 ? 1.0 : -1.0);
      g[i + j] = r * gscale;
      if (loss) loss[i + j] = r * r;
      acc[j] += r * r;
    }
  }
  double tail = 0.0;
  for (; i < n; ++i) {
    const double x = h[i];
    const double r = x - (x >= 0.0 ? 1.0 : -1.0);
    g[i] = r * gscale;
    if (loss) loss[i] = r * r;
    tail += r * r;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

static std::tuple<at::Tensor, at::Tensor> binarization_penalty_cpu(const at::Tensor& h_in,
                                                                   int64_t reduction) {
  KDKIT_CHECK(reduction >= 0 && reduction <= 2,
              "binarization_penalty: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
  KDKIT_CHECK(h_in.device().is_cpu(), "binarization_penalty: h must be a CPU tensor here");
  const auto dtype = h_in.scalar_type();
  KDKIT_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "binarization_penalty: h must be float32 or float64 on CPU, got ", dtype);
  const at::Tensor h = h_in.contiguous();
  const int64_t n = h.numel();
  at::Tensor grad = cached_empty(h.sizes(), dtype);
  at::Tensor loss = reduction == 0 ? cached_empty(h.sizes(), dtype)
                                   : at::empty({}, h.options());
  const double scale = reduction == 1 ? 1.0 / (double)std::max<int64_t>(n, 1) : 1.0;
  const int64_t nb = (n + kPenaltyBlock - 1) / kPenaltyBlock;
  std::vector<double> partial((size_t)std::max<int64_t>(nb, 1), 0.0);
  const IsaKernels& K = kernels();
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = b * kPenaltyBlock, len = std::min(kPenaltyBlock, n - s);
      if (dtype == at::kFloat) {
        float* lp = reduction == 0 ? loss.data_ptr<float>() + s : nullptr;
        partial[(size_t)b] = K.penalty_f32(h.data_ptr<float>() + s, grad.data_ptr<float>() + s,
                                           lp, len, (float)(2.0 * scale));
      } else {
        double* lp = reduction == 0 ? loss.data_ptr<double>() + s : nullptr;
        partial[(size_t)b] = penalty_f64_block(h.data_ptr<double>() + s,
                                               grad.data_ptr<double>() + s, lp, len, 2.0 * scale);
      }
    }
  });
  if (reduction != 0) {
    double total = 0.0;
    for (int64_t b = 0; b < nb; ++b) total += partial[(size_t)b];
    if (reduction == 1) total = n > 0 ? total / (double)n : std::numeric_limits<double>::quiet_NaN();
    if (dtype == at::kFloat) *loss.data_ptr<float>() = (float)total;
    else *loss.data_ptr<double>() = total;
  }
  return {loss, grad};
}

static at::Tensor binarization_penalty_backward_cpu(const at::Tensor& grad_output,
                                                    const at::Tensor& grad_factor,
                                                    int64_t reduction) {
  KDKIT_CHECK(reduction >= 0 && reduction <= 2,
              "binarization_penalty_backward: reduction must be 0, 1 or 2, got ", reduction);
  KDKIT_CHECK(grad_output.device().is_cpu() && grad_factor.device().is_cpu(),
              "binarization_penalty_backward: expected CPU tensors");
  if (reduction == 0) {
    KDKIT_CHECK(grad_output.sizes() == grad_factor.sizes(),
                "binarization_penalty_backward: grad_output shape ", grad_output.sizes(),
                " != grad_factor shape ", grad_factor.sizes());
  } else {
    KDKIT_CHECK(grad_output.numel() == 1,
                "binarization_penalty_backward: grad_output must be a scalar for mean/sum");
  }
  at::Tensor out = cached_empty(grad_factor.sizes(), grad_factor.scalar_type());
  if (reduction != 0 && grad_factor.scalar_type() == at::kFloat && grad_factor.is_contiguous()) {
    // Scalar grad_output: one streaming pass (same arithmetic as at::mul: x * float(go)).
    const float s = (float)grad_output.item().toDouble();
    const float* x = grad_factor.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const int64_t n = grad_factor.numel();
    const IsaKernels& K = kernels();
    const int64_t nb = (n + kPenaltyBlock - 1) / kPenaltyBlock;
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      const int64_t s0 = b0 * kPenaltyBlock, s1 = std::min(n, b1 * kPenaltyBlock);
      K.scale_f32(x + s0, o + s0, s1 - s0, s);
    });
  } else {
    at::mul_out(out, grad_factor, reduction == 0 ? grad_output : grad_output.reshape({}));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Average precision of Hamming ranking, fused: packed codes and label bitsets in, one AP per
// query out; no (Q, N) distance or relevance matrix and no sort. Distances are small integers,
// so per query
//   pass 1: distance (ISA kernel) and relevance (label AND) of every item -> a 16-bit key
//           2 * distance + relevant, and a histogram of the keys;
//   prefix: where each distance bucket starts in the (distance, index) ranking, and how many
//           relevant items precede it;
//   pass 2: the keys again in index order (= order inside a bucket: ties go to the lower
//           index), which gives every relevant item's exact rank and rank among the relevant;
//   sum:    rank_among_relevant / rank over the items the variant keeps.

namespace {

constexpr int64_t kApChunk = 2048;  // distances computed per ISA call (8 KB, stays in L1)

template <ApCut kCut>
int64_t ap_collect(const uint16_t* keys, int64_t n, uint64_t* cursor, int64_t k, uint32_t* hits,
                   uint32_t* ranks) {
  // cursor[d]: (items ranked before the next one at distance d) | (relevant ones) << 32.
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t key = keys[j];
    const uint32_t d = key >> 1, rel = key & 1u;
    const uint64_t c = cursor[d] + 1u + ((uint64_t)rel << 32);
    cursor[d] = c;
    const uint32_t rank = (uint32_t)c, hit = (uint32_t)(c >> 32);
    bool keep = rel != 0;
    if constexpr (kCut == ApCut::Truncated) keep = keep && rank <= (uint64_t)k;
    if constexpr (kCut == ApCut::FirstRelevant) keep = keep && hit <= (uint64_t)k;
    hits[m] = hit;  // written unconditionally, kept by advancing m: no unpredictable branch
    ranks[m] = rank;
    m += keep;
  }
  return m;
}

double ap_sum(const uint32_t* hits, const uint32_t* ranks, int64_t m) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: the adds do not wait on each other
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    for (int t = 0; t < 4; ++t) s[t] += (double)hits[i + t] / (double)ranks[i + t];
  for (; i < m; ++i) s[0] += (double)hits[i] / (double)ranks[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

}  // namespace

static at::Tensor hamming_average_precision_cpu(const at::Tensor& query_codes, const at::Tensor& db_codes,
                                         const at::Tensor& query_labels, const at::Tensor& db_labels,
                                         int64_t k, c10::string_view variant) {
  const char* op = "hamming_average_precision";
  check_codes(op, query_codes, db_codes);
  KDKIT_CHECK(query_labels.device().is_cpu() && db_labels.device().is_cpu(), op,
              ": labels must be CPU tensors here, got ", query_labels.device(), " and ", db_labels.device());
  const ApCut cut = check_ap_arguments(op, query_codes, db_codes, query_labels, db_labels, k, variant);
  const int64_t nq = query_codes.size(0), n = db_codes.size(0), B = query_codes.size(1);
  const int64_t W = query_labels.size(1), nbits = 8 * B;
  const at::Tensor q = query_codes.contiguous(), db = db_codes.contiguous();
  const at::Tensor ql = query_labels.contiguous(), dl = db_labels.contiguous();
  at::Tensor out = at::empty({nq}, q.options().dtype(at::kDouble));
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const uint8_t* dbp = db.data_ptr<uint8_t>();
  const uint64_t* qlp = reinterpret_cast<const uint64_t*>(ql.data_ptr<int64_t>());
  const uint64_t* dlp = reinterpret_cast<const uint64_t*>(dl.data_ptr<int64_t>());
  double* outp = out.data_ptr<double>();
  const IsaKernels& K = kernels();

  at::parallel_for(0, nq, 1, [&](int64_t q0, int64_t q1) {
    std::vector<int32_t> dist(kApChunk);
    std::vector<uint16_t> keys(n);
    std::vector<uint32_t> hist(2 * nbits + 2), hits(n), ranks(n);
    std::vector<uint64_t> cursor(nbits + 1);
    std::vector<int64_t> words;  // the query's non-zero label words: all a relevance test reads
    for (int64_t qi = q0; qi < q1; ++qi) {
      const uint64_t* qlab = qlp + qi * W;
      words.clear();
      for (int64_t w = 0; w < W; ++w)
        if (qlab[w] != 0) words.push_back(w);
      if (words.empty()) {  // no label: nothing is relevant
        outp[qi] = 0.0;
        continue;
      }
      std::fill(hist.begin(), hist.end(), 0u);
      for (int64_t c0 = 0; c0 < n; c0 += kApChunk) {
        const int64_t c1 = std::min(n, c0 + kApChunk);
        K.distances(qp + qi * B, dbp, B, c0, c1, dist.data());
        if (W == 1) {
          const uint64_t lab = qlab[0];
          for (int64_t j = c0; j < c1; ++j) {
            const uint32_t key = ((uint32_t)dist[j - c0] << 1) | (uint32_t)((lab & dlp[j]) != 0);
            keys[j] = (uint16_t)key;
            ++hist[key];
          }
        } else {
          for (int64_t j = c0; j < c1; ++j) {
            const uint64_t* row = dlp + j * W;
            uint64_t any = 0;
            for (const int64_t w : words) any |= qlab[w] & row[w];
            const uint32_t key = ((uint32_t)dist[j - c0] << 1) | (uint32_t)(any != 0);
            keys[j] = (uint16_t)key;
            ++hist[key];
          }
        }
      }
      uint64_t before = 0, before_rel = 0;
      for (int64_t d = 0; d <= nbits; ++d) {
        cursor[d] = before | (before_rel << 32);
        before += hist[2 * d] + hist[2 * d + 1];
        before_rel += hist[2 * d + 1];
      }
      if (before_rel == 0) {
        outp[qi] = 0.0;
        continue;
      }
      int64_t m;
      switch (cut) {
        case ApCut::All: m = ap_collect<ApCut::All>(keys.data(), n, cursor.data(), k, hits.data(), ranks.data()); break;
        case ApCut::Truncated: m = ap_collect<ApCut::Truncated>(keys.data(), n, cursor.data(), k, hits.data(), ranks.data()); break;
        default: m = ap_collect<ApCut::FirstRelevant>(keys.data(), n, cursor.data(), k, hits.data(), ranks.data());
      }
      outp[qi] = m > 0 ? ap_sum(hits.data(), ranks.data(), m) / (double)m : 0.0;
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace kdkit

TORCH_LIBRARY_IMPL(kdkit, CPU, m) {
  m.impl("hamming_distance", &kdkit::cpu::hamming_distance_cpu);
  m.impl("hamming_topk", &kdkit::cpu::hamming_topk_cpu);
  m.impl("binarization_penalty", &kdkit::cpu::binarization_penalty_cpu);
  m.impl("binarization_penalty_backward", &kdkit::cpu::binarization_penalty_backward_cpu);
  m.impl("hamming_average_precision", &kdkit::cpu::hamming_average_precision_cpu);
}
