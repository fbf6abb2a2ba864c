"""``kdkit sweep`` itself: :func:`run_sweep` checks the sweep, claims ``OUT`` (a copy of the sweep
file, a lock), runs every run that has not ended (new, restarted or resumed) through an executor
(:mod:`kdkit.sweep.executors`: subprocesses here, or submitit jobs), ``--jobs`` at a time, each run
after the runs it depends on, logs the progress to stderr and ``OUT/sweep.log``, and writes the
results, tables and plot."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from kdkit.config.files import parse_yaml
from kdkit.errors import ConfigError, KdkitError
from kdkit.paths import LOCK_FILE, lock_directory
from kdkit.plugins import load_recorded_plugins, record_plugin_modules
from kdkit.sweep.executors import make_executor
from kdkit.sweep.plots import plot_table
from kdkit.sweep.runs import (
    RunSpec,
    _add_wall,
    _child_log,
    _read_failure,
    check_configs,
    diverged_at,
    divergence,
    plan,
    run_dir_of,
    run_status,
    select,
)
from kdkit.sweep.spec import Sweep, load_sweep
from kdkit.sweep.tables import (
    check_common_rows,
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
#: the most runs a sweep file may have without ``--yes``: the whole file's runs are planned and
#: checked before any runs (about 3 s per hundred runs on 2 cores), so a grid typed wrong (100,000 points)
#: would otherwise keep the sweep silent for most of an hour before it started months of runs.
MAX_RUNS_WITHOUT_YES = 1000
#: seconds the runs get to end after the sweep passed them its SIGTERM/SIGINT, before SIGKILL
STOP_GRACE_S = 30.0


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



def _child_command(run: RunSpec, status: str, plugin_modules: list) -> list:
    """The run's ``python -m kdkit ... train`` command (a restarted run's directory emptied first)."""
    cmd = [sys.executable, "-m", "kdkit"]
    for module in ["kdkit.sweep", *plugin_modules]:
        cmd += ["--plugins-module", module]
    if status == "resume":
        return cmd + ["train", "--resume", str(run.run_dir)]
    if status == "restart":
        _clear_run_dir(run.run_dir)
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd += ["train", "--method", run.cell.method, "--out", str(run.run_dir)]
    for item in run.sets:
        cmd += ["--set", item]
    return cmd



def _clear_run_dir(run_dir: Path) -> None:
    """Empty a run directory that holds no checkpoint, its ``.lock`` aside (the caller holds it)."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()



def _take_run(run: RunSpec, plugin_modules: list) -> tuple:
    """``(status, command)`` of a run about to start, decided (and a restarted run's directory emptied)
    under the run directory's lock, the one ``kdkit train`` takes; a lock held by another process is a
    :class:`KdkitError` naming the run and its PID.  The lock is released before the run starts, as the
    run takes it itself: only another process could slip in between, and the run then stops 'in use'."""
    if not run.run_dir.exists():
        return "new", _child_command(run, "new", plugin_modules)
    with lock_directory(run.run_dir, f"run {_where(run)} ({run.run_dir})",
                        "skipped (counted as failed); stop that process or let it end, then run the sweep again"):
        status = run_status(run.run_dir)
        return status, _child_command(run, status, plugin_modules)



def child_env(threads: int | None, jobs: int = 1) -> dict:
    """What each run's environment gets on top of the sweep's: with ``threads``, that many torch CPU
    threads (OMP_NUM_THREADS, MKL_NUM_THREADS); when the runs at once would want more threads than the
    machine has cores, OpenMP threads that never spin (``OMP_WAIT_POLICY=PASSIVE`` and
    ``GOMP_SPINCOUNT=0``, which replaces the short spin kdkit's CLI set in the sweep's own environment:
    libgomp takes a set spin count over the wait policy): spinning runs stall each other
    (:mod:`kdkit.runtime`).  The user's own OpenMP wait settings are kept."""
    from kdkit.runtime import user_openmp_env

    env = {}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cores = os.cpu_count() or 1
    inherited = os.environ.get("OMP_NUM_THREADS", "")
    per_run = threads or (int(inherited) if inherited.isdigit() and int(inherited) > 0 else cores)
    if jobs * per_run > cores and not user_openmp_env():
        env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="0")
    return env



