// AVX2 + POPCNT kernels. Compiled for the whole file with a target pragma (no -mavx2 on the
// command line, so the rest of the library stays portable); only called after a runtime
// CPU check (ops_cpu.cpp).
#include "isa_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define KDKIT_HAVE_AVX2 1
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#endif

namespace kdkit {
namespace cpu {
namespace {

#define KD_POPCNT64(x) ((int)_mm_popcnt_u64(x))
#include "hamming_impl.inc"

// Bit permutation tables: a SIMD compare mask whose bit j refers to code perm[j] of a group
// of 8 is turned into a mask whose bit c refers to code c (so hits are visited in index
// order). Only used when a group has a candidate, which is rare.
struct Remap8 {
  uint8_t t[256];
};
// constexpr: evaluated by the compiler, so no AVX2 code runs at library load time.
static constexpr Remap8 make_remap(const int (&perm)[8]) {
  Remap8 r{};
  for (int m = 0; m < 256; ++m) {
    int v = 0;
    for (int j = 0; j < 8; ++j)
      if (m & (1 << j)) v |= 1 << perm[j];
    r.t[m] = (uint8_t)v;
  }
  return r;
}
static constexpr int kPerm0415[8] = {0, 4, 1, 5, 2, 6, 3, 7};
static constexpr int kPerm0246[8] = {0, 2, 4, 6, 1, 3, 5, 7};
static constexpr Remap8 kRemap0415 = make_remap(kPerm0415);
static constexpr Remap8 kRemap0246 = make_remap(kPerm0246);

// Per-byte popcount: nibble lookup with vpshufb (Mula).
static inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
// Popcount of each 8-byte group of v -> 4 x u64, one step fewer than vpsadbw(popcnt_bytes(v)):
// the low-nibble table holds popcount + 4, the high-nibble table 4 - popcount, so
// |lo - hi| = popcount(lo) + popcount(hi) and vpsadbw does the add and the sum together.
static inline __m256i popcnt_sad(__m256i v) {
  const __m256i lut_lo = _mm256_setr_epi8(4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8,  //
                                          4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8);
  const __m256i lut_hi = _mm256_setr_epi8(4, 3, 3, 2, 3, 2, 2, 1, 3, 2, 2, 1, 2, 1, 1, 0,  //
                                          4, 3, 3, 2, 3, 2, 2, 1, 3, 2, 2, 1, 2, 1, 1, 0);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_sad_epu8(_mm256_shuffle_epi8(lut_lo, lo), _mm256_shuffle_epi8(lut_hi, hi));
}
static inline __m256i ld256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
static inline uint32_t lt_mask8(__m256i T, __m256i d) {
  return (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(T, d)));
}

// ---- 4-byte codes: 8 codes per vector, lanes in index order.
static void scan4(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end, TopkState* st) {
  const __m256i qv = _mm256_set1_epi32((int)ld32(q));
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  auto dist = [&](int64_t i) { return dist_fixed<4>(q, db + 4 * i); };
  auto d8 = [&](const uint8_t* p) {
    const __m256i c = popcnt_bytes(_mm256_xor_si256(ld256(p), qv));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(c, ones8), ones16);
  };
  __m256i Tv = _mm256_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const uint8_t* p = db + 4 * i;
    const uint32_t m = lt_mask8(Tv, d8(p)) | (lt_mask8(Tv, d8(p + 32)) << 8);
    if (m) {
      process_hits(m, i, dist, st);
      if (st->T == 0) return;
      Tv = _mm256_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<4>(q, db, i, end, st);
}

// ---- 8-byte codes: two vectors (8 codes) folded into 8 x i32, order {0,4,1,5,2,6,3,7}.
static void scan8(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end, TopkState* st) {
  const __m256i qv = _mm256_set1_epi64x((long long)ld64(q));
  auto dist = [&](int64_t i) { return dist_fixed<8>(q, db + 8 * i); };
  auto d8 = [&](const uint8_t* p) {
    const __m256i a = popcnt_sad(_mm256_xor_si256(ld256(p), qv));
    const __m256i b = popcnt_sad(_mm256_xor_si256(ld256(p + 32), qv));
    return _mm256_or_si256(a, _mm256_slli_epi64(b, 32));
  };
  __m256i Tv = _mm256_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const uint8_t* p = db + 8 * i;
    const uint32_t m0 = lt_mask8(Tv, d8(p));
    const uint32_t m1 = lt_mask8(Tv, d8(p + 64));
    if (m0 | m1) {
      process_hits(kRemap0415.t[m0] | ((uint32_t)kRemap0415.t[m1] << 8), i, dist, st);
      if (st->T == 0) return;
      Tv = _mm256_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<8>(q, db, i, end, st);
}

// ---- 16-byte codes: four vectors (8 codes) -> 8 x i32, order {0,2,4,6,1,3,5,7}.
static void scan16(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end,
                   TopkState* st) {
  const __m256i qv =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  auto dist = [&](int64_t i) { return dist_fixed<16>(q, db + 16 * i); };
  auto d8 = [&](const uint8_t* p) {
    const __m256i a = popcnt_sad(_mm256_xor_si256(ld256(p), qv));
    const __m256i b = popcnt_sad(_mm256_xor_si256(ld256(p + 32), qv));
    const __m256i c = popcnt_sad(_mm256_xor_si256(ld256(p + 64), qv));
    const __m256i d = popcnt_sad(_mm256_xor_si256(ld256(p + 96), qv));
    const __m256i x = _mm256_or_si256(a, _mm256_slli_epi64(b, 32));
    const __m256i y = _mm256_or_si256(c, _mm256_slli_epi64(d, 32));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
  };
  __m256i Tv = _mm256_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const uint8_t* p = db + 16 * i;
    const uint32_t m0 = lt_mask8(Tv, d8(p));
    const uint32_t m1 = lt_mask8(Tv, d8(p + 128));
    if (m0 | m1) {
      process_hits(kRemap0246.t[m0] | ((uint32_t)kRemap0246.t[m1] << 8), i, dist, st);
      if (st->T == 0) return;
      Tv = _mm256_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<16>(q, db, i, end, st);
}

// ---- 32 / 64-byte codes: per-code vector of 4 x u64 partial sums; four codes folded into
// 4 x i32 in index order.
static inline __m128i fold4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i x = _mm256_or_si256(a, _mm256_slli_epi64(b, 32));
  const __m256i y = _mm256_or_si256(c, _mm256_slli_epi64(d, 32));
  const __m256i w = _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
  return _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}
static inline uint32_t lt_mask4(__m128i T, __m128i d) {
  return (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(T, d)));
}

template <int B>
static void scan32x(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end,
                    TopkState* st) {
  static_assert(B == 32 || B == 64, "");
  const __m256i q0 = ld256(q);
  const __m256i q1 = B == 64 ? ld256(q + 32) : q0;
  auto dist = [&](int64_t i) { return dist_fixed<B>(q, db + B * i); };
  auto one = [&](const uint8_t* p) {
    __m256i c = popcnt_sad(_mm256_xor_si256(ld256(p), q0));
    if (B == 64) c = _mm256_add_epi64(c, popcnt_sad(_mm256_xor_si256(ld256(p + 32), q1)));
    return c;
  };
  __m128i Tv = _mm_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const uint8_t* p = db + B * i;
    const uint32_t m0 = lt_mask4(Tv, fold4(one(p), one(p + B), one(p + 2 * B), one(p + 3 * B)));
    const uint32_t m1 = lt_mask4(
        Tv, fold4(one(p + 4 * B), one(p + 5 * B), one(p + 6 * B), one(p + 7 * B)));
    if (m0 | m1) {
      process_hits(m0 | (m1 << 4), i, dist, st);
      if (st->T == 0) return;
      Tv = _mm_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<B>(q, db, i, end, st);
}

// ---- Fused penalty, float32. Same arithmetic and summation order as penalty_f32_t (the
// scalar reference copy), so every ISA gives bit-identical results; the gradient goes out
// with non-temporal stores (it is far larger than the caches and not read back here, and
// streaming avoids the read-for-ownership of every destination line).
static double penalty_f32_avx2(const float* h, float* g, float* loss, int64_t n, float gscale) {
  if (loss != nullptr) return penalty_f32(h, g, loss, n, gscale);
  const bool stream = (reinterpret_cast<uintptr_t>(g) & 31) == 0;
  const __m256 one = _mm256_set1_ps(1.f), minus = _mm256_set1_ps(-1.f);
  const __m256 zero = _mm256_setzero_ps(), gs = _mm256_set1_ps(gscale);
  double total = 0.0;
  int64_t i = 0;
  for (; i + 256 <= n; i += 256) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int b = 0; b < 256; b += 16) {
      const __m256 x0 = _mm256_loadu_ps(h + i + b), x1 = _mm256_loadu_ps(h + i + b + 8);
      const __m256 r0 = _mm256_sub_ps(x0, _mm256_blendv_ps(minus, one, _mm256_cmp_ps(x0, zero, _CMP_GE_OQ)));
      const __m256 r1 = _mm256_sub_ps(x1, _mm256_blendv_ps(minus, one, _mm256_cmp_ps(x1, zero, _CMP_GE_OQ)));
      if (stream) {
        _mm256_stream_ps(g + i + b, _mm256_mul_ps(r0, gs));
        _mm256_stream_ps(g + i + b + 8, _mm256_mul_ps(r1, gs));
      } else {
        _mm256_storeu_ps(g + i + b, _mm256_mul_ps(r0, gs));
        _mm256_storeu_ps(g + i + b + 8, _mm256_mul_ps(r1, gs));
      }
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(r0, r0));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(r1, r1));
    }
    float s8[8];
    _mm256_storeu_ps(s8, _mm256_add_ps(a0, a1));
    double sub = 0.0;
    for (int j = 0; j < 8; ++j) sub += (double)s8[j];
    total += sub;
  }
  if (stream) _mm_sfence();
  return total + penalty_f32(h + i, g + i, nullptr, n - i, gscale);
}

