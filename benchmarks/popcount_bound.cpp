// How fast can AVX2 compute 128-bit Hamming distances at all? A bound for hamming_topk at 128
// bits on AVX2 machines (issue 13, item 5), measured rather than argued.
//
// Two formulations, each the distance pass alone (no top-k selection: a running minimum per
// query keeps the work alive), over N database codes for Q queries, on T OpenMP threads:
//   nibble   the layout kdkit and faiss use (codes as rows): XOR, popcount by vpshufb nibble
//            lookups, vpsadbw, and the two 64-bit halves of each code added.
//   sliced   a bit-plane (transposed) layout: 256 codes per block, one 256-bit plane per bit
//            position; the 128 planes XOR the query's bit are counted by Harley-Seal carry-save
//            adders into bit-sliced counters (the known fastest bulk popcount on AVX2).
// Both are checked against a scalar popcount before timing. Prints one JSON object.
//
// Build: g++ -O3 -mavx2 -fopenmp -o popcount_bound popcount_bound.cpp
// Run:   ./popcount_bound N Q REPEAT THREADS   (see benchmarks/popcount_bound.py)
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

constexpr int kBits = 128;
constexpr int kBlock = 256;  // codes per bit-plane block

inline __m256i popcount_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Rows: 2 x uint64 per code. Four codes per step; returns the minimum distance.
uint32_t nibble_min(const uint64_t* q, const uint64_t* db, int64_t n) {
  const __m256i qv = _mm256_setr_epi64x((long long)q[0], (long long)q[1], (long long)q[0],
                                        (long long)q[1]);
  __m256i best = _mm256_set1_epi32(kBits + 1);
  const __m256i zero = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(db + 2 * i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(db + 2 * i + 4));
    const __m256i sa = _mm256_sad_epu8(popcount_bytes(_mm256_xor_si256(a, qv)), zero);
    const __m256i sb = _mm256_sad_epu8(popcount_bytes(_mm256_xor_si256(b, qv)), zero);
    // lanes: (a0 lo, a0 hi, a1 lo, a1 hi) and the same for b -> four distances
    const __m256i d = _mm256_add_epi64(_mm256_unpacklo_epi64(sa, sb), _mm256_unpackhi_epi64(sa, sb));
    best = _mm256_min_epu32(best, d);
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), best);
  uint32_t m = kBits + 1;
  for (int j = 0; j < 8; j += 2) m = std::min(m, lanes[j]);
  for (; i < n; ++i)
    m = std::min<uint32_t>(m, __builtin_popcountll(db[2 * i] ^ q[0]) +
                                  __builtin_popcountll(db[2 * i + 1] ^ q[1]));
  return m;
}

inline void csa(__m256i& h, __m256i& l, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  l = _mm256_xor_si256(u, c);
}

