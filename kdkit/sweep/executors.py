"""Where the runs of a sweep execute (``kdkit sweep --executor``): :class:`LocalExecutor` starts each
run as a subprocess of the sweep, :class:`SubmititExecutor` submits it as a job through submitit
(Slurm, or submitit's local executor: ``--executor-opt cluster=local``).  Both run the same command
(``python -m kdkit ... train ...``) with its output appended to the run's log file; the sweep keeps
at most ``--jobs`` of them in flight (:func:`kdkit.sweep.runner.run_sweep`).

A handle's ``poll()`` returns ``None`` while the run is going, then ``(exit status, note)`` — the note
says what went wrong outside the run itself (a job that submitit reports as failed: timed out,
cancelled, its node lost), ``""`` otherwise.  ``cancel()`` stops it (the run is resumed next time);
``interrupt(signum)`` passes the sweep's SIGTERM/SIGINT on and ``kill()`` ends a run that outlived it.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kdkit.config.files import parse_yaml
from kdkit.errors import ConfigError

#: ``--executor`` names
EXECUTORS = ("local", "submitit")
#: what the sweep passes to submitit unless ``--executor-opt`` says otherwise: submitit's own default
#: time limit (5 minutes on Slurm, 2 locally) would stop nearly every training run
SUBMITIT_DEFAULTS = {"timeout_min": 24 * 60}


def run_logged_command(cmd: list, log_path: str, env: dict) -> int:
    """Run ``cmd`` with ``env`` added to the environment, its output appended to ``log_path``; returns
    its exit status.  Module-level, so submitit pickles it by reference (the job imports kdkit)."""
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env})
        try:
            return proc.wait()
        except BaseException:  # interrupted (Ctrl-C, a job's time limit): stop the run too
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _LocalRun:
    def __init__(self, proc: subprocess.Popen, fh):
        self.proc, self.fh = proc, fh

    def poll(self):
        code = self.proc.poll()
        if code is None:
            return None
        self.fh.close()
        return code, ""

    def cancel(self) -> None:
        if self.proc.poll() is None:
            _stop(self.proc)
        self.fh.close()

    def interrupt(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


class LocalExecutor:
    """Each run a subprocess of the sweep (its output appended to the run's log)."""

    name = "local"
    poll_s = 0.05
    #: what starts a run's process (the suite's tests start theirs from a process that has imported torch)
    popen = staticmethod(subprocess.Popen)

    def submit(self, cmd: list, log_path: Path, env: dict, label: str) -> _LocalRun:
        fh = open(log_path, "ab")  # noqa: SIM115 - closed by the handle when the run ends
        try:
            proc = self.popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env})
        except BaseException:
            fh.close()
            raise
        return _LocalRun(proc, fh)

    def describe(self) -> str:
        return "subprocesses of this machine"


class _SubmititRun:
    def __init__(self, job):
        self.job = job

    def poll(self):
        if not self.job.done():
            return None
        try:
            return int(self.job.result()), ""
        except Exception as exc:  # noqa: BLE001 - submitit reports the job's end (timeout, cancel, node) as one
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            return -1, f"submitit job {self.job.job_id} failed: {lines[-1] if lines else type(exc).__name__}"

    def cancel(self) -> None:
        try:
            self.job.cancel(check=False)
        except Exception:  # noqa: BLE001, S110 - best effort while the sweep stops
            pass

    def interrupt(self, signum: int) -> None:  # the scheduler stops the job (scancel) however it was signalled
        self.cancel()

    def kill(self) -> None:
        self.cancel()


def parse_executor_opts(items) -> dict:
    """``--executor-opt KEY=VALUE`` items as a dict (YAML values: ``timeout_min=90`` is a number)."""
    opts = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--executor-opt {item!r}: expected KEY=VALUE (e.g. slurm_partition=gpu)")
        try:
            opts[key] = parse_yaml(value, f"--executor-opt {item!r}", with_position=False) if value.strip() else ""
        except ConfigError:  # not YAML: the plain string
            opts[key] = value
    return opts


class SubmititExecutor:
    """Each run a submitit job: ``AutoExecutor(folder=OUT/submitit, cluster=...)`` (Slurm where
    ``sbatch`` exists, else local processes; ``cluster`` from ``--executor-opt cluster=slurm|local``),
    its parameters :data:`SUBMITIT_DEFAULTS` updated by the other ``--executor-opt`` items.  The options
    are checked when it is made (in a scratch folder: OUT is not touched before the sweep claims it)."""

    name = "submitit"
    poll_s = 0.5

    def __init__(self, folder: Path, opts: dict):
        import tempfile

        from kdkit.lazy import import_extra

        self._submitit = import_extra("submitit", "cluster", "--executor submitit")
        opts = dict(opts)
        self._cluster = opts.pop("cluster", None)
        self._params = {**SUBMITIT_DEFAULTS, **opts}
        self.folder = Path(folder)
        with tempfile.TemporaryDirectory(prefix="kdkit-submitit-check-") as scratch:
            self.cluster = self._make(scratch).cluster
        self.executor = None

    def _make(self, folder):
        try:
            executor = self._submitit.AutoExecutor(folder=str(folder), cluster=self._cluster)
            executor.update_parameters(**self._params)
        except (ValueError, TypeError, AssertionError, NameError, RuntimeError) as exc:
            # submitit names the valid parameters: its first line is the one-line error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"--executor submitit: {first} (--executor-opt KEY=VALUE: submitit's parameters, "
                              "e.g. slurm_partition=gpu timeout_min=120 gpus_per_node=1)") from None
        return executor

    def submit(self, cmd: list, log_path: Path, env: dict, label: str) -> _SubmititRun:
        if self.executor is None:
            self.executor = self._make(self.folder)
        self.executor.update_parameters(name=f"kdkit-{label}"[:100])
        return _SubmititRun(self.executor.submit(run_logged_command, cmd, str(log_path), env))

    def describe(self) -> str:
        return f"submitit jobs ({self.cluster}; their files in {self.folder})"


def make_executor(name: str, out: Path, opts: dict):
    if name == "local":
        if opts:
            raise ConfigError(f"--executor-opt {next(iter(opts))}=...: only --executor submitit takes options")
        return LocalExecutor()
    if name == "submitit":
        return SubmititExecutor(Path(out) / "submitit", opts)
    raise ConfigError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
