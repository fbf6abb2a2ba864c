"""Hamming-retrieval and hashing ops (compiled ``kdkit._C`` kernels, pure-torch fallback).

Codes are packed bits in faiss's layout: a code of L bits is L/8 uint8 bytes, bit j of the
code is bit (j % 8) of byte j // 8, least significant bit first — exactly what
``numpy.packbits(x >= 0, axis=1, bitorder="little")`` and faiss's ``fvec2bitvec`` produce,
so codes go into faiss binary indexes unchanged.

The compiled extension is loaded on the first op call (never at ``import kdkit``). If it is
missing, one warning is emitted and the slow references in :mod:`kdkit.ops.reference` are
used. :func:`extension_info` says which path is active.
"""
from __future__ import annotations

import operator

import torch

from kdkit.ops import reference
from kdkit.ops._extension import extension_info, use_extension

__all__ = [
    "pack_bits",
    "unpack_bits",
    "hamming_distance",
    "hamming_topk",
    "binarization_penalty",
    "pack_labels",
    "hamming_average_precision",
    "extension_info",
]

_CPU_PENALTY_DTYPES = (torch.float32, torch.float64)
_CUDA_PENALTY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.compiler.assume_constant_result
def _cuda_kernels() -> bool:
    return bool(extension_info()["cuda_compiled"])


