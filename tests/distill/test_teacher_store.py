"""kdkit.distill.store and DiskTeacherCache: the disk store gives each sample index its own teacher
outputs (exactly in float32, rounded as documented in float16 / bfloat16 / top-k), is reused only for the
same teacher weights, data and options, is written atomically by one builder at a time, and a damaged
shard is a one-line error, never targets."""
from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from kdkit.distill.cache import DiskTeacherCache, TeacherCache, describe_caches
from kdkit.distill.store import StoreOptions, TeacherStore, store_key, store_nbytes
from kdkit.errors import ConfigError, KdkitError

N = 41
CPU = torch.device("cpu")


class Tagged(Dataset):
    """Sample ``i``: a 3 x 4 x 4 image holding ``i`` in every pixel, plus a ramp."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.full((3, 4, 4), float(i)) + torch.arange(48.0).view(3, 4, 4) / 48, i % 3


class Body(nn.Module):
    def forward(self, x):
        return torch.cat([2.0 * x[:, :1] + 1.0, x[:, 1:2] * x[:, 2:3] / 100], 1)


class Teacher(nn.Module):
    """Logits: a fixed, distinct vector of the sample's identity; tapped module ``body``."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.body = Body()
        self.head = nn.Linear(2, classes)
        self.classes = classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        ids = x[:, 0, 0, 0].round()
        j = torch.arange(self.classes, dtype=torch.float32)
        return 3.0 * torch.sin(1.37 * ids[:, None] + 0.59 * j) + 0.0 * self.head(self.body(x).mean((2, 3)))


def _ids(dataset, positions):
    return torch.stack([dataset[int(p)][0] for p in positions])[:, 0, 0, 0].round()


def _disk(teacher, data, tmp_path, **kw):
    return DiskTeacherCache(teacher, data, CPU, batch_size=6, paths=kw.pop("paths", ["body"]), root=tmp_path, **kw)


