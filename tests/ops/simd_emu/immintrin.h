// Test-only stand-in for <immintrin.h>: SIMDe portable implementations of the x86
// intrinsics, so the AVX2 / AVX-512 kernels can be checked on machines without those ISAs.
// Plus the few intrinsics SIMDe 0.7.4 lacks, with Intel semantics.
#pragma once
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/sse4.2.h>
#include <cstring>
#define _mm_popcnt_u64(x) ((long long)__builtin_popcountll(x))
#define _mm512_cmplt_epi32_mask(a, b) _mm512_cmpgt_epi32_mask((b), (a))
#define _mm512_cmplt_epi64_mask(a, b) _mm512_cmpgt_epi64_mask((b), (a))
static inline __m512i emu_shuffle_i64x2(__m512i a, __m512i b, int imm) {
  __m128i la[4], lb[4], r[4];
  std::memcpy(la, &a, 64); std::memcpy(lb, &b, 64);
  r[0] = la[imm & 3]; r[1] = la[(imm >> 2) & 3]; r[2] = lb[(imm >> 4) & 3]; r[3] = lb[(imm >> 6) & 3];
  __m512i out; std::memcpy(&out, r, 64); return out;
}
#define _mm512_shuffle_i64x2(a, b, imm) emu_shuffle_i64x2((a), (b), (imm))
