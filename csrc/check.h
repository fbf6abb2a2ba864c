// KDKIT_CHECK: TORCH_CHECK with its message built without iostreams.
//
// Why not TORCH_CHECK's own message building: on one lent GPU image (torch 2.11.0+cu130,
// Python 3.12) every kdkit check whose message streamed an integer into TORCH_CHECK's
// std::ostringstream crashed the process (SIGSEGV) instead of raising, on CPU and CUDA kernels
// alike, while messages of strings and devices raised (docs/gpu.md). Integers and shapes are
// therefore rendered here with std::to_string, which never touches a locale facet; the finished
// std::string is the one argument TORCH_CHECK sees. Messages are the same text as before
// ("[2, 3]" for a shape, "Float" for a dtype, "cuda:0" for a device), and, as with
// TORCH_CHECK, nothing is built unless the check fails.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <type_traits>

namespace kdkit {
namespace check_detail {

inline void append(std::string& out, const char* text) { out += text; }
inline void append(std::string& out, const std::string& text) { out += text; }
inline void append(std::string& out, c10::string_view text) { out.append(text.data(), text.size()); }
inline void append(std::string& out, char c) { out += c; }
inline void append(std::string& out, c10::ScalarType dtype) { out += c10::toString(dtype); }
inline void append(std::string& out, const c10::Device& device) { out += device.str(); }
inline void append(std::string& out, c10::IntArrayRef sizes) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(sizes[i]);
  }
  out += ']';
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                                  !std::is_same_v<T, char>>>
inline void append(std::string& out, T value) {
  out += std::to_string(value);
}

}  // namespace check_detail

template <typename... Args>
std::string check_message(const Args&... args) {
  std::string out;
  (check_detail::append(out, args), ...);
  return out;
}

}  // namespace kdkit

// The message arguments are evaluated only when the condition fails (inside TORCH_CHECK's branch).
#define KDKIT_CHECK(cond, ...) TORCH_CHECK(cond, ::kdkit::check_message(__VA_ARGS__))
