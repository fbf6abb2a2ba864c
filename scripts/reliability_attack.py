#!/usr/bin/env python3
"""A rerunnable reliability attack on kdkit's CLI (issue 22): a table of probes per section, each run
serially in a fresh temporary directory under a timeout, and classified.

    python scripts/reliability_attack.py                 # every section
    python scripts/reliability_attack.py --only files    # one section (or a glob of SECTION:NAME)
    python scripts/reliability_attack.py --only 'files:idx-*' --keep   # keep the scratch folders

A probe is a name, a setup (writes hostile files or a run directory into its temporary directory,
may start and kill processes), the argv of one ``python -m kdkit`` command run there, and what it
must do:

* ``error``: exit 2 and exactly one stderr line starting ``kdkit: error``, no traceback;
* ``ok``: exit 0.

Either may also have a check (``check(ctx, result)`` returns ``None`` or what is wrong: a user's file
changed, a record twice or missing, a checkpoint of another stage).  Each probe is classified as one
of :data:`OUTCOMES`: ``ok`` (met its expectation), ``traceback`` (a traceback or exit 1), ``hang``
(ran past its timeout), ``memory`` (peak RSS past its limit), ``data-lost-or-mixed`` (its check
failed), ``silent-acceptance`` (exit 0 where an error was due) or ``wrong-message`` (another exit
status, or not exactly one ``kdkit: error`` line).  The script prints one summary line with the
counts and one line per failing probe, and exits 0 when every probe met its expectation.

Sections (each a function returning its probes, kept apart so that they can be written
independently): ``files`` — files, run directories, kills and races (:func:`file_probes`): hostile
data files in each format kdkit reads, ``train --out`` into folders holding a user's files, tampered
run directories resumed, ``train`` and ``sweep`` killed at set moments and run again (compared byte
for byte with an uninterrupted run), and two processes on one directory; ``cli`` — user errors and silent
acceptances (:func:`cli_probes`): every command's options with wrong types, empty, huge or non-finite values,
each config section set to the wrong shape, bad config and sweep files, bad ``--compare`` references, outputs
that are FIFOs or name directories, damaged run directories given to eval / plot / export.  A probe may name a
piece of the one error line it expects (else ``wrong-message``), and a check may name its own outcome.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

OUTCOMES = ("ok", "traceback", "hang", "memory", "data-lost-or-mixed", "silent-acceptance", "wrong-message")

#: default per-probe limits
TIMEOUT_S = 120
MAX_RSS_MB = 2500


# --- the shared runner -------------------------------------------------------------------------

@dataclass
class Ctx:
    """What a probe's setup and check work with: its temporary directory, the processes it started
    (their groups are killed when the probe ends) and anything the setup wants the check to see."""
    tmp: Path
    procs: list = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class Result:
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


@dataclass
class Probe:
    section: str
    name: str
    argv: list | Callable[[Ctx], list]  # kdkit's arguments (run in ctx.tmp), or made by a function of ctx
    expect: str  # "error" or "ok"
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx, Result], str | None] | None = None
    timeout: float = TIMEOUT_S
    max_rss_mb: float = MAX_RSS_MB
    message: str | None = None  # "error": a piece of the one error line (else: wrong-message)

    @property
    def full_name(self) -> str:
        return f"{self.section}:{self.name}"


def kdkit_env(**extra) -> dict:
    """The environment of every kdkit process: the repository first on PYTHONPATH, one torch thread,
    kdkit's cache in the probe's directory (set by the caller)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["KDKIT_BLOCK_PLUGINS"] = "soda,wordnet_relax"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def kdkit_cmd(*args) -> list:
    return [sys.executable, "-m", "kdkit", *map(str, args)]


def spawn(ctx: Ctx, *args, **popen) -> subprocess.Popen:
    """``kdkit ARGS`` started in the background in its own process group (killed when the probe ends)."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(kdkit_cmd(*args), cwd=ctx.tmp, env=kdkit_env(KDKIT_CACHE_DIR=ctx.tmp / ".cache"),
                            start_new_session=True, **popen)
    ctx.procs.append(proc)
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_kdkit(ctx: Ctx, argv: list, timeout: float) -> Result:
    """``kdkit ARGV`` in ``ctx.tmp``, its own process group killed at ``timeout``; peak RSS from wait4."""
    out_path, err_path = ctx.tmp.parent / "stdout", ctx.tmp.parent / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(kdkit_cmd(*argv), cwd=ctx.tmp, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=kdkit_env(KDKIT_CACHE_DIR=ctx.tmp / ".cache"), start_new_session=True)
    t0 = time.monotonic()
    rc, rss = None, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rc, rss = os.waitstatus_to_exitcode(status), usage.ru_maxrss
            proc.returncode = rc  # reaped here: Popen must not wait for it again
            break
        if time.monotonic() - t0 > timeout:
            kill_group(proc)
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode, rss = -9, usage.ru_maxrss
            break
        time.sleep(0.02)
    kill_group(proc)  # a child it left behind
    read = lambda p: p.read_bytes().decode("utf-8", "replace")  # noqa: E731
    return Result(rc, read(out_path), read(err_path), time.monotonic() - t0, rss / 1024)


def classify(probe: Probe, ctx: Ctx, res: Result) -> tuple[str, str]:
    """``(outcome, detail)`` of one finished probe."""
    lines = res.stderr.splitlines()
    errors = [ln for ln in lines if re.match(r"kdkit( [a-z]+)?: error", ln)]  # `kdkit train: error` of argparse
    last = lines[-1] if lines else "no stderr"
    if res.rc is None:
        return "hang", f"still running after {probe.timeout:g} s; last stderr: {last[:160]}"
    if res.max_rss_mb > probe.max_rss_mb:
        return "memory", f"peak RSS {res.max_rss_mb:.0f} MB > {probe.max_rss_mb:g} MB (exit {res.rc})"
    if "Traceback (most recent call last)" in res.stderr or res.rc == 1:
        tb = [ln for ln in lines if ln and not ln.startswith(" ")]
        return "traceback", f"exit {res.rc}: {(tb[-1] if tb else last)[:200]}"
    if probe.expect == "error":
        if res.rc == 0:
            return "silent-acceptance", f"exit 0; last stderr: {last[:160]}"
        if res.rc != 2 or len(errors) != 1:
            return "wrong-message", f"exit {res.rc}, {len(errors)} 'kdkit: error' line(s); last: {last[:160]}"
        if probe.message is not None and probe.message not in errors[0]:
            return "wrong-message", f"expected {probe.message!r} in: {errors[0][:200]}"
    elif res.rc != 0:
        return "wrong-message", f"exit {res.rc} (expected 0): {last[:200]}"
    if probe.check is not None:
        try:
            problem = probe.check(ctx, res)
        except Exception as exc:  # noqa: BLE001 - a check that cannot read what it checks found a problem
            problem = f"check failed: {type(exc).__name__}: {exc}"
        if problem:  # what is wrong, or (outcome, what is wrong)
            return problem if isinstance(problem, tuple) else ("data-lost-or-mixed", problem)
    return "ok", errors[0][:160] if errors else ""


def run_probe(probe: Probe, keep: bool = False) -> tuple[str, str, float, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"kdkit-attack-{probe.section}-"))
    ctx = Ctx(tmp / "work")  # the command's output files stay beside it, not in it
    ctx.tmp.mkdir()
    t0, rss = time.monotonic(), 0.0
    try:
        if probe.setup is not None:
            probe.setup(ctx)
        argv = probe.argv(ctx) if callable(probe.argv) else probe.argv
        res = run_kdkit(ctx, argv, probe.timeout)
        rss = res.max_rss_mb
        outcome, detail = classify(probe, ctx, res)
    except Exception as exc:  # noqa: BLE001 - the probe's own setup broke: report it, go on
        import traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outcome, detail = "wrong-message", f"probe broken: {type(exc).__name__}: {exc} (line {where.lineno})"
    finally:
        for proc in ctx.procs:
            kill_group(proc)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return outcome, detail, time.monotonic() - t0, rss


# --- section "files": files, run directories, kills and races ----------------------------------
#
# Tiny runs (a few seconds of training after ~3 s of imports): shapes, one convnet teacher, a convnet
# student.  A finished run and a finished 2-run sweep are made once per invocation (the references,
# kept in a temporary folder) and copied by the probes that tamper with them or compare against them.

MODEL_SETS = ["baseline.enabled=false", "teachers=[{name: convnet, width: 4}]", "student.name=convnet",
              "student.width=4", "teacher_train.epochs=1", "train.epochs=2", "train.batch_size=16",
              "teacher_train.batch_size=16", "logging.progress=false"]
SHAPES_SETS = ["data.name=shapes", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none"]
TINY_SETS = SHAPES_SETS + MODEL_SETS
#: a run long enough to be caught training (for the probes that race it)
SLOW_SETS = [s for s in TINY_SETS if not s.startswith("train.epochs")] + ["train.epochs=300"]


def sets_args(sets: list) -> list:
    return [a for s in sets for a in ("--set", s)]


def train_args(out, sets=TINY_SETS, *extra) -> list:
    return ["train", "--method", "kd", "--out", str(out), *sets_args(sets), *extra]


_REFS: dict = {}


def _refs_dir() -> Path:
    if "dir" not in _REFS:
        base = Path(tempfile.mkdtemp(prefix="kdkit-attack-refs-"))
        import atexit
        atexit.register(shutil.rmtree, base, True)
        _REFS["dir"] = base / "work"
        _REFS["dir"].mkdir()
    return _REFS["dir"]


def _make_ref(name: str, argv: list) -> Path:
    if name not in _REFS:
        ctx = Ctx(_refs_dir())
        res = run_kdkit(ctx, argv, TIMEOUT_S)
        if res.rc != 0:
            raise RuntimeError(f"reference {name} failed (exit {res.rc}): {res.stderr.strip()[-300:]}")
        _REFS[name] = ctx.tmp / name
    return _REFS[name]


def ref_run() -> Path:
    """A finished tiny run (the uninterrupted reference)."""
    return _make_ref("run", train_args("run"))


def ref_run2() -> Path:
    """A second finished run with the same config (another run id)."""
    return _make_ref("run2", train_args("run2"))


SWEEP_YAML = """name: tiny
seeds: [0, 1]
base:
{base}
cells:
  - name: kd
    method: kd
    rows: {{teacher: teacher.convnet, kd: student}}
"""


def sweep_text(**override) -> str:
    items = dict(s.split("=", 1) for s in TINY_SETS)
    items.update({k: str(v) for k, v in override.items()})
    return SWEEP_YAML.format(base="\n".join(f"  {k}: {v}" for k, v in items.items()))


def ref_sweep() -> Path:
    """OUT of a finished 2-run sweep (seeds 0 and 1)."""
    if "sweep" not in _REFS:
        (_refs_dir() / "tiny.yaml").write_text(sweep_text())
        _make_ref("sweep-out", ["sweep", "tiny.yaml", "--out", "sweep-out"])
        _REFS["sweep"] = _REFS["sweep-out"]
    return _REFS["sweep"]


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def copy_ref(ctx: Ctx, name: str = "run") -> Path:
    return copy_tree(ref_run(), ctx.tmp / name)


def copy_ref_sweep(ctx: Ctx) -> Path:
    (ctx.tmp / "tiny.yaml").write_text(sweep_text())
    return copy_tree(ref_sweep(), ctx.tmp / "out")


# --- what the checks look at

def records(run: Path) -> list:
    import json
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_consistent(run: Path) -> str | None:
    """What is wrong with a finished run directory: a metrics record twice, an epoch missing, a
    summary top-1 that is not its stage's test record, a checkpoint of another stage or run."""
    import json
    recs = records(run)
    keys = [(r.get("stage"), r.get("epoch"), r.get("split")) for r in recs]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if twice:
        return f"{run.name}/metrics.jsonl: records twice: {twice[:3]}"
    summary = json.loads((run / "summary.json").read_text())
    tests = {r["stage"]: r["test.top1"] for r in recs if r.get("split") == "test"}
    stages = {**{k: v["top1"] for k, v in summary.get("teachers", {}).items()},
              "student": summary["student"]["top1"]}
    for stage, top1 in stages.items():
        if tests.get(stage) != top1:
            return f"summary.json: {stage} top-1 {top1}, its test record {tests.get(stage)}"
    run_id = json.loads((run / "kdkit-run.json").read_text())["run_id"]
    import torch
    for path in sorted((run / "checkpoints").glob("*/*.pt")):
        state = torch.load(path, weights_only=True, map_location="cpu")
        if state.get("stage") != path.parent.name or state.get("run_id") != run_id:
            return f"{path.relative_to(run)} is stage {state.get('stage')!r} of run {state.get('run_id')}"
    return None


