"""ranked_average_precision: the counting kernel vs the sorting reference and a plain-Python
oracle (ties by index), opcheck, bad input and the reference fallback for other devices."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import kdkit.ops as ops
from kdkit.ops import reference

needs_ext = pytest.mark.skipif(
    not ops.extension_info()["loaded"], reason="kdkit._C not built (fallback tested elsewhere)"
)


def _oracle(d: torch.Tensor, r: torch.Tensor) -> list[float]:
    out = []
    for row, rel in zip(d.tolist(), r.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: (row[j], j))
        hits, total = 0, 0.0
        for pos, j in enumerate(ranked, 1):
            if rel[j]:
                hits += 1
                total += hits / pos
        out.append(total / hits if hits else 0.0)
    return out


def test_hand_computed_example_with_ties():
    # ranking by (distance, index): items 1 (d=0), 0 (d=1), 2 (d=1), 3 (d=2)
    d = torch.tensor([[1, 0, 1, 2]], dtype=torch.int32)
    r = torch.tensor([[False, True, True, False]])
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert ops.ranked_average_precision(d, r).tolist() == pytest.approx([(1 + 2 / 3) / 2])


@given(q=st.integers(1, 6), n=st.integers(1, 300), levels=st.integers(1, 70), p=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_matches_reference_and_oracle(q, n, levels, p, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(0, levels, (q, n), generator=g, dtype=torch.int32)
    r = torch.rand(q, n, generator=g) < p
    got = ops.ranked_average_precision(d, r)
    assert got.dtype == torch.float64 and got.shape == (q,)
    torch.testing.assert_close(got, reference.ranked_average_precision(d, r), rtol=0, atol=1e-12)
    assert got.tolist() == pytest.approx(_oracle(d, r), abs=1e-12)


def test_no_relevant_item_gives_zero_and_non_contiguous_inputs_work():
    d = torch.randint(0, 9, (40, 6), dtype=torch.int32).t()  # (6, 40), non-contiguous
    r = (torch.rand(40, 6) < 0.4).t()
    r[2] = False
    got = ops.ranked_average_precision(d, r)
    assert got[2].item() == 0.0
    torch.testing.assert_close(got, reference.ranked_average_precision(d.contiguous(), r.contiguous()))


@needs_ext
def test_opcheck():
    d = torch.randint(0, 65, (5, 200), dtype=torch.int32)
    r = torch.rand(5, 200) < 0.2
    torch.library.opcheck(torch.ops.kdkit.ranked_average_precision.default, (d, r))


@pytest.mark.parametrize("distances, relevant, message", [
    (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool), "distances must be int32"),
    (torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3), "relevant must be bool"),
    (torch.zeros(6, dtype=torch.int32), torch.zeros(6, dtype=torch.bool), "distances must be 2-D"),
    (torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.bool), "relevant has shape"),
    (-torch.ones(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.bool), "distances must be >= 0"),
])
def test_bad_input_names_the_argument(distances, relevant, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ops.ranked_average_precision(distances, relevant)


@needs_ext
def test_kernel_rejects_negative_distances():
    with pytest.raises(RuntimeError, match="distances must be >= 0"):
        torch.ops.kdkit.ranked_average_precision(-torch.ones(2, 3, dtype=torch.int32),
                                                 torch.zeros(2, 3, dtype=torch.bool))
