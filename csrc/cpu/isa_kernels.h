// Raw-pointer CPU kernels shared by the ISA translation units (no ATen here, so these
// TUs compile in seconds). Each isa_*.cpp file compiles the same templates
// (hamming_impl.inc) under its own `#pragma GCC target`, inside an anonymous namespace,
// and exports one IsaKernels table; ops_cpu.cpp picks a table at runtime.
#pragma once

#include <cstdint>
#include <cstring>

namespace kdkit {
namespace cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// Running top-k selection of one query over database codes visited in ascending index
// order. Distances are integers in [0, L], so instead of a heap we keep a histogram of the
// buffered distances and a threshold T: a code is a candidate iff d < T. T is the
// smallest t with #{buffered d <= t} >= k (L + 1 while fewer than k codes were seen):
// k codes with lower indices already have d <= T, so a later code with d >= T can never
// enter the (distance, index)-ordered top-k. The buffer is compacted when full.
struct TopkState {
  int32_t T;      // accept iff d < T
  int32_t c;      // number of buffered items with d < T
  int32_t k;
  int32_t n;      // items in the buffer
  int32_t cap;    // buffer capacity (> k)
  int32_t* dist;  // [cap]
  int64_t* idx;   // [cap]
  int32_t* hist;  // [L + 2], counts of buffered distances
};

// Drops buffered items that can no longer be in the top-k (defined in ops_cpu.cpp).
void topk_compact(TopkState& s);

// Precondition: d < s.T, and i larger than every index pushed before.
inline void topk_push(TopkState& s, int32_t d, int64_t i) {
  s.dist[s.n] = d;
  s.idx[s.n] = i;
  ++s.n;
  ++s.hist[d];
  ++s.c;
  while (s.c >= s.k) {
    --s.T;
    s.c -= s.hist[s.T];
  }
  if (s.n == s.cap) topk_compact(s);
}

struct IsaKernels {
  const char* name;
  // Visits db codes [begin, end) (each B bytes) for query q, updating st.
  void (*scan_topk)(const uint8_t* q, const uint8_t* db, int64_t B, int64_t begin,
                    int64_t end, TopkState* st);
  // out[i - begin] = popcount(q ^ db[i]) for i in [begin, end).
  void (*distances)(const uint8_t* q, const uint8_t* db, int64_t B, int64_t begin,
                    int64_t end, int32_t* out);
  // g[i] = (h[i] - sgn h[i]) * gscale; if loss != nullptr loss[i] = (h - sgn h)^2.
  // Returns sum over i of (h - sgn h)^2 (accumulated in a fixed order).
  double (*penalty_f32)(const float* h, float* g, float* loss, int64_t n, float gscale);
  // out[i] = x[i] * s.
  void (*scale_f32)(const float* x, float* out, int64_t n, float s);
};

extern const IsaKernels kScalarKernels;
// These two are defined on x86-64 GCC/Clang builds only; elsewhere they alias scalar.
extern const IsaKernels kAvx2Kernels;
extern const IsaKernels kAvx512Kernels;
// True when the avx2 / avx512 tables hold real SIMD code in this build.
extern const bool kAvx2Compiled;
extern const bool kAvx512Compiled;

}  // namespace cpu
}  // namespace kdkit
