#!/usr/bin/env python
"""Whole-job benchmark of kdkit's CPU process settings (:mod:`kdkit.runtime`): ``kdkit train --method kd``
end to end with the settings kdkit's CLI made before (``OMP_WAIT_POLICY=PASSIVE``, glibc malloc as it
comes) and with today's (OpenMP's short spin, glibc malloc tuned), in pairs.

The job is kd's default (Fashion-MNIST 5,000-image subset from Debian's ``dataset-fashion-mnist``,
a ResNet-14 teacher and the ResNet-8 width-8 baseline and student, 10 epochs each); ``--set`` adds
overrides.  Each run is a fresh process with its own run directory and its own empty cache
(``KDKIT_CACHE_DIR``), so neither reuses the other's teacher outputs; the user's own OpenMP and
malloc variables are removed from both.  Pairs alternate which mode
goes first, so load on the (shared) machine hits both alike; the wall time of each run, the ratio
per pair, their medians, the minor page faults of each run (``getrusage`` of the child), the load
average around each run and whether the two ``metrics.jsonl`` of a pair are byte-identical are
printed and written to ``--json``.

Usage::

    .venv/bin/python benchmarks/cpu_defaults.py [--pairs 3] [--json out.json] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdkit.runtime import ENV_SWITCH, neutral_env

#: mode -> the environment that selects it (``before``: what kdkit's CLI set until issue 23)
MODES = {"before": {"OMP_WAIT_POLICY": "PASSIVE", ENV_SWITCH: "0"}, "after": {}}


def cpu_description() -> dict:
    """The CPU model and the popcount ISA the figures depend on (AVX2 or AVX-512 VPOPCNTDQ)."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "AVX-512 VPOPCNTDQ" if "avx512_vpopcntdq" in flags else "AVX2" if "avx2" in flags else "neither"
    return {"model": model, "isa": isa, "cores": os.cpu_count()}


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_job(mode: str, sets: list[str], workdir: Path) -> dict:
    """One ``kdkit train --method kd`` in a fresh process; wall time, faults, the run's metrics."""
    out, cache = workdir / f"run-{mode}", workdir / f"cache-{mode}"
    env = neutral_env()
    env.update(MODES[mode], KDKIT_CACHE_DIR=str(cache))
    argv = [sys.executable, "-m", "kdkit", "train", "--method", "kd", "--out", str(out),
            "--set", "logging.progress=false", *[a for s in sets for a in ("--set", s)]]
    before_faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    load_before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kdkit train ({mode}) failed with {proc.returncode}:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"mode": mode, "seconds": round(seconds, 2),
            "minor_faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before_faults,
            "load_before": load_before, "load_after": loadavg(),
            "student_top1": summary["student"]["top1"], "metrics": (out / "metrics.jsonl").read_bytes()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both runs (repeatable)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    machine = {**cpu_description(), "python": platform.python_version()}
    print(f"machine: {machine['model']} ({machine['isa']}), {machine['cores']} cores; load {loadavg()}", flush=True)
    pairs = []
    for i in range(args.pairs):
        order = tuple(MODES) if i % 2 == 0 else tuple(MODES)[::-1]
        with tempfile.TemporaryDirectory(prefix="kdkit-alloc-") as tmp:
            runs = {mode: run_job(mode, args.sets, Path(tmp)) for mode in order}
        identical = runs["before"].pop("metrics") == runs["after"].pop("metrics")
        ratio = runs["before"]["seconds"] / runs["after"]["seconds"]
        pairs.append({"order": list(order), "runs": runs, "speedup": round(ratio, 3), "metrics_identical": identical})
        print(f"pair {i}: before {runs['before']['seconds']:.1f} s ({runs['before']['minor_faults']} faults), "
              f"after {runs['after']['seconds']:.1f} s ({runs['after']['minor_faults']} faults): {ratio:.2f}x; "
              f"metrics.jsonl {'identical' if identical else 'DIFFER'}; load {runs[order[0]]['load_before']} -> "
              f"{runs[order[1]]['load_after']}", flush=True)
    result = {
        "machine": machine, "sets": args.sets, "pairs": pairs,
        "median_seconds": {m: statistics.median(p["runs"][m]["seconds"] for p in pairs) for m in MODES},
        "median_speedup": statistics.median(p["speedup"] for p in pairs),
        "all_metrics_identical": all(p["metrics_identical"] for p in pairs),
    }
    print(f"median: before {result['median_seconds']['before']:.1f} s, after {result['median_seconds']['after']:.1f} s; "
          f"speedup {result['median_speedup']:.2f}x (median of {len(pairs)} pairs); metrics.jsonl "
          f"{'byte-identical in every pair' if result['all_metrics_identical'] else 'DIFFER'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["all_metrics_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