def same_as_ref(run: Path, ref: Path | None = None) -> str | None:
    """``run`` finished, consistent, and its records byte for byte the reference's."""
    ref = ref or ref_run()
    if not (run / "summary.json").is_file():
        return f"{run.name}: no summary.json"
    problem = run_consistent(run)
    if problem:
        return problem
    if (run / "metrics.jsonl").read_bytes() != (ref / "metrics.jsonl").read_bytes():
        mine, theirs = records(run), records(ref)
        return f"{run.name}/metrics.jsonl differs from the uninterrupted run's ({len(mine)} vs {len(theirs)} records)"
    return None


def unchanged(*paths):
    """A setup step and a check: the files under ``paths`` (relative to the probe's folder) are byte
    for byte what they were before the probe's command."""
    def snap(ctx):
        out = {}
        for rel in paths:
            root = ctx.tmp / rel
            files = [root] if not root.is_dir() else sorted(p for p in root.rglob("*") if p.is_file()
                                                               and p.name not in (".lock", "train.log", "sweep.log"))
            for f in files:
                out[str(f)] = f.read_bytes() if f.is_file() else None
        return out

    def setup(ctx):
        ctx.data["before"] = snap(ctx)

    def check(ctx, res):
        after = snap(ctx)
        changed = [k for k in set(after) | set(ctx.data["before"]) if after.get(k) != ctx.data["before"].get(k)]
        return f"changed: {', '.join(os.path.relpath(c, ctx.tmp) for c in sorted(changed)[:3])}" if changed else None
    return setup, check


def no_dir(rel: str):
    """Check: the refused run left no directory ``rel`` behind."""
    return lambda ctx, res: f"{rel} left behind" if (ctx.tmp / rel).exists() else None


def logged_counts(train: int, test: int):
    """Check: the run's train.log says it read ``train`` training images (train + val) and ``test`` test ones."""
    import re

    def check(ctx, res):
        m = re.search(r"train (\d+), val (\d+), test (\d+)", res.stderr)
        if not m:
            return "no 'train N, val N, test N' line"
        got = (int(m[1]) + int(m[2]), int(m[3]))
        return None if got == (train, test) else f"read {got[0]} train / {got[1]} test images, not {train} / {test}"
    return check


def chain(*steps):
    """Setups or checks run in turn; a check's problem (a string) stops the chain."""
    steps = [s for s in steps if s is not None]

    def run(ctx, *rest):
        for step in steps:
            problem = step(ctx, *rest)
            if isinstance(problem, str) and problem:
                return problem
        return None
    return run


def probe(name, argv, expect, setup=None, check=None, **kw) -> Probe:
    return Probe("files", name, argv, expect, setup, check, **kw)


# --- processes

def wait_for(cond, timeout: float = 90, proc=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.01)
    return False


def lock_pid(run: Path) -> int | None:
    try:
        text = (run / ".lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def exists(*rels):
    return lambda ctx: all((ctx.tmp / r).exists() for r in rels)


def resume_or_rerun(out: str, sets=TINY_SETS):
    """What a user does after a kill: ``--resume`` a run that has a checkpoint, else the same command again."""
    def argv(ctx):
        if any((ctx.tmp / out / "checkpoints").glob("*/last*.pt")):
            return ["train", "--resume", out]
        return train_args(out, sets)
    return argv


def killed_train(sig: int, moment, group: bool = False):
    """Setup: a tiny run killed with ``sig`` once ``moment(ctx)`` holds."""
    def setup(ctx):
        proc = spawn(ctx, *train_args("run"))
        if not wait_for(lambda: moment(ctx), proc=proc):
            raise RuntimeError("the run ended before the moment to kill it")
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=60)
    return setup


def killed_sweep(sig: int, moment, group: bool, wait_orphans: bool = False):
    """Setup: the 2-run tiny sweep on ``out`` killed with ``sig`` (its process or its group) at ``moment``."""
    def setup(ctx):
        (ctx.tmp / "tiny.yaml").write_text(sweep_text())
        proc = spawn(ctx, "sweep", "tiny.yaml", "--out", "out")
        if not wait_for(lambda: moment(ctx), proc=proc):
            raise RuntimeError("the sweep ended before the moment to kill it")
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=90)
        if wait_orphans:  # a run the SIGKILLed sweep left training ends by itself; the user waits for it
            for seed in (0, 1):
                run = ctx.tmp / "out" / "runs" / "kd" / "default" / f"seed{seed}"
                wait_for(lambda: not _locked(run), timeout=120)
        ctx.data["sweep_rc"] = proc.returncode
    return setup


def _locked(run: Path) -> bool:
    import fcntl
    try:
        fd = os.open(run / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def sweep_same_as_ref(ctx, res=None) -> str | None:
    """Every run of the sweep in ``out`` finished, consistent and byte for byte the reference sweep's;
    results.jsonl holds each row once."""
    import json
    out, ref = ctx.tmp / "out", ref_sweep()
    for seed in (0, 1):
        rel = Path("runs") / "kd" / "default" / f"seed{seed}"
        problem = same_as_ref(out / rel, ref / rel)
        if problem:
            return f"seed{seed}: {problem}"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r.get("row"), r.get("seed")) for r in rows]
    if len(set(keys)) != len(keys) or len(keys) != 4:
        return f"results.jsonl: {len(keys)} records for 4 rows x seeds: {keys}"
    strip = lambda rs: [{k: v for k, v in r.items() if "wall" not in k} for r in rs]  # noqa: E731
    theirs = [json.loads(line) for line in (ref / "results.jsonl").read_text().splitlines()]
    if strip(rows) != strip(theirs):
        return "results.jsonl differs from the uninterrupted sweep's"
    return None


def run_ckpt(stage: str, name: str = "last.pt", run: str = "run") -> str:
    return f"{run}/checkpoints/{stage}/{name}"


TEACHER, STUDENT = "teacher.convnet", "student"
SWEEP_RUN0 = "out/runs/kd/default/seed0"
SWEEP_RUN1 = "out/runs/kd/default/seed1"


# --- hostile data files

def write_idx(path: Path, array, gz: bool = False) -> Path:
    """An IDX file of ``array`` (uint8 unless its dtype says otherwise), gzipped with ``gz``."""
    import gzip
    import numpy as np
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    array = np.asarray(array)
    array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    head = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = head + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, 1) if gz else data)
    return path


def fmnist_tree(root: Path, per_class=(2, 1), gz: bool = True) -> Path:
    """Fashion-MNIST's four IDX files with ``per_class`` (train, test) images of each of 10 classes."""
    import numpy as np
    rng = np.random.default_rng(0)
    for prefix, n in (("train", per_class[0]), ("t10k", per_class[1])):
        labels = np.tile(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


FM_SETS = ["data.name=fashion_mnist", "data.root=fm", "data.augment=none", "data.train_per_class=2",
           "data.test_per_class=1"] + MODEL_SETS


def fm_probe(name, mutate, expect="error", check=None, **kw):
    """A probe on a Fashion-MNIST folder ``fm`` that ``mutate(fm)`` made hostile."""
    def setup(ctx):
        mutate(fmnist_tree(ctx.tmp / "fm"))
    return probe(f"idx-{name}", train_args("run", FM_SETS), expect, setup,
                 chain(check, no_dir("run") if expect == "error" else None), **kw)


def _raw_idx(path: Path, head: bytes, body: bytes = b"", gz: bool = False):
    import gzip
    data = head + body
    path.write_bytes(gzip.compress(data, 1) if gz else data)


def _gzip_bomb(path: Path, promised_images: int, inflated: int):
    """A small gzip whose IDX header promises ``promised_images`` 28x28 images and which inflates to
    ``inflated`` bytes (zeros), written in streamed chunks."""
    import gzip
    import numpy as np
    head = bytes([0, 0, 8, 3]) + np.asarray([promised_images, 28, 28], ">u4").tobytes()
    chunk = bytes(1 << 24)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(head)
        left = inflated
        while left > 0:
            fh.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)


def _labels_gz(fm: Path, labels) -> None:
    import numpy as np
    write_idx(fm / "train-labels-idx1-ubyte.gz", np.asarray(labels, np.uint8), gz=True)


def _mkfifo(path: Path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _mksock(path: Path):
    import socket
    path.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _idx_probes() -> list:
    import numpy as np
    TI, TL = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
    hdr = lambda *shape, t=8: bytes([0, 0, t, len(shape)]) + np.asarray(shape, ">u4").tobytes()  # noqa: E731
    return [
        fm_probe("valid", lambda fm: None, "ok", logged_counts(20, 10)),
        fm_probe("valid-plain", lambda fm: [p.unlink() for p in fm.glob("*.gz")] and fmnist_tree(fm, gz=False), "ok",
                 logged_counts(20, 10)),
        # a gzip inflating to 3 GiB behind a header promising 47 MB: read no further than the promise
        fm_probe("gzip-bomb", lambda fm: _gzip_bomb(fm / TI, 60000, 3 << 30), timeout=300),
        fm_probe("header-huge", lambda fm: _raw_idx(fm / TI, hdr(4_000_000_000, 28, 28), gz=True)),
        fm_probe("header-impossible-shape", lambda fm: _raw_idx(fm / TI, hdr(0, 2**32 - 1, 2**32 - 1), gz=True)),
        fm_probe("header-1gib-truncated", lambda fm: _raw_idx(fm / TI, hdr(1369000, 28, 28), bytes(1000))),
        fm_probe("wrong-magic", lambda fm: _raw_idx(fm / TI, b"\x1f\x8b\x08\x00", gz=False)),
        fm_probe("truncated", lambda fm: (fm / TI).write_bytes((fm / TI).read_bytes()[:-200])),
        fm_probe("trailing-bytes", lambda fm: _raw_idx(fm / TI, hdr(20, 28, 28), bytes(20 * 28 * 28 + 5))),
        fm_probe("bad-crc", lambda fm: (fm / TI).write_bytes((lambda b: b[:-8] + bytes(4) + b[-4:])(
            (fm / TI).read_bytes()))),
        fm_probe("float-images", lambda fm: write_idx(fm / TI, np.zeros((20, 28, 28), ">f4"), gz=True)),
        fm_probe("label-out-of-range", lambda fm: _labels_gz(fm, [*range(10), *range(9), 10])),
        fm_probe("count-mismatch", lambda fm: _labels_gz(fm, [*range(10), *range(9)])),
        fm_probe("no-images", lambda fm: (write_idx(fm / TI, np.zeros((0, 28, 28), np.uint8), gz=True),
                                          _labels_gz(fm, []))),
        fm_probe("fifo", lambda fm: _mkfifo(fm / TI), timeout=60),
        fm_probe("directory", lambda fm: ((fm / TI).unlink(), (fm / TI).mkdir())),
        fm_probe("symlink-loop", lambda fm: ((fm / TI).unlink(), (fm / TI).symlink_to(TI))),
        fm_probe("dev-zero", lambda fm: ((fm / TI).unlink(), (fm / TI).symlink_to("/dev/zero")), timeout=60),
        probe("idx-no-images-every-image", train_args("run", FM_SETS + ["data.train_per_class=null"]), "error",
              lambda ctx: (fmnist_tree(ctx.tmp / "fm"), write_idx(ctx.tmp / "fm" / TI, np.zeros((0, 28, 28), np.uint8),
                                                                  gz=True), _labels_gz(ctx.tmp / "fm", [])), no_dir("run")),
        probe("idx-too-few-per-class", train_args("run", FM_SETS + ["data.train_per_class=3"]), "error",
              lambda ctx: fmnist_tree(ctx.tmp / "fm"), no_dir("run")),
    ]


# CIFAR-10's python pickles: 5 training batches and a test batch of 10 images (one per class)
CIFAR_SETS = ["data.name=cifar10", "data.root=c", "data.augment=none"] + MODEL_SETS
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_tree(root: Path) -> Path:
    import pickle
    import numpy as np
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"labels": list(range(10)),
                 b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"filenames": [b"f"] * 10}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR_NAMES, b"num_vis": 3072}, protocol=2))
    return folder


