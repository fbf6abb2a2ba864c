"""The run context handed to methods, and the ``train`` / ``evaluate_run`` entry points."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from kdkit.config import (ENGINE_KEYS, base_config, dump_yaml, get_path, load_yaml, method_config_help,  # noqa: F401 - re-exported
                          resolve_method_config, write_config)
from kdkit.errors import ConfigError, KdkitError
from kdkit.engine import distributed as dist_utils
from kdkit.engine.checkpoint import atomic_write_text, derive_seed, load_checkpoint, seed_everything
from kdkit.engine.data import dataset_classes, split_train_val as _split_train_val
from kdkit.engine.trainer import Stage, StageResult, Trainer

__all__ = ["RunContext", "Method", "train", "evaluate_run", "resolve_method_config", "resolve_device"]


class Method:
    """Optional base class of methods (duck typing is enough).

    Subclasses implement ``default_config()`` (the declared keys: :func:`kdkit.base_config` plus the
    method's own :class:`kdkit.ConfigKey` s) and
    ``run(ctx) -> summary``; ``evaluate(ctx) -> dict`` powers ``kdkit eval --run DIR``.
    ``component_sections`` maps extra config paths to registry kinds (see :mod:`kdkit.config`).
    """

    component_sections: dict[str, str] = {}

    @classmethod
    def default_config(cls) -> dict:
        return base_config()

    def run(self, ctx: "RunContext") -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, ctx: "RunContext") -> dict:
        raise KdkitError(f"method {ctx.config.get('method')!r} does not support 'kdkit eval'")


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
                 device: torch.device | None = None, resume: bool = False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.plugin_manager = plugin_manager
        self.hook = plugin_manager.hook if plugin_manager is not None else _NoHooks()
        self.device = device if device is not None else resolve_device(config.get("device", "auto"))
        self.rank = dist_utils.rank()
        self.world_size = dist_utils.world_size()
        self.is_main = self.rank == 0
        self.resume = resume
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.metrics_lines = 0
        self.stage_results: dict[str, StageResult] = {}
        self._log_file = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.run_dir / "train.log", "a", encoding="utf-8")
        self._prepare_metrics()

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

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
        """On resume, cut ``metrics.jsonl`` back to what the newest checkpoint had written."""
        keep = 0
        ckpts = self.run_dir / "checkpoints"
        if self.resume and ckpts.is_dir():
            for last in ckpts.glob("*/last.pt"):
                try:
                    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # noqa: BLE001 - atomic writes make this a real corruption
                    raise KdkitError(f"cannot read checkpoint {last}: {exc}") from exc
                keep = max(keep, int(state.get("metrics_lines", 0)))
        dist_utils.barrier()
        if self.is_main and self.metrics_path.exists():
            lines = self.metrics_path.read_bytes().split(b"\n")
            complete = [ln for ln in lines[:-1]]  # a line without its newline is partial
            kept = complete[:keep] if self.resume else []
            if len(kept) != len(complete) or lines[-1]:
                atomic_write_text(self.metrics_path, "".join(ln.decode() + "\n" for ln in kept))
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
        section = dict(self.config["data"] if section is None else section)
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
            fraction = float(get_path(self.config, "data.val_fraction", 0.1))
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
        select_on = get_path(self.config, "checkpoint.select_on", "val")
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
        result = Trainer(self, stage).fit()
        self.stage_results[stage.name] = result
        return result

    def evaluate(self, model: torch.nn.Module, data, eval_fn=None, batch_size: int | None = None) -> dict:
        """``eval_fn(model, loader)`` (default top-1 + loss) on ``data`` outside any stage, in eval mode."""
        from kdkit.engine.data import make_eval_loader
        from kdkit.engine.trainer import classification_eval

        if isinstance(data, torch.utils.data.Dataset):
            bs = batch_size or int(get_path(self.config, "train.eval_batch_size", 256) or 256)
            data = make_eval_loader(data, bs, int(get_path(self.config, "data.num_workers", 0) or 0))
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
        """Load ``checkpoints/<stage_name>/best.pt`` into ``model``; returns the checkpoint's metrics."""
        path = self.run_dir / "checkpoints" / stage_name / "best.pt"
        if not path.exists():
            raise KdkitError(f"no best checkpoint for stage {stage_name!r} in {self.run_dir} ({path} is missing)")
        state = load_checkpoint(path, map_location=self.device)
        model.load_state_dict(state["model"])
        for k, sd in (state.get("extra_modules") or {}).items():
            if extra_modules and k in extra_modules:
                extra_modules[k].load_state_dict(sd)
        model.to(self.device)
        return dict(state.get("metrics") or {})


# --- entry points ---------------------------------------------------------------------------

def _manager():
    import kdkit

    return kdkit.get_plugin_manager()


def _method_class(manager, name: str):
    return manager.registry("methods").get(name).factory


def _default_run_dir(method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{method}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


def _configure_determinism(config: dict, device: torch.device) -> None:
    if config.get("deterministic", True):
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


def train(method: str | None = None, config_file: str | Path | None = None, sets: Iterable[str] = (),
          out: str | Path | None = None, resume: str | Path | None = None, print_config: bool = False,
          manager: Any = None) -> dict | str:
    """Resolve the config and run a method; returns the summary (or the YAML with ``print_config``).

    ``resume=RUN_DIR`` reads ``RUN_DIR/config.yaml`` and continues the run in place; it cannot be
    combined with ``config_file``/``sets``/``out``.
    """
    manager = manager or _manager()
    sets = list(sets or ())
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise KdkitError(f"--resume {run_dir}: not a kdkit run directory ({cfg_path} is missing)")
        if config_file is not None or sets or out is not None:
            raise KdkitError("--resume continues a run with its saved config; --config, --set and --out "
                             "cannot be combined with it")
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
            raise KdkitError(f"no method selected: use --plugin NAME (available: {names})")
        config = resolve_method_config(method, config_file, sets, manager)
        if print_config:
            return dump_yaml(config)
        run_dir = Path(out) if out is not None else None

    device = resolve_device(config.get("device", "auto"))
    with dist_utils.torchrun_process_group(device.type):
        if resume is None:
            if dist_utils.is_main():
                if run_dir is None:
                    run_dir = _default_run_dir(method)
                if (run_dir / "config.yaml").exists():
                    raise KdkitError(f"--out {run_dir} already holds a run; use --resume {run_dir} to continue it "
                                     "or choose another --out")
            run_dir = Path(dist_utils.broadcast_object(str(run_dir) if run_dir is not None else None))
        device = resolve_device(config.get("device", "auto"))
        _configure_determinism(config, device)
        manager.hook.kdkit_configure(config=config, run_dir=run_dir if dist_utils.is_main() else None)
        ctx = RunContext(config, run_dir, manager, device, resume=resume is not None)
        if ctx.is_main and resume is None:
            write_config(config, run_dir / "config.yaml")
        ctx.log(f"kdkit: method {method}, run dir {run_dir}, device {device}"
                + (f", {ctx.world_size} processes" if ctx.world_size > 1 else "")
                + (" (resumed)" if resume is not None else ""))
        cls = _method_class(manager, method)
        seed_everything(derive_seed(ctx.seed, "run"))
        t0 = time.perf_counter()
        summary = cls().run(ctx)
        if not isinstance(summary, dict):
            raise KdkitError(f"method {method!r}: run() must return a dict summary, got {type(summary).__name__}")
        if ctx.is_main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        dist_utils.barrier()
        ctx.log(f"kdkit: finished in {time.perf_counter() - t0:.1f}s; summary in {run_dir / 'summary.json'}")
        manager.hook.kdkit_run_finished(run_dir=run_dir if ctx.is_main else None, summary=summary)
        ctx.close()
        return summary


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
    saved = load_yaml(cfg_path)
    method = saved.get("method")
    if not method:
        raise KdkitError(f"--run {run_dir}: config.yaml names no method")
    config = resolve_method_config(method, cfg_path, (), manager)
    if device:
        config["device"] = device
    ctx = RunContext.__new__(RunContext)
    # a read-only context: no log file, no metrics truncation
    ctx.config, ctx.run_dir, ctx.plugin_manager, ctx.hook = config, run_dir, manager, manager.hook
    ctx.device, ctx.rank, ctx.world_size, ctx.is_main, ctx.resume = (
        resolve_device(config.get("device", "auto")), 0, 1, True, False)
    ctx.metrics_path, ctx.metrics_lines, ctx.stage_results, ctx._log_file = run_dir / "metrics.jsonl", 0, {}, None
    return ctx, _method_class(manager, method)()


def evaluate_run(run_dir: str | Path, manager: Any = None) -> dict:
    """Re-evaluate a finished run: the method's ``evaluate(ctx)`` on its saved config and checkpoints."""
    ctx, instance = open_run(run_dir, manager)
    if not hasattr(instance, "evaluate"):
        raise KdkitError(f"method {ctx.config['method']!r} does not support 'kdkit eval'")
    return instance.evaluate(ctx)