// One block: planes[b] holds bit b of 256 codes; qmask[b] is all ones where the query's bit b is
// set. Counts the 128 differing-bit planes into bit-sliced counters c[0..7] (c[k]: bit k of each
// code's distance, 8 bits hold 0..128).
inline void sliced_count(const __m256i* planes, const __m256i* qmask, __m256i c[8]) {
  __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones;
  __m256i sixteens[kBits / 16];
  for (int g = 0; g < kBits / 16; ++g) {
    const __m256i* p = planes + 16 * g;
    const __m256i* m = qmask + 16 * g;
    __m256i x[16];
    for (int j = 0; j < 16; ++j) x[j] = _mm256_xor_si256(_mm256_load_si256(p + j), m[j]);
    __m256i twos_a, twos_b, fours_a, fours_b, eights_a, eights_b;
    csa(twos_a, ones, ones, x[0], x[1]);
    csa(twos_b, ones, ones, x[2], x[3]);
    csa(fours_a, twos, twos, twos_a, twos_b);
    csa(twos_a, ones, ones, x[4], x[5]);
    csa(twos_b, ones, ones, x[6], x[7]);
    csa(fours_b, twos, twos, twos_a, twos_b);
    csa(eights_a, fours, fours, fours_a, fours_b);
    csa(twos_a, ones, ones, x[8], x[9]);
    csa(twos_b, ones, ones, x[10], x[11]);
    csa(fours_a, twos, twos, twos_a, twos_b);
    csa(twos_a, ones, ones, x[12], x[13]);
    csa(twos_b, ones, ones, x[14], x[15]);
    csa(fours_b, twos, twos, twos_a, twos_b);
    csa(eights_b, fours, fours, fours_a, fours_b);
    csa(sixteens[g], eights, eights, eights_a, eights_b);
  }
  // eight weight-16 planes -> bits 4..7 (at most 8 * 16 = 128)
  __m256i s32a, s16a, s32b, s16b, s64, s32, s16;
  csa(s32a, s16a, sixteens[0], sixteens[1], sixteens[2]);
  csa(s32b, s16b, sixteens[3], sixteens[4], sixteens[5]);
  __m256i s32c, s16c;
  csa(s32c, s16c, s16a, s16b, sixteens[6]);  // weight-16 carries of the first six and the 7th
  __m256i s32d;
  s32d = _mm256_and_si256(s16c, sixteens[7]);  // half adder with the 8th
  s16 = _mm256_xor_si256(s16c, sixteens[7]);
  __m256i s64a;
  csa(s64a, s32, s32a, s32b, s32c);
  s64 = _mm256_or_si256(s64a, _mm256_and_si256(s32, s32d));  // no overflow past 128
  s32 = _mm256_xor_si256(s32, s32d);
  const __m256i s128 = _mm256_and_si256(s64a, _mm256_and_si256(s32, s32d));
  c[0] = ones;
  c[1] = twos;
  c[2] = fours;
  c[3] = eights;
  c[4] = s16;
  c[5] = s32;
  c[6] = _mm256_xor_si256(s64, s128);
  c[7] = s128;
}

