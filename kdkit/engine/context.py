"""The run context handed to methods, and the ``train`` / ``evaluate_run`` entry points."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from kdkit.config import (ENGINE_KEYS, base_config, dump_yaml, get_path, load_yaml, method_config_help,  # noqa: F401 - re-exported
                          resolve_method_config, write_config)
from kdkit.config.diff import config_changes, summarize
from kdkit.config.settings import RunSettings
from kdkit.config.switches import method_component_switches
from kdkit.config.view import freeze_config
from kdkit.errors import ConfigError, KdkitError
from kdkit.engine import distributed as dist_utils
from kdkit.engine.checkpoint import check_checkpoint_owner, checkpoint_fits, load_checkpoint, load_last_checkpoint
from kdkit.engine.data import dataset_classes, split_train_val as _split_train_val
from kdkit.engine.rundir import (RUN_FILE, check_run_files, create_run_file, foreign_files, new_run_record,
                                 read_run_file, write_run_file)
from kdkit.engine.trainer import DIVERGED_FILE, Stage, StageResult, Trainer
from kdkit.files import WriteError, atomic_write_bytes, atomic_write_text
from kdkit.methodspec import Method, StageDeclarationWarning, declared_stages  # noqa: F401 - Method re-exported
from kdkit.seeding import derive_seed, seed_everything

__all__ = ["RunContext", "Method", "train", "evaluate_run", "resolve_method_config", "resolve_device"]


class _NoHooks:
    """Stand-in relay when no plugin manager is wanted (unit tests)."""

    def __getattr__(self, name):
        if name.startswith("__"):  # never pose as a protocol (copy, pickle, DataLoader probe dunders)
            raise AttributeError(name)
        return lambda **kwargs: []


def resolve_device(spec: str) -> torch.device:
    spec = str(spec or "auto")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config key device: {spec!r} requested but CUDA is not available")
        if dist_utils.env_world_size() > 1 and spec == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device(spec)
    if spec != "cpu":
        raise ConfigError(f"config key device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    return torch.device("cpu")


class RunContext:
    """What a method's ``run(ctx)`` works with (see the module docs of :mod:`kdkit.engine`)."""

    def __init__(self, config: dict, run_dir: str | Path, plugin_manager: Any = None,
                 device: torch.device | None = None, resume: bool = False, *, read_only: bool = False,
                 run: dict | None = None):
        """``config`` is a resolved config (:func:`kdkit.config.resolve_method_config`).  ``read_only``:
        a context that reads a finished run (``kdkit eval`` / ``encode``) as one process: no log file,
        ``metrics.jsonl`` left as it is.  ``ctx.config`` is a frozen view of ``config``
        (:class:`kdkit.config.view.FrozenConfig`: ``ctx.config.train.lr``).  ``run``: the run record
        (:mod:`kdkit.engine.rundir`; default: the directory's own, created when it has none)."""
        self.config = freeze_config(config)
        self.settings = RunSettings.from_config(self.config)
        self.run_dir = Path(run_dir)
        self.plugin_manager = plugin_manager
        self.hook = plugin_manager.hook if plugin_manager is not None else _NoHooks()
        self.device = device if device is not None else resolve_device(self.config.device)
        self.rank = 0 if read_only else dist_utils.rank()
        self.world_size = 1 if read_only else dist_utils.world_size()
        self.is_main = self.rank == 0
        self.resume = resume
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.metrics_lines = 0
        self.stage_results: dict[str, StageResult] = {}
        #: the stages the run's method declares (:meth:`kdkit.Method.stages`); ``None``: undeclared
        self.declared_stages: list[str] | None = None
        self._log_file = None
        if read_only:
            # the run's own record, which load_best checks its checkpoints against; none: a run made
            # before run ids (its checkpoints are checked on their stage alone)
            self.run = run or read_run_file(self.run_dir) or {"run_id": None, "adopted": True}
            return
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if run is None:
                run = read_run_file(self.run_dir) or create_run_file(self.run_dir, adopted=resume)
        #: the run record: its id goes into every checkpoint, which resume checks
        self.run = dist_utils.broadcast_object(run)
        if self.is_main:
            self._log_file = open(self.run_dir / "train.log", "a", encoding="utf-8")
        self._prepare_metrics()

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        return self.run["run_id"]

    @property
    def run_adopted(self) -> bool:
        """A run made before run ids: its checkpoints without one are checked on their stage alone."""
        return bool(self.run["adopted"])

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def cache_dir(self) -> Path:
        """kdkit's shared cache (:func:`kdkit.paths.cache_root`) for features that are expensive to
        recompute (e.g. CLIP embeddings); key each file by a digest of what it depends on.  Created
        on access."""
        from kdkit.paths import cache_root

        path = cache_root()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def registry(self, kind: str):
        if self.plugin_manager is None:
            import kdkit

            return kdkit.get_registry(kind)
        return self.plugin_manager.registry(kind)

    def log(self, msg: str) -> None:
        """Print ``msg`` on stderr and append it to ``run_dir/train.log`` (rank 0 only)."""
        if not self.is_main:
            return
        print(msg, file=sys.stderr, flush=True)
        if self._log_file is not None:
            self._log_file.write(msg + "\n")
            self._log_file.flush()

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _prepare_metrics(self) -> None:
        """On resume, cut ``metrics.jsonl`` back to what the checkpoints resumed from had written."""
        keep = 0
        if self.resume:
            points = _resume_points(self.run_dir, self.run)
            keep = max((int(state.get("metrics_lines", 0)) for state, _ in points.values()), default=0)
        dist_utils.barrier()
        if self.is_main and self.metrics_path.exists():
            lines = self.metrics_path.read_bytes().split(b"\n")
            complete = [ln for ln in lines[:-1]]  # a line without its newline is partial
            kept = complete[:keep] if self.resume else []
            if len(kept) != len(complete) or lines[-1]:
                atomic_write_bytes(self.metrics_path, b"".join(ln + b"\n" for ln in kept))  # as written: no decoding
            keep = len(kept)
        elif not self.metrics_path.exists():
            keep = 0
        self.metrics_lines = keep
        dist_utils.barrier()

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line to ``metrics.jsonl`` (rank 0; flushed and fsynced)."""
        self.metrics_lines += 1
        if not self.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # --- building blocks --------------------------------------------------------------------

    def build_dataset(self, section: dict | None = None, split: str = "train", **overrides):
        """``registry("datasets")`` factory of ``section["name"]`` for ``split`` ("train" | "test").

        ``section`` defaults to ``config["data"]``; engine keys (``name``, ``root``, ``val_fraction``,
        ``num_workers``) are not passed to the factory, the other keys are its options, updated
        with ``overrides`` (e.g. ``augment="none"``).
        """
        section = dict(self.config.data if section is None else section)
        options = {k: v for k, v in section.items() if k not in ENGINE_KEYS["datasets"]}
        options.update(overrides)
        name = section.get("name")
        return self.registry("datasets").build(name, split, section.get("root"), **options)

    def build_model(self, kind: str, section: dict, num_classes: int, seed_tag: Any = None):
        """Build ``section["name"]`` from the ``kind`` registry ("teachers" | "students").

        The RNG is reseeded from ``(seed, kind, seed_tag or name)`` first, so initial weights do
        not depend on what ran before (resume builds them identically).  Engine keys of the
        section (``name``, ``train``, ``cache``, ...) are not passed to the factory.
        """
        section = dict(section)
        name = section.get("name")
        options = {k: v for k, v in section.items() if k not in ENGINE_KEYS.get(kind, {"name"})}
        seed_everything(derive_seed(self.seed, "init", kind, seed_tag if seed_tag is not None else name))
        return self.registry(kind).build(name, num_classes, **options)

    def split_train_val(self, dataset, fraction: float | None = None, seed: int | None = None,
                        eval_dataset=None):
        """Hold out ``fraction`` (default ``data.val_fraction``) of ``dataset`` for validation.

        The validation part is taken from ``eval_dataset`` (same samples, no augmentation); by
        default ``dataset.with_augment("none")`` when the dataset offers it.
        """
        if fraction is None:
            fraction = float(self.config.data.val_fraction)
        if seed is None:
            seed = self.seed
        if eval_dataset is None and hasattr(dataset, "with_augment"):
            eval_dataset = dataset.with_augment("none")
        return _split_train_val(dataset, fraction, seed, eval_dataset)

    def classification_data(self, section: dict | None = None):
        """The usual three splits: ``(train, val, test, classes)``.

        ``val`` is held out from the training split (``data.val_fraction``) unless
        ``checkpoint.select_on`` is ``test`` (then ``val`` *is* the test split and the whole
        training split is used) or ``last`` (no validation).
        """
        train_full = self.build_dataset(section, "train")
        test = self.build_dataset(section, "test")
        train, val = self.selection_splits(train_full, test)
        classes = dataset_classes(train_full)
        return train, val, test, classes

    def selection_splits(self, train_full, test, hold_out=None):
        """``(train, val)`` for ``checkpoint.select_on`` — the one place that maps it to data.

        ``val``: ``hold_out()`` (default: :meth:`split_train_val` of ``train_full``), the model
        selected on held-out training data; ``test``: the whole ``train_full`` and ``val = test``
        (optimistic, an explicit opt-in); ``last``: the whole ``train_full`` and no validation.
        """
        select_on = self.config.checkpoint.select_on
        if select_on == "val":
            return hold_out() if hold_out is not None else self.split_train_val(train_full)
        if select_on == "test":
            return train_full, test
        if select_on == "last":
            return train_full, None
        raise ConfigError(f"config key checkpoint.select_on: expected 'val', 'test' or 'last', got {select_on!r}")

    def fit(self, stage: Stage) -> StageResult:
        """Train ``stage`` (or, on resume, continue / skip it) and return its result."""
        if stage.name in self.stage_results:
            raise KdkitError(f"stage name {stage.name!r} used twice in one run")
        if self.declared_stages is not None and stage.name not in self.declared_stages:
            # caught before the stage trains: a sweep row naming it would have been refused
            raise KdkitError(f"method {self.config.method!r} trains stage {stage.name!r}, which its stages() "
                             f"does not declare ({', '.join(self.declared_stages)}); a bug in the method")
        result = Trainer(self, stage).fit()
        self.stage_results[stage.name] = result
        return result

    def evaluate(self, model: torch.nn.Module, data, eval_fn=None, batch_size: int | None = None) -> dict:
        """``eval_fn(model, loader)`` (default top-1 + loss) on ``data`` outside any stage, in eval mode."""
        from kdkit.engine.data import make_eval_loader
        from kdkit.engine.trainer import classification_eval

        if isinstance(data, torch.utils.data.Dataset):
            bs = batch_size or int(self.config.train.eval_batch_size)
            data = make_eval_loader(data, bs, int(self.config.data.num_workers))
        was = model.training
        model.to(self.device).eval()
        with torch.no_grad():
            metrics = (eval_fn or classification_eval)(model, data)
        model.train(was)
        return {k: float(v) for k, v in metrics.items()}

    def trainer(self, stage: Stage) -> Trainer:
        """A :class:`Trainer` for ``stage`` without running it (for custom loops / tests)."""
        return Trainer(self, stage)

    def load_best(self, stage_name: str, model: torch.nn.Module, extra_modules: dict | None = None) -> dict:
        """Load ``checkpoints/<stage_name>/best.pt`` into ``model``; returns the checkpoint's metrics.
        A checkpoint of another stage or run is refused (:func:`~kdkit.engine.checkpoint.check_checkpoint_owner`)."""
        path = self.run_dir / "checkpoints" / stage_name / "best.pt"
        if not path.exists():
            raise KdkitError(f"no best checkpoint for stage {stage_name!r} in {self.run_dir} ({path} is missing)")
        state = load_checkpoint(path, map_location=self.device)
        # a best.pt copied from another stage or run would pass for this one's (as a last.pt on --resume)
        check_checkpoint_owner(state, path, stage_name, self.run_id, legacy=self.run_adopted)
        with checkpoint_fits(path, f"stage {stage_name!r}'s model"):
            model.load_state_dict(state["model"])
            for k, sd in (state.get("extra_modules") or {}).items():
                if extra_modules and k in extra_modules:
                    extra_modules[k].load_state_dict(sd)
            metrics = dict(state.get("metrics") or {})
        model.to(self.device)
        return metrics


# --- entry points ---------------------------------------------------------------------------

def _manager():
    import kdkit

    return kdkit.get_plugin_manager()


def _method_class(manager, name: str):
    return manager.registry("methods").get(name).factory


def _default_run_dir(method: str) -> Path:
    """A new ``runs/<method>-<timestamp>[-i]``, created here (mkdir is atomic: no two runs share one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{method}-{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            i += 1
            path = Path(f"{base}-{i}")
        except OSError as exc:
            raise KdkitError(f"cannot create the run directory {path} ({exc.strerror}); "
                             "choose a writable one with --out") from None


def _configure_determinism(config: dict, device: torch.device) -> None:
    if config["deterministic"]:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        # torch.use_deterministic_algorithms imports torch._inductor (seconds); set the same flag
        # directly unless inductor is already loaded (then its config must follow too).
        setter = getattr(torch._C, "_set_deterministic_algorithms", None)
        if "torch._inductor.config" in sys.modules or setter is None:
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            setter(True, warn_only=True)


# --- the run directory: claimed under a lock, resumed from consistent checkpoints -------------


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run worth keeping: a finished run, a stage checkpoint or the record
    of a divergence (a result, even before the first checkpoint).  What a run that failed (or was
    killed) before its first checkpoint left behind may be reused."""
    return ((run_dir / "summary.json").is_file() or (run_dir / DIVERGED_FILE).is_file()
            or any((run_dir / "checkpoints").glob("*/*.pt")))


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of atomic writes a killed process left (safe: the caller holds the run's lock)."""
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/*/.*.tmp")]:
        try:
            tmp.unlink()
        except OSError:
            pass


def _resume_points(run_dir: Path, run: dict) -> dict[str, tuple[dict, Path]]:
    """Per stage folder of ``checkpoints/``, the state a resume continues from and its file
    (``last.pt``, else ``last.prev.pt``: :func:`~kdkit.engine.checkpoint.load_last_checkpoint`), each
    checked to be that stage's of the run ``run`` (its record: :mod:`kdkit.engine.rundir`)."""
    points: dict[str, tuple[dict, Path]] = {}
    ckpts = run_dir / "checkpoints"
    for stage_dir in sorted(ckpts.iterdir()) if ckpts.is_dir() else ():
        def owner(state, path, stage=stage_dir.name):
            check_checkpoint_owner(state, path, stage, run["run_id"], legacy=run["adopted"])

        state, source = load_last_checkpoint(stage_dir / "last.pt", mmap=True, check=owner)
        if state is not None:
            points[stage_dir.name] = (state, source)
    lines = {name: int(state.get("metrics_lines", 0)) for name, (state, _) in points.items()}
    for name, (state, source) in points.items():
        newer = sorted(other for other, n in lines.items() if n > lines[name])
        if source.name != "last.pt" and not state.get("finished") and newer:
            # an earlier stage going back in time would replay its epochs after the later stages'
            raise KdkitError(f"cannot resume {run_dir} exactly: {source.parent / 'last.pt'} is unreadable and its "
                             f"previous version predates the checkpoints of {', '.join(newer)}; delete "
                             f"{' and '.join(str(ckpts / n) for n in newer)} to train them again, or start the "
                             "run again with a fresh --out")
    return points


def _check_metrics(run_dir: Path, points: dict[str, tuple[dict, Path]]) -> None:
    """``metrics.jsonl`` must still hold every record the checkpoints resumed from say was written
    (a truncated or deleted file lost results; it is never rewritten to hide that), each a JSON object,
    and every stage recorded there must still have its checkpoints: one without would train again and
    be recorded twice (deleting an earlier stage's checkpoints did that)."""
    if not points:
        return
    state, source = max(points.values(), key=lambda point: int(point[0].get("metrics_lines", 0)))
    written = int(state.get("metrics_lines", 0))
    if written == 0:
        return
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        raise KdkitError(f"--resume {run_dir}: {path} is missing, but checkpoint {source} recorded {written} "
                         "records written; restore it from a copy, or start a new run with a fresh --out") from None
    held = sum(1 for line in lines if line.endswith(b"\n"))  # a line without its newline is partial
    if held < written:
        raise KdkitError(f"--resume {run_dir}: {path} holds {held} complete records, but checkpoint {source} "
                         f"recorded {written} written (records were lost); restore it from a copy, or start a "
                         "new run with a fresh --out")
    first: dict[str, int] = {}  # stage -> the line of its first epoch record
    for number, line in enumerate(lines[:written], 1):
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            record = None
        if not isinstance(record, dict):
            raise KdkitError(f"--resume {run_dir}: line {number} of {path} is not a metrics record (the file was "
                             "damaged); restore it from a copy, or start a new run with a fresh --out")
        if isinstance(record.get("stage"), str) and isinstance(record.get("epoch"), int):
            first.setdefault(record["stage"], number)
    lost = [stage for stage in first if stage not in points]
    if lost:
        later = [stage for stage in points if first.get(stage, 0) > first[lost[0]]]
        raise KdkitError(f"--resume {run_dir}: {path} holds records of stage {lost[0]!r}, whose checkpoints are gone "
                         f"from {run_dir / 'checkpoints' / lost[0]}: it would train again and be recorded twice; "
                         "restore them, "
                         + (f"delete the checkpoints of the stages after it ({', '.join(later)}) to train those "
                            "again too, " if later else "")
                         + "or start the run again with a fresh --out")


def _edited_config(run_dir: Path, config: dict, points: dict[str, tuple[dict, Path]]) -> list[str]:
    """How the run's ``config.yaml`` (resolved: ``config``) differs from the config its newest
    checkpoint (of ``points``: :func:`_resume_points`) was written with (nothing when none records one)."""
    if not points:
        return []
    newest, _ = max(points.values(), key=lambda point: int(point[0].get("metrics_lines", 0)))
    started = newest.get("config")
    return config_changes(started, config) if isinstance(started, dict) else []


def _check_not_foreign(run_dir: Path) -> None:
    """``--out`` must be empty (or new) or a kdkit run directory: a file of the user's is never replaced."""
    names = foreign_files(run_dir)
    if names:
        raise KdkitError(f"--out {run_dir} holds files kdkit did not write ({summarize(names, 2)}); "
                         "choose an empty or new directory")


def _check_is_run(run_dir: Path) -> None:
    """``--resume`` continues only a kdkit run: one with its run record, or a run made before run
    records (a stage checkpoint)."""
    if not (run_dir / RUN_FILE).is_file() and not any((run_dir / "checkpoints").glob("*/*.pt")):
        raise KdkitError(f"--resume {run_dir}: not a kdkit run directory (no {RUN_FILE} and no checkpoint)")


def _claim_run_dir(run_dir: Path | None, method: str, resume: bool, config: dict, accept_config_change: bool):
    """Create (or find) the run directory, lock it, then check what it holds and record the run
    (:mod:`kdkit.engine.rundir`); rank 0 only.

    Returns ``(run_dir, created, lock, config_changes, run)``.  The order — create, lock, check —
    means two processes started on one directory cannot both pass the check; the checks also run
    before the lock, so a directory that is refused gets no lock file either.
    """
    from kdkit.paths import lock_directory

    created = False
    if resume:
        lock = lock_directory(run_dir, f"run directory {run_dir}",
                              "wait for it to finish (or stop it) before resuming it")
    else:
        if run_dir is None:
            run_dir, created = _default_run_dir(method), True
        else:
            try:
                run_dir.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise KdkitError(f"--out {run_dir}: cannot create it ({exc.strerror}); "
                                 "choose a directory you can write to") from None
            if not run_dir.is_dir():
                raise KdkitError(f"--out {run_dir} is a file, not a directory; choose another --out")
            if not created and not _holds_run(run_dir):  # a run: checked under the lock (in use, or kept)
                _check_not_foreign(run_dir)
        lock = lock_directory(run_dir, f"run directory {run_dir}", "wait for it to finish or choose another --out")
    try:
        changes: list[str] = []
        if resume:
            _check_is_run(run_dir)
            check_run_files(run_dir)  # before any is opened: a FIFO blocks its reader for ever
            run = read_run_file(run_dir)
            adopt = run is None  # a run made before run ids: recorded once it passed the checks
            run = new_run_record(adopted=True) if adopt else run
            _remove_stale_temp_files(run_dir)
            points = _resume_points(run_dir, run)
            _check_metrics(run_dir, points)
            changes = _edited_config(run_dir, config, points)
            if changes and not accept_config_change:
                raise KdkitError(f"--resume {run_dir}: config.yaml was edited since the run started "
                                 f"({summarize(changes)}); restore it, or pass --accept-config-change "
                                 "to continue with the edited config")
            if adopt:
                write_run_file(run_dir, run)
        else:
            _check_new_run_dir(run_dir)
            check_run_files(run_dir)  # a run directory reused: its metrics.jsonl and train.log are opened
            _remove_stale_temp_files(run_dir)
            run = create_run_file(run_dir)  # first, before any other file: from now on the directory is a run
    except BaseException:
        lock.release()
        raise
    return run_dir, created, lock, changes, run


def _check_new_run_dir(run_dir: Path) -> None:
    """A fresh run's ``--out``: no run in it to keep, and no file that is not kdkit's."""
    if _holds_run(run_dir):
        raise KdkitError(f"--out {run_dir} already holds a run; use --resume {run_dir} to continue it "
                         "or choose another --out")
    _check_not_foreign(run_dir)


def _on_main(fn):
    """``fn()`` on rank 0; every rank returns its result or raises its :class:`KdkitError` (as a
    KdkitError with the same message), so no rank waits for a rank that gave up."""
    if dist_utils.is_main():
        try:
            result = fn()
        except BaseException as exc:
            message = str(exc) if isinstance(exc, KdkitError) else f"rank 0 failed ({type(exc).__name__})"
            dist_utils.broadcast_object((False, message))
            raise
        dist_utils.broadcast_object((True, None))
        return result
    ok, message = dist_utils.broadcast_object(None)
    if not ok:
        raise KdkitError(message)
    return None


def _disk_error(exc: BaseException, run_dir: Path) -> KdkitError | None:
    """A failed write (disk full, read-only) as a one-line error that says how to go on."""
    if isinstance(exc, WriteError):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        message = f"cannot write into {run_dir}: {exc.strerror}"
    else:
        return None
    if _holds_run(run_dir):
        return KdkitError(f"{message}; then continue the run with: kdkit train --resume {run_dir}")
    return KdkitError(f"{message}; then start the run again")


def train(method: str | None = None, config_file: str | Path | None = None, sets: Iterable[str] = (),
          out: str | Path | None = None, resume: str | Path | None = None, print_config: bool = False,
          manager: Any = None, accept_config_change: bool = False) -> dict | str:
    """Resolve the config and run a method; returns the summary (or the YAML with ``print_config``).

    ``resume=RUN_DIR`` reads ``RUN_DIR/config.yaml`` and continues the run in place; it cannot be
    combined with ``config_file``/``sets``/``out``, and refuses a ``config.yaml`` edited since the
    run started unless ``accept_config_change``.  The run directory is locked for the whole run
    (:func:`kdkit.paths.lock_directory`); one left by a run that failed before its first checkpoint
    may be used again, and one this call created is removed when the run fails before that.
    """
    manager = manager or _manager()
    sets = list(sets or ())
    # Path("") is the current directory: an unset `--out "$DIR"` trained into wherever the shell was
    for flag, given in (("--out", out), ("--resume", resume)):
        if given is not None and not str(given).strip():
            raise KdkitError(f"{flag} is empty; give a run directory, e.g. {flag} runs/kd1"
                             + (" (or leave --out out: runs/<method>-<timestamp>)" if flag == "--out" else ""))
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise KdkitError(f"--resume {run_dir}: not a kdkit run directory ({cfg_path} is missing)")
        if config_file is not None or sets or out is not None:
            raise KdkitError("--resume continues a run with its saved config; --config, --set and --out "
                             "cannot be combined with it")
        _check_is_run(run_dir)  # before reading its plugins.json: only a kdkit run's
        _load_run_plugins(run_dir, manager)
        saved = load_yaml(cfg_path)
        saved_method = saved.get("method")
        if method is not None and saved_method and method != saved_method:
            raise KdkitError(f"--resume {run_dir}: the run used method {saved_method!r}, not {method!r}")
        method = method or saved_method
        if not method:
            raise KdkitError(f"--resume {run_dir}: config.yaml names no method")
        config = resolve_method_config(method, cfg_path, (), manager)
        if print_config:
            return dump_yaml(config)
    else:
        if not method:
            names = ", ".join(manager.registry("methods").names())
            raise KdkitError(f"no method selected: use --method NAME (available: {names})")  # --plugin is deprecated
        config = resolve_method_config(method, config_file, sets, manager)
        if print_config:
            return dump_yaml(config)
        run_dir = Path(out) if out is not None else None

    device = resolve_device(config["device"])
    with dist_utils.torchrun_process_group(device.type):
        claimed = _on_main(lambda: _claim_run_dir(run_dir, method, resume is not None, config, accept_config_change))
        lock, created, changes = (claimed[2], claimed[1], claimed[3]) if claimed else (None, False, [])
        run_dir, run = dist_utils.broadcast_object((str(claimed[0]), claimed[4]) if claimed else None)
        run_dir = Path(run_dir)
        try:
            return _run(method, config, run_dir, resume is not None, changes, manager, run)
        except BaseException as exc:
            if dist_utils.is_main() and created and not _holds_run(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping; frees --out for a retry
            error = _disk_error(exc, run_dir) if dist_utils.is_main() else None
            if error is not None:
                raise error from exc
            raise
        finally:
            if lock is not None:
                lock.release()


def _run(method: str, config: dict, run_dir: Path, resume: bool, changes: list[str], manager: Any,
         run: dict) -> dict:
    """The body of :func:`train` once its run directory is claimed, locked and recorded (``run``)."""
    device = resolve_device(config["device"])
    _configure_determinism(config, device)
    manager.hook.kdkit_configure(config=config, run_dir=run_dir if dist_utils.is_main() else None)
    ctx = RunContext(config, run_dir, manager, device, resume=resume, run=run)
    if ctx.is_main and not resume:
        write_config(config, run_dir / "config.yaml")
    if ctx.is_main:  # after config.yaml: a directory records its plugins only once it is a run
        from kdkit.plugins import record_plugin_modules

        record_plugin_modules(run_dir, getattr(manager, "loaded_modules", ()))
    ctx.log(f"kdkit: method {method}, run dir {run_dir}, device {device}"
            + (f", {ctx.world_size} processes" if ctx.world_size > 1 else "")
            + (" (resumed)" if resume else ""))
    for line in method_component_switches(method, ctx.config, manager):
        ctx.log(f"kdkit: {line}")
    if changes:
        ctx.log(f"warning: config.yaml was edited since the run started ({summarize(changes)}); "
                "continuing with the edited config (--accept-config-change)")
    cls = _method_class(manager, method)
    ctx.declared_stages = declared_stages(cls, ctx.config)
    seed_everything(derive_seed(ctx.seed, "run"))
    t0 = time.perf_counter()
    try:
        summary = cls().run(ctx)
        if not isinstance(summary, dict):
            raise KdkitError(f"method {method!r}: run() must return a dict summary, got {type(summary).__name__}")
        untrained = [s for s in ctx.declared_stages or () if s not in ctx.stage_results]
        if untrained:
            ctx.log(f"warning: method {method!r} declares stage{'s' if len(untrained) > 1 else ''} "
                    f"{', '.join(untrained)} (stages()) but did not train it; a bug in the method")
            warnings.warn(StageDeclarationWarning(f"method {method!r}: declared stages not trained: {untrained}"))
        if ctx.is_main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        dist_utils.barrier()
        ctx.log(f"kdkit: finished in {time.perf_counter() - t0:.1f}s; summary in {run_dir / 'summary.json'}")
        manager.hook.kdkit_run_finished(run_dir=run_dir if ctx.is_main else None, summary=summary)
    finally:
        ctx.close()
    return summary


def _load_run_plugins(run_dir: Path, manager: Any) -> None:
    """Load the plugin modules the run was made with (``plugins.json``), so ``--resume`` and
    ``kdkit eval`` need no ``--plugins-module`` again."""
    from kdkit.plugins import load_recorded_plugins

    if hasattr(manager, "load_module"):
        load_recorded_plugins(run_dir, manager)


def open_run(run_dir: str | Path, manager: Any = None, device: str | None = None):
    """A read-only :class:`RunContext` on a finished run and an instance of its method.

    The config is the run's saved ``config.yaml`` (``device`` may override its device); nothing in
    the run directory is written or truncated.  Returns ``(ctx, method)``.
    """
    manager = manager or _manager()
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise KdkitError(f"--run {run_dir}: not a kdkit run directory ({cfg_path} is missing)")
    check_run_files(run_dir)  # the read-only context reads the run record
    _load_run_plugins(run_dir, manager)
    saved = load_yaml(cfg_path)
    method = saved.get("method")
    if not method:
        raise KdkitError(f"--run {run_dir}: config.yaml names no method")
    # eval reads the run's checkpoints: the weights it started from may have moved since
    config = resolve_method_config(method, cfg_path, (), manager, check_files=False)
    if device:
        config["device"] = device
    ctx = RunContext(config, run_dir, manager, read_only=True)
    return ctx, _method_class(manager, method)()


def evaluate_run(run_dir: str | Path, manager: Any = None) -> dict:
    """Re-evaluate a finished run: the method's ``evaluate(ctx)`` on its saved config and checkpoints."""
    ctx, instance = open_run(run_dir, manager)
    if not hasattr(instance, "evaluate"):
        raise KdkitError(f"method {ctx.config['method']!r} does not support 'kdkit eval'")
    return instance.evaluate(ctx)
