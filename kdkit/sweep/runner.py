"""``kdkit sweep`` itself: :func:`run_sweep` checks the sweep, claims ``OUT`` (a copy of the sweep
file, a lock), runs every run that is not done in a subprocess (new, restarted or resumed), logs the
progress to stderr and ``OUT/sweep.log``, and writes the results, tables and plot."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from kdkit.errors import ConfigError, KdkitError
from kdkit.paths import lock_directory
from kdkit.plugins import load_recorded_plugins, record_plugin_modules
from kdkit.sweep.plots import plot_table
from kdkit.sweep.runs import (
    RunSpec,
    _add_wall,
    _child_log,
    check_configs,
    plan,
    run_dir_of,
    run_status,
)
from kdkit.sweep.spec import Sweep, load_sweep
from kdkit.sweep.tables import (
    collect,
    compare_tables,
    format_table,
    load_table,
    make_table,
)

#: exit status of a sweep that ran but has failed runs or rows out of band: a result, neither a
#: user error (2) nor a kdkit bug (1)
RESULTS_FAILED = 3
#: the copy of the sweep file kept in OUT.
SWEEP_FILE = "sweep.yaml"


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"



class _Log:
    """Progress lines: stderr (flushed) and OUT/sweep.log (timestamped)."""

    def __init__(self, path: Path | None, echo: Callable[[str], None] | None = None):
        self.path = path
        self.echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))

    def __call__(self, msg: str) -> None:
        self.echo(msg)
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(f"{stamp} {line}\n" for line in msg.splitlines() or [""])



def _tail(path: Path, start: int, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])



def _run_child(run: RunSpec, status: str, out: Path, plugin_modules: list) -> tuple[int, float, str]:
    """Run (or resume) one run in a subprocess; returns (exit status, seconds, output tail)."""
    cmd = [sys.executable, "-m", "kdkit"]
    for module in ["kdkit.sweep", *plugin_modules]:
        cmd += ["--plugins-module", module]
    if status == "resume":
        cmd += ["train", "--resume", str(run.run_dir)]
    else:
        if status == "restart":
            shutil.rmtree(run.run_dir)
        run.run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["train", "--method", run.cell.method, "--out", str(run.run_dir)]
        for item in run.sets:
            cmd += ["--set", item]
    log_path = _child_log(out, run)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log_path, "ab") as fh:
        start = fh.tell()
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            code = proc.wait()
        except BaseException:  # KeyboardInterrupt: stop the child too, its run is resumed next time
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        seconds = time.perf_counter() - t0
    return code, seconds, _tail(log_path, start) if code else ""



def _write_text(path: Path, text: str) -> None:
    from kdkit.engine.checkpoint import atomic_write_text

    atomic_write_text(Path(path), text)



def _prepare_out(sweep: Sweep, out: Path, create: bool) -> None:
    """Copy the sweep file into OUT; refuse an OUT that holds another sweep."""
    copy_path = out / SWEEP_FILE
    if copy_path.is_file():
        try:
            stored = yaml.safe_load(copy_path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            stored = None
        if stored != sweep.data:
            raise KdkitError(f"--out {out} holds a sweep with a different config ({copy_path}); "
                             "run this one with --out elsewhere (or restore that file)")
        return
    if not create:
        raise KdkitError(f"--no-run: {out} holds no sweep ({copy_path} is missing)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KdkitError(f"--out {out} exists and is not a kdkit sweep directory (no {SWEEP_FILE}); "
                         "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    text = (sweep.source.read_text(encoding="utf-8") if sweep.source is not None
            else yaml.safe_dump(sweep.data, sort_keys=False))
    _write_text(copy_path, text)



def _write_results(out: Path, records: list) -> None:
    _write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))



def run_sweep(config: str | Path, out: str | Path | None = None, cells: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, compare: str | Path | None = None, tolerance: float = 1.0,
              no_run: bool = False, plugin_modules: Iterable[str] = (), manager=None,
              echo: Callable[[str], None] | None = None, stdout: Callable[[str], None] | None = None) -> int:
    """``kdkit sweep``; returns the exit status (0, or :data:`RESULTS_FAILED` for failed runs / rows out of band)."""
    stdout = stdout or (lambda m: print(m, flush=True))
    if tolerance is None or not tolerance >= 0:
        raise ConfigError(f"--tolerance must be a number >= 0 (points of top-1), got {tolerance}")
    sweep = load_sweep(config)
    out = Path(out) if out is not None else Path("sweeps") / re.sub(r"[^A-Za-z0-9_.-]", "_", sweep.name)
    reference = load_table(compare) if compare is not None else None
    runs = plan(sweep, out, cells, seeds)
    # a sweep run again (its resume) loads the plugin modules it was started with by itself
    modules = list(dict.fromkeys([*load_recorded_plugins(out, manager), *plugin_modules]))
    # the whole file is checked, not only the slice: a typo in any cell fails before anything runs
    check_configs(plan(sweep, out), manager)
    _prepare_out(sweep, out, create=not no_run)
    log = _Log(out / "sweep.log", echo)
    with lock_directory(out, f"sweep directory {out}", "wait for it to finish or choose another --out"):
        record_plugin_modules(out, modules)
        return _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, modules)



def _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, plugin_modules) -> int:
    total = len(runs)
    status = {r.key: run_status(r.run_dir) for r in runs}
    todo = sum(s != "done" for s in status.values())
    log(f"kdkit sweep {sweep.name}: {total} run(s) in {out} ({total - todo} done, {todo} to run"
        + (", --no-run" if no_run else "") + ")")
    failed: dict[tuple, str] = {}
    ran_times: list[float] = []
    t_start = time.perf_counter()
    left = todo
    records: list = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{total}] {run.label}"
        st = status[run.key]
        if st == "done":
            log(f"{head}: done, skipped ({os.path.relpath(run.run_dir, out.resolve())})")
            continue
        if no_run:
            log(f"{head}: not run ({st}; --no-run)")
            continue
        broken = [d for d in run.cell.deps if (d, run.point.id, run.seed) in failed
                  or run_status(run_dir_of(out, d, run.point, run.seed)) != "done"]
        if broken:
            failed[run.key] = f"needs cell {broken[0]} (same seed and grid point), which did not finish"
            log(f"{head}: SKIPPED: {failed[run.key]}")
            left -= 1
            continue
        how = {"new": "running", "restart": "restarting (its directory had no checkpoint)",
               "resume": "resuming (kdkit train --resume)"}[st]
        log(f"{head}: {how}")
        code, seconds, tail = _run_child(run, st, out, plugin_modules)
        _add_wall(out, run, seconds)
        left -= 1
        ran_times.append(seconds)
        eta = statistics.fmean(ran_times) * left
        timing = f"elapsed {_fmt_time(time.perf_counter() - t_start)}, ~{_fmt_time(eta)} left ({left} run(s))"
        if code == 0 and run_status(run.run_dir) == "done":
            log(f"{head}: finished in {seconds:.1f}s; {timing}")
        else:
            last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
            failed[run.key] = f"exit {code}: {last}"
            log(f"{head}: FAILED (exit {code}) after {seconds:.1f}s; {timing}; its last output lines "
                f"({_child_log(out, run)}):\n" + "\n".join("    " + ln for ln in tail.splitlines()))
        records, _ = collect(sweep, runs, out)
        _write_results(out, records)

    records, problems = collect(sweep, runs, out)
    _write_results(out, records)
    table = make_table(sweep, records, runs)
    _write_text(out / "table.json", json.dumps(table, indent=2) + "\n")
    text = format_table(table)
    _write_text(out / "table.md", text)
    png = plot_table(table, out / "table.png")
    if png is None:
        log("kdkit sweep: matplotlib is missing, no table.png (pip install kdkit[plot])")
    stdout(text.rstrip("\n"))
    status_code = 0
    for p in problems:
        log(f"kdkit sweep: {p}")
    if problems:
        status_code = RESULTS_FAILED
    if failed:
        names = "; ".join(f"{k[0]} seed={k[2]}" + (f" {k[1]}" if k[1] != "default" else "") + f" ({v})"
                          for k, v in failed.items())
        log(f"kdkit sweep: {len(failed)} of {total} run(s) failed: {names}")
        status_code = RESULTS_FAILED
    if reference is not None:
        lines, out_of_band = compare_tables(table, reference, tolerance)
        for line in lines:
            stdout(line)
        if out_of_band:
            status_code = RESULTS_FAILED
    done = sum(run_status(r.run_dir) == "done" for r in runs)
    log(f"kdkit sweep: {done}/{total} run(s) done in {_fmt_time(time.perf_counter() - t_start)}; "
        f"results in {out / 'results.jsonl'}, table in {out / 'table.md'}")
    return status_code