def default_threads() -> int | None:
    """``--threads`` unless given: ``None`` — every run inherits the sweep's environment and so uses the
    thread count ``kdkit train`` uses on this machine (``OMP_NUM_THREADS`` when set, else torch's
    default).  A run's numbers depend on its thread count (float summation order), not on how many
    runs share the machine: a sweep's runs are the runs started by hand, for any ``--jobs``.  (Several
    runs at once then share the cores; ``--threads`` divides them, at that thread count's numbers.)"""
    return None



def _write_text(path: Path, text: str) -> None:
    from kdkit.engine.checkpoint import atomic_write_text

    atomic_write_text(Path(path), text)



def _check_out(sweep: Sweep, out: Path, create: bool, locked: bool = True) -> bool:
    """Refuse an OUT that holds another sweep (or, ``create`` false, none); ``True`` when OUT holds
    this sweep's copy of the sweep file.  Reads only: called before the lock (``locked`` false, to refuse
    early) and again under it (another sweep may have claimed OUT in between)."""
    copy_path = out / SWEEP_FILE
    if copy_path.is_file():
        try:
            stored = parse_yaml(copy_path.read_text(encoding="utf-8"), f"invalid YAML in {copy_path}")
        except ConfigError:  # unreadable: not this sweep's copy
            stored = None
        if stored != sweep.data:
            raise KdkitError(f"--out {out} holds a sweep with a different config ({copy_path}); "
                             "run this one with --out elsewhere (or restore that file)")
        return True
    if not create:
        raise KdkitError(f"--no-run: {out} holds no sweep ({copy_path} is missing)")
    # a lone lock file: a sweep killed between taking OUT's lock and writing its copy.  Before the lock, a
    # lock file with more beside it may be another sweep writing its copy now: the lock decides who is refused
    # and how (seen as "not a kdkit sweep directory" when two sweeps started together)
    entries = [p.name for p in out.iterdir()] if out.is_dir() else []
    if not locked and LOCK_FILE in entries:
        return False
    if out.exists() and (not out.is_dir() or any(name != LOCK_FILE for name in entries)):
        raise KdkitError(f"--out {out} exists and is not a kdkit sweep directory (no {SWEEP_FILE}); "
                         "choose another --out")
    return False



def _claim_out(sweep: Sweep, out: Path) -> None:
    """Under OUT's lock: copy the sweep file into OUT unless it is there (only the sweep that holds
    the lock writes it, so of two sweeps started together the loser's copy never lands in OUT)."""
    if not _check_out(sweep, out, create=True):
        text = (sweep.source.read_text(encoding="utf-8") if sweep.source is not None
                else yaml.safe_dump(sweep.data, sort_keys=False))
        _write_text(out / SWEEP_FILE, text)



def _check_kept_runs(runs: list, configs: dict) -> None:
    """Refuse a run the sweep would keep (finished, diverged, or resumed with its own saved config)
    whose ``config.yaml`` is not the config the sweep would run now: it used to be tabulated with the
    others (2- and 4-epoch seeds in one mean).  The run is left as it is."""
    from kdkit.config import load_yaml
    from kdkit.config.diff import config_changes, summarize  # what --resume compares, device/logging aside

    for run in runs:
        path = run.run_dir / "config.yaml"
        if run_status(run.run_dir) not in ("done", "diverged", "resume") or not path.is_file():
            continue
        changes = config_changes(load_yaml(path), configs[run.key])
        if changes:
            raise KdkitError(f"run {_where(run)} ({run.run_dir}) was made with another config than this sweep's "
                             f"({summarize(changes)}; saved -> now); use another --out, or remove that run "
                             "directory to run it again")



def sweep_size(sweep: Sweep, cells: Iterable[str] | None = None, seeds: Iterable[int] | None = None) -> str:
    """``"12 run(s) = 2 cell(s) x 2 grid point(s) x 3 seed(s)"``, counted without planning a run; with
    a slice, also how many of them this invocation runs."""
    text = (f"{sweep.n_runs} run(s) = {len(sweep.cells)} cell(s) x {sweep.n_grid_points} grid point(s) x "
            f"{len(sweep.seeds)} seed(s)")
    if cells is not None or seeds is not None:
        wanted, seed_list = select(sweep, cells, seeds)
        text += f", all checked; {len(wanted) * sweep.n_grid_points * len(seed_list)} of them run here (--cells/--seeds)"
    return text



