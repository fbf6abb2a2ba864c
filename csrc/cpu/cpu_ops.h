// Non-dispatched helpers implemented in ops_cpu.cpp and exposed to Python by ops.cpp.
#pragma once

#include <string>
#include <vector>

namespace kdkit {
namespace cpu {

// Name of the ISA path used by the CPU kernels: "avx512_vpopcntdq" | "avx2" | "scalar".
const char* active_isa_name();
// ISA paths this build + machine can run, best first.
std::vector<std::string> available_isas();
// Forces an ISA path ("scalar", "avx2", "avx512"/"avx512_vpopcntdq", "auto"). Returns an
// empty string on success, else an error message. Initial value: env KDKIT_CPU_ISA.
std::string set_isa(const std::string& name);
// Releases the CPU buffers kept for reuse by the penalty ops (see ops_cpu.cpp).
void clear_buffer_cache();

}  // namespace cpu
}  // namespace kdkit
