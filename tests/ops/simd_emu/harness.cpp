// Brute-force check of the raw AVX2 / AVX-512 kernel tables (built against SIMDe emulation by
// tests/ops/test_ops_simd_emulation.py). Exits non-zero on any mismatch.
#include "isa_kernels.h"
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>
namespace kdkit { namespace cpu {
void topk_compact(TopkState& s) {
  int32_t keep_at_T = s.k - s.c; int32_t m = 0;
  for (int32_t j = 0; j < s.n; ++j) {
    const int32_t d = s.dist[j]; bool keep = d < s.T;
    if (!keep && d == s.T && keep_at_T > 0) { keep = true; --keep_at_T; }
    if (keep) { s.dist[m] = d; s.idx[m] = s.idx[j]; ++m; } else { --s.hist[d]; }
  }
  s.n = m;
}
const IsaKernels kScalarKernels = {"x", nullptr, nullptr, nullptr, nullptr};
}}
using namespace kdkit::cpu;
int main() {
  std::mt19937_64 rng(1);
  long checks = 0, fails = 0;
  for (const IsaKernels* K : {&kAvx2Kernels, &kAvx512Kernels}) {
  for (int B : {1, 3, 4, 8, 16, 24, 32, 64, 128}) for (int mode = 0; mode < 3; ++mode) for (int N : {1, 7, 31, 33, 100, 1000, 4099}) for (int k : {1, 5, 64}) {
    if (k > N) continue;
    std::vector<uint8_t> db((size_t)N * B), q(B);
    for (auto& x : db) x = mode == 0 ? rng() : mode == 1 ? (rng() % 10 == 0 ? rng() & 3 : 0) : 0x5a;
    for (auto& x : q) x = mode == 2 ? 0x5a : rng();
    std::vector<int> bd(N);
    for (int i = 0; i < N; ++i) { int d = 0; for (int b = 0; b < B; ++b) d += __builtin_popcount(q[b] ^ db[(size_t)i * B + b]); bd[i] = d; }
    std::vector<int32_t> out(N); K->distances(q.data(), db.data(), B, 0, N, out.data());
    for (int i = 0; i < N; ++i) if (out[i] != bd[i]) { ++fails; break; }
    std::vector<int> ord(N); for (int i = 0; i < N; ++i) ord[i] = i;
    std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return bd[a] < bd[b]; });
    int cap = k + std::max(k, 256); int L = 8 * B;
    std::vector<int32_t> dist(cap), hist(L + 2, 0); std::vector<int64_t> idx(cap);
    TopkState st{L + 1, 0, k, 0, cap, dist.data(), idx.data(), hist.data()};
    // scan in two chunks to exercise chunk boundaries
    int mid = N / 3;
    K->scan_topk(q.data(), db.data(), B, 0, mid, &st);
    K->scan_topk(q.data(), db.data(), B, mid, N, &st);
    topk_compact(st);
    std::vector<std::pair<int,int64_t>> got; for (int j = 0; j < st.n; ++j) got.push_back({st.dist[j], st.idx[j]});
    std::sort(got.begin(), got.end());
    ++checks;
    bool ok = (int)got.size() == k;
    for (int j = 0; ok && j < k; ++j) ok = got[j].first == bd[ord[j]] && got[j].second == ord[j];
    if (!ok) { ++fails; std::printf("FAIL %s B=%d mode=%d N=%d k=%d\n", K->name, B, mode, N, k); }
  }
  // penalty / scale
  if (K->penalty_f32) {
    std::vector<float> h(70000), g(70000), g2(70000); std::normal_distribution<float> nd;
    for (auto& x : h) x = nd(rng);
    double a = K->penalty_f32(h.data(), g.data(), nullptr, 70000, 0.5f);
    double s = 0; bool ok = true;
    for (int i = 0; i < 70000; ++i) { float r = h[i] - (h[i] >= 0 ? 1.f : -1.f); s += (double)r * r; ok &= g[i] == r * 0.5f; }
    ++checks; if (!ok || std::abs(a - s) > 1e-6 * s) { ++fails; std::printf("FAIL penalty %s %f %f\n", K->name, a, s); }
  }
  }
  std::printf("checks=%ld fails=%ld\n", checks, fails);
  return fails != 0;
}
