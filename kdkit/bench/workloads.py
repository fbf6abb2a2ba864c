"""What ``kdkit bench`` measures: the default and ``--quick`` sizes, the codes of the top-k cases
(random, and clustered around class centres), and the peers kdkit is timed against (plain torch
top-k, faiss when installed).  ``benchmarks/test_bench_ops.py`` times the same workloads."""
from __future__ import annotations

DEFAULT_N = 1_000_000
DEFAULT_Q = 1_000
DEFAULT_K = 100
DEFAULT_BITS = (64, 128)
DEFAULT_PENALTY_SHAPE = (1_048_576, 64)
QUICK = {"n": 65_536, "q": 100, "k": 10, "penalty_rows": 65_536, "map_q": 200}
DEFAULT_MAP = {"map_q": 2_000, "map_n": 18_015, "map_bits": 64, "map_labels": 24}
CASES = ("topk-random", "topk-clustered", "penalty", "map")
N_CENTRES = 100
FLIP_PROB = 0.10


def case_bytes(case: str, args) -> int:
    """About the host memory the largest buffers of ``case`` take at the sizes of ``args`` (the parsed
    ``kdkit bench`` options), checked before anything is allocated: ``--n 10**12`` was a
    DefaultCPUAllocator traceback, and a size just past the free memory an OOM kill."""
    if case.startswith("topk-"):
        bits = max(args.bits)
        per_code = bits // 8
        if args.device == "cpu" and not args.no_torch_topk:
            per_code += bits * 9  # the torch peer unpacks the codes: a byte a bit, then +-1 float32 twice
        return (args.n + args.q) * per_code
    if case == "penalty":  # h, its gradient, the copy's destination and a temporary, float32 (on cpu)
        return args.penalty_rows * args.penalty_cols * 4 * (4 if args.device == "cpu" else 1)
    if case == "map":  # labels (bool, then float), bit flips; the sort-based peer's 64-query temporaries
        rows = args.map_q + args.map_n
        return rows * (DEFAULT_MAP["map_labels"] * 5 + DEFAULT_MAP["map_bits"] * 2) + args.map_n * 64 * 40
    return 0


# ---------------------------------------------------------------- data

def _random_codes(n: int, nbytes: int, gen):
    import torch

    return torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=gen)



def _clustered_codes(n: int, bits: int, centres, gen, chunk: int = 1 << 17):
    """Codes drawn around ``centres`` (bool (C, bits)), each bit flipped with FLIP_PROB."""
    import torch

    from kdkit.ops import pack_bits

    out = torch.empty((n, bits // 8), dtype=torch.uint8)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = torch.randint(0, centres.shape[0], (m,), generator=gen)
        flips = torch.rand((m, bits), generator=gen) < FLIP_PROB
        out[start:start + m] = pack_bits(centres[labels] ^ flips)
    return out



def _unpack_pm1(codes, bits: int, dtype):
    """Packed uint8 codes (LSB first) -> +-1 values of ``dtype``, shape (n, bits)."""
    import torch

    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    b = (codes.unsqueeze(-1) >> shifts) & 1
    return (b.reshape(codes.shape[0], bits).to(dtype) * 2 - 1)



# ---------------------------------------------------------------- peers

def _torch_topk(q_pm, db_pm, bits: int, k: int, chunk: int):
    """Plain torch: distances (L - q @ db.T) / 2, torch.topk; merged over database chunks."""
    import torch

    n = db_pm.shape[0]
    best_d = best_i = None
    for start in range(0, n, chunk):
        dots = q_pm @ db_pm[start:start + chunk].T
        dist = (bits - dots) * 0.5
        kk = min(k, dist.shape[1])
        d, i = torch.topk(dist, kk, dim=1, largest=False)
        i = i + start
        if best_d is None:
            best_d, best_i = d, i
        else:
            cat_d = torch.cat([best_d, d], dim=1)
            cat_i = torch.cat([best_i, i], dim=1)
            best_d, sel = torch.topk(cat_d, k, dim=1, largest=False)
            best_i = torch.gather(cat_i, 1, sel)
        del dots, dist
    return best_d, best_i



def _torch_chunk(device: str, q: int, n: int, itemsize: int) -> int:
    """Database chunk for the torch peer so the (Q, chunk) block stays bounded."""
    import torch

    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        budget = min(8 << 30, free // 4)
    else:
        budget = 256 << 20
    return max(1, min(n, budget // max(1, q * itemsize * 2)))



def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - absent (e.g. the GPU image) or broken
        return None
    return faiss

