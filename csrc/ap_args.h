// Argument checks of kdkit::hamming_average_precision, shared by its CPU and CUDA kernels (each
// checks its codes and the labels' device itself first). Returns which relevant items the AP keeps.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>

#include "check.h"

namespace kdkit {

// Which relevant items an AP keeps: all of them; those ranked in the top k; the first k of them.
enum class ApCut : int { All = 0, Truncated = 1, FirstRelevant = 2 };

inline ApCut check_ap_arguments(const char* op, const at::Tensor& query_codes, const at::Tensor& db_codes,
                                const at::Tensor& query_labels, const at::Tensor& db_labels, int64_t k,
                                c10::string_view variant) {
  KDKIT_CHECK(query_labels.dim() == 2 && db_labels.dim() == 2, op,
              ": labels must be 2-D int64 bitsets (rows, words), got ", query_labels.sizes(), " and ",
              db_labels.sizes());
  KDKIT_CHECK(query_labels.scalar_type() == at::kLong && db_labels.scalar_type() == at::kLong, op,
              ": labels must be int64 bitsets, got ", query_labels.scalar_type(), " and ",
              db_labels.scalar_type());
  KDKIT_CHECK(query_labels.size(0) == query_codes.size(0), op, ": query_labels has ",
              query_labels.size(0), " rows but query_codes has ", query_codes.size(0));
  KDKIT_CHECK(db_labels.size(0) == db_codes.size(0), op, ": db_labels has ", db_labels.size(0),
              " rows but db_codes has ", db_codes.size(0));
  KDKIT_CHECK(query_labels.size(1) == db_labels.size(1) && query_labels.size(1) > 0, op,
              ": query_labels and db_labels must have the same number (> 0) of words, got ",
              query_labels.size(1), " and ", db_labels.size(1));
  const int64_t n = db_codes.size(0), nbits = 8 * query_codes.size(1);
  KDKIT_CHECK(n < ((int64_t)1 << 31), op, ": at most 2^31 - 1 database codes, got ", n);
  KDKIT_CHECK(2 * nbits + 1 <= 0xFFFF, op, ": codes longer than 32,767 bits are not supported");
  KDKIT_CHECK(k >= 1 && k <= n, op, ": k must be in [1, N=", n, "], got ", k);
  if (variant == "truncated") return k == n ? ApCut::All : ApCut::Truncated;
  if (variant == "dchmt") return k == n ? ApCut::All : ApCut::FirstRelevant;
  KDKIT_CHECK(false, op, ": variant must be 'truncated' or 'dchmt', got '", std::string(variant), "'");
}

}  // namespace kdkit
