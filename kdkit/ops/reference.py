"""Pure-torch reference implementations of the kdkit ops.

They define the contract (the compiled kernels are tested against them) and are the
fallback when the ``kdkit._C`` extension is not available. They work on any device, but are
slow and, for the Hamming ops, use O(chunk x N x B) temporary memory.
"""
from __future__ import annotations

import torch

__all__ = [
    "pack_bits",
    "unpack_bits",
    "hamming_distance",
    "hamming_topk",
    "binarization_penalty",
    "binarization_penalty_fwd",
    "binarization_penalty_backward",
    "pack_labels",
    "hamming_average_precision",
    "REDUCTIONS",
]

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def _popcount_lut(device: torch.device) -> torch.Tensor:
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device=device)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """(N, L) real/bool -> uint8 (N, L/8); bit j set iff x[:, j] >= 0 (bool: True), LSB first."""
    bits = x if x.dtype == torch.bool else x >= 0
    n, length = bits.shape
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=x.device)
    return (bits.reshape(n, length // 8, 8).to(torch.uint8) * w).sum(-1, dtype=torch.uint8)


def unpack_bits(codes: torch.Tensor, length: int) -> torch.Tensor:
    """uint8 (N, B) -> float32 (N, length) with +1 for a set bit and -1 for a clear one."""
    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    bits = (codes.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(codes.shape[0], codes.shape[1] * 8)[:, :length]
    return bits.to(torch.float32) * 2 - 1


def hamming_distance(query_codes: torch.Tensor, db_codes: torch.Tensor) -> torch.Tensor:
    """uint8 (Q, B), (N, B) -> int32 (Q, N) number of differing bits."""
    lut = _popcount_lut(query_codes.device)
    q, n, b = query_codes.shape[0], db_codes.shape[0], db_codes.shape[1]
    out = torch.empty((q, n), dtype=torch.int32, device=query_codes.device)
    step = max(1, (1 << 24) // max(1, n * b))
    db = db_codes.unsqueeze(0)
    for s in range(0, q, step):
        x = torch.bitwise_xor(query_codes[s : s + step].unsqueeze(1), db)
        out[s : s + step] = lut[x.long()].sum(-1, dtype=torch.int32)
    return out


def hamming_topk(query_codes: torch.Tensor, db_codes: torch.Tensor, k: int):
    """(int32 (Q, k), int64 (Q, k)): k nearest codes, rows ordered by (distance, index)."""
    n = db_codes.shape[0]
    q = query_codes.shape[0]
    out_d = torch.empty((q, k), dtype=torch.int32, device=query_codes.device)
    out_i = torch.empty((q, k), dtype=torch.int64, device=query_codes.device)
    step = max(1, (1 << 22) // max(1, n))
    for s in range(0, q, step):
        d = hamming_distance(query_codes[s : s + step], db_codes).to(torch.int64)
        # (distance, index) as one integer key: ties resolve to the lower index.
        key = d * n + torch.arange(n, device=d.device)
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        out_d[s : s + step] = torch.div(top, n, rounding_mode="floor").to(torch.int32)
        out_i[s : s + step] = top % n
    return out_d, out_i


def _residual(h: torch.Tensor) -> torch.Tensor:
    return h - torch.where(h >= 0, 1.0, -1.0).to(h.dtype)


def binarization_penalty(h: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(h - sgn h)^2 with sgn(0) = +1, reduced by ``reduction``; differentiable by autograd."""
    sq = _residual(h) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    return sq


def binarization_penalty_fwd(h: torch.Tensor, reduction: int):
    """Reference of the ``kdkit::binarization_penalty`` op: (loss, grad_factor)."""
    r = _residual(h)
    if reduction == 0:
        return r * r, 2 * r
    if reduction == 1:
        return (r * r).mean(), 2 * r / max(1, h.numel())
    return (r * r).sum(), 2 * r


def binarization_penalty_backward(grad_output: torch.Tensor, grad_factor: torch.Tensor, reduction: int):
    """Reference of ``kdkit::binarization_penalty_backward``: grad_output * grad_factor."""
    return grad_factor * grad_output


def pack_labels(labels: torch.Tensor) -> torch.Tensor:
    """(N, C) multi-hot (non-zero = label) -> int64 (N, ceil(C / 64)); bit c % 64 of word c // 64."""
    n, c = labels.shape
    bits = torch.zeros(n, -(-c // 64) * 64, dtype=torch.bool, device=labels.device)
    bits[:, :c] = labels != 0
    # pack_bits' bytes are LSB-first, so little-endian words hold bit c at c % 64 (torch's
    # platforms are little-endian)
    return pack_bits(bits).view(torch.int64)


def hamming_average_precision(query_codes: torch.Tensor, db_codes: torch.Tensor, query_labels: torch.Tensor,
                              db_labels: torch.Tensor, k: int, variant: str) -> torch.Tensor:
    """float64 (Q,) AP of each query's ranking by (distance, index), by a stable sort; see kdkit.ops."""
    n = db_codes.shape[0]
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=query_codes.device)
    out = []
    for s in range(0, query_codes.shape[0], 64):  # bounds the (rows, N, W) relevance temporary
        dist = hamming_distance(query_codes[s:s + 64], db_codes)
        rel = ((query_labels[s:s + 64, None, :] & db_labels[None, :, :]) != 0).any(-1)
        order = torch.sort(dist, dim=1, stable=True).indices  # stable: ties keep index order
        rel = torch.gather(rel, 1, order)
        hits = rel.to(torch.float64).cumsum(1)
        keep = rel & ((ranks <= k) if variant == "truncated" else (hits <= k))
        kept = keep.sum(1)
        ap = torch.where(keep, hits / ranks, 0.0).sum(1) / kept.clamp(min=1)
        out.append(torch.where(kept > 0, ap, torch.zeros_like(ap)))
    return torch.cat(out)