static void scale_f32_avx2(const float* x, float* out, int64_t n, float s) {
  const bool stream = (reinterpret_cast<uintptr_t>(out) & 31) == 0;
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  if (stream) {
    for (; i + 16 <= n; i += 16) {
      _mm256_stream_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
      _mm256_stream_ps(out + i + 8, _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), sv));
    }
    _mm_sfence();
  }
  for (; i < n; ++i) out[i] = x[i] * s;
}

static void scan_topk(const uint8_t* q, const uint8_t* db, int64_t B, int64_t begin, int64_t end,
                      TopkState* st) {
  if (st->T == 0) return;
  switch (B) {
    case 4: return scan4(q, db, begin, end, st);
    case 8: return scan8(q, db, begin, end, st);
    case 16: return scan16(q, db, begin, end, st);
    case 32: return scan32x<32>(q, db, begin, end, st);
    case 64: return scan32x<64>(q, db, begin, end, st);
    default: return scan_scalar_generic(q, db, B, begin, end, st);
  }
}

}  // namespace

const IsaKernels kAvx2Kernels = {"avx2", scan_topk, distances_dispatch, penalty_f32_avx2,
                                 scale_f32_avx2};
const bool kAvx2Compiled = true;

}  // namespace cpu
}  // namespace kdkit

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang: no AVX2 path in this build

namespace kdkit {
namespace cpu {
const IsaKernels kAvx2Kernels = kScalarKernels;
const bool kAvx2Compiled = false;
}  // namespace cpu
}  // namespace kdkit

#endif
