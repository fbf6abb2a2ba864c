"""Retrieval metrics over packed binary codes (cross-modal hashing).

Every function takes **packed** codes: ``uint8`` arrays of shape ``(N, L/8)`` in faiss's layout
(bit ``j`` of a code is bit ``j % 8`` of byte ``j // 8``, least significant bit first — what
:func:`kdkit.ops.pack_bits` produces).  Torch tensors and NumPy arrays are both accepted.

Relevance
    A database item is relevant to a query when they share at least one label.  Labels are either
    multi-hot matrices ``(N, C)`` (any non-zero entry is a label) or class-index vectors ``(N,)``
    (relevant = same class).  Query and database labels must use the same form.

Ranking
    The database is ranked by ``(Hamming distance, database index)`` ascending: ties always go to
    the lower database index.  This is the order of :func:`kdkit.ops.hamming_topk`, of MATLAB's
    stable ``sort`` used by DCMH and of faiss CPU, so numbers are deterministic everywhere.  The
    Python evaluators of DCHMT/DSPH use an unstable sort; on ties their numbers can differ from
    these in the last digits.

Two different "mAP@k" exist in the literature (see ``docs/soda.md``)
    * ``variant="truncated"`` (DCMH / DJSRH ``calc_map@k``): the ranking is cut at ``k``; AP is the
      mean of ``precision@rank`` over the relevant items inside the top ``k`` (normalised by their
      number).
    * ``variant="dchmt"`` (DCHMT / DSPH ``calc_map_k_matrix``): AP is the mean of
      ``precision@rank`` over the first ``min(k, R)`` relevant items of the *whole* ranking
      (``R`` = relevant items in the database), i.e. it is not truncated.

    With ``k=None`` (or ``k >= N``) both are mAP@all.  In both variants, and as in all reference
    evaluators, a query without any relevant item (in the top ``k`` for ``truncated``) contributes
    an AP of 0 and still counts in the mean.

How mAP is computed fast and exactly
    Hamming distances are small integers in ``[0, L]``, so the ranking by ``(distance, index)``
    needs no sort: :func:`kdkit.ops.hamming_average_precision` takes the packed codes and labels
    packed as bitsets and, per query, histograms the distances (and relevance), turns the
    histogram into where each distance bucket starts, and reads every relevant item's exact rank
    off a second pass in index order — O(N) per query, no ``(Q, N)`` matrix, threads over queries
    (``torch.get_num_threads()``).  Every ``k`` and both variants go through it.  Precision@N uses
    :func:`kdkit.ops.hamming_topk`, the PR curve distance histograms.  Without the compiled
    extension a NumPy path (stable radix argsort per query block) gives the same numbers.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

__all__ = [
    "mean_average_precision",
    "precision_at_n",
    "pr_curve",
    "cross_modal_map",
    "cross_modal_metrics",
    "relevance",
    "VARIANTS",
]

#: The two published meanings of "mAP@k" (see the module docstring).
VARIANTS = ("truncated", "dchmt")

_QUERY_BLOCK = 128


# ----------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------

def _to_numpy(x, name: str) -> np.ndarray:
    if x is None:
        raise TypeError(f"{name} must be an array or tensor, got None")
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from exc


def _check_codes(x, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype != np.uint8:
        raise TypeError(
            f"{name} must be packed uint8 codes of shape (N, L/8) (use kdkit.ops.pack_bits), got dtype {a.dtype}"
        )
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, L/8), got {a.ndim}-D shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def _check_labels(x, name: str, n: int, codes_name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be a multi-hot matrix (N, C) or a class-index vector (N,), got shape {tuple(a.shape)}"
        )
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} rows but {codes_name} has {n} codes")
    if a.ndim == 1:
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise TypeError(f"{name}: a 1-D label vector must hold integer class indices, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name}: class indices must be >= 0, found {int(a.min())}")
    elif not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric or bool, got dtype {a.dtype}")
    return a


def _prepare(query_codes, db_codes, query_labels, db_labels):
    """Validated (query codes, db codes, query labels, db labels) as NumPy arrays."""
    q = _check_codes(query_codes, "query_codes")
    d = _check_codes(db_codes, "db_codes")
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query_codes and db_codes have different code widths: {q.shape[1]} and {d.shape[1]} bytes"
        )
    ql = _check_labels(query_labels, "query_labels", q.shape[0], "query_codes")
    dl = _check_labels(db_labels, "db_labels", d.shape[0], "db_codes")
    if ql.ndim != dl.ndim:
        raise ValueError(
            "query_labels and db_labels must both be multi-hot matrices or both class-index vectors, "
            f"got shapes {tuple(ql.shape)} and {tuple(dl.shape)}"
        )
    if ql.ndim == 2 and ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query_labels has {ql.shape[1]} label columns but db_labels has {dl.shape[1]}")
    return q, d, ql, dl


def _matmul_labels(ql: np.ndarray, dl: np.ndarray):
    """Label forms for :func:`_relevance_block`: float 0/1 (Q, C) and (C, N), or int64 class indices."""
    if ql.ndim == 2:
        return np.ascontiguousarray(ql != 0, dtype=np.float32), np.ascontiguousarray((dl != 0).T, dtype=np.float32)
    return ql.astype(np.int64), dl.astype(np.int64)


def _label_bitsets(ql: np.ndarray, dl: np.ndarray):
    """int64 label bitsets (rows, words) for :func:`kdkit.ops.hamming_average_precision`.

    Multi-hot: bit ``c`` is label column ``c`` (:func:`kdkit.ops.pack_labels`).  Class indices: the
    classes present are numbered densely first, so a single-label query reads one word whatever
    the class ids are.
    """
    import torch

    from kdkit import ops

    if ql.ndim == 1:
        classes, inverse = np.unique(np.concatenate([ql, dl]).astype(np.int64), return_inverse=True)
        ids = inverse.reshape(-1)
        onehot = np.zeros((ids.size, classes.size), dtype=bool)
        onehot[np.arange(ids.size), ids] = True
        ql, dl = onehot[: ql.shape[0]], onehot[ql.shape[0]:]
    return ops.pack_labels(torch.from_numpy(ql != 0)), ops.pack_labels(torch.from_numpy(dl != 0))


def _check_k(k, n: int, name: str = "k"):
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None, got {k!r}")
    if k <= 0:
        raise ValueError(f"{name} must be positive, got {k}")
    return int(min(k, n))


def relevance(query_labels, db_labels) -> np.ndarray:
    """Boolean ``(Q, N)`` matrix: query ``i`` and database item ``j`` share at least one label."""
    ql = _to_numpy(query_labels, "query_labels")
    dl = _to_numpy(db_labels, "db_labels")
    _, _, ql, dl = _prepare(
        np.zeros((ql.shape[0], 1), np.uint8), np.zeros((dl.shape[0], 1), np.uint8), ql, dl
    )
    return _relevance_block(*_matmul_labels(ql, dl))


def _relevance_block(ql: np.ndarray, dl: np.ndarray) -> np.ndarray:
    if ql.ndim == 2:  # multi-hot: float32 matmul of 0/1 values is exact for < 2**24 labels
        return (ql @ dl) > 0
    return ql[:, None] == dl[None, :]


# ----------------------------------------------------------------------------------------
# distances and ranking
# ----------------------------------------------------------------------------------------

def _ops():
    try:
        from kdkit import ops  # noqa: WPS433 - lazy: the extension loads only when needed

        return ops
    except ImportError:  # pragma: no cover - only while kdkit.ops is absent
        return None


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _hamming_numpy(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """NumPy fallback, used only when :mod:`kdkit.ops` cannot be imported."""
    nbytes = q.shape[1]
    if nbytes % 8 == 0 and hasattr(np, "bitwise_count"):
        qw = q.view(np.uint64)
        dw = d.view(np.uint64)
        out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
        for w in range(qw.shape[1]):
            out += np.bitwise_count(qw[:, w, None] ^ dw[None, :, w])
        return out
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
    for b in range(nbytes):
        out += _POPCOUNT8[q[:, b, None] ^ d[None, :, b]]
    return out


def _distances(q: np.ndarray, d_t, d_np: np.ndarray) -> np.ndarray:
    ops = _ops()
    if ops is not None:
        import torch

        return ops.hamming_distance(torch.from_numpy(q), d_t).numpy()
    return _hamming_numpy(q, d_np)


def _small_int(dist: np.ndarray, nbits: int) -> np.ndarray:
    """Distances as the narrowest unsigned type, so NumPy's stable argsort is a radix sort."""
    if nbits <= 255:
        return dist.astype(np.uint8)
    if nbits <= 65535:
        return dist.astype(np.uint16)
    return dist


