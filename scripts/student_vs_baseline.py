#!/usr/bin/env python3
"""Student vs no-KD baseline over finished runs (e.g. one per seed): per run, then mean ± std.

    for s in 0 1 2; do kdkit train --method kd --set baseline.enabled=true --set seed=$s --out runs/kd-s$s; done
    python scripts/student_vs_baseline.py runs/kd-s0 runs/kd-s1 runs/kd-s2

Reads each run's summary.json (test top-1 of the best-on-validation epoch, as the run reports it);
std is the sample standard deviation over runs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows = []
    for run in argv:
        path = Path(run) / "summary.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            student, baseline = summary["student"]["top1"], summary["baseline"]["top1"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path}: no student and baseline top-1 ({exc}); train with baseline.enabled=true",
                  file=sys.stderr)
            return 2
        rows.append((run, float(student), float(baseline)))
    width = max(len(r[0]) for r in rows)
    print(f"{'run'.ljust(width)}  student  baseline  student - baseline")
    for run, s, b in rows:
        print(f"{run.ljust(width)}  {s:7.2f}  {b:8.2f}  {s - b:+18.2f}")

    def stat(values):
        return (f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1
                else f"{values[0]:.2f}")

    students, baselines = [r[1] for r in rows], [r[2] for r in rows]
    diffs = [s - b for s, b in zip(students, baselines)]
    print(f"mean ± std over {len(rows)} runs: student {stat(students)}, baseline {stat(baselines)}, "
          f"difference {stat(diffs)}; student ahead in {sum(d > 0 for d in diffs)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