def _compiled_for(device: torch.device) -> bool:
    if not use_extension():
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _cuda_kernels()


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _index_arg(op: str, name: str, value) -> int:
    """An int argument: ints and numpy/torch integer scalars, but not bool (True would mean 1)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}") from None


def _check_codes(op: str, name: str, t) -> None:
    _check_tensor(op, name, t)
    if t.dtype != torch.uint8:
        raise TypeError(
            f"{op}: {name} must be uint8 packed codes (see kdkit.ops.pack_bits), got {t.dtype}"
        )
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D (rows, bytes), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(t.shape)})")


def _check_pair(op: str, query_codes, db_codes) -> None:
    _check_codes(op, "query_codes", query_codes)
    _check_codes(op, "db_codes", db_codes)
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"{op}: code widths differ: query_codes has {query_codes.shape[1]} bytes per code, "
            f"db_codes has {db_codes.shape[1]}"
        )
    if query_codes.device != db_codes.device:
        raise ValueError(
            f"{op}: query_codes is on {query_codes.device} but db_codes is on {db_codes.device}"
        )


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Pack signs of ``x`` into codes.

    Args:
        x: real or bool tensor (N, L) with L a multiple of 8.
    Returns:
        uint8 tensor (N, L/8) on x's device: bit j is set when ``x[:, j] >= 0`` (bool: True),
        least significant bit first within each byte (faiss / ``numpy.packbits(...,
        bitorder="little")`` layout).
    Raises:
        TypeError: x is not a real or bool tensor.  ValueError: x is not 2-D, L is 0 or not a
        multiple of 8, or x holds NaN (it has no sign; a RuntimeError inside ``torch.compile``).
    """
    _check_tensor("pack_bits", "x", x)
    if x.is_complex():
        raise TypeError(f"pack_bits: x must be real or bool, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"pack_bits: x must be 2-D (N, L), got shape {tuple(x.shape)}")
    if x.shape[1] == 0 or x.shape[1] % 8 != 0:
        raise ValueError(
            f"pack_bits: x has L={x.shape[1]} columns; L must be a positive multiple of 8"
        )
    # NaN >= 0 is False, so it would silently pack as a clear bit
    if x.is_floating_point():
        if torch.compiler.is_compiling():  # no data-dependent branch in a graph: a graph assert
            torch._assert_async(~torch.isnan(x).any(), "pack_bits: x holds NaN; NaN has no sign to pack")
        elif bool(torch.isnan(x).any()):
            first_row = int(torch.isnan(x).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"pack_bits: x holds NaN (first in row {first_row}); NaN has no sign to pack")
    return reference.pack_bits(x)


def unpack_bits(codes: torch.Tensor, L: int) -> torch.Tensor:  # noqa: N803
    """Inverse of :func:`pack_bits` up to sign: uint8 (N, B) -> float32 (N, L) of +-1.

    ``L`` (1 <= L <= 8 B) bits are unpacked per row; a set bit gives +1, a clear bit -1.
    """
    _check_tensor("unpack_bits", "codes", codes)
    if codes.dtype != torch.uint8:
        raise TypeError(f"unpack_bits: codes must be uint8, got {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"unpack_bits: codes must be 2-D (N, B), got shape {tuple(codes.shape)}")
    L = _index_arg("unpack_bits", "L", L)  # noqa: N806
    if not 1 <= L <= 8 * codes.shape[1]:
        raise ValueError(
            f"unpack_bits: L={L} out of range; expected 1 <= L <= {8 * codes.shape[1]} "
            f"(8 x bytes per code)"
        )
    return reference.unpack_bits(codes, L)


def hamming_distance(query_codes: torch.Tensor, db_codes: torch.Tensor) -> torch.Tensor:
    """All pairwise Hamming distances.

    Args:
        query_codes: uint8 (Q, B).  db_codes: uint8 (N, B), same device and width B.
    Returns:
        int32 (Q, N): number of differing bits. Allocates the full matrix; use
        :func:`hamming_topk` for retrieval over large databases.
    """
    _check_pair("hamming_distance", query_codes, db_codes)
    if _compiled_for(query_codes.device):
        return torch.ops.kdkit.hamming_distance(query_codes, db_codes)
    return reference.hamming_distance(query_codes.contiguous(), db_codes.contiguous())


def pack_labels(labels: torch.Tensor) -> torch.Tensor:
    """Pack multi-hot labels into int64 bitsets, the label input of :func:`hamming_average_precision`.

    Args:
        labels: (N, C) tensor, real or bool; any non-zero entry is a label.
    Returns:
        int64 (N, ceil(C / 64)) on labels' device: bit ``c % 64`` of word ``c // 64`` is set
        when the item has label ``c``. Two items share a label iff some word's AND is non-zero.
    """
    _check_tensor("pack_labels", "labels", labels)
    if labels.dim() != 2 or labels.shape[1] == 0:
        raise ValueError(f"pack_labels: labels must be 2-D (N, C) with C > 0, got shape {tuple(labels.shape)}")
    if labels.is_complex():
        raise TypeError(f"pack_labels: labels must be real or bool, got {labels.dtype}")
    return reference.pack_labels(labels)


_AP_VARIANTS = ("truncated", "dchmt")


def hamming_average_precision(query_codes: torch.Tensor, db_codes: torch.Tensor, query_labels: torch.Tensor,
                              db_labels: torch.Tensor, k: int | None = None,
                              variant: str = "truncated") -> torch.Tensor:
    """Average precision of every query's Hamming ranking, distance, relevance and AP fused.

    The database is ranked by (distance, index) ascending — ties go to the lower index — and an
    item is relevant when it shares a label with the query. Nothing of size (Q, N) is built:
    the kernel counts (distances are small integers), it never sorts.

    Args:
        query_codes: uint8 (Q, B).  db_codes: uint8 (N, B), same device and width.
        query_labels: int64 (Q, W), db_labels: int64 (N, W) label bitsets (:func:`pack_labels`).
        k: ``None`` (or N) for AP over the whole ranking, else 1 <= k.
        variant: which AP@k — ``"truncated"``: mean precision at the relevant items ranked in the
            top k (DCMH); ``"dchmt"``: mean precision at the first min(k, R) relevant items of the
            whole ranking (DCHMT/DSPH). Identical when k covers the database.
    Returns:
        float64 (Q,): AP per query (``sum hits_j / rank_j`` over the kept relevant items ``j``,
        divided by their number); 0 where no item is kept. ``mean()`` is mAP. Compiled
        kernels run on CPU and CUDA; other devices use the reference.
    """
    op = "hamming_average_precision"
    _check_pair(op, query_codes, db_codes)
    for name, labels, codes_name, codes in (("query_labels", query_labels, "query_codes", query_codes),
                                            ("db_labels", db_labels, "db_codes", db_codes)):
        _check_tensor(op, name, labels)
        if labels.dtype != torch.int64 or labels.dim() != 2 or labels.shape[1] == 0:
            raise TypeError(f"{op}: {name} must be int64 label bitsets (rows, words) from kdkit.ops.pack_labels, "
                            f"got {labels.dtype} of shape {tuple(labels.shape)}")
        if labels.shape[0] != codes.shape[0]:
            raise ValueError(f"{op}: {name} has {labels.shape[0]} rows but {codes_name} has {codes.shape[0]}")
        if labels.device != codes.device:
            raise ValueError(f"{op}: {name} is on {labels.device} but {codes_name} is on {codes.device}")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"{op}: query_labels has {query_labels.shape[1]} words per row, db_labels "
                         f"{db_labels.shape[1]} (pack both with the same number of label columns)")
    if variant not in _AP_VARIANTS:
        raise ValueError(f"{op}: variant must be one of {', '.join(_AP_VARIANTS)}, got {variant!r}")
    n = db_codes.shape[0]
    if k is None:
        k = n
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{op}: k must be a positive int or None, got {k!r}")
    if k < 1:
        raise ValueError(f"{op}: k must be >= 1, got {k}")
    k = min(k, n)
    if _compiled_for(query_codes.device):
        return torch.ops.kdkit.hamming_average_precision(query_codes, db_codes, query_labels, db_labels, k, variant)
    return reference.hamming_average_precision(query_codes.contiguous(), db_codes.contiguous(), query_labels,
                                               db_labels, k, variant)


def hamming_topk(query_codes: torch.Tensor, db_codes: torch.Tensor, k: int):
    """The k nearest database codes of each query, distance and selection fused.

    Args:
        query_codes: uint8 (Q, B).  db_codes: uint8 (N, B), same device and width.
        k: 1 <= k <= N.
    Returns:
        (distances int32 (Q, k), indices int64 (Q, k)). Each row is ordered by
        (distance, index) ascending, so ties go to the lower database index; the result is
        the same on CPU and CUDA and for any thread count. No Q x N matrix is materialised.
    """
    _check_pair("hamming_topk", query_codes, db_codes)
    k = _index_arg("hamming_topk", "k", k)
    n = db_codes.shape[0]
    if k < 1 or k > n:
        raise ValueError(
            f"hamming_topk: k={k} out of range; expected 1 <= k <= {n} (number of db_codes)"
        )
    if _compiled_for(query_codes.device):
        return torch.ops.kdkit.hamming_topk(query_codes, db_codes, k)
    return reference.hamming_topk(query_codes.contiguous(), db_codes.contiguous(), k)


def binarization_penalty(h: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Quantisation penalty ``(h - sgn(h))**2`` with sgn(0) = +1, differentiable.

    Args:
        h: floating tensor of any shape (float32/float64 on CPU; float32/float16/bfloat16 on
            CUDA for the compiled kernels).
        reduction: "mean" | "sum" | "none".
    Returns:
        0-dim loss for "mean"/"sum", a tensor shaped like h for "none". Forward and gradient
        are computed in one fused pass; backward multiplies the saved gradient
        ``2 (h - sgn h)`` (scaled by 1/numel for "mean") by the incoming gradient.
    """
    _check_tensor("binarization_penalty", "h", h)
    if not isinstance(reduction, str) or reduction not in reference.REDUCTIONS:
        raise ValueError(
            f"binarization_penalty: reduction={reduction!r}; expected 'mean', 'sum' or 'none'"
        )
    if not h.is_floating_point():
        raise TypeError(f"binarization_penalty: h must be a floating tensor, got {h.dtype}")
    if h.numel() == 0:
        raise ValueError(f"binarization_penalty: h is empty (shape {tuple(h.shape)})")
    if _compiled_for(h.device):
        allowed = _CPU_PENALTY_DTYPES if h.device.type == "cpu" else _CUDA_PENALTY_DTYPES
        if h.dtype not in allowed:
            raise TypeError(
                f"binarization_penalty: h has dtype {h.dtype}; supported on {h.device.type}: "
                + ", ".join(str(d) for d in allowed)
            )
        loss, _grad_factor = torch.ops.kdkit.binarization_penalty(h, reference.REDUCTIONS[reduction])
        return loss
    return reference.binarization_penalty(h, reduction)
