#!/usr/bin/env python3
"""Digests of the metrics.jsonl and summary.json of one ``kdkit train`` run per method, to check that a
refactor leaves the runs' numbers byte-identical (issue 19: kd, every preset, wordnet_relax and soda).

    # the tree before the refactor (a git worktree), then the current one, then the comparison
    python scripts/metrics_digest.py --cwd /tmp/kdkit-base --env PYTHONPATH=/tmp/kdkit-base:/tmp/kdkit-base/plugins \\
        --set train.epochs=2 --set SETS... --out /tmp/metrics-base.json
    python scripts/metrics_digest.py --set train.epochs=2 --set SETS... --out /tmp/metrics-new.json \\
        --compare /tmp/metrics-base.json
    python scripts/metrics_digest.py --compare /tmp/metrics-base.json /tmp/metrics-new.json  # no runs

Each method trains with its defaults plus the ``--set`` items: ``--set KEY=VALUE`` goes to every method,
``--set M1,M2:KEY=VALUE`` only to the methods named before the colon (a key one method lacks, such as
``teacher_train.epochs`` for soda, is an error of that run).  Every run gets a fresh run directory
and a fresh ``KDKIT_CACHE_DIR`` under the work directory (``--work``; default a new temporary
directory), ``OMP_NUM_THREADS=2`` and ``KDKIT_OFFLINE=1`` (so wordnet_relax reads the local WordNet
instead of whatever a download would bring); ``--env KEY=VALUE`` overrides or adds variables.  Runs go
one at a time (``--jobs``).

The JSON written to ``--out`` maps each method to ``{"sha256": of metrics.jsonl's bytes, "lines": its
line count, "summary_sha256": of summary.json with the volatile fields removed (see
:func:`clean_summary`), "status": "ok" | "failed", "error": the last stderr line of a failed run,
"wall_s", "run_dir", "sets"}``.  A run that fails is reported, not fatal (its entry keeps the digest of
the metrics.jsonl it wrote before failing).  ``--update`` rewrites only the entries of the methods run
in an existing ``--out`` file (to rerun one method).  ``--compare`` prints one row per method (same /
DIFF / FAILED / missing) and exits 1 unless every method is the same on both sides (a method that
fails with the same message after the same metrics on both sides counts as the same); where both run
directories still exist it names the first differing metrics line.  Without ``--compare`` the exit
status is 1 when a run failed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: kd (built in), the 12 presets of kdkit_methods, and the wordnet_relax and soda plugins' methods
DEFAULT_METHODS = ["kd", "dkd", "dist", "lskd", "fitnet", "at", "pkt", "rkd", "sp", "nst", "vid", "crd", "reviewkd",
                   "wordnet_relax", "soda"]

#: summary.json keys dropped wherever they occur: they change from one run of the same command to the
#: next.  Two runs of each method (fcbfa78, CPU) differed only in soda's top-level "seconds" (its wall
#: time); kd, the presets and wordnet_relax write no time, date, version or path into summary.json.
VOLATILE_KEYS = frozenset({"seconds"})


def clean_summary(value, volatile_strings=()):
    """``value`` (a parsed summary.json) without :data:`VOLATILE_KEYS`, and with every string holding one
    of ``volatile_strings`` (the run's directory and cache, which differ per run; no method writes them
    today) replaced by a marker."""
    if isinstance(value, dict):
        return {k: clean_summary(v, volatile_strings) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [clean_summary(v, volatile_strings) for v in value]
    if isinstance(value, str) and any(s and s in value for s in volatile_strings):
        return "<path>"
    return value


def digest_run(run_dir: Path, volatile_strings=()) -> dict:
    """The digests of one finished run directory (raises OSError / ValueError when a file is missing or bad)."""
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    cleaned = json.dumps(clean_summary(summary, volatile_strings), sort_keys=True, separators=(",", ":"))
    return {"sha256": hashlib.sha256(metrics).hexdigest(), "lines": metrics.count(b"\n"),
            "summary_sha256": hashlib.sha256(cleaned.encode("utf-8")).hexdigest()}


def parse_sets(items: list[str]) -> list[tuple[set[str] | None, str]]:
    """``--set`` items as (methods or None for all, KEY=VALUE)."""
    out = []
    for item in items:
        key = item.split("=", 1)[0]
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE or METHOD[,METHOD]:KEY=VALUE")
        if ":" in key:
            names, rest = item.split(":", 1)
            out.append(({n.strip() for n in names.split(",") if n.strip()}, rest))
        else:
            out.append((None, item))
    return out


def sets_for(method: str, sets) -> list[str]:
    return [kv for methods, kv in sets if methods is None or method in methods]


def detect_method_flag(kdkit: list[str], env: dict, cwd: str) -> str:
    """``--method`` when ``kdkit train --help`` mentions it, else ``--plugin`` (the tree before issue 19)."""
    try:
        r = subprocess.run([*kdkit, "train", "--help"], env=env, cwd=cwd, capture_output=True, text=True,
                           timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"error: cannot run {shlex.join(kdkit)} train --help: {exc}") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: {shlex.join(kdkit)} train --help failed: {last}")
    return "--method" if "--method" in r.stdout else "--plugin"


def last_line(text: str) -> str:
    """The last line of a run's stderr; after kdkit's "internal error ... traceback above", also the
    exception line of that traceback (the last line tells nothing else)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no stderr)"
    last = lines[-1].strip()
    if "traceback above" in last:
        cause = next((line for line in reversed(lines[:-1])
                      if not line[0].isspace() and not line.startswith(("Traceback", "kdkit:", "During handling",
                                                                        "The above exception"))), None)
        if cause:
            last += f" [{cause}]"
    return last


