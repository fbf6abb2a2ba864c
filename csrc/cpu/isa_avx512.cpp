// AVX-512 (F + BW + VPOPCNTDQ) kernels, compiled with a target pragma and selected only after
// a runtime check (ops_cpu.cpp). VPOPCNTQ gives one popcount per 64-bit lane, so 8 codes of
// 64 bits are XORed, counted and compared against the running threshold in 3 instructions.
#include "isa_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if !defined(__clang__)
// GCC 12's avx512 headers trip -Wmaybe-uninitialized on _mm512_undefined_*; not our code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__clang__)
#pragma clang attribute push(                                                           \
    __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt"))),            \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#endif

namespace kdkit {
namespace cpu {
namespace {

#define KD_POPCNT64(x) ((int)_mm_popcnt_u64(x))
#include "hamming_impl.inc"

static inline __m512i ld512(const uint8_t* p) { return _mm512_loadu_si512((const void*)p); }

// ---- 4-byte codes: 16 codes per vector, lanes in index order.
static void scan4(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end, TopkState* st) {
  const __m512i qv = _mm512_set1_epi32((int)ld32(q));
  auto dist = [&](int64_t i) { return dist_fixed<4>(q, db + 4 * i); };
  __m512i Tv = _mm512_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const uint8_t* p = db + 4 * i;
    const __m512i d0 = _mm512_popcnt_epi32(_mm512_xor_si512(ld512(p), qv));
    const __m512i d1 = _mm512_popcnt_epi32(_mm512_xor_si512(ld512(p + 64), qv));
    const uint32_t m = (uint32_t)_mm512_cmplt_epi32_mask(d0, Tv) |
                       ((uint32_t)_mm512_cmplt_epi32_mask(d1, Tv) << 16);
    if (m) {
      process_hits(m, i, dist, st);
      if (st->T == 0) return;
      Tv = _mm512_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<4>(q, db, i, end, st);
}

// ---- 8-byte codes: 8 codes per vector, lanes in index order; 32 codes per branch.
static void scan8(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end, TopkState* st) {
  const __m512i qv = _mm512_set1_epi64((long long)ld64(q));
  auto dist = [&](int64_t i) { return dist_fixed<8>(q, db + 8 * i); };
  __m512i Tv = _mm512_set1_epi64(st->T);
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const uint8_t* p = db + 8 * i;
    const __m512i d0 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p), qv));
    const __m512i d1 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 64), qv));
    const __m512i d2 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 128), qv));
    const __m512i d3 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 192), qv));
    const uint32_t m = (uint32_t)_mm512_cmplt_epi64_mask(d0, Tv) |
                       ((uint32_t)_mm512_cmplt_epi64_mask(d1, Tv) << 8) |
                       ((uint32_t)_mm512_cmplt_epi64_mask(d2, Tv) << 16) |
                       ((uint32_t)_mm512_cmplt_epi64_mask(d3, Tv) << 24);
    if (m) {
      process_hits(m, i, dist, st);
      if (st->T == 0) return;
      Tv = _mm512_set1_epi64(st->T);
    }
  }
  scan_scalar_fixed<8>(q, db, i, end, st);
}

// ---- 16-byte codes: 16 codes per branch. Vectors a,b,c,d hold codes 0-3, 4-7, 8-11, 12-15
// (one code per 128-bit lane). After folding, dword j of lane l is code 4j + l.
static inline uint32_t order_16x16(uint32_t m) {
  uint32_t r = 0;
  while (m) {
    const int bit = __builtin_ctz(m);
    m &= m - 1;
    r |= 1u << (4 * (bit & 3) + (bit >> 2));
  }
  return r;
}
static void scan16(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end,
                   TopkState* st) {
  const __m512i qv =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  auto dist = [&](int64_t i) { return dist_fixed<16>(q, db + 16 * i); };
  __m512i Tv = _mm512_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const uint8_t* p = db + 16 * i;
    const __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p), qv));
    const __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 64), qv));
    const __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 128), qv));
    const __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 192), qv));
    const __m512i x = _mm512_or_si512(a, _mm512_slli_epi64(b, 32));
    const __m512i y = _mm512_or_si512(c, _mm512_slli_epi64(d, 32));
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    const uint32_t m = (uint32_t)_mm512_cmplt_epi32_mask(s, Tv);
    if (m) {
      process_hits(order_16x16(m), i, dist, st);
      if (st->T == 0) return;
      Tv = _mm512_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<16>(q, db, i, end, st);
}

