#!/usr/bin/env python
"""Teacher-output store benchmark: build and read throughput and per-rank resident memory of the
memory cache and the disk store, at 200,000 x 1,000 synthetic logits, with 1 and 2 processes; and the
size a store of ImageNet-1k's logits would take.

* ``memory`` — what ``distill.teacher_cache: memory`` does in every process (DDP rank): the teacher's
  float32 logits concatenated into one ``N x C`` table (:class:`kdkit.distill.cache.TeacherCache`), then
  looked up by sample index;
* ``disk`` — ``distill.teacher_cache: disk``: built once by one process through kdkit's
  :class:`~kdkit.distill.store.TeacherStore` (``--dtype``, default float16; atomic: fsync, manifest,
  rename), reopened with its CRC-32 verified (what a later run that reuses it pays), then memory-mapped
  by every rank, each reading its own rows (:class:`~kdkit.distill.store.StoreRows`).

The synthetic teacher is ``torch.randn`` per batch (seeded by the batch): its cost is in the build
figures of both (it is the same), so the build rows/s are an upper bound for a real teacher.  Each
read pass is one epoch of one rank: the rows a ``DistributedSampler`` gives the rank (a seeded
permutation, every P-th), in batches of ``--batch``, each lookup a float32 ``batch x C`` tensor.  All
processes use one torch thread.  Every
(mode, processes) cell runs in fresh processes started together (``spawn``), so the resident memory
(``VmRSS`` from ``/proc/self/status``; ``RssAnon``: the process's own memory, ``RssFile``: mapped file
pages, shared by the ranks and reclaimable by the kernel) is the rank's own.  The store file is read
from the page cache (it was just written; the benchmark does not drop caches on a shared machine).

Usage::

    .venv/bin/python benchmarks/teacher_store.py [--rows 200000 --classes 1000 --dtype float16 --procs 1 2
                                                  --dir DIR --json out.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1_000


def _status() -> dict:
    """``VmRSS``, ``RssAnon``, ``RssFile``, ``VmHWM`` of this process, in MiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _teacher_batch(start: int, stop: int, classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(start)
    return torch.randn(stop - start, classes, generator=g)


def _rank_rows(rows: int, rank: int, procs: int) -> torch.Tensor:
    """The rows a DistributedSampler (shuffle, seed 0, epoch 0) gives ``rank`` of ``procs``."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    return order[rank::procs]


def _read(lookup, rows: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    checksum = 0.0
    for i in range(0, len(rows), batch):
        checksum += float(lookup(rows[i:i + batch])[:, 0].sum())
    return time.perf_counter() - start


def _worker(mode: str, rank: int, procs: int, args: dict, barrier, queue) -> None:
    torch.set_num_threads(1)
    from kdkit.distill.store import StoreRows, TeacherStore  # imported before the baseline is taken

    rows, classes, batch = args["rows"], args["classes"], args["batch"]
    before = _status()
    result = {"mode": mode, "procs": procs, "rank": rank}
    if mode == "memory":  # every rank builds and holds the whole float32 table
        t0 = time.perf_counter()
        table = torch.cat([_teacher_batch(s, min(s + batch, rows), classes) for s in range(0, rows, batch)])
        result["build_s"] = time.perf_counter() - t0
        lookup = table.__getitem__
    else:
        store = TeacherStore(args["dir"], args["key"])
        t0 = time.perf_counter()
        manifest, arrays = store.open(verify=False)
        result["open_s"] = time.perf_counter() - t0
        lookup = StoreRows(manifest, arrays).logits
    barrier.wait()  # the ranks read together, as in training
    mine = _rank_rows(rows, rank, procs)
    seconds = _read(lookup, mine, batch)
    after = _status()
    result.update(read_s=seconds, read_rows=len(mine), read_rows_per_s=len(mine) / seconds,
                  rss_mib=after["VmRSS"], rss_anon_mib=after["RssAnon"], rss_file_mib=after["RssFile"],
                  rss_before_mib=before["VmRSS"], anon_before_mib=before["RssAnon"],
                  file_before_mib=before["RssFile"], hwm_mib=after["VmHWM"])
    queue.put(result)


def _cell(mode: str, procs: int, args: dict) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(mode, r, procs, args, barrier, queue)) for r in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode:
            raise SystemExit(f"teacher_store.py: a {mode} worker failed (exit {w.exitcode})")
    return sorted(results, key=lambda r: r["rank"])


def _build_store(args: dict) -> dict:
    from kdkit.distill.store import StoreOptions, TeacherStore, store_key

    rows, classes, batch = args["rows"], args["classes"], args["batch"]
    key = store_key({"benchmark": "teacher_store", "rows": rows, "classes": classes, "dtype": args["dtype"]})
    store = TeacherStore(args["dir"], key)
    shutil.rmtree(store.path, ignore_errors=True)

    def fill(writer):
        for s in range(0, rows, batch):
            writer.write_logits(_teacher_batch(s, min(s + batch, rows), classes))
        return {"features": {}, "feature_dtypes": {}}

    t0 = time.perf_counter()
    store.ensure(rows, StoreOptions(dtype=args["dtype"]), fill)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest, _ = store.open(verify=True)
    verify = time.perf_counter() - t0
    nbytes = sum(e["bytes"] for e in manifest["shards"].values())
    return {"key": key, "build_s": build, "verify_s": verify, "bytes": nbytes}


def _imagenet() -> list[tuple[str, int]]:
    from kdkit.distill.store import StoreOptions, store_nbytes

    r, c = IMAGENET_ROWS, IMAGENET_CLASSES
    return [("memory cache, float32 (per process)", r * c * 4),
            ("disk store, float16 dense", store_nbytes(r, c, 0, StoreOptions("float16"))),
            ("disk store, bfloat16 dense", store_nbytes(r, c, 0, StoreOptions("bfloat16"))),
            *[(f"disk store, float16 top-{k}", store_nbytes(r, c, 0, StoreOptions("float16", k))) for k in (10, 50)]]


def _machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} (1 min), {platform.python_version()}, " \
           f"torch {torch.__version__}, numpy {np.__version__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dir", default=None, help="where the store is written (default: a temporary directory)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    # one thread everywhere (builder and ranks): on a shared 2-core machine torch's intra-op threads
    # contend with the neighbours (a 256 x 1000 float16 cast took 8 ms with 2 threads, 0.08 ms with 1)
    torch.set_num_threads(1)
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="kdkit-store-bench-"))
    args = {"rows": a.rows, "classes": a.classes, "dtype": a.dtype, "batch": a.batch, "dir": str(work)}
    print(f"machine: {_machine()}")
    print(f"synthetic teacher: {a.rows:,} x {a.classes:,} logits, batches of {a.batch}; store dtype {a.dtype}; "
          f"store in {work}")
    try:
        built = _build_store(args)
        args["key"] = built["key"]
        mb = built["bytes"] / 2 ** 20
        print(f"\ndisk store build (1 process, atomic): {built['build_s']:.2f} s, {a.rows / built['build_s']:,.0f} "
              f"rows/s, {mb / built['build_s']:,.0f} MiB/s written; {mb:,.1f} MiB on disk")
        print(f"disk store reopened with CRC-32 verification: {built['verify_s']:.2f} s "
              f"({mb / built['verify_s']:,.0f} MiB/s)")
        cells = [(mode, p, _cell(mode, p, args)) for p in a.procs for mode in ("memory", "disk")]
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    print("\none epoch of lookups per rank (float32 batch x C per lookup); resident memory after it, MiB, and what "
          "the store added to it (+: over the process after its imports)")
    head = f"{'store':<7} {'procs':>5} {'rank':>4} {'build s':>8} {'read rows/s':>12} {'VmRSS':>7} {'+RssAnon':>9} " \
           f"{'+RssFile':>9} {'peak':>7}"
    print(head)
    print("-" * len(head))
    for mode, procs, results in cells:
        for r in results:
            build = f"{r['build_s']:.2f}" if "build_s" in r else f"{built['build_s']:.2f}*" if r["rank"] == 0 else "-"
            print(f"{mode:<7} {procs:>5} {r['rank']:>4} {build:>8} {r['read_rows_per_s']:>12,.0f} {r['rss_mib']:>7,.0f} "
                  f"{r['rss_anon_mib'] - r['anon_before_mib']:>9,.0f} {r['rss_file_mib'] - r['file_before_mib']:>9,.0f} "
                  f"{r['hwm_mib']:>7,.0f}")
    print("* the disk store is built once, by one process (rank 0), for every rank and later run")
    print(f"\nImageNet-1k ({IMAGENET_ROWS:,} x {IMAGENET_CLASSES:,} logits):")
    sizes = _imagenet()
    for name, nbytes in sizes:
        print(f"  {name:<38} {nbytes / 2 ** 30:6.2f} GiB ({nbytes / 2 ** 20:,.0f} MiB)")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": _machine(), "args": {k: v for k, v in args.items()
                                                                            if k != "dir"},
                                            "build": built, "cells": [r for _, _, rs in cells for r in rs],
                                            "imagenet_bytes": dict(sizes)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
