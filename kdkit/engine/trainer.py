"""The stage trainer: one model (plus extra modules) trained for some epochs with checkpoints.

A method describes each thing it trains as a :class:`Stage` and calls ``ctx.fit(stage)``; the
:class:`Trainer` does the rest — seeding, DDP, AMP, evaluation on the held-out validation split,
``metrics.jsonl``, atomic ``last``/``best`` checkpoints, exact resume and the lifecycle hooks.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdkit.config.settings import RunSettings, TrainSettings
from kdkit.errors import ConfigError, KdkitError
from kdkit.engine import distributed as dist_utils
from kdkit.engine.checkpoint import checkpoint_fits, load_checkpoint, load_last_checkpoint, save_checkpoint
from kdkit.engine.data import make_eval_loader, make_train_loader, to_device
from kdkit.seeding import capture_rng_state, derive_seed, restore_rng_state, seed_everything

__all__ = ["Stage", "StageResult", "Trainer", "TrainerOptions", "TrainerHost", "TrainingError", "freeze",
           "classification_step",
           "classification_eval", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


class TrainingError(KdkitError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter; returns ``model``.

    Use it for teachers: a frozen module is never wrapped in DDP, never put back in train mode by
    the trainer (only ``stage.model`` and ``stage.extra_modules`` are) and gets no gradients.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["image"] if "image" in batch else batch["input"], batch["label"]
    return batch[0], batch[1]


def classification_step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    """Default ``step_fn``: cross-entropy of ``model(x)`` against ``y`` for batches ``(x, y, ...)``."""
    x, y = _split_batch(batch)
    logits = model(x)
    return F.cross_entropy(logits, y), {}


@torch.no_grad()
def classification_eval(model: nn.Module, loader, entropy: bool = False) -> dict:
    """Default ``eval_fn``: ``{"top1": percent, "loss": mean cross-entropy}`` over ``loader``, and with
    ``entropy=True`` the mean entropy (nats) of the softmax (``functools.partial`` it into a stage)."""
    correct, total, loss_sum, entropy_sum = 0, 0, 0.0, 0.0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for batch in loader:
        batch = to_device(batch, device)
        x, y = _split_batch(batch)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        if entropy:
            logp = torch.log_softmax(logits, dim=-1)
            entropy_sum += float(-(logp.exp() * logp).sum().item())
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    total = max(total, 1)
    metrics = {"top1": 100.0 * correct / total, "loss": loss_sum / total}
    if entropy:
        metrics["entropy"] = entropy_sum / total
    return metrics


@dataclass
class Stage:
    """Everything ``ctx.fit`` needs to train one model.

    :param name: unique in the run (``"teacher.resnet20"``, ``"student"``); names the checkpoint
        folder ``checkpoints/<name>/`` and the ``stage`` field of ``metrics.jsonl``.
    :param model: the ``nn.Module`` trained (wrapped in DDP under torchrun when it has trainable
        parameters; ``step_fn`` receives the wrapped module, everything else the plain one).
    :param train_data: a ``Dataset`` (shuffled by a seeded ``DistributedSampler``).
    :param val_data: held-out validation data: a ``Dataset`` (batched by the trainer), any other
        object (passed unchanged to ``eval_fn``) or ``None`` (no evaluation; best = last).
    :param step_fn: ``step_fn(model, batch) -> (loss, logs)``; ``batch`` is on the device,
        ``loss`` a scalar tensor, ``logs`` a ``dict[str, float | Tensor]`` averaged per epoch into
        ``train.<key>``.  Default: cross-entropy on ``(x, y, ...)``.
    :param eval_fn: ``eval_fn(model, loader_or_val_data) -> dict[str, float]`` (runs under
        ``torch.no_grad`` with the model in eval mode).  Default: ``{"top1", "loss"}``.
    :param epochs: number of epochs; ``None`` uses ``optimizer["epochs"]``.
    :param optimizer: optimisation settings, a ``train`` section (:func:`kdkit.config.train_section`):
        ``batch_size``, ``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``scheduler``, ...;
        missing keys come from the run config's ``train`` section.
    :param extra_modules: other state trained or updated with the model (learnable embeddings,
        combination-rule statistics as buffers); saved in checkpoints, trainable parameters join
        the optimizer and their gradients are averaged across ranks.
    :param param_groups: ``param_groups(model, extra_modules) -> list[dict]`` (torch optimizer
        groups with per-group overrides); default one group with all trainable parameters.
    :param before_epoch_fn: ``before_epoch_fn(trainer, epoch)`` at the start of every epoch (after
        the epoch's reseed, before the hook), e.g. recompute per-teacher weights.
    :param after_step_fn: ``after_step_fn(trainer, step)`` after every optimiser step, e.g.
        re-normalise embeddings.
    :param test_data: evaluated once with the best weights when the stage ends
        (``StageResult.test_metrics``, a ``test.*`` line in ``metrics.jsonl``).
    :param select_metric / select_mode: the validation metric that picks ``best.pt``
        (``"top1"``/``"max"``; ``"loss"``/``"min"``; ``"map"``/``"max"`` ...).
    :param taps: :class:`kdkit.distill.FeatureTaps` on the student or the teachers; attached when
        the stage starts training and removed when it ends (also when it fails), so ``step_fn`` only
        calls their ``pop()``.
    """

    name: str
    model: nn.Module
    train_data: Dataset
    val_data: Any = None
    step_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]] | None = None
    eval_fn: Callable[[nn.Module, Any], dict] | None = None
    epochs: int | None = None
    optimizer: dict = field(default_factory=dict)
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    param_groups: Callable[[nn.Module, dict], list[dict]] | None = None
    before_epoch_fn: Callable[["Trainer", int], None] | None = None
    after_step_fn: Callable[["Trainer", int], None] | None = None
    test_data: Any = None
    select_metric: str = "top1"
    select_mode: str = "max"
    collate_fn: Callable | None = None
    find_unused_parameters: bool = False
    taps: list = field(default_factory=list)


@dataclass
class StageResult:
    """What ``ctx.fit`` returns.  Metric dicts have un-prefixed keys (``{"top1": ..., "loss": ...}``)."""

    best_metrics: dict
    best_epoch: int
    final_metrics: dict
    test_metrics: dict = field(default_factory=dict)
    resumed_finished: bool = False  # True when the stage had already finished (resume)

    def as_dict(self) -> dict:
        return {"best_metrics": dict(self.best_metrics), "best_epoch": self.best_epoch,
                "final_metrics": dict(self.final_metrics), "test_metrics": dict(self.test_metrics)}


def _float(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().item())
    return float(v)


@dataclass(frozen=True)
class TrainerOptions:
    """What a :class:`Trainer` takes from the run's config, resolved once (:meth:`from_config`): the
    declared values only (:mod:`kdkit.config.settings`), no defaults of its own."""

    train: TrainSettings  # the run's ``train`` section; ``Stage.optimizer`` overrides it
    seed: int
    num_workers: int
    progress: bool  # tqdm bars (rank 0, on a terminal)
    log_every: int  # a log line every N steps (0: per epoch only)
    select_on: str  # "last": no validation, best = last
    save_best: bool  # False: best weights kept in memory and in last.pt, no best.pt
    config: dict = field(default_factory=dict)  # stored in checkpoints

    @classmethod
    def from_config(cls, config: dict) -> "TrainerOptions":
        """From a resolved config (:func:`kdkit.config.resolve_method_config`)."""
        run = RunSettings.from_config(config)
        return cls(train=run.train, seed=run.seed, num_workers=run.data.num_workers, progress=run.logging.progress,
                   log_every=run.logging.log_every, select_on=run.checkpoint.select_on,
                   save_best=run.checkpoint.save_best, config=config)


class TrainerHost(Protocol):
    """The little a :class:`Trainer` needs from its run (a :class:`~kdkit.engine.RunContext` is one)."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    run_dir: Path
    hook: Any  # the plugin manager's hook relay (lifecycle hooks)
    metrics_lines: int  # metrics.jsonl lines written (checkpointed for exact resume)
    config: dict

    def log(self, msg: str) -> None: ...

    def append_metrics(self, record: dict) -> None: ...


class Trainer:
    """Runs one :class:`Stage`.  Lifecycle hooks receive it as ``trainer``.

    It takes a :class:`TrainerHost` (logging, metrics, hooks, device and ranks) and
    :class:`TrainerOptions` (default: from the host's config) — nothing else of the run.

    Live attributes: ``ctx`` (the host), ``options``, ``stage``, ``model`` (unwrapped), ``train_model`` (DDP-wrapped or
    ``model``), ``extra_modules``, ``optimizer``, ``scheduler`` (``LambdaLR`` stepped per
    iteration, or ``None`` when ``scheduler: none`` — then hooks may set learning rates freely),
    ``scaler`` (CUDA AMP) , ``epoch`` (next epoch to run / being run), ``step`` (optimiser steps
    done), ``epochs``, ``device``, ``settings`` (the stage's :class:`~kdkit.config.settings.TrainSettings`),
    ``is_main``, ``run_dir``, ``best`` (``{"value", "epoch", "metrics"}``).
    """

    def __init__(self, ctx: TrainerHost, stage: Stage, options: TrainerOptions | None = None):
        self.ctx = ctx
        self.options = options if options is not None else TrainerOptions.from_config(ctx.config)
        self.stage = stage
        self.device = ctx.device
        self.is_main = ctx.is_main
        self.run_dir = ctx.run_dir
        settings = self.options.train.replace(stage.optimizer, f"stage {stage.name}: optimizer")
        self.settings = settings
        self.epochs = int(stage.epochs if stage.epochs is not None else settings.epochs)
        if stage.select_mode not in ("max", "min"):
            raise ConfigError(f"stage {stage.name}: select_mode must be 'max' or 'min', got {stage.select_mode!r}")
        self.seed = derive_seed(self.options.seed, "stage", stage.name)
        self.ckpt_dir = Path(ctx.run_dir) / "checkpoints" / stage.name
        self.model = stage.model.to(self.device)
        self.extra_modules = {k: m.to(self.device) for k, m in (stage.extra_modules or {}).items()}
        self.epoch = 0
        self.step = 0
        self.best: dict = {"value": None, "epoch": -1, "metrics": {}}
        # With ``checkpoint.save_best: false`` no best.pt is written: the best epoch's weights are
        # kept here (and in last.pt, for resume) so the test split is still evaluated on them.
        self.best_weights: dict | None = None
        self.final_metrics: dict = {}
        self.train_model: nn.Module = self.model
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler = None
        self.amp = settings.amp and self.device.type == "cuda"
        self._last_unreadable = False  # resumed from last.prev.pt: do not rotate the bad last.pt over it

    # --- building -------------------------------------------------------------------------

    def _trainable(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def _extra_params(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for m in self.extra_modules.values():
            for p in self._trainable(m):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _build(self, steps_per_epoch: int) -> None:
        s = self.settings
        if self.stage.param_groups is not None:
            groups = list(self.stage.param_groups(self.model, self.extra_modules))
        else:
            model_params = self._trainable(self.model)
            ids = {id(p) for p in model_params}
            groups = [{"params": model_params + [p for p in self._extra_params() if id(p) not in ids]}]
        groups = [g for g in groups if list(g["params"])]
        if not groups:
            raise KdkitError(f"stage {self.stage.name}: nothing to train (no parameter requires grad)")
        name, lr, wd = s.optimizer, s.lr, s.weight_decay
        if name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=wd)
        elif name == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=wd)
        elif name == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
        else:
            raise ConfigError(f"config key train.optimizer: unknown optimizer {name!r}; valid: sgd, adam, adamw")
        self.scheduler = self._build_scheduler(steps_per_epoch)
        if self.amp:
            self.scaler = torch.amp.GradScaler("cuda")
        world = self.ctx.world_size
        if world > 1 and self._trainable(self.model):
            from torch.nn.parallel import DistributedDataParallel as DDP

            kwargs = {"find_unused_parameters": self.stage.find_unused_parameters}
            if self.device.type == "cuda":
                kwargs["device_ids"] = [self.device.index if self.device.index is not None else 0]
            self.train_model = DDP(self.model, **kwargs)
        else:
            self.train_model = self.model

    def _build_scheduler(self, spe: int):
        s = self.settings
        kind = s.scheduler
        warm = int(round(s.warmup_epochs * spe))
        total = max(1, self.epochs * spe)
        gamma, milestones, step_size = s.gamma, sorted(s.milestones), s.step_size
        if kind in ("none", "constant") and warm == 0:
            return None
        if kind not in ("none", "constant", "cosine", "step", "multistep"):
            raise ConfigError(f"config key train.scheduler: unknown scheduler {kind!r}; "
                              "valid: none, cosine, step, multistep")

        def factor(it: int) -> float:
            if warm and it < warm:
                return (it + 1) / warm
            epoch = it // spe
            if kind == "cosine":
                progress = (it - warm) / max(1, total - warm)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            if kind == "multistep":
                return gamma ** sum(1 for m in milestones if epoch >= m)
            if kind == "step":
                return gamma ** (epoch // step_size)
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # --- state ------------------------------------------------------------------------------

    def state_dict(self, finished: bool = False, result: dict | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "last",
            "stage": self.stage.name,
            "epoch": self.epoch,
            "step": self.step,
            "epochs": self.epochs,
            "finished": finished,
            "result": result,
            "model": self.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng_state(),
            "best": {"value": self.best["value"], "epoch": self.best["epoch"], "metrics": dict(self.best["metrics"])},
            "final_metrics": dict(self.final_metrics),
            "best_weights": self.best_weights,
            "metrics_lines": self.ctx.metrics_lines,
            "config": self.options.config,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for k, sd in (state.get("extra_modules") or {}).items():
            if k in self.extra_modules:
                self.extra_modules[k].load_state_dict(sd)
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state.get("rng") or {})
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        best = state.get("best") or {}
        self.best = {"value": best.get("value"), "epoch": best.get("epoch", -1), "metrics": dict(best.get("metrics") or {})}
        self.final_metrics = dict(state.get("final_metrics") or {})
        self.best_weights = state.get("best_weights")

    def _load_weights(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for k, sd in (state.get("extra_modules") or {}).items():
            if k in self.extra_modules:
                self.extra_modules[k].load_state_dict(sd)

    def _weights(self) -> dict:
        """The model's and extra modules' weights, as a detached CPU copy."""
        def copy(sd):
            return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

        return {"model": copy(self.model.state_dict()),
                "extra_modules": {k: copy(m.state_dict()) for k, m in self.extra_modules.items()}}

    def _load_best_weights(self, last_state: dict | None = None) -> bool:
        """Load the best epoch's weights (best.pt, else the in-memory copy); False when neither exists."""
        best_path = self.ckpt_dir / "best.pt"
        if best_path.exists():
            self._load_weights(load_checkpoint(best_path, map_location=self.device))
            return True
        best = self.best_weights if last_state is None else last_state.get("best_weights")
        if best is not None:
            self._load_weights(best)
            return True
        return False

    def _save(self, name: str, obj: dict) -> None:
        if self.is_main:
            # last.pt keeps its previous version (resume's fallback), unless the current one is unreadable
            keep_previous = name == "last.pt" and not self._last_unreadable
            save_checkpoint(obj, self.ckpt_dir / name, keep_previous=keep_previous)
            if name == "last.pt":
                self._last_unreadable = False

    def _save_best(self, metrics: dict) -> None:
        self._save("best.pt", {
            "format": CHECKPOINT_FORMAT, "kind": "best", "stage": self.stage.name, "epoch": self.best["epoch"],
            "step": self.step, "metrics": dict(metrics), "model": self.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "config": self.options.config,
        })

    # --- evaluation -------------------------------------------------------------------------

    def _set_train(self, mode: bool) -> None:
        self.model.train(mode)
        for m in self.extra_modules.values():
            m.train(mode)

    def evaluate(self, data: Any) -> dict:
        """Run ``eval_fn`` on ``data`` on rank 0 (others receive rank 0's result)."""
        metrics: dict = {}
        if self.is_main:
            eval_fn = self.stage.eval_fn or classification_eval
            if isinstance(data, Dataset):
                bs = self.settings.eval_batch_size
                data = make_eval_loader(data, bs, self.options.num_workers,
                                        self.stage.collate_fn)
            was = self.model.training
            self._set_train(False)
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
                metrics = {k: _float(v) for k, v in eval_fn(self.model, data).items()}
            self._clear_taps()
            self._set_train(was)
        return dist_utils.broadcast_object(metrics)

    def _is_better(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best["value"] is None:
            return True
        return value > self.best["value"] if self.stage.select_mode == "max" else value < self.best["value"]

    # --- main loop --------------------------------------------------------------------------

    def fit(self) -> StageResult:
        try:
            for taps in self.stage.taps:
                taps.attach()
            return self._fit()
        finally:
            for taps in self.stage.taps:
                taps.remove()

    def _fit(self) -> StageResult:
        finished = self._resume_state()
        if isinstance(finished, StageResult):
            return finished
        loader, sampler = self._train_loader()
        self._build(len(loader))
        if finished is not None:  # an unfinished stage: continue from its last.pt
            with checkpoint_fits(self._resumed_from, f"stage {self.stage.name!r}"):
                self.load_state_dict(finished)
            self.ctx.log(f"[{self.stage.name}] resuming at epoch {self.epoch + 1}/{self.epochs} (step {self.step})")
        while self.epoch < self.epochs:
            t0 = time.perf_counter()
            mean_loss, mean_logs = self._train_epoch(self.epoch, loader, sampler)
            self._end_epoch(self.epoch, mean_loss, mean_logs, t0)
        return self._finish()

    # --- the steps of fit ------------------------------------------------------------------

    def _resume_state(self):
        """A finished stage's :class:`StageResult` (its best weights loaded), the ``last.pt`` state of
        an unfinished one (``last.prev.pt``'s, with a warning, when ``last.pt`` is unreadable), or
        ``None`` for a fresh stage."""
        state, source = load_last_checkpoint(self.last_path, warn=self.ctx.log)
        self._last_unreadable = source is not None and source != self.last_path
        self._resumed_from = source
        if state is not None and state.get("finished"):
            with checkpoint_fits(source, f"stage {self.stage.name!r}"):
                if not self._load_best_weights(state):
                    self._load_weights(state)
            self.ctx.log(f"[{self.stage.name}] already finished; loaded its best weights")
            r = state["result"]
            return StageResult(dict(r["best_metrics"]), int(r["best_epoch"]), dict(r["final_metrics"]),
                               dict(r.get("test_metrics") or {}), resumed_finished=True)
        return state

    def _train_loader(self):
        batch_size = self.settings.batch_size
        world = self.ctx.world_size
        if batch_size % world:
            raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes ({world})")
        loader, sampler = make_train_loader(self.stage.train_data, batch_size // world, self.seed, self.ctx.rank,
                                            world, self.options.num_workers, self.stage.collate_fn)
        if len(loader) == 0:
            raise KdkitError(f"stage {self.stage.name}: the training data is empty")
        return loader, sampler

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def has_val(self) -> bool:
        return self.stage.val_data is not None and self.options.select_on != "last"

    def _train_epoch(self, epoch: int, loader, sampler) -> tuple[float, dict]:
        """One epoch of optimiser steps; returns the epoch's mean loss and mean logs."""
        stage, ctx = self.stage, self.ctx
        seed_everything(derive_seed(self.seed, "epoch", epoch))
        sampler.set_epoch(epoch)
        self._set_train(True)
        if stage.before_epoch_fn is not None:
            stage.before_epoch_fn(self, epoch)
        ctx.hook.kdkit_before_epoch(trainer=self, epoch=epoch)
        progress = self.options.progress and self.is_main and sys.stderr.isatty()
        log_every = self.options.log_every
        loss_sum, sums = 0.0, {}
        n_steps = 0
        bar = None
        iterator = loader
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(loader, desc=f"{stage.name} {epoch + 1}/{self.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True)
            iterator = bar
        for batch in iterator:
            loss_value, logs = self._optimizer_step(to_device(batch, self.device), epoch)
            step = self.step - 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            loss_sum += loss_value
            n_steps += 1
            ctx.hook.kdkit_after_step(trainer=self, step=step, loss=loss_value, logs=logs)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if log_every and self.is_main and step % log_every == 0:
                ctx.log(f"[{stage.name}] epoch {epoch + 1} step {step} loss {loss_value:.4f}")
        if bar is not None:
            bar.close()
        return loss_sum / max(n_steps, 1), {k: v / max(n_steps, 1) for k, v in sums.items()}

    def _optimizer_step(self, batch, epoch: int) -> tuple[float, dict]:
        """Forward, backward and update on one batch; returns the loss (mean over ranks) and the
        step's logs as floats (mean over ranks).  A non-finite loss stops the stage."""
        with torch.autocast(self.device.type, enabled=self.amp):
            loss, logs = self.train_model_step(batch)
        loss_value = dist_utils.all_reduce_mean(loss.detach().float()).item()
        if not math.isfinite(loss_value):
            kept = self.last_path if self.last_path.exists() else None
            raise TrainingError(
                f"non-finite loss ({loss_value}) in stage {self.stage.name!r}, epoch {epoch + 1}, "
                f"step {self.step}; stopped — " +
                (f"last good checkpoint kept: {kept}" if kept else "no checkpoint of this stage was written yet"))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        dist_utils.all_reduce_grads(self._extra_params())
        clip = self.settings.grad_clip
        if clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        step = self.step
        self.step += 1
        if self.stage.after_step_fn is not None:
            self.stage.after_step_fn(self, step)
        flogs = {k: _float(v) for k, v in (logs or {}).items()}
        if flogs and self.ctx.world_size > 1:  # per-rank values -> mean over ranks
            keys = sorted(flogs)
            mean = dist_utils.all_reduce_mean(torch.tensor([flogs[k] for k in keys], dtype=torch.float64,
                                                           device=self.device))
            flogs = dict(zip(keys, mean.tolist()))
        return loss_value, flogs

    def _end_epoch(self, epoch: int, mean_loss: float, mean_logs: dict, t0: float) -> None:
        """Validation, the metrics line, best/last checkpoints and the end-of-epoch hooks."""
        stage, ctx = self.stage, self.ctx
        has_val = self.has_val
        record: dict = {"stage": stage.name, "epoch": epoch, "step": self.step,
                        "lr": float(self.optimizer.param_groups[0]["lr"]), "train.loss": mean_loss}
        for k, v in mean_logs.items():
            record[f"train.{k}"] = v
        val_metrics: dict = {}
        if has_val:
            val_metrics = self.evaluate(stage.val_data)
            record.update({f"val.{k}": v for k, v in val_metrics.items()})
        ctx.append_metrics(record)
        if has_val:
            ctx.hook.kdkit_after_evaluation(trainer=self, epoch=epoch, metrics=dict(record))
        self.final_metrics = dict(val_metrics)
        selected = val_metrics.get(stage.select_metric) if has_val else None
        if has_val and stage.select_metric not in val_metrics:
            raise KdkitError(f"stage {stage.name}: eval_fn returned no {stage.select_metric!r} "
                             f"(got {sorted(val_metrics)}) to select the best checkpoint on")
        if (not has_val) or self._is_better(selected):
            self.best = {"value": selected, "epoch": epoch, "metrics": dict(val_metrics)}
            if self.options.save_best or not has_val:
                self._save_best(val_metrics)
            else:
                self.best_weights = self._weights()
        self.epoch = epoch + 1
        self._save("last.pt", self.state_dict())
        dist_utils.barrier()
        dt = time.perf_counter() - t0
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith(("train.", "val.")))
        ctx.log(f"[{stage.name}] epoch {epoch + 1}/{self.epochs} {shown} ({dt:.1f}s)")
        ctx.hook.kdkit_after_epoch(trainer=self, epoch=epoch, metrics=dict(record))

    def _clear_taps(self) -> None:
        for taps in self.stage.taps:  # no tapped activation outlives the step (or evaluation)
            taps.pop()

    def train_model_step(self, batch):
        step_fn = self.stage.step_fn or classification_step
        out = step_fn(self.train_model, batch)
        self._clear_taps()
        if isinstance(out, torch.Tensor):
            return out, {}
        loss, logs = out
        return loss, logs or {}

    def _finish(self) -> StageResult:
        stage, ctx = self.stage, self.ctx
        dist_utils.barrier()
        self._load_best_weights()
        test_metrics: dict = {}
        if stage.test_data is not None:
            test_metrics = self.evaluate(stage.test_data)
            record = {"stage": stage.name, "epoch": self.best["epoch"], "step": self.step, "split": "test"}
            record.update({f"test.{k}": v for k, v in test_metrics.items()})
            ctx.append_metrics(record)
        result = StageResult(dict(self.best["metrics"]), int(self.best["epoch"]), dict(self.final_metrics),
                             test_metrics)
        self._save("last.pt", self.state_dict(finished=True, result=result.as_dict()))
        dist_utils.barrier()
        if test_metrics:
            ctx.log(f"[{stage.name}] best epoch {result.best_epoch + 1}: "
                    + " ".join(f"test.{k}={v:.4g}" for k, v in test_metrics.items()))
        return result