// Counts every block; a bit-sliced "distance < 32" test (about the cost of a top-k's threshold
// test) folded into one word keeps the work observable.
uint32_t sliced_scan(const __m256i* blocks, int64_t nblocks, const __m256i* qmask) {
  __m256i acc = _mm256_setzero_si256();
  for (int64_t k = 0; k < nblocks; ++k) {
    __m256i c[8];
    sliced_count(blocks + k * kBits, qmask, c);
    // a bit-sliced "distance < 32" test: c[5] | c[6] | c[7] == 0 (about the cost of a threshold test)
    acc = _mm256_or_si256(acc, _mm256_andnot_si256(_mm256_or_si256(c[5], _mm256_or_si256(c[6], c[7])),
                                                   _mm256_or_si256(c[0], c[4])));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return (uint32_t)__builtin_popcountll(lanes[0] | lanes[1] | lanes[2] | lanes[3]);
}

uint32_t distance_of(const __m256i* block, int j, const __m256i* qmask) {
  __m256i c[8];
  sliced_count(block, qmask, c);
  uint32_t d = 0;
  for (int k = 0; k < 8; ++k) {
    alignas(32) uint8_t bytes[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), c[k]);
    d |= (uint32_t)((bytes[j / 8] >> (j % 8)) & 1) << k;
  }
  return d;
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const int64_t nq = argc > 2 ? std::atoll(argv[2]) : 1000;
  const int repeat = argc > 3 ? std::atoi(argv[3]) : 5;
  const int threads = argc > 4 ? std::atoi(argv[4]) : omp_get_max_threads();
  omp_set_num_threads(threads);
  const int64_t nblocks = (n + kBlock - 1) / kBlock, npad = nblocks * kBlock;

  std::mt19937_64 rng(1234);
  std::vector<uint64_t> db(2 * npad), qs(2 * nq);
  for (auto& w : db) w = rng();
  for (auto& w : qs) w = rng();
  // bit planes: block k, plane b, bit j of the 256-bit word <-> bit b of code k * 256 + j
  __m256i* planes = static_cast<__m256i*>(std::aligned_alloc(32, sizeof(__m256i) * nblocks * kBits));
  for (int64_t k = 0; k < nblocks; ++k)
    for (int b = 0; b < kBits; ++b) {
      alignas(32) uint64_t w[4] = {0, 0, 0, 0};
      for (int j = 0; j < kBlock; ++j) {
        const uint64_t bit = (db[2 * (k * kBlock + j) + b / 64] >> (b % 64)) & 1;
        w[j / 64] |= bit << (j % 64);
      }
      planes[k * kBits + b] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
    }

  // correctness of both formulations against a scalar popcount
  for (int64_t qi = 0; qi < std::min<int64_t>(nq, 4); ++qi) {
    const uint64_t* q = &qs[2 * qi];
    uint32_t want = kBits + 1;
    for (int64_t i = 0; i < n; ++i)
      want = std::min<uint32_t>(want, __builtin_popcountll(db[2 * i] ^ q[0]) +
                                          __builtin_popcountll(db[2 * i + 1] ^ q[1]));
    if (nibble_min(q, db.data(), n) != want) {
      std::fprintf(stderr, "nibble: wrong minimum\n");
      return 1;
    }
    alignas(32) __m256i qmask[kBits];
    for (int b = 0; b < kBits; ++b)
      qmask[b] = ((q[b / 64] >> (b % 64)) & 1) ? _mm256_set1_epi32(-1) : _mm256_setzero_si256();
    for (int64_t i : {int64_t(0), int64_t(1), int64_t(255), n / 2, n - 1}) {
      const uint32_t d = __builtin_popcountll(db[2 * i] ^ q[0]) + __builtin_popcountll(db[2 * i + 1] ^ q[1]);
      if (distance_of(planes + (i / kBlock) * kBits, (int)(i % kBlock), qmask) != d) {
        std::fprintf(stderr, "sliced: wrong distance for code %lld\n", (long long)i);
        return 1;
      }
    }
  }

  // Query masks of the sliced form, made once (a top-k would make them once per query too).
  std::vector<uint64_t> mask_words(nq * kBits * 4 + 4);  // 32-byte aligned view below
  __m256i* masks = reinterpret_cast<__m256i*>((reinterpret_cast<uintptr_t>(mask_words.data()) + 31) & ~uintptr_t(31));
  for (int64_t qi = 0; qi < nq; ++qi)
    for (int b = 0; b < kBits; ++b)
      _mm256_store_si256(masks + qi * kBits + b, ((qs[2 * qi + b / 64] >> (b % 64)) & 1)
                                                     ? _mm256_set1_epi32(-1) : _mm256_setzero_si256());
  // Cache blocking as a real kernel does: each thread takes its queries through the database one
  // L2-sized chunk at a time, so the codes come from cache, not from memory, once per query.
  constexpr int64_t kChunk = 64 * kBlock;  // 16,384 codes: 256 KiB in either layout
  volatile uint64_t sink = 0;
  auto time_it = [&](auto&& scan) {
    std::vector<double> ts;
    for (int r = 0; r < repeat + 1; ++r) {  // the first run warms up
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t s = 0;
#pragma omp parallel reduction(+ : s)
      {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t q0 = nq * t / nt, q1 = nq * (t + 1) / nt;
        for (int64_t c0 = 0; c0 < npad; c0 += kChunk)
          for (int64_t qi = q0; qi < q1; ++qi) s += scan(qi, c0, std::min(npad, c0 + kChunk));
      }
      const double t = seconds(t0);
      sink = sink + s;
      if (r > 0) ts.push_back(t);
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
  };
  const double t_nibble = time_it([&](int64_t qi, int64_t c0, int64_t c1) {
    return nibble_min(&qs[2 * qi], db.data() + 2 * c0, c1 - c0);
  });
  const double t_sliced = time_it([&](int64_t qi, int64_t c0, int64_t c1) {
    return sliced_scan(planes + (c0 / kBlock) * kBits, (c1 - c0) / kBlock, masks + qi * kBits);
  });
  const double pairs = double(npad) * double(nq);  // both scan the padded database
  std::printf("{\"n\": %lld, \"q\": %lld, \"threads\": %d, \"repeat\": %d, "
              "\"nibble_s\": %.6f, \"sliced_s\": %.6f, \"nibble_pairs_per_s\": %.4e, "
              "\"sliced_pairs_per_s\": %.4e}\n",
              (long long)npad, (long long)nq, threads, repeat, t_nibble, t_sliced, pairs / t_nibble,
              pairs / t_sliced);
  std::free(planes);
  return 0;
}