// ---- 32-byte codes: 2 codes per vector; 8 codes folded so that lane 0 holds codes
// {0,2,4,6} and lane 2 holds codes {1,3,5,7} (dwords 0..3).
static inline uint32_t order_0246(uint32_t m) {  // bits 0-3 -> 0,2,4,6; bits 8-11 -> 1,3,5,7
  uint32_t r = 0;
  for (int j = 0; j < 4; ++j) {
    r |= ((m >> j) & 1u) << (2 * j);
    r |= ((m >> (8 + j)) & 1u) << (2 * j + 1);
  }
  return r;
}
static void scan32(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end,
                   TopkState* st) {
  const __m512i qv =
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  auto dist = [&](int64_t i) { return dist_fixed<32>(q, db + 32 * i); };
  __m512i Tv = _mm512_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const uint8_t* p = db + 32 * i;
    const __m512i p0 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p), qv));
    const __m512i p1 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 64), qv));
    const __m512i p2 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 128), qv));
    const __m512i p3 = _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p + 192), qv));
    const __m512i x = _mm512_or_si512(p0, _mm512_slli_epi64(p1, 32));
    const __m512i y = _mm512_or_si512(p2, _mm512_slli_epi64(p3, 32));
    const __m512i w = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    const __m512i z = _mm512_add_epi32(w, _mm512_shuffle_i64x2(w, w, _MM_SHUFFLE(2, 3, 0, 1)));
    const uint32_t m = (uint32_t)_mm512_cmplt_epi32_mask(z, Tv) & 0x0F0Fu;
    if (m) {
      process_hits(order_0246(m), i, dist, st);
      if (st->T == 0) return;
      Tv = _mm512_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<32>(q, db, i, end, st);
}

// ---- 64-byte codes: 1 code per vector; 8 codes folded into lane 0 (codes 0-3) and lane 2
// (codes 4-7).
static void scan64(const uint8_t* q, const uint8_t* db, int64_t begin, int64_t end,
                   TopkState* st) {
  const __m512i qv = ld512(q);
  auto dist = [&](int64_t i) { return dist_fixed<64>(q, db + 64 * i); };
#define pc(p) _mm512_popcnt_epi64(_mm512_xor_si512(ld512(p), qv))
#define pair(a, b) _mm512_or_si512((a), _mm512_slli_epi64((b), 32))
#define fold(x, y) _mm512_add_epi32(_mm512_unpacklo_epi64((x), (y)), _mm512_unpackhi_epi64((x), (y)))
  __m512i Tv = _mm512_set1_epi32(st->T);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const uint8_t* p = db + 64 * i;
    const __m512i w0 = fold(pair(pc(p), pc(p + 64)), pair(pc(p + 128), pc(p + 192)));
    const __m512i w1 = fold(pair(pc(p + 256), pc(p + 320)), pair(pc(p + 384), pc(p + 448)));
    const __m512i s = _mm512_add_epi32(_mm512_shuffle_i64x2(w0, w1, _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm512_shuffle_i64x2(w0, w1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512i z = _mm512_add_epi32(s, _mm512_shuffle_i64x2(s, s, _MM_SHUFFLE(2, 3, 0, 1)));
    const uint32_t m = (uint32_t)_mm512_cmplt_epi32_mask(z, Tv);
#undef pc
#undef pair
#undef fold
    const uint32_t mo = (m & 0xFu) | ((m >> 4) & 0xF0u);
    if (mo) {
      process_hits(mo, i, dist, st);
      if (st->T == 0) return;
      Tv = _mm512_set1_epi32(st->T);
    }
  }
  scan_scalar_fixed<64>(q, db, i, end, st);
}

static void scan_topk(const uint8_t* q, const uint8_t* db, int64_t B, int64_t begin, int64_t end,
                      TopkState* st) {
  if (st->T == 0) return;
  switch (B) {
    case 4: return scan4(q, db, begin, end, st);
    case 8: return scan8(q, db, begin, end, st);
    case 16: return scan16(q, db, begin, end, st);
    case 32: return scan32(q, db, begin, end, st);
    case 64: return scan64(q, db, begin, end, st);
    default: return scan_scalar_generic(q, db, B, begin, end, st);
  }
}

}  // namespace

// penalty / scale: nullptr -> ops_cpu.cpp uses the AVX2 copies (memory-bound; streaming
// stores; keeps results bit-identical across ISAs).
const IsaKernels kAvx512Kernels = {"avx512_vpopcntdq", scan_topk, distances_dispatch, nullptr,
                                   nullptr};
const bool kAvx512Compiled = true;

}  // namespace cpu
}  // namespace kdkit

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang

namespace kdkit {
namespace cpu {
const IsaKernels kAvx512Kernels = kScalarKernels;
const bool kAvx512Compiled = false;
}  // namespace cpu
}  // namespace kdkit

#endif