def run_method(method: str, args, kdkit: list[str], flag: str, base_env: dict, sets, work: Path,
               log=print) -> dict:
    """Train ``method`` in a fresh directory under ``work`` and return its entry of the JSON."""
    home = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work))
    run_dir, cache = home / "run", home / "cache"
    cache.mkdir()
    env = dict(base_env)
    env["KDKIT_CACHE_DIR"] = str(cache)
    items = sets_for(method, sets)
    cmd = [*kdkit, "train", flag, method, *[a for kv in items for a in ("--set", kv)], "--out", str(run_dir)]
    entry = {"status": "failed", "run_dir": str(run_dir), "sets": items}
    start = time.monotonic()
    try:
        with open(home / "stdout.log", "w") as out, open(home / "stderr.log", "w+") as err:
            rc = subprocess.run(cmd, env=env, cwd=args.cwd, stdout=out, stderr=err,
                                timeout=args.timeout, check=False).returncode
            err.seek(0)
            stderr = err.read()
    except subprocess.TimeoutExpired:
        rc, stderr = None, f"timed out after {args.timeout} s"
    except OSError as exc:
        rc, stderr = None, f"cannot run {shlex.join(cmd)}: {exc}"
    entry["wall_s"] = round(time.monotonic() - start, 1)
    if rc != 0:
        entry["error"] = ((f"exit {rc}: " if rc is not None else "") + last_line(stderr)).replace(str(home), "<run>")
        try:  # what the run wrote before it failed, so that two sides failing alike compare as the same
            metrics = (run_dir / "metrics.jsonl").read_bytes()
            entry.update(sha256=hashlib.sha256(metrics).hexdigest(), lines=metrics.count(b"\n"))
        except OSError:
            pass
    else:
        try:
            entry.update(digest_run(run_dir, (str(home), str(run_dir), str(cache))))
            entry["status"] = "ok"
        except (OSError, ValueError) as exc:
            entry["error"] = f"run finished but its files are unreadable: {exc}"
    note = entry.get("error") or f"{entry['lines']} lines, metrics {entry['sha256'][:12]}"
    log(f"{method:14s} {entry['status']:6s} {entry['wall_s']:8.1f} s  {note}")
    return entry


def _first_difference(a: dict, b: dict) -> str:
    """Where two runs' metrics.jsonl first differ, when both run directories still exist."""
    try:
        la = Path(a["run_dir"], "metrics.jsonl").read_text().splitlines()
        lb = Path(b["run_dir"], "metrics.jsonl").read_text().splitlines()
    except (KeyError, OSError):
        return ""
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            try:
                jx, jy = json.loads(x), json.loads(y)
                keys = sorted(k for k in set(jx) | set(jy) if jx.get(k) != jy.get(k))
                return f"line {i + 1} ({jx.get('stage')}, epoch {jx.get('epoch')}): {', '.join(keys)}"
            except ValueError:
                return f"line {i + 1}"
    return f"line {min(len(la), len(lb)) + 1} (one file is longer)" if len(la) != len(lb) else ""