def _rank_full(dist: np.ndarray, nbits: int) -> np.ndarray:
    """Database indices per row ordered by (distance, index): a stable counting sort."""
    return np.argsort(_small_int(dist, nbits), axis=1, kind="stable")


def _topk(q: np.ndarray, d_t, d_np: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the top k by (distance, index)."""
    ops = _ops()
    if ops is not None:
        import torch

        dist, idx = ops.hamming_topk(torch.from_numpy(q), d_t, k)
        return dist.numpy(), idx.numpy()
    dist = _hamming_numpy(q, d_np)
    order = _rank_full(dist, q.shape[1] * 8)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def _run_blocks(fn, nq: int, block: int):
    """fn(start, end) over query blocks.  With the extension the ops thread themselves
    (at::parallel_for), so blocks run in turn; the NumPy fallback uses a thread pool of
    ``torch.get_num_threads()`` workers instead (NumPy releases the GIL)."""
    starts = list(range(0, nq, block))
    workers = 1
    ops = _ops()
    if ops is None or not ops.extension_info()["loaded"]:
        import torch

        workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        return [fn(s, min(s + block, nq)) for s in starts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: fn(s, min(s + block, nq)), starts))


def _db_tensor(d: np.ndarray):
    ops = _ops()
    if ops is None:
        return None
    import torch

    return torch.from_numpy(d)


def _ap_from_sorted_relevance(rel_sorted: np.ndarray, k, variant: str) -> np.ndarray:
    """Per-row AP from a boolean matrix of relevance in ranked order (columns = rank - 1)."""
    rows, cols = np.nonzero(rel_sorted)
    nrow = rel_sorted.shape[0]
    counts = np.bincount(rows, minlength=nrow)
    starts = np.zeros(nrow, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    j = np.arange(rows.size, dtype=np.int64) - starts[rows] + 1  # 1-based rank among relevant items
    rank = cols.astype(np.int64) + 1
    if k is not None and variant == "dchmt":
        keep = j <= k  # first min(k, R) relevant anywhere in the ranking
        rows, j, rank = rows[keep], j[keep], rank[keep]
    elif k is not None:
        keep = rank <= k  # relevant items inside the top k
        rows, j, rank = rows[keep], j[keep], rank[keep]
    sums = np.bincount(rows, weights=j / rank, minlength=nrow)
    denom = np.bincount(rows, minlength=nrow).astype(np.float64)
    ap = np.zeros(nrow, dtype=np.float64)
    np.divide(sums, denom, out=ap, where=denom > 0)
    return ap


def average_precisions(query_codes, db_codes, query_labels, db_labels, k=None, variant="truncated") -> np.ndarray:
    """Per-query average precision (float64 ``(Q,)``); see :func:`mean_average_precision`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    q, d, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    n = d.shape[0]
    k = _check_k(k, n)
    if k is not None and k >= n:
        k = None  # both variants are mAP@all
    ops = _ops()
    if ops is not None and ops.extension_info()["loaded"]:  # fused: codes + label bitsets -> AP
        import torch

        qb, db = _label_bitsets(ql, dl)
        return ops.hamming_average_precision(torch.from_numpy(q), torch.from_numpy(d), qb, db, k, variant).numpy()
    nbits = q.shape[1] * 8
    ql, dl = _matmul_labels(ql, dl)

    def block(s: int, e: int) -> np.ndarray:
        rel = _relevance_block(ql[s:e], dl)
        order = _rank_full(_hamming_numpy(q[s:e], d), nbits)
        if k is not None and variant == "truncated":
            order = order[:, :k]
        return _ap_from_sorted_relevance(np.take_along_axis(rel, order, axis=1), k, variant)

    return np.concatenate(_run_blocks(block, q.shape[0], _QUERY_BLOCK))


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, k=None, variant="truncated") -> float:
    """Mean average precision of Hamming ranking over packed codes.

    :param query_codes: packed ``uint8`` codes ``(Q, L/8)``.
    :param db_codes: packed ``uint8`` codes ``(N, L/8)`` (the retrieval database).
    :param query_labels: multi-hot ``(Q, C)`` or class indices ``(Q,)``.
    :param db_labels: multi-hot ``(N, C)`` or class indices ``(N,)``.
    :param k: ``None`` for mAP@all, else mAP@k in the given ``variant``.
    :param variant: ``"truncated"`` (DCMH/DJSRH top-k mAP) or ``"dchmt"`` (DCHMT/DSPH: mean precision
        at the first ``min(k, R)`` relevant items of the whole ranking).
    :returns: mAP as a Python float in ``[0, 1]``.
    """
    return float(np.mean(average_precisions(query_codes, db_codes, query_labels, db_labels, k, variant)))


