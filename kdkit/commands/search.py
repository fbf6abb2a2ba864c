"""``kdkit search``: batched top-k Hamming search of query codes over a code database file.

Both files are ``.npy`` uint8 ``(N, L/8)`` in faiss's layout (what ``kdkit encode`` writes).  The
output is an ``.npz`` (``--out`` must end in ``.npz``) with ``indices`` (int64 ``(Q, k)``) and
``distances`` (int32 ``(Q, k)``), rows ordered by (distance, database index); ``--json`` prints them
instead.

Distributed: under ``torchrun --nproc_per_node=N -m kdkit search ...`` every rank memory-maps its
contiguous shard of the database, searches it (global indices) and the per-shard top-k are merged
by (distance, index) — the result equals a single-process search exactly.  Rank 0 writes the file.
"""
from __future__ import annotations

import argparse
import io
import json
import os
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
    from kdkit.files import atomic_write_bytes
    from kdkit.retrieval import load_codes, search, shard_range, sharded_search

    if args.k < 1:
        raise KdkitError(f"-k must be >= 1, got {args.k}")
    if args.batch_size < 1:
        raise KdkitError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is None and not args.json:
        raise KdkitError("give --out FILE.npz and/or --json")
    out = _out_path(args.out, (args.db, args.queries)) if args.out is not None else None
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
            if out is not None:
                # into memory, then atomically to exactly `out` (np.savez appends .npz to a path without it)
                buffer = io.BytesIO()
                np.savez(buffer, indices=idx_t.numpy(), distances=dist_t.numpy())
                atomic_write_bytes(out, buffer.getvalue())
                print(f"kdkit search: {queries.shape[0]} queries x {db.shape[0]} codes, k={idx_t.shape[1]}"
                      + (f", {world} shards" if world > 1 else "") + f" -> {out}", file=sys.stderr)
            if args.json:
                print(json.dumps({"indices": idx_t.tolist(), "distances": dist_t.tolist()}))
    return 0


def _out_path(out: str, inputs) -> Path:
    """``--out``, checked before the search: an ``.npz`` file that is not one of the inputs."""
    path = Path(out)
    if not out or path.suffix != ".npz":
        hint = f", e.g. --out {path.with_suffix('.npz')}" if out and path.name else ""
        raise KdkitError(f"--out {out!r}: the result is an .npz archive (indices, distances); give a file name "
                         f"ending in .npz{hint}")
    if path.is_dir():
        raise KdkitError(f"--out {out} is a directory; give a file name, e.g. --out {path / 'result.npz'}")
    for given in inputs:
        if path.exists() and Path(given).exists() and os.path.samefile(path, given):
            raise KdkitError(f"--out {out} is the input {given}; writing the result there would overwrite it: "
                             "choose another --out")
    return path
