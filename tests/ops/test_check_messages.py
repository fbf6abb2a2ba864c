"""csrc/check.h: the C++ argument checks build their messages without iostreams (integers and
shapes through std::to_string, dtypes and devices by name) and must read exactly as TORCH_CHECK's
streamed messages did: every kind of argument a kdkit check formats, compared whole."""
from __future__ import annotations

import pytest
import torch

import kdkit.ops as ops

pytestmark = pytest.mark.skipif(not ops.extension_info()["loaded"], reason="kdkit._C not built")

kd = torch.ops.kdkit
CODES = torch.zeros(2, 8, dtype=torch.uint8)
LONG = torch.long

CASES = {
    "integers": (lambda: kd.hamming_topk(CODES, CODES, 0),
                 "hamming_topk: k=0 out of range; expected 1 <= k <= 2 (number of db_codes)"),
    "a negative 64-bit integer": (lambda: kd.hamming_topk(CODES, CODES, -2**40),
                                  "hamming_topk: k=-1099511627776 out of range; expected 1 <= k <= 2 (number of db_codes)"),
    "sizes": (lambda: kd.hamming_distance(CODES, torch.zeros(2, 4, dtype=torch.uint8)),
              "hamming_distance: code widths differ: query_codes has 8 bytes, db_codes has 4"),
    "a dimension count": (lambda: kd.hamming_distance(CODES[0], CODES),
                          "hamming_distance: query_codes must be 2-D (Q, B), got 1-D"),
    "a dtype": (lambda: kd.hamming_distance(CODES.float(), CODES),
                "hamming_distance: query_codes must be uint8, got Float"),
    "an int argument": (lambda: kd.binarization_penalty(torch.zeros(3), 7),
                        "binarization_penalty: reduction must be 0 (none), 1 (mean) or 2 (sum), got 7"),
    "shapes": (lambda: kd.binarization_penalty_backward(torch.zeros(2, 3), torch.zeros(3, 2), 0),
               "binarization_penalty_backward: grad_output shape [2, 3] != grad_factor shape [3, 2]"),
    "a 1-D shape": (lambda: kd.hamming_average_precision(CODES, CODES, torch.zeros(2, dtype=LONG),
                                                         torch.zeros(2, 1, dtype=LONG), 2, "truncated"),
                    "hamming_average_precision: labels must be 2-D int64 bitsets (rows, words), got [2] and [2, 1]"),
    "a string argument": (lambda: kd.hamming_average_precision(CODES, CODES, torch.zeros(2, 1, dtype=LONG),
                                                               torch.zeros(2, 1, dtype=LONG), 2, "all"),
                          "hamming_average_precision: variant must be 'truncated' or 'dchmt', got 'all'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_message_reads_as_torch_check_streamed_it(case):
    call, expected = CASES[case]
    with pytest.raises(RuntimeError) as raised:
        call()
    assert str(raised.value).splitlines()[0] == expected