def precision_at_n(query_codes, db_codes, query_labels, db_labels, n=(1000,)):
    """Mean precision of the top ``n`` of the (distance, index) ranking, averaged over queries.

    :param n: an int or a sequence of ints (e.g. ``range(200, 10001, 200)`` as in DCHMT); values
        above the database size are clipped to it.
    :returns: a float for an int ``n``, else a ``dict {N: precision}``.
    """
    scalar = isinstance(n, (int, np.integer)) and not isinstance(n, bool)
    ns = [n] if scalar else list(n)
    if not ns:
        raise ValueError("n must be a positive int or a non-empty sequence of positive ints")
    q, d, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    ql, dl = _matmul_labels(ql, dl)
    size = d.shape[0]
    ns_c = [_check_k(int(v) if isinstance(v, np.integer) else v, size, "n") for v in ns]
    kmax = max(ns_c)
    d_t = _db_tensor(d)

    def block(s: int, e: int) -> np.ndarray:
        rel = _relevance_block(ql[s:e], dl)
        _, idx = _topk(q[s:e], d_t, d, kmax)
        hits = np.cumsum(np.take_along_axis(rel, idx, axis=1), axis=1, dtype=np.int64)
        return np.stack([hits[:, m - 1] / m for m in ns_c], axis=1)

    prec = np.concatenate(_run_blocks(block, q.shape[0], _QUERY_BLOCK)).mean(axis=0)
    if scalar:
        return float(prec[0])
    return {int(m): float(p) for m, p in zip(ns, prec)}


