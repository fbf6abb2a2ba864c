"""How fast can AVX2 compute 128-bit Hamming distances at all? (issue 13, item 5)

Builds benchmarks/popcount_bound.cpp (g++ -O3 -mavx2 -fopenmp), times faiss's IndexBinaryFlat at
128 bits with both k-selection strategies in the same run, and reports the distance pass alone of
two AVX2 formulations (the row layout's vpshufb popcount, and a bit-plane layout counted by
Harley-Seal carry-save adders) against what 5x the faster faiss setting would need.

    python benchmarks/popcount_bound.py [--n 1000000] [--q 1000] [--threads 2] [--repeat 5]

A formulation whose distances alone (no top-k selection) are slower than the target bounds every
top-k kernel built on it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _faiss_best(n: int, q: int, k: int, threads: int, repeat: int) -> dict:
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(1234)
    db = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    qs = rng.integers(0, 256, (q, 16), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(128)
    index.add(db)
    out = {}
    for use_heap, name in ((True, "heap"), (False, "counting")):
        index.use_heap = use_heap
        index.search(qs, k)  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            index.search(qs, k)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--q", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        print("popcount_bound: no C++ compiler (set CXX)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "popcount_bound"
        subprocess.run([cxx, "-O3", "-mavx2", "-fopenmp", "-std=c++17", "-o", str(exe),
                        str(HERE / "popcount_bound.cpp")], check=True)
        faiss_s = _faiss_best(args.n, args.q, args.k, args.threads, args.repeat)
        proc = subprocess.run([str(exe), str(args.n), str(args.q), str(args.repeat), str(args.threads)],
                              check=True, capture_output=True, text=True)
    bound = json.loads(proc.stdout)
    best = min(faiss_s.values())
    target_s = best / 5
    report = {"faiss_s": faiss_s, "faiss_best_s": best, "target_5x_s": target_s, **bound,
              "load_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))
    for name in ("nibble", "sliced"):
        t = bound[f"{name}_s"]
        print(f"{name:>7}: distances alone {t * 1e3:7.1f} ms = {best / t:4.2f}x the faster faiss "
              f"({'meets' if t <= target_s else 'cannot meet'} 5x: needs <= {target_s * 1e3:.1f} ms)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
