"""The stage trainer: one model (plus extra modules) trained for some epochs with checkpoints.

A method describes each thing it trains as a :class:`~kdkit.engine.stage.Stage` and calls
``ctx.fit(stage)``; the :class:`Trainer` does the rest — seeding, DDP, AMP, evaluation on the held-out
validation split, ``metrics.jsonl``, atomic ``last``/``best`` checkpoints and exact resume
(:mod:`kdkit.engine.stage_checkpoints`), the optimiser and its schedule (:mod:`kdkit.engine.optim`)
and the lifecycle hooks.

One training step, from the epoch loop to ``optimizer.step()``, as the student stage of
``kdkit train --method kd`` runs it — six hops, one call deeper each, every one a named function or
method (``stage.step_fn`` is an object, the rest are found by their names):

0. ``Trainer._fit`` (this module) — the epoch loop, and inside it the batch loop;
1. ``Trainer.train_model_step`` (this module) — one micro-batch: ``stage.step_fn`` under autocast,
   the non-finite check, backward, and on the last micro-batch of the step (``train.accumulate``)
   ``optimizer.step()`` and the schedule's step;
2. ``DistillStep.__call__`` (``kdkit/distill/step.py``) — the stage's ``step_fn``: the teachers' logits
   (``DistillStep._outputs`` -> ``StudentTeachers.logits`` in ``kdkit/distill/stage.py`` -> the
   teacher cache's ``TeacherCache.__getitem__``, the teacher network or a ``LogitsTeacher``), the
   student's forward, the agreement check (``TeacherAgreement.observe``);
3. ``Distiller.forward`` (``kdkit/distill/distiller.py``) — ``alpha * CE + sum_i weight_i * term_i``;
4. ``TeacherCombiner.forward`` (``kdkit/distill/combine.py``) — a logit term over the teachers
   (``distill.combine``);
5. ``logit_term`` (``kdkit/distill/distiller.py``) — the term on one teacher's logits (or their mean);
6. the term's registered loss: ``KLDivLoss.__call__`` (``kdkit/losses.py``) for ``distill.loss: kl``.

Back in 1, the loss is backpropagated and ``optimizer.step()`` applies it.  Any other stage (a
teacher, the baseline) stops at hop 2: its ``step_fn`` is :func:`~kdkit.engine.stage.classification_step`.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from kdkit.config.settings import RunSettings, TrainSettings
from kdkit.config.view import thaw_config
from kdkit.errors import ConfigError, KdkitError
from kdkit.engine import distributed as dist_utils
from kdkit.engine.checkpoint import checkpoint_fits
from kdkit.engine.data import make_eval_loader, make_train_loader, to_device
from kdkit.engine.loop import amp_dtype, channels_last, check_early_stop, no_sync, watch_early_stop
from kdkit.engine.optim import build_optimizer, build_scheduler, param_groups, trainable, trainable_extra
from kdkit.engine.stage import Stage, StageResult, classification_eval, classification_step, freeze  # noqa: F401
from kdkit.engine.stage_checkpoints import CHECKPOINT_FORMAT, StageCheckpoints
from kdkit.files import atomic_write_text
from kdkit.seeding import derive_seed, seed_everything

__all__ = ["Stage", "StageResult", "Trainer", "TrainerOptions", "TrainerHost", "TrainingError", "DivergedError",
           "DIVERGED_FILE", "read_divergence", "freeze", "classification_step",
           "classification_eval", "CHECKPOINT_FORMAT"]

#: the record a run directory keeps of the non-finite loss that stopped it (rank 0 writes it):
#: ``{"status": "diverged", "stage", "epoch" (0-based, as in metrics.jsonl), "epochs" (the stage's),
#: "step", "loss" ("inf", "-inf" or "nan"), "checkpoint" (the last good last.pt, or null), "message"}``
DIVERGED_FILE = "diverged.json"


class TrainingError(KdkitError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


class DivergedError(TrainingError):
    """A non-finite loss stopped the run (now, or when it ran before: a resumed run that diverged is
    not trained into the same divergence again).  ``record`` is what ``RUN_DIR/diverged.json`` holds."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def read_divergence(run_dir: str | Path) -> dict | None:
    """The divergence record of a run directory (:data:`DIVERGED_FILE`), or ``None`` when it has none
    (or an unreadable one: the file is written atomically, so only a hand edit makes one)."""
    try:
        record = json.loads((Path(run_dir) / DIVERGED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "diverged" else None


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
                   save_best=run.checkpoint.save_best, config=thaw_config(config))


class TrainerHost(Protocol):
    """The little a :class:`Trainer` needs from its run (a :class:`~kdkit.engine.RunContext` is one)."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    run_dir: Path
    hook: Any  # the plugin manager's hook relay (lifecycle hooks)
    metrics_lines: int  # metrics.jsonl lines written (checkpointed for exact resume)
    run_id: str  # the run's id (kdkit.engine.rundir), stored in and checked against its checkpoints
    run_adopted: bool  # a run made before run ids: checkpoints without one pass on their stage
    config: dict

    def log(self, msg: str) -> None: ...

    def append_metrics(self, record: dict) -> None: ...



class Trainer(StageCheckpoints):
    """Runs one :class:`Stage`.  Lifecycle hooks receive it as ``trainer``.

    It takes a :class:`TrainerHost` (logging, metrics, hooks, device and ranks) and
    :class:`TrainerOptions` (default: from the host's config) — nothing else of the run.

    Live attributes: ``ctx`` (the host), ``options``, ``stage``, ``model`` (unwrapped: what checkpoints
    hold), ``train_model`` (``model``, DDP-wrapped and/or ``torch.compile``'d), ``extra_modules``,
    ``optimizer``, ``scheduler`` (stepped per optimiser step, or ``None`` when ``scheduler: none`` —
    then hooks may set learning rates freely), ``scaler`` (fp16's ``GradScaler``), ``amp_dtype``
    (the autocast dtype, ``None`` for fp32), ``epoch`` (next epoch to run / being run), ``step``
    (optimiser steps done), ``micro_batch`` (``(i, n)``: the batch loop is on micro-batch ``i`` of
    the ``n`` of an optimiser step), ``epochs``, ``device``, ``settings`` (the stage's
    :class:`~kdkit.config.settings.TrainSettings`), ``is_main``, ``run_dir``, ``best``
    (``{"value", "epoch", "metrics"}``), ``early_stop`` (``{"best", "bad_epochs", "stopped"}``).

    Gradient accumulation (``train.accumulate: N``): ``batch_size`` stays the micro-batch the loader
    yields; each optimiser step takes N of them (the epoch's last step the rest), every micro-batch's
    loss divided by the step's count of micro-batches, so for a mean loss over equal micro-batches
    the step's gradient is that of one batch N times larger.  Schedules and ``step`` count
    optimiser steps; ``train.loss`` is the mean over micro-batches.
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
        self.amp_dtype = amp_dtype(settings, self.device)
        self.amp = self.amp_dtype is not None
        self.micro_batch = (0, 1)
        # train.early_stop: the watched metric's best value, epochs since it improved, whether it stopped
        self.early_stop: dict = {"best": None, "bad_epochs": 0, "stopped": False}
        check_early_stop(settings.early_stop, stage, self.has_val)
        self._last_unreadable = False  # resumed from last.prev.pt: do not rotate the bad last.pt over it

    # --- building -------------------------------------------------------------------------

    def _build(self, steps_per_epoch: int) -> None:
        """The optimiser, its schedule, the AMP scaler and (under torchrun) the DDP wrapper."""
        if self.settings.channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights only; parameters stay the same objects
        groups = param_groups(self.model, self.extra_modules, self.stage.param_groups, self.stage.name)
        self.optimizer = build_optimizer(self.settings, groups, self.stage.name)
        self.scheduler = build_scheduler(self.optimizer, self.settings, self.epochs, steps_per_epoch)
        if self.amp_dtype == torch.float16:  # bf16 has fp32's range: only fp16 needs its loss scaled
            self.scaler = torch.amp.GradScaler(self.device.type)
        world = self.ctx.world_size
        if world > 1 and trainable(self.model):
            from torch.nn.parallel import DistributedDataParallel as DDP

            kwargs = {"find_unused_parameters": self.stage.find_unused_parameters}
            if self.device.type == "cuda":
                kwargs["device_ids"] = [self.device.index if self.device.index is not None else 0]
            self.train_model = DDP(self.model, **kwargs)
        else:
            self.train_model = self.model
        if self.settings.compile:  # only the training forward: checkpoints save self.model, without _orig_mod.
            self.train_model = torch.compile(self.train_model)

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
            with torch.no_grad(), self._autocast():
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

    @property
    def has_val(self) -> bool:
        return self.stage.val_data is not None and self.options.select_on != "last"

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
        """Resume or start the stage, then the training loop: per epoch one :meth:`train_model_step`
        per batch, then :meth:`_end_epoch` (validation, metrics, checkpoints); then :meth:`_finish`."""
        finished = self._resume_state()
        if isinstance(finished, StageResult):
            return finished
        before = read_divergence(self.run_dir)
        if before is not None and before.get("stage") == self.stage.name:
            # deterministic training would diverge again: the record stands until it is deleted
            raise DivergedError(
                f"this run diverged before, not trained again: {before.get('message', 'non-finite loss')} "
                f"(record: {Path(self.run_dir) / DIVERGED_FILE}; delete it to train stage "
                f"{self.stage.name!r} again from its last good checkpoint)", before)
        loader, sampler = self._train_loader()
        accumulate = self.settings.accumulate
        self._build(math.ceil(len(loader) / accumulate))
        if finished is not None:  # an unfinished stage: continue from its last.pt
            with checkpoint_fits(self._resumed_from, f"stage {self.stage.name!r}"):
                self.load_state_dict(finished)
            self.ctx.log(f"[{self.stage.name}] resuming at epoch {self.epoch + 1}/{self.epochs} (step {self.step})")
        while self.epoch < self.epochs and not self.early_stop["stopped"]:  # the epoch loop
            epoch, t0 = self.epoch, time.perf_counter()
            batches, bar = self._start_epoch(epoch, loader, sampler)
            loss_sum, sums, n_steps = 0.0, {}, 0
            step_loss, step_sums = 0.0, {}  # the micro-batches of the optimiser step (train.accumulate)
            for i, batch in enumerate(batches):  # the batch loop
                first = i - i % accumulate
                self.micro_batch = part, parts = i - first, min(accumulate, len(loader) - first)
                loss_value, logs = self.train_model_step(self._prepare(batch))
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                    step_sums[k] = step_sums.get(k, 0.0) + v
                loss_sum += loss_value
                step_loss += loss_value
                n_steps += 1
                if part < parts - 1:
                    continue
                if parts == 1:
                    self._after_step(epoch, loss_value, logs, bar)
                else:  # the hook sees the step's mean over its micro-batches
                    self._after_step(epoch, step_loss / parts, {k: v / parts for k, v in step_sums.items()}, bar)
                step_loss, step_sums = 0.0, {}
            if bar is not None:
                bar.close()
            n = max(n_steps, 1)
            self._end_epoch(epoch, loss_sum / n, {k: v / n for k, v in sums.items()}, t0)
        return self._finish()

    def _start_epoch(self, epoch: int, loader, sampler):
        """The epoch's reseed and shuffle, train mode, ``before_epoch_fn`` and the hook; returns the
        batches to iterate and the progress bar (``None`` without one)."""
        seed_everything(derive_seed(self.seed, "epoch", epoch))
        sampler.set_epoch(epoch)
        self._set_train(True)
        if self.stage.before_epoch_fn is not None:
            self.stage.before_epoch_fn(self, epoch)
        self.ctx.hook.kdkit_before_epoch(trainer=self, epoch=epoch)
        if not (self.options.progress and self.is_main and sys.stderr.isatty()):
            return loader, None
        from tqdm.auto import tqdm

        bar = tqdm(loader, desc=f"{self.stage.name} {epoch + 1}/{self.epochs}", leave=False, file=sys.stderr,
                   dynamic_ncols=True)
        return bar, bar

    def train_model_step(self, batch) -> tuple[float, dict]:
        """One micro-batch ``batch`` (on the device) of an optimiser step: ``stage.step_fn`` (default
        :func:`classification_step`) under autocast and backward; on the step's last micro-batch
        (:attr:`micro_batch`; each one with ``train.accumulate: 1``) ``optimizer.step()``, the
        schedule's step and ``after_step_fn``.  Returns the loss and the logs as floats, each the
        mean over ranks.  A non-finite loss stops the run (:class:`DivergedError`, recorded in the run
        directory's :data:`DIVERGED_FILE`)."""
        step_fn = self.stage.step_fn or classification_step
        part, parts = self.micro_batch
        with self._autocast():
            out = step_fn(self.train_model, batch)
        self._clear_taps()
        loss, logs = (out, {}) if isinstance(out, torch.Tensor) else out
        loss_value = dist_utils.all_reduce_mean(loss.detach().float()).item()
        if not math.isfinite(loss_value):
            self._diverged(loss_value)
        if part == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if parts > 1:
            loss = loss / parts  # the step's gradient: the mean over its micro-batches
        # DDP all-reduces once per step, in the last micro-batch's backward: the others add up locally
        sync = contextlib.nullcontext() if part == parts - 1 else no_sync(self.train_model)
        with sync:
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        if part < parts - 1:
            return loss_value, self._logs(logs)
        dist_utils.all_reduce_grads(trainable_extra(self.extra_modules))
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
        return loss_value, self._logs(logs)

    def _diverged(self, loss_value: float, what: str = "loss"):
        """Stop the run on a non-finite loss (``what``: ``loss``, or ``validation loss``): the last good
        checkpoint stays, rank 0 writes the divergence record (:data:`DIVERGED_FILE`), every rank raises
        :class:`DivergedError`."""
        kept = self.last_path if self.last_path.exists() else None
        record = {"status": "diverged", "stage": self.stage.name, "epoch": self.epoch, "epochs": self.epochs,
                  "step": self.step, "loss": str(loss_value), "checkpoint": str(kept) if kept else None}
        record["message"] = (
            f"non-finite {what} ({loss_value}) in stage {self.stage.name!r}, epoch {self.epoch + 1}, "
            f"step {self.step}; stopped — " +
            (f"last good checkpoint kept: {kept}" if kept else "no checkpoint of this stage was written yet"))
        if self.is_main:
            atomic_write_text(Path(self.run_dir) / DIVERGED_FILE, json.dumps(record, indent=2) + "\n")
        raise DivergedError(record["message"], record)

    def _logs(self, logs) -> dict:
        """A step's logs as floats, each the mean over ranks."""
        flogs = {k: _float(v) for k, v in (logs or {}).items()}
        if flogs and self.ctx.world_size > 1:  # per-rank values -> mean over ranks
            keys = sorted(flogs)
            mean = dist_utils.all_reduce_mean(torch.tensor([flogs[k] for k in keys], dtype=torch.float64,
                                                           device=self.device))
            flogs = dict(zip(keys, mean.tolist()))
        return flogs

    def _autocast(self):
        """Autocast in ``train.precision`` (disabled for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _prepare(self, batch):
        """``batch`` on the device; its 4-D float tensors channels_last with ``train.channels_last``."""
        batch = to_device(batch, self.device)
        return channels_last(batch) if self.settings.channels_last else batch

    def _after_step(self, epoch: int, loss_value: float, logs: dict, bar) -> None:
        """The ``kdkit_after_step`` hook, the progress bar and the ``logging.log_every`` line."""
        step = self.step - 1
        self.ctx.hook.kdkit_after_step(trainer=self, step=step, loss=loss_value, logs=logs)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.4f}")
        log_every = self.options.log_every
        if log_every and self.is_main and step % log_every == 0:
            self.ctx.log(f"[{self.stage.name}] epoch {epoch + 1} step {step} loss {loss_value:.4f}")

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
            val_loss = val_metrics.get("loss")
            if isinstance(val_loss, float) and not math.isfinite(val_loss):
                # weights that give non-finite outputs train on but are a failed run (train.lr=1000 ended
                # with val.loss=nan and exit 0); the epoch is not recorded, its checkpoint not written
                self._diverged(val_loss, "validation loss")
            record.update({f"val.{k}": v for k, v in val_metrics.items()})
            record.update(watch_early_stop(self.settings.early_stop, self.early_stop, val_metrics, stage))
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
        if self.early_stop["stopped"]:
            es = self.settings.early_stop
            ctx.log(f"[{stage.name}] early stop after epoch {epoch + 1}: val.{es.metric or stage.select_metric} "
                    f"has not improved by {es.min_delta:g} for {es.patience} epoch(s)")
        ctx.hook.kdkit_after_epoch(trainer=self, epoch=epoch, metrics=dict(record))

    def _clear_taps(self) -> None:
        for taps in self.stage.taps:  # no tapped activation outlives the step (or evaluation)
            taps.pop()


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
        stopped = self.epoch - 1 if self.early_stop["stopped"] else None
        result = StageResult(dict(self.best["metrics"]), int(self.best["epoch"]), dict(self.final_metrics),
                             test_metrics, stopped_epoch=stopped)
        self._save("last.pt", self.state_dict(finished=True, result=result.as_dict()))
        dist_utils.barrier()
        if test_metrics:
            ctx.log(f"[{stage.name}] best epoch {result.best_epoch + 1}: "
                    + " ".join(f"test.{k}={v:.4g}" for k, v in test_metrics.items()))
        return result