def compare(a: dict, b: dict, name_a: str, name_b: str, methods=None) -> tuple[str, bool]:
    """The comparison table of two result mappings and whether every method is the same on both sides."""
    names = methods or list(dict.fromkeys([*a, *b]))
    rows, all_same = [], True
    for m in names:
        ea, eb = a.get(m), b.get(m)
        detail = ""
        if ea is None or eb is None:
            result = "missing"
            detail = f"not in {name_a if ea is None else name_b}"
        elif (ea.get("status") == eb.get("status") == "failed" and ea.get("error") == eb.get("error")
              and "sha256" in ea and ea.get("sha256") == eb.get("sha256")):
            result = "same"
            detail = f"both fail alike after the same {ea['lines']} metrics lines: {ea['error']}"
        elif ea.get("status") != "ok" or eb.get("status") != "ok":
            result = "FAILED"
            detail = "; ".join(f"{n}: {e.get('error')}" for n, e in ((name_a, ea), (name_b, eb))
                               if e.get("status") != "ok")
        else:
            metrics_same = ea.get("sha256") == eb.get("sha256") and ea.get("lines") == eb.get("lines")
            summary_same = ea.get("summary_sha256") == eb.get("summary_sha256")
            result = "same" if metrics_same and summary_same else "DIFF"
            parts = []
            if not metrics_same:
                parts.append(f"metrics.jsonl differs ({ea.get('lines')} vs {eb.get('lines')} lines"
                             + (f"; first at {fd}" if (fd := _first_difference(ea, eb)) else "") + ")")
            if not summary_same:
                parts.append("summary.json differs")
            detail = "; ".join(parts) or f"{ea.get('lines')} lines"
        all_same &= result == "same"
        rows.append((m, result, detail))
    width = max([len("method"), *(len(r[0]) for r in rows)])
    lines = [f"{'method'.ljust(width)}  result   detail ({name_a} vs {name_b})"]
    lines += [f"{m.ljust(width)}  {r.ljust(7)}  {d}" for m, r, d in rows]
    return "\n".join(lines), all_same


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} is not a mapping of method -> digests")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("methods", nargs="*", help=f"methods to run (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="[M1,M2:]KEY=VALUE",
                   help="config override for every method, or only for the methods before the colon (repeatable)")
    p.add_argument("--kdkit", default=".venv/bin/kdkit", help="the kdkit command (default: .venv/bin/kdkit)")
    p.add_argument("--method-flag", default="auto", choices=["auto", "--method", "--plugin"],
                   help="how the command selects a method (auto: --method when `train --help` has it)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable of the runs (repeatable), e.g. PYTHONPATH of another tree")
    p.add_argument("--cwd", default=None, help="working directory of the runs (default: the current one)")
    p.add_argument("--work", default=None, help="directory for the runs' directories and caches "
                   "(default: a new temporary directory; every run gets a fresh subdirectory)")
    p.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    p.add_argument("--update", action="store_true",
                   help="--out exists: replace only the entries of the methods run, keep the others")
    p.add_argument("--compare", nargs="+", metavar="JSON", default=None,
                   help="OTHER.json: compare these runs with it; A.json B.json: compare two files, run nothing")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a run may take (default: no limit)")
    args = p.parse_args(argv)

    if args.compare and len(args.compare) > 2:
        p.error("--compare takes OTHER.json, or A.json B.json")
    if args.compare and len(args.compare) == 2:
        if args.methods or args.sets:
            p.error("--compare A.json B.json runs nothing: drop the methods and --set")
        table, same = compare(_load(args.compare[0]), _load(args.compare[1]), *args.compare)
        print(table)
        return 0 if same else 1
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    try:
        sets = parse_sets(args.sets)
    except ValueError as exc:
        p.error(str(exc))
    methods = args.methods or DEFAULT_METHODS
    named = set().union(*[m for m, _ in sets if m is not None])
    if unknown := sorted(named - set(methods)):
        p.error(f"--set names methods that are not run: {', '.join(unknown)}")
    other = _load(args.compare[0]) if args.compare else None
    if args.update and not args.out:
        p.error("--update needs --out FILE")
    earlier = _load(args.out) if args.update and Path(args.out).exists() else {}

    kdkit = shlex.split(args.kdkit)
    if kdkit and os.sep in kdkit[0] and Path(kdkit[0]).exists():
        # relative to where the script runs, not --cwd; abspath, not resolve: a venv's python is a symlink
        kdkit[0] = os.path.abspath(kdkit[0])
    args.cwd = str(Path(args.cwd).resolve()) if args.cwd else os.getcwd()
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "2", "KDKIT_OFFLINE": "1"})
    for item in args.env:
        if "=" not in item:
            p.error(f"--env {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        env[key] = value
    flag = args.method_flag if args.method_flag != "auto" else detect_method_flag(kdkit, env, args.cwd)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="metrics-digest-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(methods)} method(s) with {shlex.join(kdkit)} train {flag} ... in {args.cwd}; runs under {work}",
          file=sys.stderr)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {m: pool.submit(run_method, m, args, kdkit, flag, env, sets, work, log) for m in methods}
        results = {m: f.result() for m, f in futures.items()}
    log(f"total {time.monotonic() - start:.1f} s")

    text = json.dumps({**earlier, **results}, indent=2, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        log(f"wrote {args.out}")
    else:
        print(text, end="")
    if other is not None:
        table, same = compare(other, results, args.compare[0], args.out or "this run", methods)
        print(table)
        return 0 if same else 1
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
