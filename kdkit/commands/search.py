"""``kdkit search``: batched top-k Hamming search of query codes over a code database file.

Both files are ``.npy`` uint8 ``(N, L/8)`` in faiss's layout (what ``kdkit encode`` writes).  The
output is an ``.npz`` with ``indices`` (int64 ``(Q, k)``) and ``distances`` (int32 ``(Q, k)``),
rows ordered by (distance, database index); ``--json`` prints them instead.

Distributed: under ``torchrun --nproc_per_node=N -m kdkit search ...`` every rank memory-maps its
contiguous shard of the database, searches it (global indices) and the per-shard top-k are merged
by (distance, index) — the result equals a single-process search exactly.  Rank 0 writes the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdkit.errors import KdkitError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="CODES.npy", help="database codes (.npy uint8 (N, L/8))")
    parser.add_argument("--queries", required=True, metavar="CODES.npy", help="query codes (.npy uint8 (Q, L/8))")
    parser.add_argument("-k", "--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--batch-size", type=int, default=4096, help="queries per batch (default 4096)")
    parser.add_argument("--out", "-o", metavar="FILE.npz", help="write indices + distances here (.npz)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from kdkit.engine import distributed as dist_utils
    from kdkit.retrieval import load_codes, search, shard_range, sharded_search

    if args.k < 1:
        raise KdkitError(f"-k must be >= 1, got {args.k}")
    if args.batch_size < 1:
        raise KdkitError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.out and not args.json:
        raise KdkitError("give --out FILE.npz and/or --json")
    queries, _ = load_codes(args.queries)
    db, _ = load_codes(args.db, mmap=True)
    if queries.shape[1] != db.shape[1]:
        raise KdkitError(f"--queries has {queries.shape[1] * 8}-bit codes but --db has {db.shape[1] * 8}-bit codes")
    # the search runs on CPU: under torchrun the engine starts a gloo group and ends it on exit
    with dist_utils.torchrun_process_group("cpu") as distributed:
        if distributed:
            rank, world = dist_utils.rank(), dist_utils.world_size()
            start, end = shard_range(db.shape[0], rank, world)
            shard = torch.from_numpy(np.array(db[start:end]))
            dist_t, idx_t = sharded_search(torch.from_numpy(queries), shard, args.k, start, args.batch_size)
        else:
            rank, world = 0, 1
            dist_t, idx_t = search(torch.from_numpy(queries), torch.from_numpy(np.array(db)), args.k,
                                   args.batch_size)
        if rank == 0:
            if args.out:
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(out, indices=idx_t.numpy(), distances=dist_t.numpy())
                print(f"kdkit search: {queries.shape[0]} queries x {db.shape[0]} codes, k={idx_t.shape[1]}"
                      + (f", {world} shards" if world > 1 else "") + f" -> {out}", file=sys.stderr)
            if args.json:
                print(json.dumps({"indices": idx_t.tolist(), "distances": dist_t.tolist()}))
    return 0