def test_float32_store_equals_the_memory_cache_for_every_index(tmp_path):
    teacher = Teacher().eval()
    data = Subset(Tagged(), torch.randperm(N, generator=torch.Generator().manual_seed(0))[:33].tolist())
    memory = TeacherCache(teacher, data, CPU, batch_size=6, paths=["body"])
    disk = _disk(teacher, data, tmp_path, options=StoreOptions(dtype="float32"))
    scrambled = torch.tensor([30, 2, 2, 17, 0, 32, 5])
    torch.testing.assert_close(disk[scrambled], memory[scrambled], rtol=0, atol=0)
    torch.testing.assert_close(disk.features(scrambled)["body"], memory.features(scrambled)["body"], rtol=0, atol=0)
    assert disk.built is True and disk.store.complete
    assert describe_caches([disk]).startswith("teacher store of 1 teacher(s) x 33 samples") and "built" in \
        describe_caches([disk])
    # each row is its own sample's: the oracle's vector of the image's identity
    ids = _ids(data, scrambled)
    j = torch.arange(5, dtype=torch.float32)
    torch.testing.assert_close(disk[scrambled], 3.0 * torch.sin(1.37 * ids[:, None] + 0.59 * j), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_stores_round_to_their_dtype(tmp_path, dtype):
    teacher = Teacher().eval()
    memory = TeacherCache(teacher, Tagged(), CPU, paths=["body"])
    disk = _disk(teacher, Tagged(), tmp_path, options=StoreOptions(dtype=dtype))
    every = torch.arange(N)
    half = getattr(torch, dtype)
    torch.testing.assert_close(disk[every], memory[every].to(half).float(), rtol=0, atol=0)
    got = disk.features(every)["body"]
    assert got.dtype == torch.float32  # stored in 16 bits, handed over in the teacher's dtype
    torch.testing.assert_close(got, memory.features(every)["body"].to(half).float(), rtol=0, atol=0)
    assert disk.nbytes["logits"] < 2 * N * 5 + 1024 and store_nbytes(N, 5, 32, StoreOptions(dtype)) == N * 37 * 2


def test_topk_keeps_the_largest_logits_and_the_mean_of_the_rest(tmp_path):
    teacher = Teacher(classes=12).eval()
    disk = _disk(teacher, Tagged(), tmp_path, paths=[], options=StoreOptions(dtype="float32", topk=3))
    every = torch.arange(N)
    exact = TeacherCache(teacher, Tagged(), CPU)[every]
    got = disk[every]
    top = exact.topk(3, dim=1)
    torch.testing.assert_close(got.gather(1, top.indices), top.values, rtol=0, atol=0)
    rest = (exact.sum(1) - top.values.sum(1)) / 9
    mask = torch.ones_like(exact, dtype=torch.bool).scatter_(1, top.indices, False)
    torch.testing.assert_close(got[mask].view(N, 9), rest[:, None].expand(N, 9), rtol=1e-6, atol=1e-6)
    assert torch.equal(got.argmax(1), exact.argmax(1))
    assert sorted(disk.store.open()[1]) == ["tail", "topk_indices", "topk_values"]
    assert store_nbytes(N, 12, 0, StoreOptions("float16", 3)) == N * (3 * 4 + 2)


def test_reused_only_for_the_same_weights_data_and_options(tmp_path):
    teacher = Teacher().eval()
    first = _disk(teacher, Tagged(), tmp_path)
    first.build()
    calls = teacher.calls
    again = _disk(teacher, Tagged(), tmp_path)
    again.build()
    assert again.built is False and teacher.calls == calls  # reused: the teacher did not run
    assert again.store.path == first.store.path

    def key(**kw):
        cache = _disk(kw.pop("teacher", teacher), kw.pop("data", Tagged()), tmp_path, **kw)
        return store_key(cache.key_parts())

    other = Teacher().eval()
    with torch.no_grad():
        other.head.weight.add_(1.0)  # other weights, same outputs: still another store
    assert len({key(), key(teacher=other), key(data=Subset(Tagged(), list(range(N - 1)))),
                key(data=Subset(Tagged(), list(range(1, N)))), key(paths=[]),
                key(options=StoreOptions(dtype="bfloat16")), key(options=StoreOptions(topk=2)),
                key(identity={"data": {"root": "elsewhere"}})}) == 8


def _fill(rows, classes=4):
    def fill(writer):
        for start in range(0, rows, 5):
            ids = torch.arange(start, min(start + 5, rows), dtype=torch.float32)
            writer.write_logits(ids[:, None] + torch.arange(classes, dtype=torch.float32) / 10)
        return {"features": {}, "feature_dtypes": {}}
    return fill


def _built(tmp_path, rows=23):
    store = TeacherStore(tmp_path, "k" * 32, {"what": "test"})
    assert store.ensure(rows, StoreOptions(dtype="float32"), _fill(rows)) is True
    return store


def test_a_damaged_store_is_a_one_line_error(tmp_path):
    store = _built(tmp_path)
    path = store.path / "logits.npy"
    entry = store.manifest()["shards"]["logits"]
    data = path.read_bytes()

    def error():
        with pytest.raises(KdkitError) as info:
            store.ensure(23, StoreOptions(dtype="float32"), _fill(23))  # a complete store is verified, not rebuilt
        message = str(info.value)
        assert "\n" not in message and str(store.path) in message and f"rm -r {store.path}" in message
        return message

    path.write_bytes(data[:-8])  # truncated
    assert "logits.npy is truncated" in error()
    flipped = bytearray(data)
    flipped[entry["offset"] + 7] ^= 0x40  # one bit inside row 0
    path.write_bytes(bytes(flipped))
    assert "is corrupt (its CRC-32" in error()
    store.open(verify=False)  # sizes and headers alone do not see it: the builder verifies on reuse
    path.write_bytes(b"garbage!" + data[8:])
    assert "damaged header" in error()
    path.unlink()
    assert "logits.npy is missing" in error()
    (store.path / "manifest.json").unlink()
    assert "manifest.json is missing" in error()


def test_killed_and_failed_builds_leave_no_store(tmp_path):
    store = TeacherStore(tmp_path, "k" * 32)
    stale = tmp_path / f"{'k' * 32}.tmp-1-dead"  # a build killed before its rename
    stale.mkdir(parents=True)
    (stale / "logits.npy").write_bytes(b"half")

    def failing(writer):
        _fill(10)(writer)
        raise RuntimeError("teacher failed")

    with pytest.raises(RuntimeError):
        store.ensure(23, StoreOptions(), failing)
    assert not store.path.exists() and not store.complete
    assert [p.name for p in tmp_path.iterdir()] == [f"{'k' * 32}.lock"]  # stale and failed temp dirs are gone
    with pytest.raises(KdkitError, match="10 of 23 rows written to logits"):
        store.ensure(23, StoreOptions(), _fill(10))
    assert store.ensure(23, StoreOptions(), _fill(23)) is True
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["rows"] == 23 and manifest["shards"]["logits"]["shape"] == [23, 4]
    assert np.load(store.path / "logits.npy")[7, 2] == np.float16(7.2)  # plain .npy, readable without kdkit


def _race(root, barrier, out):
    barrier.wait()
    store = TeacherStore(root, "r" * 32)

    def slow(writer):
        import time

        time.sleep(0.5)
        return _fill(29)(writer)

    built = store.ensure(29, StoreOptions(dtype="float32"), slow)
    out.put((built, store.open(verify=True)[1]["logits"][:, 0].tolist()))


def test_two_concurrent_builders_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(built for built, _ in results) == [False, True]
    assert all(rows == list(range(29)) for _, rows in results)
    assert sorted(os.listdir(tmp_path)) == ["r" * 32, f"{'r' * 32}.lock"]


def test_bad_options():
    with pytest.raises(ConfigError, match="teacher_store_dtype: expected one of float16, bfloat16, float32"):
        StoreOptions(dtype="int8")
    with pytest.raises(ConfigError, match="teacher_store_topk"):
        StoreOptions(topk=-1)


def test_an_unwritable_cache_or_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    from kdkit.distill.store import StoreWriter

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(KdkitError, match=r"^cannot write .*file/teacher-store/k+\.lock: .*; "):
        TeacherStore(blocker / "teacher-store", "k" * 32).ensure(3, StoreOptions(), _fill(3))

    def full(self, name, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write", full)
    store = TeacherStore(tmp_path / "cache", "k" * 32)
    with pytest.raises(KdkitError, match="No space left on device; free some disk space"):
        store.ensure(3, StoreOptions(), _fill(3))
    assert not store.path.exists() and not list((tmp_path / "cache").glob("*.tmp-*"))
