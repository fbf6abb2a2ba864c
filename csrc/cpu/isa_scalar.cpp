// Portable (baseline x86-64 / any architecture) kernels.
#include "isa_kernels.h"

namespace kdkit {
namespace cpu {
namespace {

// Baseline x86-64 has no POPCNT instruction; __builtin_popcountll would call libgcc.
static inline int swar_popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return (int)((x * 0x0101010101010101ULL) >> 56);
}
#define KD_POPCNT64(x) swar_popcount64(x)

#include "hamming_impl.inc"

static void scan_topk(const uint8_t* q, const uint8_t* db, int64_t B, int64_t begin, int64_t end,
                      TopkState* st) {
  if (st->T == 0) return;
  switch (B) {
    case 4: return scan_scalar_fixed<4>(q, db, begin, end, st);
    case 8: return scan_scalar_fixed<8>(q, db, begin, end, st);
    case 16: return scan_scalar_fixed<16>(q, db, begin, end, st);
    case 32: return scan_scalar_fixed<32>(q, db, begin, end, st);
    case 64: return scan_scalar_fixed<64>(q, db, begin, end, st);
    default: return scan_scalar_generic(q, db, B, begin, end, st);
  }
}

}  // namespace

const IsaKernels kScalarKernels = {"scalar", scan_topk, distances_dispatch, penalty_f32,
                                   scale_f32};

}  // namespace cpu
}  // namespace kdkit