def pr_curve(query_codes, db_codes, query_labels, db_labels) -> dict:
    """Precision-recall curve by Hamming radius ``r = 0..L`` (items with distance <= r retrieved).

    Pooled over all queries as DCMH's ``pr_curve``: ``precision(r) = sum_q relevant_retrieved /
    sum_q retrieved`` (1.0 where nothing is retrieved yet) and ``recall(r) = sum_q
    relevant_retrieved / sum_q relevant``.  Ties do not matter here.

    :returns: ``{"radius": [...], "precision": [...], "recall": [...]}`` (lists of length L + 1).
    """
    q, d, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    ql, dl = _matmul_labels(ql, dl)
    nbits = q.shape[1] * 8
    d_t = _db_tensor(d)

    def block(s: int, e: int):
        rel = _relevance_block(ql[s:e], dl)
        dist = _distances(q[s:e], d_t, d)
        all_h = np.bincount(dist.ravel(), minlength=nbits + 1)
        rel_h = np.bincount(dist[rel], minlength=nbits + 1)
        return all_h, rel_h

    parts = _run_blocks(block, q.shape[0], _QUERY_BLOCK)
    all_h = sum(p[0] for p in parts).astype(np.float64)
    rel_h = sum(p[1] for p in parts).astype(np.float64)
    retrieved = np.cumsum(all_h)
    hit = np.cumsum(rel_h)
    total_rel = rel_h.sum()
    precision = np.where(retrieved > 0, hit / np.maximum(retrieved, 1), 1.0)
    recall = hit / total_rel if total_rel > 0 else np.zeros_like(hit)
    return {
        "radius": list(range(nbits + 1)),
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
    }


# ----------------------------------------------------------------------------------------
# both directions at once
# ----------------------------------------------------------------------------------------

def cross_modal_map(query_image_codes, query_text_codes, db_image_codes, db_text_codes, query_labels,
                    db_labels, k=None, variant="truncated") -> dict:
    """mAP for Image->Text (image queries against text database) and Text->Image.

    :returns: ``{"i2t": float, "t2i": float}``.
    """
    return {
        "i2t": mean_average_precision(query_image_codes, db_text_codes, query_labels, db_labels, k, variant),
        "t2i": mean_average_precision(query_text_codes, db_image_codes, query_labels, db_labels, k, variant),
    }


def cross_modal_metrics(query_image_codes, query_text_codes, db_image_codes, db_text_codes, query_labels,
                        db_labels, *, k=None, variant="truncated", precision_ns: Sequence[int] = (),
                        with_pr: bool = False) -> dict:
    """mAP, optional precision@N and the PR curve for both directions.

    :returns: ``{"i2t": {"map": ..., "precision": {N: p}, "pr": {...}}, "t2i": {...}}``.
    """
    out = {}
    for name, qc, dc in (("i2t", query_image_codes, db_text_codes), ("t2i", query_text_codes, db_image_codes)):
        entry = {"map": mean_average_precision(qc, dc, query_labels, db_labels, k, variant)}
        if precision_ns:
            entry["precision"] = precision_at_n(qc, dc, query_labels, db_labels, list(precision_ns))
        if with_pr:
            entry["pr"] = pr_curve(qc, dc, query_labels, db_labels)
        out[name] = entry
    return out