def _write_batch(folder: Path, name: str, obj, raw: bytes | None = None):
    import pickle
    (folder / name).write_bytes(raw if raw is not None else pickle.dumps(obj, protocol=2))


class _Evil:
    """Unpickling this runs ``touch PWNED`` (what a tampered CIFAR pickle would do)."""
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def cifar_probe(name, mutate, expect="error", check=None, **kw):
    def setup(ctx):
        mutate(cifar_tree(ctx.tmp / "c"))
    never_ran = lambda ctx, res: "the pickle ran code (PWNED exists)" if (ctx.tmp / "PWNED").exists() else None  # noqa: E731
    return probe(f"cifar-{name}", train_args("run", CIFAR_SETS), expect, setup,
                 chain(never_ran, check, no_dir("run") if expect == "error" else None), **kw)


def _cifar_probes() -> list:
    import pickle
    import numpy as np
    good = lambda **kw: {"labels": list(range(10)), "data": np.zeros((10, 3072), np.uint8), **kw}  # noqa: E731
    B1 = "data_batch_1"
    return [
        cifar_probe("valid", lambda c: None, "ok", logged_counts(50, 10)),
        cifar_probe("malicious-reduce", lambda c: _write_batch(c, B1, {"data": _Evil(), "labels": []})),
        cifar_probe("malicious-meta", lambda c: _write_batch(c, "batches.meta", [_Evil()])),
        cifar_probe("malicious-builtins-eval", lambda c: _write_batch(
            c, B1, None, b"cbuiltins\neval\n(Vopen('PWNED','w')\ntR.")),
        cifar_probe("not-a-pickle", lambda c: (c / B1).write_text("hello\n")),
        cifar_probe("truncated", lambda c: (c / B1).write_bytes((c / B1).read_bytes()[:500])),
        cifar_probe("list-not-dict", lambda c: _write_batch(c, B1, [1, 2, 3])),
        cifar_probe("no-labels-key", lambda c: _write_batch(c, B1, {"data": np.zeros((10, 3072), np.uint8)})),
        cifar_probe("float-data", lambda c: _write_batch(c, B1, good(data=np.zeros((10, 3072), np.float32)))),
        cifar_probe("data-3071", lambda c: _write_batch(c, B1, good(data=np.zeros((10, 3071), np.uint8)))),
        cifar_probe("labels-count", lambda c: _write_batch(c, B1, good(labels=list(range(9))))),
        cifar_probe("labels-out-of-range", lambda c: _write_batch(c, B1, good(labels=[*range(9), 10]))),
        cifar_probe("labels-float", lambda c: _write_batch(c, B1, good(labels=[float(i) for i in range(10)]))),
        cifar_probe("labels-2d-array", lambda c: _write_batch(c, B1, good(labels=np.zeros((10, 1), np.int64)))),
        cifar_probe("meta-names-not-strings", lambda c: _write_batch(c, "batches.meta", {"label_names": [1] * 10})),
        cifar_probe("memo-bomb", lambda c: _write_batch(c, B1, None, b"\x80\x02}r\x00\xca\x9a;.")),
        # BINBYTES8 announcing 8 GiB that are not there: nothing that size may be allocated
        cifar_probe("bytes8-announces-8gib", lambda c: _write_batch(
            c, B1, None, b"\x80\x04\x8e" + (8 << 30).to_bytes(8, "little") + b"x" * 10 + b".")),
        cifar_probe("fifo", lambda c: _mkfifo(c / B1), timeout=60),
        cifar_probe("directory", lambda c: ((c / B1).unlink(), (c / B1).mkdir())),
        cifar_probe("dev-zero", lambda c: ((c / B1).unlink(), (c / B1).symlink_to("/dev/zero")), timeout=60),
        # a numpy array whose header promises 10**10 bytes but carries 3072: refused, not allocated
        cifar_probe("array-promises-more", lambda c: _write_batch(c, B1, None, pickle.dumps(
            good(), protocol=2).replace(b"K\nM\x00\x0c\x86", b"J\x00\xe4\x0bTM\x00\x0c\x86"))),
    ]


# ImageFolder: ROOT/{train,test}/<class>/*.png, 2 classes x 4 training and 2 test images of 8 x 8 px
IF_SETS = ["data.name=imagefolder", "data.root=img", "data.augment=none"] + MODEL_SETS


def png(path: Path, size=(8, 8), mode="RGB", fmt=None, color=0) -> Path:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def noise_png(path: Path, side: int = 32) -> Path:
    """A PNG of random pixels (its pixel data is most of the file: cutting it cuts pixels)."""
    import numpy as np
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def imagefolder_tree(root: Path, train: int = 4, test: int = 2) -> Path:
    for split, n in (("train", train), ("test", test)):
        for cls in ("cat", "dog"):
            for i in range(n):
                png(root / split / cls / f"{i}.png", color=(40 if cls == "cat" else 200, i * 9, 0))
    return root


def if_probe(name, mutate, expect="error", check=None, sets=(), **kw):
    def setup(ctx):
        mutate(imagefolder_tree(ctx.tmp / "img"))
    return probe(f"imagefolder-{name}", train_args("run", IF_SETS + list(sets)), expect, setup,
                 chain(check, no_dir("run") if expect == "error" else None), **kw)


def _png_bomb(path: Path, side: int):
    """A valid PNG header (IHDR) declaring ``side`` x ``side`` pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def _real_png_bomb(path: Path, side: int):
    """A complete grey PNG of ``side`` x ``side`` zeros, written row by row (small on disk)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _many_dirs(folder: Path, n: int):
    for i in range(n):
        os.mkdir(folder / f"d{i}")