def check_size(sweep: Sweep, yes: bool) -> None:
    """Refuse a sweep file of more than :data:`MAX_RUNS_WITHOUT_YES` runs unless ``yes``."""
    if sweep.n_runs > MAX_RUNS_WITHOUT_YES and not yes:
        raise KdkitError(f"sweep {sweep.name} has {sweep.n_runs} runs, more than the {MAX_RUNS_WITHOUT_YES} a sweep plans "
                         "and runs without --yes; check the grid, or pass --yes to run them all")



def _write_results(out: Path, records: list) -> None:
    _write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))



def run_sweep(config: str | Path, out: str | Path | None = None, cells: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, compare: str | Path | None = None, tolerance: float = 1.0,
              no_run: bool = False, plugin_modules: Iterable[str] = (), manager=None,
              echo: Callable[[str], None] | None = None, stdout: Callable[[str], None] | None = None,
              jobs: int = 1, threads: int | None | str = "auto", executor: str = "local",
              executor_opts: dict | None = None, yes: bool = False) -> int:
    """``kdkit sweep``; returns the exit status (0, or :data:`RESULTS_FAILED` for failed runs / rows out
    of band; runs that diverged are results, not failures; 128 + the signal when SIGTERM/SIGINT stopped it).

    ``jobs``: runs in flight at once (a run waits for the runs it depends on); ``threads``: torch CPU
    threads of each run (``"auto"``: :func:`default_threads`; ``None``: inherited); ``executor``:
    ``local`` or ``submitit`` (:mod:`kdkit.sweep.executors`), ``executor_opts`` its options; ``yes``:
    run a sweep file of more than :data:`MAX_RUNS_WITHOUT_YES` runs."""
    stdout = stdout or (lambda m: print(m, flush=True))
    if tolerance is None or not 0 <= tolerance < math.inf:  # nan and inf would pass every row
        raise ConfigError(f"--tolerance must be a finite number >= 0 (points of top-1), got {tolerance}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1 (runs at once), got {jobs!r}")
    if threads == "auto":
        threads = default_threads()
    elif threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads must be an integer >= 1 (torch threads per run), got {threads!r}")
    sweep = load_sweep(config)
    # the size first (on stdout: stderr holds only the error of a bad sweep), before anything that
    # takes time in proportion to it
    stdout(f"kdkit sweep {sweep.name}: {sweep_size(sweep, cells, seeds)}")
    check_size(sweep, yes)
    if out is not None and not str(out).strip():  # Path("") is the current directory
        raise KdkitError("--out is empty; give the sweep's directory, e.g. --out sweeps/mine (or leave --out out: "
                         f"sweeps/{sweep.dir_name})")
    out = Path(out) if out is not None else Path("sweeps") / sweep.dir_name
    reference = load_table(compare) if compare is not None else None
    runs = plan(sweep, out, cells, seeds)
    if reference is not None:
        check_common_rows(reference, sweep, runs, compare)
    # a sweep run again (its resume) loads the plugin modules it was started with by itself
    modules = list(dict.fromkeys([*load_recorded_plugins(out, manager), *plugin_modules]))
    # the whole file is checked, not only the slice: a typo in any cell fails before anything runs
    configs = check_configs(plan(sweep, out), manager)
    # the executor's options and library are checked before OUT is claimed
    pool = None if no_run else make_executor(executor, out, executor_opts or {})
    _check_out(sweep, out, create=not no_run, locked=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdkitError(f"--out {out}: cannot create it ({exc.strerror or exc}); choose a directory you can "
                         "write to") from None
    log = _Log(out / "sweep.log", echo)
    with lock_directory(out, f"sweep directory {out}", "wait for it to finish or choose another --out"):
        if no_run:
            _check_out(sweep, out, create=False)
        else:
            _claim_out(sweep, out)
        _check_kept_runs(runs, configs)
        record_plugin_modules(out, modules)
        return _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, modules,
                        _Pool(pool, jobs, child_env(threads, jobs), threads))



class _Pool:
    """The executor, how many runs it may hold at once, and each run's environment."""

    def __init__(self, executor, jobs: int, env: dict, threads: int | None):
        self.executor, self.jobs, self.env, self.threads = executor, jobs, env, threads

    def describe(self) -> str:
        threads = (f"{self.threads} torch thread(s) each" if self.threads is not None
                   else "each with kdkit train's torch threads" +
                   (" (sharing the cores: --threads divides them)" if self.jobs > 1 else ""))
        return f"{self.jobs} at a time as {self.executor.describe()}, {threads}"



