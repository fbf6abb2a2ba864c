"""hamming_average_precision: the fused counting kernel vs the sorting reference and a
plain-Python oracle (ranking by (distance, index), both AP@k variants), pack_labels, opcheck,
thread-count independence, bad input and the reference fallback."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import kdkit.ops as ops
from kdkit.ops import reference

needs_ext = pytest.mark.skipif(
    not ops.extension_info()["loaded"], reason="kdkit._C not built (fallback tested elsewhere)"
)


def _oracle(q, d, ql, dl, k, variant) -> list[float]:
    """Straight from the definitions, on Python ints."""
    qc = [int.from_bytes(bytes(r), "little") for r in q.tolist()]
    dc = [int.from_bytes(bytes(r), "little") for r in d.tolist()]
    out = []
    for code, labels in zip(qc, ql.tolist()):
        dist = [bin(code ^ c).count("1") for c in dc]
        rel = [any(a & b for a, b in zip(labels, row)) for row in dl.tolist()]
        ranked = sorted(range(len(dc)), key=lambda j: (dist[j], j))
        hits, terms = 0, []
        for pos, j in enumerate(ranked, 1):
            if rel[j]:
                hits += 1
                if (pos <= k) if variant == "truncated" else (hits <= k):
                    terms.append(hits / pos)
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return out


def _case(g, q, n, nbytes, ncls, p):
    codes = torch.randint(0, 256, (q + n, nbytes), generator=g, dtype=torch.uint8)
    if nbytes >= 2:  # few distinct codes -> many distance ties
        codes[:, 1:] = codes[0, 1:]
    labels = ops.pack_labels(torch.rand(q + n, ncls, generator=g) < p)
    return codes[:q], codes[q:], labels[:q], labels[q:]


def test_hand_computed_example_with_ties():
    # one-byte codes; distances to the query 0b0000: items 0..3 -> 1, 0, 1, 2
    q = torch.tensor([[0]], dtype=torch.uint8)
    d = torch.tensor([[1], [0], [2], [3]], dtype=torch.uint8)
    ql = ops.pack_labels(torch.tensor([[1, 0]]))
    dl = ops.pack_labels(torch.tensor([[0, 1], [1, 1], [1, 0], [0, 1]]))
    # ranking by (distance, index): 1, 0, 2, 3; relevant 1 and 2 at ranks 1 and 3
    assert ops.hamming_average_precision(q, d, ql, dl).tolist() == pytest.approx([(1 + 2 / 3) / 2])
    assert ops.hamming_average_precision(q, d, ql, dl, k=2).tolist() == pytest.approx([1.0])  # truncated @2
    assert ops.hamming_average_precision(q, d, ql, dl, k=1, variant="dchmt").tolist() == pytest.approx([1.0])
    assert ops.hamming_average_precision(q, d, ql, dl, k=2, variant="dchmt").tolist() == pytest.approx(
        [(1 + 2 / 3) / 2])


@given(q=st.integers(1, 5), n=st.integers(1, 200), nbytes=st.sampled_from([1, 3, 4, 8, 16]),
       ncls=st.sampled_from([1, 5, 64, 70, 130]), p=st.floats(0.0, 0.6), k=st.integers(1, 250),
       variant=st.sampled_from(["truncated", "dchmt"]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_matches_reference_and_oracle(q, n, nbytes, ncls, p, k, variant, seed):
    qc, dc, ql, dl = _case(torch.Generator().manual_seed(seed), q, n, nbytes, ncls, p)
    got = ops.hamming_average_precision(qc, dc, ql, dl, k, variant)
    assert got.dtype == torch.float64 and got.shape == (q,)
    torch.testing.assert_close(got, reference.hamming_average_precision(qc, dc, ql, dl, min(k, n), variant),
                               rtol=0, atol=1e-12)
    assert got.tolist() == pytest.approx(_oracle(qc, dc, ql, dl, min(k, n), variant), abs=1e-12)


def test_pack_labels_layout():
    labels = torch.zeros(3, 130)
    labels[0, 0] = labels[1, 63] = labels[2, 64] = labels[2, 129] = 1
    packed = ops.pack_labels(labels)
    assert packed.dtype == torch.int64 and packed.shape == (3, 3)
    assert packed[0].tolist() == [1, 0, 0]
    assert packed[1].tolist() == [-(2**63), 0, 0]  # bit 63 is the sign bit of an int64 word
    assert packed[2].tolist() == [0, 1, 2]


def test_query_without_labels_or_relevant_items_gives_zero_and_non_contiguous_inputs_work():
    g = torch.Generator().manual_seed(3)
    qc, dc, ql, dl = _case(g, 6, 50, 8, 10, 0.3)
    ql[2] = 0  # no label at all
    dl_none = dl.clone()
    dl_none[:, :] = 0
    got = ops.hamming_average_precision(qc, dc, ql, dl)
    assert got[2].item() == 0.0
    assert ops.hamming_average_precision(qc, dc, ql, dl_none).tolist() == [0.0] * 6
    wide = torch.stack([dc, dc], 2)[:, :, 0]  # non-contiguous view of the same bytes
    assert not wide.is_contiguous()
    torch.testing.assert_close(ops.hamming_average_precision(qc, wide, ql, dl), got, rtol=0, atol=0)


@needs_ext
def test_same_result_for_any_thread_count():
    qc, dc, ql, dl = _case(torch.Generator().manual_seed(5), 64, 3000, 8, 24, 0.15)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.hamming_average_precision(qc, dc, ql, dl)
        torch.set_num_threads(max(2, threads))
        many = ops.hamming_average_precision(qc, dc, ql, dl)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@needs_ext
def test_opcheck():
    qc, dc, ql, dl = _case(torch.Generator().manual_seed(1), 5, 200, 8, 24, 0.2)
    for k, variant in ((200, "truncated"), (10, "truncated"), (10, "dchmt")):
        torch.library.opcheck(torch.ops.kdkit.hamming_average_precision.default, (qc, dc, ql, dl, k, variant))


_Q = torch.zeros(2, 8, dtype=torch.uint8)
_D = torch.zeros(3, 8, dtype=torch.uint8)
_QL = torch.zeros(2, 1, dtype=torch.int64)
_DL = torch.zeros(3, 1, dtype=torch.int64)


@pytest.mark.parametrize("args, kwargs, message", [
    ((_Q.float(), _D, _QL, _DL), {}, "query_codes must be uint8"),
    ((_Q, _D[:, :4], _QL, _DL), {}, "code widths differ"),
    ((_Q, _D, _QL.int(), _DL), {}, "query_labels must be int64 label bitsets"),
    ((_Q, _D, _QL, _DL[:2]), {}, "db_labels has 2 rows but db_codes has 3"),
    ((_Q, _D, _QL, torch.zeros(3, 2, dtype=torch.int64)), {}, "words per row"),
    ((_Q, _D, _QL, _DL), {"variant": "dcmh"}, "variant must be one of"),
    ((_Q, _D, _QL, _DL), {"k": 0}, "k must be >= 1"),
    ((_Q, _D, _QL, _DL), {"k": 2.5}, "k must be a positive int"),
])
def test_bad_input_names_the_argument(args, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ops.hamming_average_precision(*args, **kwargs)


def test_pack_labels_bad_input():
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.pack_labels(torch.zeros(4))


@needs_ext
def test_kernel_checks_its_arguments():
    with pytest.raises(RuntimeError, match="k must be in"):
        torch.ops.kdkit.hamming_average_precision(_Q, _D, _QL, _DL, 4, "truncated")
    with pytest.raises(RuntimeError, match="variant must be"):
        torch.ops.kdkit.hamming_average_precision(_Q, _D, _QL, _DL, 3, "all")