def _imagefolder_probes() -> list:
    cat, test_cat = "train/cat", "test/cat"
    return [
        if_probe("valid", lambda r: None, "ok", logged_counts(8, 4)),
        if_probe("fifo-png", lambda r: _mkfifo(r / cat / "f.png"), timeout=60),
        if_probe("socket-png", lambda r: _mksock(r / cat / "s.png"), timeout=60),
        if_probe("dev-zero-png", lambda r: (r / cat / "z.png").symlink_to("/dev/zero"), timeout=60),
        if_probe("symlink-loop-dir", lambda r: (r / cat / "loop").symlink_to("..")),
        if_probe("symlink-escapes-root", lambda r: (r / cat / "out").symlink_to(r.parent)),
        if_probe("symlink-to-other-class", lambda r: (r / cat / "dogs").symlink_to(r / "train" / "dog")),
        if_probe("symlink-file-loop", lambda r: (r / cat / "x.png").symlink_to("x.png")),
        if_probe("symlink-file-dangling", lambda r: (r / cat / "x.png").symlink_to("nowhere.png")),
        if_probe("symlink-dir-inside-root", lambda r: (png(r / "extra" / "e.png"), (r / cat / "more").symlink_to(
            r / "extra")), "ok", logged_counts(9, 4)),
        if_probe("class-dir-symlink-loop", lambda r: (r / "train" / "zzz").symlink_to(r / "train")),
        if_probe("zero-byte-png-sized", lambda r: (r / cat / "empty.png").write_bytes(b""), sets=["data.image_size=8"]),
        if_probe("truncated-png", lambda r: (r / cat / "t.png").write_bytes(
            (lambda b: b[:len(b) // 2])(noise_png(r / "x.png").read_bytes())), sets=["data.image_size=8"]),
        if_probe("truncated-jpeg", lambda r: (r / cat / "t.jpg").write_bytes(
            png(r / "x.jpg", (64, 64), fmt="JPEG", color=(9, 99, 199)).read_bytes()[:300]), sets=["data.image_size=8"]),
        if_probe("text-as-png", lambda r: (r / cat / "notes.png").write_text("not an image\n")),
        if_probe("png-declares-100k-side-sized", lambda r: _png_bomb(r / cat / "bomb.png", 100_000),
                 sets=["data.image_size=8"]),
        # between PIL's limit and twice it: PIL only warns and decodes 144 M pixels
        if_probe("png-bomb-12k", lambda r: _real_png_bomb(r / cat / "bomb.png", 12_000), sets=["data.image_size=8"],
                 timeout=300),
        if_probe("empty-class", lambda r: (r / "train" / "eel").mkdir()),
        if_probe("test-class-not-in-train", lambda r: png(r / "test" / "eel" / "0.png")),
        if_probe("no-test-split", lambda r: [p.unlink() for p in (r / "test").rglob("*.png")] and None),
        if_probe("100k-empty-dirs", lambda r: _many_dirs(r / cat, 100_000), "ok", logged_counts(8, 4), timeout=300),
        if_probe("class-map-fifo", lambda r: _mkfifo(r / "map.json"), sets=["data.class_map=img/map.json"], timeout=60),
        if_probe("class-map-bad-json", lambda r: (r / "map.json").write_text("{\"cat\": "),
                 sets=["data.class_map=img/map.json"]),
        if_probe("modes", lambda r: (png(r / cat / "l.png", mode="L"), png(r / cat / "p.png", mode="P"),
                                     png(r / cat / "a.png", mode="RGBA"), png(r / cat / "i16.png", mode="I;16"),
                                     png(r / cat / "one.png", mode="1")), "ok", logged_counts(13, 4)),
        if_probe("appledouble", lambda r: (r / cat / "._0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))),
    ]


# text: ROOT/{train,test}.jsonl and a word-level tokenizer; BERT teacher and student of one layer
TEXT_SETS = ["data.name=text", "data.root=t", "data.tokenizer=t/tok", "data.max_length=6",
             "teachers=[{name: 'hf:t/teacher'}]", "student.name=hf:t/student", "baseline.enabled=false",
             "teacher_train.epochs=1", "train.epochs=1", "train.batch_size=8", "teacher_train.batch_size=8",
             "logging.progress=false"]
TEXT_WORDS = {"good": ["great", "fine"], "bad": ["awful", "poor"]}


def text_tree(root: Path) -> Path:
    import json
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    root.mkdir(parents=True)
    filler = ["the", "day", "was", "very"]
    for split, n in (("train", 16), ("test", 8)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                label = sorted(TEXT_WORDS)[i % 2]
                fh.write(json.dumps({"text": f"{filler[i % 4]} {TEXT_WORDS[label][i % 2]}", "label": label}) + "\n")
    words = filler + [w for ws in TEXT_WORDS.values() for w in ws]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(root / "tok")
    for name, hidden in (("teacher", 8), ("student", 8)):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({
            "model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": len(vocab),
            "hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 8, "pad_token_id": 0}))
    return root


def text_probe(name, mutate, expect="error", check=None, **kw):
    def setup(ctx):
        mutate(text_tree(ctx.tmp / "t"))
    return probe(f"text-{name}", train_args("run", TEXT_SETS), expect, setup,
                 chain(check, no_dir("run") if expect == "error" else None), **kw)


def _append(path: Path, text: str):
    with open(path, "a") as fh:
        fh.write(text)


def _text_probes() -> list:
    return [
        text_probe("valid", lambda t: None, "ok", logged_counts(16, 8)),
        text_probe("not-json", lambda t: _append(t / "train.jsonl", "{'text': 'x'}\n")),
        text_probe("nested-bomb", lambda t: _append(t / "train.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")),
        text_probe("label-float", lambda t: _append(t / "train.jsonl", '{"text": "the day", "label": 1.5}\n')),
        text_probe("unknown-test-label", lambda t: _append(t / "test.jsonl", '{"text": "the day", "label": "meh"}\n')),
        # {"label": "good", "label": "bad"}: which one? (json keeps the last silently)
        text_probe("duplicate-key", lambda t: _append(
            t / "train.jsonl", '{"text": "the great", "label": "good", "label": "bad"}\n')),
        text_probe("not-utf8", lambda t: open(t / "train.jsonl", "ab").write(b'{"text": "\xff", "label": "good"}\n')),
        text_probe("fifo", lambda t: _mkfifo(t / "test.jsonl"), timeout=60),
        text_probe("huge-int-label", lambda t: _append(t / "train.jsonl", '{"text": "x", "label": ' + "9" * 5000 + "}\n")),
    ]


# code files: kdkit search over .npy codes, their .npy.json sidecars, .npz archives
def codes(path: Path, n: int = 20, nbytes: int = 8, sidecar: dict | None = None) -> Path:
    import json
    import numpy as np
    np.save(path, np.random.default_rng(n).integers(0, 256, (n, nbytes), dtype=np.uint8))
    if sidecar is not None:
        Path(str(path) + ".json").write_text(json.dumps(sidecar))
    return path


SEARCH = ["search", "--db", "db.npy", "--queries", "q.npy", "-k", "3", "--out", "res.npz"]


def search_probe(name, mutate, expect="error", check=None, argv=SEARCH, **kw):
    def setup(ctx):
        codes(ctx.tmp / "db.npy")
        codes(ctx.tmp / "q.npy", 4)
        mutate(ctx.tmp)
    return probe(f"codes-{name}", argv, expect, setup, check, **kw)


def _npy_header(shape, dtype="|u1") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _search_result_ok(ctx, res):
    import numpy as np
    with np.load(ctx.tmp / "res.npz") as z:
        idx = z["indices"]
    return None if idx.shape == (4, 3) else f"res.npz indices of shape {idx.shape}, not (4, 3)"


def _code_probes() -> list:
    import numpy as np
    return [
        search_probe("valid", lambda d: None, "ok", _search_result_ok),
        search_probe("valid-sidecar", lambda d: codes(d / "db.npy", sidecar={"bits": 64}), "ok", _search_result_ok),
        search_probe("npz-as-db", lambda d: np.savez(d / "db.npy.npz", codes=np.zeros((4, 8), np.uint8))
                     or os.replace(d / "db.npy.npz", d / "db.npy")),
        search_probe("npz-as-queries", lambda d: np.savez(d / "q.npz", np.zeros((4, 8), np.uint8))
                     or os.replace(d / "q.npz", d / "q.npy")),
        search_probe("object-array-pickle", lambda d: np.save(d / "db.npy", np.array([{1: 2}], dtype=object),
                                                              allow_pickle=True)),
        search_probe("float-codes", lambda d: np.save(d / "db.npy", np.zeros((20, 8), np.float32))),
        search_probe("width-mismatch", lambda d: codes(d / "q.npy", 4, 16)),
        search_probe("header-promises-1tb", lambda d: (d / "db.npy").write_bytes(_npy_header((2**37, 8)) + bytes(64))),
        search_probe("truncated", lambda d: (d / "db.npy").write_bytes((d / "db.npy").read_bytes()[:150])),
        search_probe("text-file", lambda d: (d / "db.npy").write_text("0 1 2\n")),
        search_probe("fifo", lambda d: _mkfifo(d / "db.npy"), timeout=60),
        search_probe("sidecar-bits-mismatch", lambda d: codes(d / "db.npy", sidecar={"bits": 128})),
        search_probe("sidecar-bits-string", lambda d: codes(d / "db.npy", sidecar={"bits": "64"})),
        search_probe("sidecar-not-json", lambda d: (d / "db.npy.json").write_text("{bits: 64")),
        search_probe("sidecar-fifo", lambda d: _mkfifo(d / "db.npy.json"), timeout=60),
        search_probe("sidecar-directory", lambda d: (d / "db.npy.json").mkdir()),
        search_probe("out-is-db", lambda d: None, argv=["search", "--db", "db.npy", "--queries", "q.npy",
                                                        "--out", "db.npy"]),
        search_probe("out-existing-user-file", lambda d: (d / "res.npz").write_text("mine"), "ok",
                     _search_result_ok),
    ]


def _encode_probes() -> list:
    import numpy as np
    enc = lambda: ["encode", "--features", "f.npy", "--out", "c.npy"]  # noqa: E731

    def ep(name, make, expect="error", **kw):
        return probe(f"encode-{name}", enc(), expect, lambda ctx: make(ctx.tmp / "f.npy"), **kw)
    return [
        ep("valid", lambda p: np.save(p, np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)), "ok"),
        ep("nan", lambda p: np.save(p, np.full((5, 16), np.nan, np.float32))),
        ep("header-promises-1tb", lambda p: p.write_bytes(_npy_header((2**36, 16), "<f4") + bytes(64))),
        ep("fifo", lambda p: _mkfifo(p), timeout=60),
    ]


# --- run directories: --out, --resume, tampering

def _user_folder(ctx):
    (ctx.tmp / "config.yaml").write_text("# my settings, with comments\ntrain:\n  epochs: 2\n")
    (ctx.tmp / "metrics.jsonl").write_text('{"mine": 1}\n')
    (ctx.tmp / "notes.txt").write_text("my notes\n")


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    if old not in text:
        raise RuntimeError(f"{old!r} not in {path}")
    path.write_text(text.replace(old, new, 1))


def _run_dir_probes() -> list:
    snap_user, same_user = unchanged("config.yaml", "metrics.jsonl", "notes.txt")
    snap_run, same_run = unchanged("run")
    snap_img, same_img = unchanged("img")

    def tampered(name, tamper, expect="error", check=None, argv=("train", "--resume", "run"), **kw):
        def setup(ctx):
            copy_ref(ctx)
            tamper(ctx.tmp / "run")
            snap_run(ctx)
        keep = same_run if expect == "error" else None
        return probe(f"resume-{name}", list(argv), expect, setup, chain(keep, check), **kw)

    def same(ctx, res):
        return same_as_ref(ctx.tmp / "run")

    def swap(a: Path, b: Path):
        tmp = a.with_name("swap.tmp")
        a.rename(tmp), b.rename(a), tmp.rename(b)

    def metrics_lines(run, keep):
        lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
        (run / "metrics.jsonl").write_bytes(b"\n".join(lines[:keep]) + b"\n")

    def garbage_line(run):
        lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
        lines[1] = b"\xff\xfe not a record"
        (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"partial")

    T, S = "checkpoints/teacher.convnet", "checkpoints/student"
    return [
        # --out: only a new or empty directory, or a kdkit run
        probe("out-is-a-file", train_args("notes.txt"), "error", chain(_user_folder, snap_user), same_user),
        probe("out-dot-user-folder", ["train", "--method", "kd", "--config", "config.yaml", "--out", ".",
                                      *sets_args(TINY_SETS)], "error", chain(_user_folder, snap_user), same_user),
        probe("out-under-a-file", train_args("notes.txt/run"), "error", chain(_user_folder, snap_user), same_user),
        probe("out-hidden-user-file", train_args("mine"), "error",
              lambda ctx: ((ctx.tmp / "mine").mkdir(), (ctx.tmp / "mine" / ".env").write_text("KEY=1\n")),
              lambda ctx, res: None if (ctx.tmp / "mine" / ".env").read_text() == "KEY=1\n" else ".env changed"),
        probe("out-symlink-to-user-folder", train_args("link"), "error",
              chain(_user_folder, snap_user, lambda ctx: (ctx.tmp / "link").symlink_to(ctx.tmp)), same_user),
        probe("out-dangling-symlink", train_args("link"), "error", lambda ctx: (ctx.tmp / "link").symlink_to("gone"),
              no_dir("gone")),
        probe("out-data-folder", train_args("img", IF_SETS), "error",
              chain(lambda ctx: imagefolder_tree(ctx.tmp / "img"), snap_img), same_img),
        probe("out-inside-train-split", train_args("img/train/run", IF_SETS), "error",
              chain(lambda ctx: imagefolder_tree(ctx.tmp / "img"), snap_img), same_img),
        probe("out-finished-run", train_args("run"), "error", chain(copy_ref, snap_run), same_run),
        probe("out-checkpoints-folder", train_args("run/checkpoints"), "error", chain(copy_ref, snap_run), same_run),
        probe("out-sweep-folder", train_args("out"), "error", copy_ref_sweep),
        probe("out-empty-dir", train_args("run"), "ok", lambda ctx: (ctx.tmp / "run").mkdir(),
              lambda ctx, res: same_as_ref(ctx.tmp / "run")),
        probe("out-run-killed-before-checkpoint", train_args("run"), "ok",
              lambda ctx: (copy_ref(ctx), shutil.rmtree(ctx.tmp / "run" / "checkpoints"),
                           (ctx.tmp / "run" / "summary.json").unlink()),
              lambda ctx, res: same_as_ref(ctx.tmp / "run")),
        probe("resume-user-folder", ["train", "--resume", "."], "error", chain(_user_folder, snap_user), same_user),
        # --resume of a tampered run
        tampered("finished", lambda r: None, "ok", same),
        tampered("config-edited", lambda r: _edit(r / "config.yaml", "epochs: 2", "epochs: 3")),
        tampered("config-comment-added", lambda r: _append(r / "config.yaml", "# a note\n"), "ok", same),
        tampered("config-not-yaml", lambda r: _append(r / "config.yaml", "train: [\n")),
        tampered("config-fifo", lambda r: _mkfifo(r / "config.yaml"), timeout=60),
        tampered("runfile-other-id", lambda r: (r / "kdkit-run.json").write_text('{"run_id": "%s"}\n' % ("0" * 32))),
        tampered("runfile-garbage", lambda r: (r / "kdkit-run.json").write_text("{{{")),
        tampered("runfile-deleted", lambda r: (r / "kdkit-run.json").unlink()),
        tampered("runfile-fifo", lambda r: _mkfifo(r / "kdkit-run.json"), timeout=60),
        tampered("summary-edited", lambda r: _edit(r / "summary.json", '"top1": 12.5', '"top1": 99.0'), "ok", same),
        tampered("summary-deleted", lambda r: (r / "summary.json").unlink(), "ok", same),
        tampered("last-swapped-between-stages", lambda r: swap(r / T / "last.pt", r / S / "last.pt")),
        tampered("best-swapped-between-stages", lambda r: swap(r / T / "best.pt", r / S / "best.pt")),
        tampered("teacher-last-from-other-run", lambda r: shutil.copy(ref_run2() / T / "last.pt",
                                                                                    r / T / "last.pt")),
        tampered("student-best-from-other-run", lambda r: shutil.copy(ref_run2() / S / "best.pt",
                                                                                    r / S / "best.pt")),
        tampered("student-last-deleted", lambda r: (r / S / "last.pt").unlink(), "ok", same),
        tampered("student-last-corrupt", lambda r: (r / S / "last.pt").write_bytes(b"junk"), "ok", same),
        tampered("student-both-corrupt", lambda r: ((r / S / "last.pt").write_bytes(b"junk"),
                                                    (r / S / "last.prev.pt").write_bytes(b"junk"))),
        tampered("student-checkpoints-deleted", lambda r: shutil.rmtree(r / S), "ok", same),
        # following the advice of student-both-corrupt for the teacher: its records would come twice
        tampered("teacher-checkpoints-deleted", lambda r: shutil.rmtree(r / T)),
        tampered("metrics-truncated", lambda r: metrics_lines(r, 3)),
        tampered("metrics-deleted", lambda r: (r / "metrics.jsonl").unlink()),
        tampered("metrics-garbage-appended", lambda r: _append(r / "metrics.jsonl", "garbage\n{\"stage\": 1}\n"),
                 "ok", same),
        tampered("metrics-record-damaged", garbage_line),
        tampered("metrics-fifo", lambda r: _mkfifo(r / "metrics.jsonl"), timeout=60),
        tampered("metrics-directory", lambda r: ((r / "metrics.jsonl").unlink(), (r / "metrics.jsonl").mkdir())),
        tampered("trainlog-fifo", lambda r: _mkfifo(r / "train.log"), timeout=60),
        tampered("diverged-fifo", lambda r: _mkfifo(r / "diverged.json"), timeout=60),
        probe("out-reused-run-with-fifo-metrics", train_args("run"), "error",
              lambda ctx: (copy_ref(ctx), shutil.rmtree(ctx.tmp / "run" / "checkpoints"),
                           (ctx.tmp / "run" / "summary.json").unlink(), _mkfifo(ctx.tmp / "run" / "metrics.jsonl")),
              timeout=60),
        tampered("eval-best-swapped", lambda r: swap(r / T / "best.pt", r / S / "best.pt"), argv=("eval", "--run", "run")),
        tampered("eval-best-fifo", lambda r: _mkfifo(r / S / "best.pt"), argv=("eval", "--run", "run"), timeout=60),
        tampered("plot-metrics-not-records", lambda r: _append(r / "metrics.jsonl", "5\n"), argv=("plot", "run")),
    ]


# --- kills and races

def _kill_probes() -> list:
    probes = []
    moments = {  # when the run is killed (files it has written by then)
        "after-runfile": exists("run/kdkit-run.json"),
        "after-config": exists("run/config.yaml"),
        "teacher-epoch": exists(run_ckpt(TEACHER)),
        "student-epoch-1": exists(run_ckpt(STUDENT)),
        "student-epoch-2": exists(run_ckpt(STUDENT, "last.prev.pt")),
    }
    how = {"sigterm": (signal.SIGTERM, False), "sigint": (signal.SIGINT, False), "sigkill": (signal.SIGKILL, False),
           "sigkill-group": (signal.SIGKILL, True)}
    kills = [("sigterm", "after-runfile"), ("sigterm", "teacher-epoch"), ("sigterm", "student-epoch-1"),
             ("sigterm", "student-epoch-2"), ("sigint", "after-config"), ("sigint", "student-epoch-1"),
             ("sigkill", "after-runfile"), ("sigkill", "after-config"), ("sigkill", "teacher-epoch"),
             ("sigkill", "student-epoch-2"), ("sigkill-group", "student-epoch-1")]
    for sig_name, moment_name in kills:  # then --resume (or the same command again): the uninterrupted run's records
        sig, group = how[sig_name]
        probes.append(probe(f"kill-train-{sig_name}-{moment_name}", resume_or_rerun("run"), "ok",
                            killed_train(sig, moments[moment_name], group),
                            lambda ctx, res: same_as_ref(ctx.tmp / "run")))

    def start_slow(ctx):
        proc = spawn(ctx, *train_args("run", SLOW_SETS))
        if not wait_for(lambda: lock_pid(ctx.tmp / "run") == proc.pid and (ctx.tmp / "run" / "config.yaml").exists(),
                        proc=proc):
            raise RuntimeError("the first run never held its directory")
        ctx.data["first"] = proc

    def first_unharmed(ctx, res):
        proc = ctx.data["first"]
        if proc.poll() is not None:
            return "the probe is too slow: the first run had ended before the second one did (raise SLOW_SETS' epochs)"
        if proc.wait(timeout=300) != 0:
            return f"the first run failed (exit {proc.returncode})"
        return run_consistent(ctx.tmp / "run")

    def both_at_once(ctx):
        procs = [spawn(ctx, *train_args("run"), stderr=subprocess.PIPE) for _ in range(2)]
        ctx.data["results"] = [(p.wait(timeout=TIMEOUT_S), p.stderr.read().decode()) for p in procs]

    def one_won(ctx, res):
        codes = sorted(rc for rc, _ in ctx.data["results"])
        if codes != [0, 2]:
            return f"two trains on one --out exited {codes}, expected one 0 and one 2"
        return same_as_ref(ctx.tmp / "run")

    probes += [
        probe("race-second-train-same-out", train_args("run"), "error", start_slow, first_unharmed),
        probe("race-resume-while-training", ["train", "--resume", "run"], "error", start_slow, first_unharmed),
        probe("race-two-trains-at-once", ["eval", "--run", "run"], "ok", both_at_once, one_won),
    ]
    return probes


def _sweep_probes() -> list:
    snap_out, same_out = unchanged("out")
    snap_user, same_user = unchanged("config.yaml", "metrics.jsonl", "notes.txt")
    snap_run, same_run = unchanged("run")

    def rerun():
        return ["sweep", "tiny.yaml", "--out", "out"]

    moments = {
        "seed0-teacher": exists(run_ckpt(TEACHER, run=SWEEP_RUN0)),
        "seed0-done": exists(f"{SWEEP_RUN0}/summary.json"),
        "seed1-student": exists(run_ckpt(STUDENT, run=SWEEP_RUN1)),
    }
    how = {"sigterm": (signal.SIGTERM, False), "sigint-group": (signal.SIGINT, True),
           "sigkill-group": (signal.SIGKILL, True), "sigkill-sweep-only": (signal.SIGKILL, False)}
    kills = [("sigterm", "seed0-teacher"), ("sigterm", "seed0-done"), ("sigterm", "seed1-student"),
             ("sigint-group", "seed1-student"), ("sigkill-group", "seed0-teacher"), ("sigkill-group", "seed0-done"),
             ("sigkill-group", "seed1-student"), ("sigkill-sweep-only", "seed0-teacher")]
    probes = []
    for sig_name, moment_name in kills:  # then the same sweep again: the uninterrupted sweep's runs and results
        sig, group = how[sig_name]
        probes.append(probe(f"kill-sweep-{sig_name}-{moment_name}", rerun(), "ok",
                            killed_sweep(sig, moments[moment_name], group,
                                         wait_orphans=sig_name == "sigkill-sweep-only"),
                            sweep_same_as_ref, timeout=240))

    def two_sweeps(second_text: str | None):
        def setup(ctx):
            (ctx.tmp / "tiny.yaml").write_text(sweep_text())
            (ctx.tmp / "other.yaml").write_text(second_text or sweep_text())
            procs = [spawn(ctx, "sweep", name, "--out", "out", stderr=subprocess.PIPE)
                     for name in ("tiny.yaml", "other.yaml")]
            ctx.data["results"] = [(p.wait(timeout=240), p.stderr.read().decode()) for p in procs]
            winner = [i for i, (rc, _) in enumerate(ctx.data["results"]) if rc == 0]
            ctx.data["winner"] = ("tiny.yaml", "other.yaml")[winner[0]] if len(winner) == 1 else None
        return setup

    def one_sweep_won(ctx, res):
        codes = sorted(rc for rc, _ in ctx.data["results"])
        if codes != [0, 2] or ctx.data["winner"] is None:
            return f"two sweeps on one --out exited {codes}, expected one 0 and one 2"
        if (ctx.tmp / "out" / "sweep.yaml").read_text() != (ctx.tmp / ctx.data["winner"]).read_text():
            return "out/sweep.yaml is not the winner's sweep file"
        return sweep_same_as_ref(ctx) if ctx.data["winner"] == "tiny.yaml" else None

    def tamper_sweep(name, tamper, expect="error", check=None, argv=None, **kw):
        def setup(ctx):
            copy_ref_sweep(ctx)
            tamper(ctx.tmp)
            snap_out(ctx)
        return probe(f"sweep-{name}", argv or rerun(), expect, setup,
                     chain(same_out if expect == "error" else None, check), timeout=kw.pop("timeout", 240), **kw)

    no_run = ["sweep", "tiny.yaml", "--out", "out", "--no-run"]

    probes += [
        probe("race-two-sweeps-same-file", rerun(), "ok", two_sweeps(None), one_sweep_won, timeout=240),
        probe("race-two-sweeps-other-file", lambda ctx: ["sweep", ctx.data["winner"] or "tiny.yaml", "--out", "out",
                                                         "--no-run"], "ok",
              two_sweeps(sweep_text(**{"train.epochs": 3})), one_sweep_won, timeout=240),
        tamper_sweep("finished-rerun", lambda d: None, "ok", sweep_same_as_ref),
        tamper_sweep("file-edited", lambda d: (d / "tiny.yaml").write_text(sweep_text(**{"train.epochs": 3}))),
        tamper_sweep("file-and-copy-edited", lambda d: [(p).write_text(sweep_text(**{"train.epochs": 3}))
                                                        for p in (d / "tiny.yaml", d / "out" / "sweep.yaml")]),
        tamper_sweep("run-config-edited", lambda d: _edit(d / SWEEP_RUN0 / "config.yaml", "epochs: 2", "epochs: 3")),
        tamper_sweep("runs-swapped", lambda d: ((d / SWEEP_RUN0).rename(d / "x"), (d / SWEEP_RUN1).rename(
            d / SWEEP_RUN0), (d / "x").rename(d / SWEEP_RUN1))),
        tamper_sweep("run-summary-deleted", lambda d: (d / SWEEP_RUN0 / "summary.json").unlink(), "ok",
                     sweep_same_as_ref),
        tamper_sweep("run-deleted", lambda d: shutil.rmtree(d / SWEEP_RUN1), "ok", sweep_same_as_ref),
        tamper_sweep("run-metrics-not-records", lambda d: _append(d / SWEEP_RUN0 / "metrics.jsonl", "5\n"),
                     argv=no_run),
        tamper_sweep("run-metrics-record-without-epoch", lambda d: _append(
            d / SWEEP_RUN0 / "metrics.jsonl", '{"stage": "student", "split": "test", "test.top1": 99.0}\n'),
            argv=no_run),
        tamper_sweep("run-metrics-not-utf8", lambda d: open(d / SWEEP_RUN0 / "metrics.jsonl", "ab").write(b"\xff\n"),
                     argv=no_run),
        tamper_sweep("run-summary-fifo", lambda d: _mkfifo(d / SWEEP_RUN0 / "summary.json"), argv=no_run,
                     timeout=60),
        tamper_sweep("copy-fifo", lambda d: _mkfifo(d / "out" / "sweep.yaml"), timeout=60),
        probe("sweep-out-user-folder", ["sweep", "tiny.yaml", "--out", "."], "error",
              chain(_user_folder, lambda ctx: (ctx.tmp / "tiny.yaml").write_text(sweep_text()), snap_user), same_user),
        probe("sweep-out-train-run", ["sweep", "tiny.yaml", "--out", "run"], "error",
              chain(copy_ref, lambda ctx: (ctx.tmp / "tiny.yaml").write_text(sweep_text()), snap_run), same_run),
    ]
    return probes


#: the section's probes, built on first use (file_probes)
FILE_PROBES: list[Probe] = []


def file_probes() -> list:
    """Section "files": files, run directories, kills and races (issue 22's classes)."""
    if not FILE_PROBES:
        for make in (_run_dir_probes, _kill_probes, _sweep_probes, _idx_probes, _cifar_probes, _imagefolder_probes,
                     _text_probes, _code_probes, _encode_probes):
            FILE_PROBES.extend(make())
    return FILE_PROBES


# --- section "cli": user errors and silent acceptances of the command line --------------------------
#
# Every command with bad user input: wrong types, empty strings, out-of-range and huge numbers, nan/inf,
# `--set` values of the wrong shape for each config section, bad config and sweep files, bad `--compare`
# references, paths that are directories, FIFOs, devices or missing, and damaged run directories given to
# eval / plot / export / encode.  An "error" probe may name a piece of the one line it expects
# (``message``); another line is a wrong message.  "ok" probes check that what was accepted did what was
# asked (the file named by --out written, nothing else).  Config errors must leave no run directory.

FIFO, DIR = object(), object()


def files(named: dict):
    """Setup: write ``named`` (relative path -> str, bytes, :data:`FIFO` or :data:`DIR`) into the probe's folder."""
    def setup(ctx):
        for rel, content in named.items():
            path = ctx.tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is FIFO:
                os.mkfifo(path)
            elif content is DIR:
                path.mkdir(exist_ok=True)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
    return setup


def cli_probe(name, argv, expect="error", setup=None, check=None, message=None, **kw) -> Probe:
    return Probe("cli", name, argv, expect, setup, check, message=message, **kw)


def written(*rels, absent=()):
    """Check: the files ``rels`` exist (the output went where the user said) and ``absent`` do not."""
    def check(ctx, res):
        missing = [r for r in rels if not (ctx.tmp / r).is_file()]
        extra = [r for r in absent if (ctx.tmp / r).exists()]
        if missing or extra:
            return ("silent-acceptance", f"exit 0 but {', '.join(missing)} not written" if missing
                    else f"exit 0 but wrote {', '.join(extra)}")
        return None
    return check


def still_fifo(rel):
    return lambda ctx, res: None if (ctx.tmp / rel).is_fifo() else f"{rel} is no longer a FIFO (replaced)"


def set_probe(name, item, message=None, expect="error", check=None, **kw):
    """``kdkit train`` of the tiny config with one more ``--set ITEM``; a refused one leaves no run directory."""
    return cli_probe(f"set-{name}", train_args("run", TINY_SETS, "--set", item), expect,
                     check=check or (no_dir("run") if expect == "error" else None), message=message, **kw)


def config_probe(name, content, message=None, expect="error"):
    return cli_probe(f"config-{name}", train_args("run", TINY_SETS, "--config", "cfg.yaml"), expect,
                     files({"cfg.yaml": content}), no_dir("run") if expect == "error" else None, message)


def _set_probes() -> list:
    bad = {  # name: (--set item, a piece of the message)
        "seed-negative": ("seed=-1", "config key seed: expected int in [0, inf), got -1"),
        "seed-bool": ("seed=true", "config key seed: expected int in [0, inf), got bool"),
        "seed-float": ("seed=1.5", "config key seed: expected int"),
        "seed-null": ("seed=", "config key seed: expected int in [0, inf), got null"),
        "seed-5000-digits": ("seed=" + "9" * 5000, "--set seed: value"),
        "device-tpu": ("device=tpu", "config key device: expected str matching"),
        "device-empty": ('device=""', "config key device"),
        "device-cuda-99": ("device=cuda:99", "config key device: 'cuda:99'"),
        "deterministic-word": ("deterministic=maybe", "config key deterministic: expected bool"),
        "val-fraction-1": ("data.val_fraction=1", "config key data.val_fraction: expected float in [0, 1)"),
        "val-fraction-nan": ("data.val_fraction=.nan", "config key data.val_fraction"),
        # nothing held out: the stages kept their last epoch while summary.json said "val"
        "val-fraction-0-select-on-val": ("data.val_fraction=0", "data.val_fraction is 0: set checkpoint.select_on=last"),
        "num-classes-0": ("data.num_classes=0", "config key data.num_classes"),
        "data-null": ("data=null", "config key data: expected mapping"),
        "data-name-null": ("data.name=null", "config key data.name: expected str"),
        "data-name-unicode": ("data.name=ŝhapes", "unknown dataset 'ŝhapes'"),
        "train-null": ("train=null", "config key train: expected mapping"),
        "method-null": ("method=null", "config key method"),
        "lr-inf": ("train.lr=.inf", "config key train.lr: expected float in (0, inf), got inf"),
        "lr-string": ("train.lr=fast", "config key train.lr"),
        "momentum-1": ("train.momentum=1", "config key train.momentum"),
        "weight-decay-inf": ("train.weight_decay=.inf", "config key train.weight_decay"),
        "warmup-negative": ("train.warmup_epochs=-1", "config key train.warmup_epochs"),
        "grad-clip-0": ("train.grad_clip=0", "config key train.grad_clip"),
        "grad-clip-nan": ("train.grad_clip=.nan", "config key train.grad_clip"),
        "milestones-scalar": ("train.milestones=5", "config key train.milestones: expected list"),
        "milestones-words": ("train.milestones=[a]", "config key train.milestones.0"),
        "step-size-0": ("train.step_size=0", "config key train.step_size"),
        "gamma-negative": ("train.gamma=-1", "config key train.gamma"),
        "gamma-nan": ("train.gamma=.nan", "config key train.gamma"),
        "optimizer-options-list": ("train.optimizer_options=[1]", "config key train.optimizer_options: expected mapping"),
        "optimizer-options-lr": ("train.optimizer_options={lr: 5}", "set train.lr instead"),
        "scheduler-options-int": ("train.scheduler_options=3", "config key train.scheduler_options"),
        "early-stop-int": ("train.early_stop=3", "config key train.early_stop: expected mapping"),
        "early-stop-mode": ("train.early_stop.mode=sideways", "config key train.early_stop.mode"),
        "early-stop-min-delta": ("train.early_stop.min_delta=-1", "config key train.early_stop.min_delta"),
        "eval-batch-0": ("train.eval_batch_size=0", "config key train.eval_batch_size"),
        "batch-1e308": ("train.batch_size=1e308", "config key train.batch_size"),
        "teacher-lr-nan": ("teacher_train.lr=.nan", "config key teacher_train.lr"),
        "teachers-mapping": ("teachers={name: convnet}", "config key teachers: expected list"),
        "teachers-string": ("teachers=convnet", "config key teachers: expected list"),
        "teachers-list-of-names": ("teachers=[convnet]", "config key teachers.0: expected mapping"),
        "teachers-list-of-lists": ("teachers=[[1]]", "config key teachers.0: expected mapping"),
        "teacher-int": ("teachers.0=5", "config key teachers.0: expected mapping"),
        "teacher-index-word": ("teachers.first.width=4", "'first' must be a list index"),
        "student-list": ("student=[1]", "config key student: expected mapping"),
        "student-string": ("student=convnet", "config key student: expected mapping"),
        "student-width-1e308": ("student.width=1e308", "config key student.width"),
        "student-width-huge": ("student.width=1000000", "needs"),  # refused before allocation
        "distill-list": ("distill=[]", "config key distill: expected mapping"),
        "alpha-2": ("distill.alpha=2", "config key distill.alpha"),
        "temperature-0": ("distill.temperature=0", "config key distill.temperature"),
        "temperature-inf": ("distill.temperature=.inf", "config key distill.temperature"),
        "loss-unknown": ("distill.loss=nope", "unknown loss 'nope'"),
        "loss-options-list": ("distill.loss_options=[1]", "config key distill.loss_options"),
        "loss-option-unknown": ("distill.loss_options={T: 3}", "loss 'kl' has no option 'T'"),
        "terms-int": ("distill.terms=5", "config key distill.terms"),
        "terms-empty": ("distill.terms=[]", "nothing would be distilled"),
        "terms-of-ints": ("distill.terms=[5]", "config key distill.terms.0: expected a mapping"),
        # an infinite weight trained the teacher, then stopped the student as "diverged" (exit 4)
        "term-weight-inf": ("distill.terms=[{loss: kl, weight: .inf}]", "distill.terms.0.weight: expected a finite"),
        "term-weight-nan": ("distill.terms=[{loss: kl, weight: .nan}]", "distill.terms.0.weight: expected a finite"),
        "term-weight-word": ("distill.terms=[{loss: kl, weight: heavy}]", "distill.terms.0.weight"),
        "terms-same-name": ("distill.terms=[{loss: kl}, {loss: kl}]", "two terms are named 'kl'"),
        "term-unknown-key": ("distill.terms=[{loss: kl, bogus: 1}]", "valid keys of a term"),
        "term-options-int": ("distill.terms=[{loss: kl, options: 5}]", "distill.terms.0.options"),
        "term-name-dotted": ('distill.terms=[{loss: kl, name: "a.b"}]', "distill.terms.0.name"),
        "term-teacher-index": ("distill.terms=[{loss: kl, teacher_index: 5}]", "teacher_index 5 on a logit term"),
        "term-bad-taps": ("distill.terms=[{loss: fitnet, student: a, teacher: b}]", "has no module 'a'"),
        "combine-median": ("distill.combine=median", "config key distill.combine"),
        "ema-momentum-1.5": ("distill.ema_momentum=1.5", "config key distill.ema_momentum"),
        "teacher-cache-word": ("distill.teacher_cache=maybe", "config key distill.teacher_cache"),
        "store-dtype-int8": ("distill.teacher_store_dtype=int8", "config key distill.teacher_store_dtype"),
        "store-topk-negative": ("distill.teacher_store_topk=-1", "config key distill.teacher_store_topk"),
        "agreement-negative": ("distill.agreement_samples=-1", "config key distill.agreement_samples"),
        "baseline-bool": ("baseline=true", "config key baseline: expected mapping"),
        "baseline-enabled-2": ("baseline.enabled=2", "config key baseline.enabled: expected bool"),
        "baseline-unknown-key": ("baseline.extra=1", "unknown config key 'baseline.extra'"),
        "select-on-best": ("checkpoint.select_on=best", "config key checkpoint.select_on"),
        "checkpoint-null": ("checkpoint=null", "config key checkpoint: expected mapping"),
        "log-every-negative": ("logging.log_every=-1", "config key logging.log_every"),
        "unicode-key": ("sëed=1", "unknown config key 'sëed'"),
        "python-tag": ("data.name=!!python/name:os.system", "is not valid YAML"),
    }
    probes = [set_probe(name, item, message) for name, (item, message) in bad.items()]
    # refused when the student's optimiser is built, after the teacher trained (a float64 model takes it)
    probes.append(cli_probe("set-lr-1e308", train_args("run", TINY_SETS, "--set", "train.lr=1e308"),
                            message="stage student: lr 1e+308 is beyond what the model's torch.float32"))
    good = {
        "seed-beyond-64-bits": "seed=99999999999999999999",
        "lr-exponent-string": "train.lr=1e-3",  # YAML 1.1 reads it as a string
        "term-weight-exponent-string": "distill.terms=[{loss: kl, weight: 1e-3}]",
        "warmup-past-epochs": "train.warmup_epochs=5",
        "teacher-negative-index": "teachers.-1.width=4",
    }
    probes += [set_probe(name, item, expect="ok", check=written("run/summary.json")) for name, item in good.items()]
    probes.append(cli_probe("set-no-validation-said", train_args("run", TINY_SETS, "--set", "data.val_fraction=0",
                                                                 "--set", "checkpoint.select_on=last"), "ok",
                            check=written("run/summary.json")))
    return probes


def _config_file_probes() -> list:
    return [
        config_probe("tab-indent", "train:\n\tlr: 0.1\n", "found character '\\t'"),
        config_probe("binary", bytes(range(256)) * 4, "is not UTF-8 text"),
        config_probe("two-documents", "train: {lr: 0.1}\n---\nseed: 3\n", "but found another document"),
        config_probe("nul-byte", b"train: {lr: 0.1}\x00\n", "unacceptable character"),
        config_probe("list-key", "? [a]\n: b\n", "found unhashable key"),
        config_probe("int-key", "1: 2\n", "unknown config key '1'"),
        config_probe("null-key", "null: x\n", "unknown config key 'None'"),
        config_probe("anchor-at-top", "a: &x {lr: 0.1}\ntrain: *x\n", "unknown config key 'a'"),
        config_probe("binary-tag", "train: {lr: !!binary aGVsbG8=}\n", "config key train.lr"),
        config_probe("nan-tag", "train: {lr: !!float nan}\n", "config key train.lr"),
        config_probe("octal-word", "seed: 0o17\n", "config key seed"),
        config_probe("duplicate-nested", "train: {lr: 0.1, lr: 0.2}\n", "duplicate key 'lr'"),
        config_probe("many-plain-values", "relax: {" + ", ".join(f"k{i}: {i}" for i in range(60_000)) + "}\n",
                     "or that many values written out"),
        config_probe("byte-order-mark", "\ufefftrain: {lr: 0.1}\n", expect="ok"),
        config_probe("only-dashes", "---\n", expect="ok"),
        config_probe("merge-key", "train:\n  <<: {lr: 0.1}\n", expect="ok"),
        cli_probe("config-fifo", train_args("run", TINY_SETS, "--config", "cfg.yaml"), "error",
                  files({"cfg.yaml": FIFO}), no_dir("run"), "is a FIFO, not a regular file", timeout=60),
        cli_probe("config-dev-zero", train_args("run", TINY_SETS, "--config", "/dev/zero"), "error",
                  check=no_dir("run"), message="is a character device, not a regular file", timeout=60),
        cli_probe("config-proc-environ", train_args("run", TINY_SETS, "--config", "/proc/self/environ"), "error",
                  check=no_dir("run"), message="unacceptable character"),
    ]


def _train_option_probes() -> list:
    def tp(name, argv, message, setup=None, check=None, **kw):
        return cli_probe(f"train-{name}", argv, "error", setup, check, message, **kw)
    return [
        # an unset `--out "$DIR"` was the current directory
        tp("out-empty", train_args("", TINY_SETS), "--out is empty", check=written(absent=("config.yaml",))),
        tp("out-blank", train_args(" ", TINY_SETS), "--out is empty", check=no_dir(" ")),
        tp("resume-empty", ["train", "--resume", ""], "--resume is empty"),
        tp("out-fifo", train_args("run", TINY_SETS), "is a file, not a directory", files({"run": FIFO}),
           still_fifo("run")),
        tp("out-file", train_args("run", TINY_SETS), "is a file, not a directory", files({"run": "mine\n"})),
        tp("out-name-too-long", train_args("x" * 300, TINY_SETS), "File name too long"),
        tp("resume-missing", ["train", "--resume", "nowhere"], "not a kdkit run directory"),
        tp("resume-file", ["train", "--resume", "f"], "not a kdkit run directory", files({"f": "x"})),
        tp("resume-with-out", ["train", "--resume", "run", "--out", "x"], "cannot be combined", copy_ref),
        tp("resume-other-method", ["train", "--resume", "run", "--method", "dkd"], "the run used method 'kd'",
           copy_ref),
        tp("method-case", ["train", "--method", "KD", "--print-config"], "unknown method 'KD'"),
        tp("method-space", ["train", "--method", " kd", "--print-config"], "unknown method ' kd'"),
        tp("plugin-empty", ["train", "--plugin", "", "--print-config"], "no method selected: use --method NAME"),
        tp("method-and-plugin", ["train", "--method", "kd", "--plugin", "dkd"], "name different methods"),
        tp("help-config-resume", ["train", "--help-config", "--resume", "run"], "--help-config lists"),
        tp("set-without-value", ["train", "--set"], "argument --set: expected one argument"),
    ]


def _tamper(run: Path, rel: str, content) -> None:
    path = run / rel
    if content is None:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif callable(content):
        content(path)
    else:
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def damaged(name, rel, content, argv, message=None, expect="error", check=None):
    """A copy of the finished reference run with ``rel`` replaced by ``content`` (None: deleted)."""
    def setup(ctx):
        _tamper(copy_ref(ctx), rel, content)
    return cli_probe(name, argv, expect, setup, check, message)


S_BEST = "checkpoints/student/best.pt"


def _cli_run_dir_probes() -> list:
    evals, exports = ["eval", "--run", "run"], ["export", "--run", "run", "--out", "s.pt"]
    truncate = lambda p: p.write_bytes(p.read_bytes()[:100])  # noqa: E731

    def state_dict(p):  # what `kdkit export` writes, copied over a checkpoint
        import torch
        state = torch.load(p, weights_only=True)
        torch.save(state["model"], p)

    def teacher_best(p):
        shutil.copyfile(p.parent.parent / "teacher.convnet" / "best.pt", p)

    probes = []
    for argv, what in ((evals, "eval"), (exports, "export")):
        probes += [
            damaged(f"{what}-best-truncated", S_BEST, truncate, argv, "is unreadable (truncated or corrupt"),
            damaged(f"{what}-best-empty", S_BEST, b"", argv, "is unreadable"),
            damaged(f"{what}-best-a-state-dict", S_BEST, state_dict, argv, "is not a kdkit checkpoint"),
            damaged(f"{what}-best-of-the-teacher", S_BEST, teacher_best, argv, "is from stage 'teacher.convnet'"),
            damaged(f"{what}-config-deleted", "config.yaml", None, argv, "config.yaml is missing"),
            damaged(f"{what}-config-not-yaml", "config.yaml", "method: kd\nseed: [\n", argv, "invalid YAML"),
            damaged(f"{what}-config-a-list", "config.yaml", "- kd\n", argv, "must contain a mapping"),
            damaged(f"{what}-config-unknown-key", "config.yaml", lambda p: _append(p, "bogus: 1\n"), argv,
                    "unknown config key 'bogus'"),
            damaged(f"{what}-config-other-width", "config.yaml",
                    lambda p: p.write_text(p.read_text().replace("width: 4", "width: 8")), argv, "does not fit"),
            damaged(f"{what}-runfile-garbage", "kdkit-run.json", "{{{", argv, "kdkit-run.json is unreadable"),
        ]
    probes += [
        damaged("eval-student-checkpoints-deleted", "checkpoints/student", None, evals, "no best checkpoint"),
        damaged("eval-run-empty-name", "config.yaml", None, ["eval", "--run", ""], "not a kdkit run directory"),
        damaged("plot-metrics-nan", "metrics.jsonl", '{"stage": "s", "epoch": 0, "val.top1": NaN}\n',
                ["plot", "run"], expect="ok", check=written("run/curves.png")),
        damaged("plot-metrics-only-bools", "metrics.jsonl", '{"stage": "s", "epoch": 0, "val.top1": true}\n',
                ["plot", "run"], "has no numeric metrics"),
        damaged("plot-metrics-not-utf8", "metrics.jsonl", b'{"stage": "s\xe9", "epoch": 0}\n', ["plot", "run"],
                "is not UTF-8 text"),
        damaged("plot-default-out-a-directory", "curves.png", lambda p: p.mkdir(), ["plot", "run"],
                "is a directory"),
    ]
    plot = lambda *out: ["plot", "run", "--out", *out]  # noqa: E731

    def ok_run(ctx):  # a setup step: returns nothing (chain stops at a step that returns something)
        copy_ref(ctx)
    probes += [
        cli_probe("plot-out-fifo", plot("f.png"), "error", chain(ok_run, files({"f.png": FIFO})), still_fifo("f.png"),
                  "is a FIFO, not a regular file", timeout=60),
        cli_probe("plot-out-empty", plot(""), "error", ok_run, message="--out is empty"),
        cli_probe("plot-out-dotfile", plot(".png"), "error", ok_run, message="has no extension"),
        cli_probe("plot-out-jsonl", plot("run/metrics.jsonl"), "error", ok_run,
                  message=".jsonl is not an image format"),
        cli_probe("plot-out-slash", plot("figs/"), "error", ok_run, message="has no extension"),
        cli_probe("plot-out-new-folder", plot("figs/c.png"), "ok", ok_run, written("figs/c.png")),
        cli_probe("plot-a-file", ["plot", "run/metrics.jsonl"], "error", ok_run, message="no metrics.jsonl"),
        cli_probe("export-out-fifo", ["export", "--run", "run", "--out", "s.pt"], "error",
                  chain(ok_run, files({"s.pt": FIFO})), still_fifo("s.pt"), "is a FIFO, not a regular file",
                  timeout=60),
        # wrote a file named `exports`
        cli_probe("export-out-slash", ["export", "--run", "run", "--out", "exports/"], "error", ok_run,
                  written(absent=("exports",)), "names a directory"),
        cli_probe("export-out-empty", ["export", "--run", "run", "--out", ""], "error", ok_run,
                  message="--out is empty"),
        cli_probe("export-stage-empty", ["export", "--run", "run", "--stage", "", "--out", "s.pt"], "error", ok_run,
                  message="has no best checkpoint of that stage"),
        cli_probe("export-stage-dotdot", ["export", "--run", "run", "--stage", "../student", "--out", "s.pt"],
                  "error", ok_run, message="has no best checkpoint of that stage"),
        cli_probe("export-teacher", ["export", "--run", "run", "--stage", "teacher.convnet", "--out", "t.pt"], "ok",
                  ok_run, written("t.pt")),
        cli_probe("encode-run-without-encode", ["encode", "--run", "run", "--modality", "image", "--bits", "64",
                                                "--out", "c.npy"], "error", ok_run,
                  message="does not support 'kdkit encode'"),
    ]
    return probes


def _features(name="f.npy", rows=20, cols=64, dtype="float32", fill=None):
    def setup(ctx):
        import numpy as np
        x = np.random.default_rng(0).standard_normal((rows, cols)) if fill is None else np.full((rows, cols), fill)
        np.save(ctx.tmp / name, x.astype(dtype))
    return setup


def _encode_search_probes() -> list:
    import numpy as np
    enc = lambda *args: ["encode", "--features", "f.npy", *args]  # noqa: E731
    feats = _features()
    return [
        # `--out codes/` wrote codes.npy beside it; `--out /dev/null` wrote /dev/null.npy
        cli_probe("encode-out-slash", enc("--out", "codes/"), "error", feats, written(absent=("codes.npy",)),
                  "names a directory"),
        cli_probe("encode-out-fifo", enc("--out", "p"), "error", chain(feats, files({"p": FIFO})),
                  chain(still_fifo("p"), written(absent=("p.npy",))), "is a FIFO, not a regular file", timeout=60),
        cli_probe("encode-out-empty", enc("--out", ""), "error", feats, message="--out is empty"),
        cli_probe("encode-out-blank", enc("--out", " "), "error", feats, message="--out is empty"),
        cli_probe("encode-out-dot", enc("--out", "."), "error", feats, message="is a directory"),
        cli_probe("encode-out-is-input", enc("--out", "f"), "error", feats, message="would overwrite it"),
        cli_probe("encode-out-without-npy", enc("--out", "codes"), "ok", feats, written("codes.npy", "codes.npy.json")),
        cli_probe("encode-bits-mismatch", enc("--bits", "32", "--out", "c.npy"), "error", feats, message="--bits 32"),
        cli_probe("encode-bits-word", enc("--bits", "x", "--out", "c.npy"), "error", feats,
                  message="argument --bits: invalid int value"),
        cli_probe("encode-no-source", ["encode", "--out", "c.npy"], "error", message="give exactly one of"),
        cli_probe("encode-both-sources", enc("--run", "r", "--out", "c.npy"), "error", feats,
                  message="give exactly one of"),
        cli_probe("encode-features-missing", ["encode", "--features", "nope.npy", "--out", "c.npy"], "error",
                  message="--features: file not found"),
        cli_probe("encode-features-dir", ["encode", "--features", "d", "--out", "c.npy"], "error",
                  files({"d": DIR}), message="is a directory, not a regular file"),
        cli_probe("encode-features-complex", enc("--out", "c.npy"), "error", _features(dtype="complex64"),
                  message="is not real numbers"),
        cli_probe("encode-features-3d", enc("--out", "c.npy"), "error",
                  lambda ctx: np.save(ctx.tmp / "f.npy", np.zeros((2, 2, 64), np.float32)),
                  message="expected a 2-D array"),
        cli_probe("encode-features-cols-12", enc("--out", "c.npy"), "error", _features(cols=12),
                  message="L a multiple of 8"),
        cli_probe("encode-features-inf", enc("--out", "c.npy"), "ok", _features(fill=np.inf), written("c.npy")),
        cli_probe("encode-features-big-endian", enc("--out", "c.npy"), "ok", _features(dtype=">f4"),
                  written("c.npy")),
        cli_probe("search-k-0", ["search", "--db", "f.npy", "--queries", "f.npy", "-k", "0", "--json"], "error",
                  message="-k must be >= 1"),
        cli_probe("search-batch-0", ["search", "--db", "f.npy", "--queries", "f.npy", "--batch-size", "0",
                                     "--json"], "error", message="--batch-size must be >= 1"),
        cli_probe("search-no-output", ["search", "--db", "f.npy", "--queries", "f.npy"], "error",
                  message="give --out FILE.npz and/or --json"),
        cli_probe("search-out-upper-npz", ["search", "--db", "c.npy", "--queries", "c.npy", "--out", "r.NPZ"],
                  "error", message="give a file name ending in .npz"),
        cli_probe("search-float-db", ["search", "--db", "f.npy", "--queries", "f.npy", "--json"], "error", feats,
                  message="expected packed uint8 codes"),
        cli_probe("search-out-fifo", ["search", "--db", "c.npy", "--queries", "c.npy", "--out", "r.npz"], "error",
                  lambda ctx: (codes(ctx.tmp / "c.npy"), os.mkfifo(ctx.tmp / "r.npz")), still_fifo("r.npz"),
                  "is a FIFO, not a regular file", timeout=60),
        cli_probe("search-k-beyond-db", ["search", "--db", "c.npy", "--queries", "c.npy", "-k", "100", "--out",
                                         "r.npz"], "ok", lambda ctx: codes(ctx.tmp / "c.npy"), written("r.npz")),
    ]


def _sweep_file(replace=None, append="") -> str:
    text = sweep_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text + append


def sweep_file_probe(name, text, message, extra=()):
    return cli_probe(f"sweep-{name}", ["sweep", "s.yaml", "--out", "out", "--no-run", *extra], "error",
                     files({"s.yaml": text}), no_dir("out"), message)


def _sweep_probes_cli() -> list:
    cell = "rows: {teacher: teacher.convnet, kd: student}\n"
    probes = [
        sweep_file_probe("seeds-negative", _sweep_file({"seeds: [0, 1]": "seeds: [-1]"}), "seeds: expected"),
        sweep_file_probe("seeds-repeated", _sweep_file({"seeds: [0, 1]": "seeds: [0, 0]"}), "repeats a seed"),
        sweep_file_probe("seeds-empty", _sweep_file({"seeds: [0, 1]": "seeds: []"}), "seeds: expected"),
        sweep_file_probe("seeds-string", _sweep_file({"seeds: [0, 1]": 'seeds: "0,1"'}), "seeds: expected"),
        sweep_file_probe("seeds-bool", _sweep_file({"seeds: [0, 1]": "seeds: [true]"}), "seeds: expected"),
        sweep_file_probe("seeds-float", _sweep_file({"seeds: [0, 1]": "seeds: [1.0]"}), "seeds: expected"),
        sweep_file_probe("name-empty", _sweep_file({"name: tiny": 'name: ""'}), "name: expected a non-empty"),
        sweep_file_probe("name-300", _sweep_file({"name: tiny": "name: " + "a" * 300}), "at most 100"),
        sweep_file_probe("unknown-top-key", _sweep_file(append="colour: red\n"), "unknown key 'colour'"),
        sweep_file_probe("base-list", "seeds: [0]\nbase: [1]\ncells:\n  - {name: kd, method: kd}\n",
                         "base: expected a mapping"),
        sweep_file_probe("base-seed", _sweep_file({"base:\n": "base:\n  seed: 5\n"}), "'seed' cannot be set"),
        sweep_file_probe("base-nested-and-dotted", _sweep_file({"base:\n": "base:\n  train: {epochs: 5}\n"}),
                         "both set train.epochs"),
        sweep_file_probe("cells-empty", _sweep_file({"cells:\n  - name: kd\n    method: kd\n    " + cell: "cells: []\n"}),
                         "cells: expected a non-empty list"),
        sweep_file_probe("cell-no-method", _sweep_file({"    method: kd\n": ""}), ".method: expected a method name"),
        sweep_file_probe("cell-unknown-method", _sweep_file({"method: kd": "method: nope"}), "unknown method 'nope'"),
        sweep_file_probe("cell-name-slash", _sweep_file({"- name: kd": "- name: a/b"}), "it names a directory"),
        sweep_file_probe("cell-name-dotdot", _sweep_file({"- name: kd": "- name: .."}), "it names a directory"),
        sweep_file_probe("cell-name-int", _sweep_file({"- name: kd": "- name: 5"}), "it names a directory"),
        sweep_file_probe("cell-names-differ-in-case", _sweep_file(append="  - {name: KD, method: kd, rows: {x: student}}\n"),
                         "differs from 'kd' only in case"),
        sweep_file_probe("cell-unknown-key", _sweep_file(append="    color: red\n"), "unknown key 'color'"),
        sweep_file_probe("cell-set-list", _sweep_file(append="    set: [1]\n"), ".set: expected a mapping"),
        sweep_file_probe("cell-set-method", _sweep_file(append="    set: {method: dkd}\n"), "'method' cannot be set"),
        sweep_file_probe("cell-set-bad-value", _sweep_file(append="    set: {train.lr: -1}\n"), "config key train.lr"),
        sweep_file_probe("cell-ref-unknown", _sweep_file(append='    set: {student.pretrained: "{cell:zz}/x.pt"}\n'),
                         "{cell:zz} names no cell"),
        sweep_file_probe("cell-ref-self", _sweep_file(append='    set: {student.pretrained: "{cell:kd}/x.pt"}\n'),
                         "dependency cycle"),
        sweep_file_probe("rows-stage-unknown", _sweep_file({"kd: student}": "kd: nostage}"}),
                         "reads stage 'nostage'"),
        sweep_file_probe("rows-list", _sweep_file({"rows: {teacher: teacher.convnet, kd: student}": "rows: [student]"}),
                         ".rows: expected a non-empty mapping"),
        sweep_file_probe("grid-empty", _sweep_file(append="grid: {train.lr: []}\n"), "expected a non-empty list"),
        sweep_file_probe("grid-scalar", _sweep_file(append="grid: {train.lr: 0.1}\n"), "expected a non-empty list"),
        sweep_file_probe("grid-also-in-base", _sweep_file(append="grid: {train.epochs: [1, 2]}\n"), "also set in base"),
        sweep_file_probe("grid-repeated-value", _sweep_file(append="grid: {train.lr: [0.1, 0.1]}\n"), "repeats a value"),
        sweep_file_probe("grid-unknown-key", _sweep_file(append="grid: {train.nope: [1, 2]}\n"),
                         "unknown config key 'train.nope'"),
        sweep_file_probe("duplicate-key", _sweep_file(append="seeds: [3]\n"), "duplicate key 'seeds'"),
        sweep_file_probe("out-empty", _sweep_file(), "--out is empty", extra=("--out", "")),
        sweep_file_probe("tolerance-nan", _sweep_file(), "--tolerance must be a finite", extra=("--tolerance", "nan")),
        sweep_file_probe("tolerance-negative", _sweep_file(), "--tolerance must be >= 0",
                         extra=("--tolerance", "-1")),
        sweep_file_probe("jobs-0", _sweep_file(), "argument --jobs: expected an integer >= 1", extra=("--jobs", "0")),
        sweep_file_probe("threads-word", _sweep_file(), "argument --threads", extra=("--threads", "many")),
        sweep_file_probe("executor-opt-local", _sweep_file(), "--executor-opt only applies",
                         extra=("--executor-opt", "a=1")),
        sweep_file_probe("cells-unknown", _sweep_file(), "zz", extra=("--cells", "zz")),
        sweep_file_probe("seeds-not-in-file", _sweep_file(), "7", extra=("--seeds", "7")),
        sweep_file_probe("compare-missing", _sweep_file(), "reference table not found", extra=("--compare", "nope.json")),
    ]

    def compare(name, edit, message, text=None):
        """``--compare`` of the finished reference sweep with its own table.json edited by ``edit``."""
        def setup(ctx):
            import json
            out = copy_ref_sweep(ctx)
            if text is not None:
                (ctx.tmp / "ref.json").write_text(text)
                return
            table = json.loads((out / "table.json").read_text())
            edit(table)
            (ctx.tmp / "ref.json").write_text(json.dumps(table))
        return cli_probe(f"compare-{name}", ["sweep", "tiny.yaml", "--out", "out", "--no-run", "--compare", "ref.json"],
                         "error", setup, message=message, timeout=180)

    row = lambda t: t["rows"][-1]  # noqa: E731
    probes += [
        compare("mean-nan", lambda t: row(t)["best"].update(mean=float("nan")), "best.mean is nan"),
        compare("mean-true", lambda t: row(t)["best"].update(mean=True), "best.mean is True"),
        compare("mean-string", lambda t: row(t)["best"].update(mean="high"), "best.mean is 'high'"),
        compare("rows-empty", lambda t: t.update(rows=[]), "the table has no rows"),
        compare("rows-mapping", lambda t: t.update(rows={"kd": {}}), "rows is a dict"),
        compare("row-twice", lambda t: t["rows"].append(row(t)), "appears twice"),
        compare("id-int", lambda t: row(t).update(id=5), "id is 5"),
        compare("seeds-string", lambda t: row(t).update(seeds="0"), "seeds is '0'"),
        compare("per-seed-string", lambda t: row(t).update(per_seed={"0": {"best": "12"}}), "per_seed.0.best"),
        compare("diverged-seed-string", lambda t: row(t).update(diverged=[{"seed": "0"}]), "diverged[0]"),
        compare("no-common-row", lambda t: [r.update(id=f"x{i}") for i, r in enumerate(t["rows"])],
                "no row of this sweep is in the reference"),
        # json keeps the last of a repeated key: the compared mean was not the one the reader saw first
        compare("key-twice", None, "key 'best' appears twice in one object",
                text='{"rows": [{"id": "kd", "best": {"mean": 1.0}, "best": {"mean": 2.0}}]}'),
        compare("not-json", None, "not JSON", text="{rows: []}"),
        compare("bom", None, "not JSON", text="\ufeff{}"),
        compare("nested-deep", None, "nested too deeply", text="[" * 100_000),
        compare("huge-int", None, "not JSON", text='{"rows": [{"id": "kd", "best": {"mean": ' + "9" * 5000 + "}}]}"),
    ]
    return probes


def _other_command_probes() -> list:
    bench = lambda *a: ["bench", "--quick", "--repeat", "1", *a]  # noqa: E731
    return [
        # a DefaultCPUAllocator traceback (exit 1); a size just past the free memory an OOM kill
        cli_probe("bench-n-1e12", bench("--cases", "topk-random", "--n", "1000000000000"),
                  message="the topk-random case needs about"),
        cli_probe("bench-penalty-rows-1e12", bench("--cases", "penalty", "--penalty-rows", "1000000000000"),
                  message="the penalty case needs about"),
        cli_probe("bench-map-n-1e12", bench("--cases", "map", "--map-n", "1000000000000"),
                  message="the map case needs about"),
        # 20000 aborted in libgomp (exit 1), 100000 segfaulted
        cli_probe("bench-threads-100000", bench("--threads", "100000"), message="more than the"),
        cli_probe("bench-threads-0", bench("--threads", "0"), message="--threads must be >= 1"),
        cli_probe("bench-k-beyond-n", bench("--k", "5", "--n", "4"), message="must not exceed --n"),
        cli_probe("bench-bits-12", bench("--bits", "12"), message="positive multiples of 8"),
        cli_probe("bench-device-tpu", bench("--device", "tpu"), message="argument --device: invalid choice"),
        cli_probe("layers-unknown", ["layers", "nope"], message="unknown student 'nope'"),
        cli_probe("layers-input-1d", ["layers", "convnet", "--input", "3"], message="does not run on a 3 input"),
        cli_probe("layers-input-0", ["layers", "convnet", "--input", "0x3"], message="argument --input"),
        cli_probe("layers-input-huge", ["layers", "convnet", "--input", "3x99999x99999"], message="does not run"),
        cli_probe("layers-classes-0", ["layers", "convnet", "--num-classes", "0"], message="--num-classes must be"),
        cli_probe("layers-width-word", ["layers", "convnet", "--set", "width=abc"], message="width"),
        cli_probe("layers-width-huge", ["layers", "convnet", "--set", "width=1000000"], message="needs"),
        cli_probe("layers-unknown-option", ["layers", "convnet", "--set", "nope=1"], message="nope"),
        cli_probe("layers-set-no-key", ["layers", "convnet", "--set", "=1"], message="expected KEY=VALUE"),
        cli_probe("plugins-module-relative", ["--plugins-module", ".relative", "plugins"],
                  message="cannot import plugin module '.relative'"),
        cli_probe("plugins-module-empty", ["--plugins-module", "", "plugins"], "ok"),
        cli_probe("info-json-extra", ["info", "--json", "x"], message="unrecognized arguments: x"),
        cli_probe("eval-no-run", ["eval"], message="the following arguments are required: --run"),
    ]


#: the section's probes, built on first use (cli_probes)
CLI_PROBES: list[Probe] = []


def cli_probes() -> list:
    """Section "cli": user errors and silent acceptances of every command's arguments and input files."""
    if not CLI_PROBES:
        for make in (_set_probes, _config_file_probes, _train_option_probes, _cli_run_dir_probes, _encode_search_probes,
                     _sweep_probes_cli, _other_command_probes):
            CLI_PROBES.extend(make())
    return CLI_PROBES


# --- main ---------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[], list[Probe]]] = {"files": file_probes, "cli": cli_probes}


def selected(probes: list[Probe], pattern: str | None) -> list[Probe]:
    if pattern is None:
        return probes
    return [p for p in probes if fnmatch.fnmatchcase(p.section, pattern) or fnmatch.fnmatchcase(p.full_name, pattern)
            or fnmatch.fnmatchcase(p.name, pattern)]


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="PATTERN",
                        help="a section name, or a glob of SECTION:NAME or NAME (e.g. 'files:idx-*')")
    parser.add_argument("--keep", action="store_true", help="keep each probe's temporary directory")
    parser.add_argument("--list", action="store_true", help="list the selected probes and exit")
    args = parser.parse_args(argv)
    probes = selected([p for make in SECTIONS.values() for p in make()], args.only)
    if not probes:
        parser.error(f"no probe matches {args.only!r}")
    if args.list:
        for p in probes:
            print(f"{p.full_name}  (expect {p.expect})")
        return 0
    counts = dict.fromkeys(OUTCOMES, 0)
    failures = []
    t0 = time.monotonic()
    for i, probe in enumerate(probes, 1):
        outcome, detail, seconds, rss = run_probe(probe, args.keep)
        counts[outcome] += 1
        print(f"[{i}/{len(probes)}] {probe.full_name}: {outcome} ({seconds:.1f} s, {rss:.0f} MB)"
              f"{': ' + detail if detail else ''}",
              file=sys.stderr, flush=True)
        if outcome != "ok":
            failures.append((probe, outcome, detail))
    sections = ", ".join(dict.fromkeys(p.section for p in probes))
    print(f"reliability_attack: {len(probes)} probes ({sections}) in {time.monotonic() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for probe, outcome, detail in failures:
        print(f"FAIL {probe.full_name}: {outcome}: {detail}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