def _where(run: RunSpec) -> str:
    return f"{run.cell.name} seed={run.seed}" + (f" {run.point.id}" if run.point.id != "default" else "")



def _catch_signals(handler) -> dict:
    """Route SIGTERM and SIGINT to ``handler`` (main thread only: elsewhere Python refuses); returns
    the handlers to restore.  Without this, SIGTERM ended the sweep and left its runs training."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _stop_runs(handles: list, signum: int, log, grace: float | None = None) -> int:
    """Pass the sweep's signal on to its runs, wait for them (``grace`` s, :data:`STOP_GRACE_S`), SIGKILL
    the ones still running; returns the exit status of a process ended by ``signum`` (128 + signum)."""
    grace = STOP_GRACE_S if grace is None else grace
    name = signal.Signals(signum).name
    for handle in handles:
        handle.interrupt(signum)
    deadline = time.monotonic() + grace
    while any(h.poll() is None for h in handles) and time.monotonic() < deadline:
        time.sleep(0.05)
    stuck = [h for h in handles if h.poll() is None]
    for handle in stuck:
        handle.kill()
    if stuck:
        log(f"kdkit sweep: {len(stuck)} run(s) still running {grace:g} s after {name}: killed (SIGKILL)")
    log(f"kdkit sweep: interrupted ({name}); {len(handles)} running run(s) stopped; run the same command "
        "again to resume")
    return 128 + signum


def _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, plugin_modules, pool) -> int:
    total = len(runs)
    index = {r.key: i for i, r in enumerate(runs, 1)}
    head = {r.key: f"[{index[r.key]}/{total}] {r.label}" for r in runs}
    status = {r.key: run_status(r.run_dir) for r in runs}
    todo = sum(s not in ("done", "diverged") for s in status.values())
    log(f"kdkit sweep {sweep.name}: {total} run(s) in {out} ({total - todo} done, {todo} to run"
        + (", --no-run)" if no_run else f"); {pool.describe()}"))
    failed: dict[tuple, str] = {}
    diverged: dict[tuple, str] = {}
    ran_times: list[float] = []
    t_start = time.perf_counter()
    left = todo
    pending: list[RunSpec] = []
    for run in runs:
        st = status[run.key]
        if st == "done":
            log(f"{head[run.key]}: done, skipped ({os.path.relpath(run.run_dir, out.resolve())})")
        elif st == "diverged":
            diverged[run.key] = diverged_at(divergence(run.run_dir) or {})
            log(f"{head[run.key]}: diverged ({diverged[run.key]}), skipped "
                f"({os.path.relpath(run.run_dir, out.resolve())})")
        elif no_run:
            log(f"{head[run.key]}: not run ({st}; --no-run)")
        else:
            pending.append(run)

    in_flight: dict[tuple, tuple] = {}  # key -> (run, handle, start time, log offset)

    def blocked_by(run: RunSpec):
        """``None`` when ``run`` may start, ``"wait"`` while a run it needs is pending or running,
        else the cell it needs that did not end as a result."""
        for d in run.cell.deps:
            key = (d, run.point.id, run.seed)
            if key in in_flight or any(p.key == key for p in pending):
                return "wait"
            if key in failed or run_status(run_dir_of(out, d, run.point, run.seed)) not in ("done", "diverged"):
                return d
        return None

    def start(run: RunSpec) -> None:
        nonlocal left
        try:
            st, cmd = _take_run(run, plugin_modules)
        except KdkitError as exc:  # another process holds the run: never clear or start it under that one
            failed[run.key] = str(exc)
            _add_wall(out, run, 0.0, failed=failed[run.key])
            log(f"{head[run.key]}: SKIPPED: {exc}")
            left -= 1
            return
        how = {"new": "running", "restart": "restarting (its directory had no checkpoint)",
               "resume": "resuming (kdkit train --resume)"}[st]
        log_path = _child_log(out, run)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as fh:
            offset = fh.tell()
            fh.write(f"$ {' '.join(cmd)}\n".encode())
        log(f"{head[run.key]}: {how}")
        if _read_failure(out, run) is not None:  # this attempt's outcome replaces the last one's
            _add_wall(out, run, 0.0)
        t0 = time.perf_counter()
        try:
            handle = pool.executor.submit(cmd, log_path, pool.env, _where(run).replace(" ", "-"))
        except Exception as exc:  # noqa: BLE001 - a submission that fails is this run's failure
            finish(run, -1, 0.0, offset, f"could not be submitted: {type(exc).__name__}: {exc}".splitlines()[0])
            return
        in_flight[run.key] = (run, handle, t0, offset)

    def finish(run: RunSpec, code: int, seconds: float, offset: int, note: str = "") -> None:
        nonlocal left
        left -= 1
        ran_times.append(seconds)
        eta = statistics.fmean(ran_times) * left / pool.jobs
        timing = f"elapsed {_fmt_time(time.perf_counter() - t_start)}, ~{_fmt_time(eta)} left ({left} run(s))"
        ended = run_status(run.run_dir)
        if code == 0 and ended == "done":
            _add_wall(out, run, seconds)
            log(f"{head[run.key]}: finished in {seconds:.1f}s; {timing}")
        elif ended == "diverged":  # kdkit train exits EXIT_DIVERGED: a result
            _add_wall(out, run, seconds)
            record = divergence(run.run_dir) or {}
            diverged[run.key] = diverged_at(record)
            log(f"{head[run.key]}: diverged in stage {record.get('stage')}, {diverged[run.key]} "
                f"(non-finite loss {record.get('loss')}; {run.run_dir / 'diverged.json'}) after {seconds:.1f}s; {timing}")
        else:
            tail = _tail(_child_log(out, run), offset)
            last = note or (tail.strip().splitlines()[-1] if tail.strip() else "no output")
            failed[run.key] = f"exit {code}: {last}"
            _add_wall(out, run, seconds, failed=failed[run.key])
            log(f"{head[run.key]}: FAILED (exit {code}) after {seconds:.1f}s; {timing}; its last output lines "
                f"({_child_log(out, run)}):\n" + "\n".join("    " + ln for ln in tail.splitlines())
                + (f"\n    {note}" if note else ""))
        _write_results(out, collect(sweep, runs, out)[0])

    stop: list[int] = []  # the signal that stops the sweep (SIGTERM, SIGINT), once received
    previous = _catch_signals(lambda signum, frame: stop or stop.append(signum))
    try:
        while (pending or in_flight) and not stop:
            progressed = False
            for run in list(pending):  # plan order: dependencies first
                if len(in_flight) >= pool.jobs:
                    break
                blocker = blocked_by(run)
                if blocker == "wait":
                    continue
                pending.remove(run)
                progressed = True
                if blocker is not None:
                    failed[run.key] = f"needs cell {blocker} (same seed and grid point), which did not finish"
                    _add_wall(out, run, 0.0, failed=failed[run.key])
                    log(f"{head[run.key]}: SKIPPED: {failed[run.key]}")
                    left -= 1
                    continue
                start(run)
            for key, (run, handle, t0, offset) in list(in_flight.items()):
                result = handle.poll()
                if result is None:
                    continue
                del in_flight[key]
                progressed = True
                finish(run, result[0], time.perf_counter() - t0, offset, result[1])
            if not progressed:
                time.sleep(pool.executor.poll_s)
    except BaseException:  # a bug or an error here: stop the runs too; they are resumed next time
        for _, handle, _, _ in in_flight.values():
            handle.cancel()
        raise
    finally:
        _restore_signals(previous)
    if stop:
        return _stop_runs([handle for _, handle, _, _ in in_flight.values()], stop[0], log)

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
    def names(outcomes: dict) -> str:
        return "; ".join(f"{k[0]} seed={k[2]}" + (f" {k[1]}" if k[1] != "default" else "") + f" ({outcomes[k]})"
                         for k in sorted(outcomes, key=index.__getitem__))

    if diverged:
        log(f"kdkit sweep: {len(diverged)} of {total} run(s) diverged (results, not failures: shown as such "
            f"in the table): {names(diverged)}")
    if failed:
        log(f"kdkit sweep: {len(failed)} of {total} run(s) failed: {names(failed)}")
        status_code = RESULTS_FAILED
    if reference is not None:
        lines, out_of_band = compare_tables(table, reference, tolerance)
        for line in lines:
            stdout(line)
        if out_of_band:
            status_code = RESULTS_FAILED
    done = sum(run_status(r.run_dir) in ("done", "diverged") for r in runs)
    log(f"kdkit sweep: {done}/{total} run(s) done ({len(diverged)} diverged) in {_fmt_time(time.perf_counter() - t_start)}; "
        f"results in {out / 'results.jsonl'}, table in {out / 'table.md'}")
    return status_code

