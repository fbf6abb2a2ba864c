"""A stage's checkpoints: what ``checkpoints/<stage>/last.pt`` and ``best.pt`` hold, writing them
and restoring a :class:`~kdkit.engine.trainer.Trainer` from them (exact resume).

``last.pt`` is the whole training state after an epoch (weights, optimiser, schedule — any torch
scheduler through its ``state_dict()`` —, AMP scaler, RNG, the best epoch so far, the early-stop
counters, the ``metrics.jsonl`` lines written); it is rewritten atomically after
every epoch, the previous one kept as ``last.prev.pt`` (resume's fallback when ``last.pt`` is
unreadable), and once more with the :class:`~kdkit.engine.stage.StageResult` when the stage ends.
``best.pt`` holds the weights of the best epoch.  Both name their stage (``stage``) and their run
(``run_id``, :mod:`kdkit.engine.rundir`); resume refuses a checkpoint of another stage or run.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdkit.engine.checkpoint import (check_checkpoint_owner, checkpoint_fits, load_checkpoint, load_last_checkpoint,
                                    save_checkpoint)
from kdkit.engine.stage import StageResult
from kdkit.seeding import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from kdkit.engine.stage import Stage

__all__ = ["StageCheckpoints", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


class StageCheckpoints:
    """The checkpoint half of :class:`~kdkit.engine.trainer.Trainer` (its base class): saving and
    restoring the state below, which the trainer sets up and trains."""

    ctx: Any  # the TrainerHost: log(), metrics_lines, run_id, run_adopted
    options: Any  # TrainerOptions: config (stored in checkpoints)
    stage: "Stage"
    device: "torch.device"
    is_main: bool
    ckpt_dir: Path
    model: "nn.Module"
    extra_modules: dict
    optimizer: Any
    scheduler: Any
    scaler: Any
    epoch: int
    step: int
    epochs: int
    best: dict
    best_weights: dict | None
    final_metrics: dict
    early_stop: dict  # train.early_stop's counters
    _last_unreadable: bool  # resumed from last.prev.pt: do not rotate the bad last.pt over it
    _resumed_from: Path | None

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    def state_dict(self, finished: bool = False, result: dict | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "last",
            "stage": self.stage.name,
            "run_id": self.ctx.run_id,
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
            "early_stop": dict(self.early_stop),
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
        if state.get("early_stop") is not None:  # checkpoints from before train.early_stop have none
            self.early_stop = dict(state["early_stop"])

    def _resume_state(self):
        """A finished stage's :class:`StageResult` (its best weights loaded), the ``last.pt`` state of
        an unfinished one (``last.prev.pt``'s, with a warning, when ``last.pt`` is unreadable), or
        ``None`` for a fresh stage."""
        state, source = load_last_checkpoint(self.last_path, warn=self.ctx.log, check=self._check_owner)
        self._last_unreadable = source is not None and source != self.last_path
        self._resumed_from = source
        if state is not None and state.get("finished"):
            with checkpoint_fits(source, f"stage {self.stage.name!r}"):
                if not self._load_best_weights(state):
                    self._load_weights(state)
            self.ctx.log(f"[{self.stage.name}] already finished; loaded its best weights")
            r = state["result"]
            return StageResult(dict(r["best_metrics"]), int(r["best_epoch"]), dict(r["final_metrics"]),
                               dict(r.get("test_metrics") or {}), resumed_finished=True,
                               stopped_epoch=r.get("stopped_epoch"))
        return state

    def _check_owner(self, state: dict, path: Path) -> None:
        """Refuse a checkpoint copied from another stage or run."""
        check_checkpoint_owner(state, path, self.stage.name, self.ctx.run_id, legacy=self.ctx.run_adopted)

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
            state = load_checkpoint(best_path, map_location=self.device)
            self._check_owner(state, best_path)
            self._load_weights(state)
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
            "format": CHECKPOINT_FORMAT, "kind": "best", "stage": self.stage.name, "run_id": self.ctx.run_id,
            "epoch": self.best["epoch"],
            "step": self.step, "metrics": dict(metrics), "model": self.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "config": self.options.config,
        })
