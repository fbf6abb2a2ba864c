"""kdkit.retrieval: batched search, shard merging, and the distributed search with two gloo processes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdkit import ops
from kdkit.retrieval import merge_topk, search, shard_range, sharded_search


def _codes(seed, n, nbytes=8, clustered=True):
    rng = np.random.default_rng(seed)
    if clustered:  # many exact ties
        centres = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
        return torch.from_numpy(centres[rng.integers(0, 5, n)])
    return torch.from_numpy(rng.integers(0, 256, (n, nbytes), dtype=np.uint8))


def test_batched_search_equals_topk():
    q, db = _codes(0, 37), _codes(1, 501)
    d, i = search(q, db, 20, batch_size=8)
    d2, i2 = ops.hamming_topk(q, db, 20)
    assert torch.equal(d, d2) and torch.equal(i, i2)
    d3, i3 = search(q, db[:5], 20)  # k > N is clipped
    assert d3.shape == (37, 5)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_merge_of_shards_is_exact(shards):
    q, db = _codes(2, 25), _codes(3, 300)
    parts = []
    for r in range(shards):
        s, e = shard_range(len(db), r, shards)
        parts.append(search(q, db[s:e], 15, offset=s))
    d, i = merge_topk(parts, 15)
    d2, i2 = ops.hamming_topk(q, db, 15)
    assert torch.equal(d, d2) and torch.equal(i, i2)


def _worker(rank, world, init_file, q, db, k, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s, e = shard_range(len(db), rank, world)
        d, i = sharded_search(q, db[s:e].clone(), k, s, batch_size=16)
        out[rank] = (d.numpy().tolist(), i.numpy().tolist())
    finally:
        dist.destroy_process_group()


def test_distributed_search_two_gloo_processes(tmp_path):
    q, db = _codes(4, 40), _codes(5, 1001)
    k = 50
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), q, db, k, out), nprocs=2, join=True)
    d_ref, i_ref = search(q, db, k)
    for rank in (0, 1):
        d, i = out[rank]
        assert np.array_equal(np.array(d), d_ref.numpy()) and np.array_equal(np.array(i), i_ref.numpy())
