"""One top-k method of ``kdkit bench`` timed in a process of its own.

The parent (:class:`kdkit.bench.cases._Bench`) writes the codes of every top-k workload of the run
(each case and code length) as ``.npy`` files and a JSON spec, then runs ``python -m
kdkit.bench.worker SPEC`` once per method (:func:`run_method`): kdkit's
:func:`~kdkit.ops.hamming_topk`, faiss (both k-selection settings) or the plain-torch peer. The
worker sets its own thread count and, workload after workload, warms up, times the repeats and
writes the times and each setting's top-k arrays back for the parent's cross-check.

Why a process each: with torch and faiss in one process, torch's OpenMP pool competed with
faiss's and slowed it (issue 23). The faiss worker imports numpy and faiss only, never torch, and
reports whether torch was loaded all the same (``torch_loaded``). One process per method, not per
workload: a fresh interpreter importing torch costs more CPU than timing a small workload.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdkit.bench.workloads import _faiss, _torch_chunk, _torch_topk, _unpack_pm1
from kdkit.errors import KdkitError

METHODS = ("kdkit", "faiss", "torch")


def _median_time(fn: Callable[[], Any], repeat: int, warmup: int,
                 sync: Callable[[], None]) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` runs after ``warmup`` untimed ones; returns the first result."""
    first = None
    for _ in range(warmup):
        result = fn()
        sync()
        if first is None:
            first = result
        del result
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if first is None:
            first = result
        del result
    return times, first


# ---------------------------------------------------------------- parent side

def run_method(method: str, workdir: Path, workloads: list[dict[str, Any]], *, k: int, repeat: int, threads: int,
               device: str) -> list[dict[str, Any]]:
    """Time ``method`` on each of ``workloads`` (``db`` and ``queries``: uint8 ``.npy`` paths; ``bits``), in
    order, in one fresh process.

    Returns one report per workload: ``settings`` (each with ``method``, ``times_s`` and the top-k arrays
    ``d``, ``i`` as numpy arrays), ``notes``, and the process's ``threads``, ``torch_loaded`` and ``pid``.
    """
    import numpy as np

    import kdkit

    stem = workdir / method
    spec = {"method": method, "k": k, "repeat": repeat, "threads": threads, "device": device, "out": str(stem),
            "workloads": [{"db": str(w["db"]), "queries": str(w["queries"]), "bits": w["bits"]} for w in workloads]}
    spec_path = stem.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    # The OpenMP pool is sized when the runtime loads; set it before any import in the worker.
    env["OMP_NUM_THREADS"] = str(threads)
    # The same kdkit (and kdkit._C) as this process, installed or not.
    root = str(Path(kdkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "kdkit.bench.worker", str(spec_path)],
                          check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    bits = ", ".join(str(w["bits"]) for w in workloads)
    if proc.returncode < 0:
        raise KdkitError(f"the {method} top-k worker (bits={bits}) was killed by signal "
                         f"{-proc.returncode} (out of memory?); lower --n or --q")
    if proc.returncode != 0:
        raise RuntimeError(f"the {method} top-k worker (bits={bits}) exited with status "
                           f"{proc.returncode}; its stderr:\n{proc.stderr.strip()}")
    written = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    process = {key: written[key] for key in ("threads", "torch_loaded", "pid")}
    reports = []
    for report in written["reports"]:
        for setting in report["settings"]:
            for key in ("d", "i"):
                setting[key] = np.load(setting[key], allow_pickle=False)
        reports.append({**report, **process})
    return reports


# ---------------------------------------------------------------- worker side

def _kdkit(spec: dict[str, Any], db, qs, timed) -> tuple[list, list[str], int]:
    import functools

    import torch

    from kdkit.ops import hamming_topk

    torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    db_dev, q_dev = torch.from_numpy(db).to(dev), torch.from_numpy(qs).to(dev)
    times, (d, i) = timed(functools.partial(hamming_topk, q_dev, db_dev, spec["k"]), 1, _sync(dev))
    return [("kdkit", times, d.cpu().numpy(), i.cpu().numpy())], [], torch.get_num_threads()


def _faiss_peer(spec: dict[str, Any], db, qs, timed) -> tuple[list, list[str], int]:
    faiss = _faiss()
    if faiss is None:
        raise SystemExit("faiss is not importable in the worker")
    faiss.omp_set_num_threads(spec["threads"])
    index = faiss.IndexBinaryFlat(spec["bits"])
    index.add(db)
    out = []
    # Both k-selection strategies: which is faster depends on the code length and the data.
    for use_heap, label in ((True, "faiss-heap"), (False, "faiss-counting")):
        index.use_heap = use_heap
        times, (d, i) = timed(lambda: index.search(qs, spec["k"]), 1, lambda: None)
        out.append((label, times, d, i))
    return out, [], faiss.omp_get_max_threads()


def _torch_peer(spec: dict[str, Any], db, qs, timed) -> tuple[list, list[str], int]:
    import functools

    import torch

    torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    bits, k = spec["bits"], spec["k"]
    notes = []
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype == torch.bfloat16 and bits > 256:
        notes.append("bf16 +-1 dot products are exact only up to 256 bits; "
                     "torch peer distances may be rounded above that")
    # The +-1 databases are prepared off the clock (in the peer's favour).
    db_pm = _unpack_pm1(torch.from_numpy(db).to(dev), bits, dtype)
    q_pm = _unpack_pm1(torch.from_numpy(qs).to(dev), bits, dtype)
    n, q = db.shape[0], qs.shape[0]
    chunk = _torch_chunk(dev.type, q, n, db_pm.element_size())
    if chunk < n:
        notes.append(f"torch peer: database processed in chunks of {chunk:,} codes to bound memory")
    # Large CPU runs take seconds: the first timed run doubles as warm-up.
    warm = 1 if (dev.type == "cuda" or n * q <= 1e8) else 0
    times, (d, i) = timed(functools.partial(_torch_topk, q_pm, db_pm, bits, k, chunk), warm, _sync(dev))
    return [("torch", times, d.float().cpu().numpy(), i.cpu().numpy())], notes, torch.get_num_threads()


def _sync(dev) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    (spec_path,) = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    peer = {"kdkit": _kdkit, "faiss": _faiss_peer, "torch": _torch_peer}[spec["method"]]

    def timed(fn, warmup, sync):
        return _median_time(fn, spec["repeat"], warmup, sync)

    reports, threads = [], None
    for n, workload in enumerate(spec["workloads"]):
        db = np.load(workload["db"], allow_pickle=False)
        qs = np.load(workload["queries"], allow_pickle=False)
        settings, notes, threads = peer({**spec, "bits": workload["bits"]}, db, qs, timed)
        del db, qs
        report: dict[str, Any] = {"settings": [], "notes": notes}
        for label, times, d, i in settings:
            paths = {key: f"{spec['out']}-{n}-{label}-{key}.npy" for key in ("d", "i")}
            np.save(paths["d"], d)
            np.save(paths["i"], i)
            report["settings"].append({"method": label, "times_s": times, **paths})
        reports.append(report)
    written = {"reports": reports, "threads": threads, "torch_loaded": "torch" in sys.modules, "pid": os.getpid()}
    Path(spec["out"]).with_suffix(".json").write_text(json.dumps(written), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
