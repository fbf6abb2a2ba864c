"""kdkit-tensorboard: TensorBoard event files written from kdkit's lifecycle hooks only.

Built-in plugin (entry point ``tensorboard`` in the ``kdkit`` group).  It uses nothing but the
public plugin API — ``kdkit.hookimpl`` and the lifecycle hooks — which is the point: a real
logger needs no access to the trainer's internals beyond what the hooks hand over.

Enable with the config key ``logging.tensorboard: true`` (``--set logging.tensorboard=true``) or
the environment variable ``KDKIT_TENSORBOARD=1``.  Event files go to
``<run_dir>/tensorboard/<stage>/``, rank 0 only.  Needs the optional extra
``pip install kdkit[tensorboard]``; without it an enabled logger prints one warning and stays off.

What is written:

* ``kdkit_configure`` — opens the log directory; the resolved config as a text summary;
* ``kdkit_after_step`` — ``train/loss`` and every ``train/<log>`` the method reports, per step;
* ``kdkit_after_evaluation`` — every ``val.*`` metric as ``val/<name>``, per epoch;
* ``kdkit_after_epoch`` — the learning rate of each parameter group and epoch means;
* ``kdkit_run_finished`` — the flattened summary as scalars ``summary/<key>``; files closed.
"""
from __future__ import annotations

import os
import sys

import kdkit

__version__ = "0.1.0"

ENV_ENABLE = "KDKIT_TENSORBOARD"


class _State:
    def __init__(self):
        self.enabled = False
        self.run_dir = None
        self.writers: dict = {}
        self.config_text = None

    def writer(self, stage: str):
        w = self.writers.get(stage)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter

            w = SummaryWriter(log_dir=str(self.run_dir / "tensorboard" / stage))
            if self.config_text and not self.writers:
                w.add_text("config", self.config_text, 0)
            self.writers[stage] = w
        return w

    def close(self):
        for w in self.writers.values():
            w.flush()
            w.close()
        self.writers = {}


_state = _State()


def _env_enabled() -> bool:
    return os.environ.get(ENV_ENABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + "/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield key, float(v)


@kdkit.hookimpl
def kdkit_configure(config, run_dir):
    _state.close()
    _state.__init__()
    wanted = bool(config["logging"]["tensorboard"]) or _env_enabled()  # a resolved config: base_config's key
    if not wanted or run_dir is None:  # disabled, or not rank 0
        return
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        print("kdkit: warning: logging.tensorboard is on but tensorboard is not installed "
              "(pip install kdkit[tensorboard]); not logging", file=sys.stderr)
        return
    import pathlib

    import yaml

    _state.enabled = True
    _state.run_dir = pathlib.Path(run_dir)
    _state.config_text = "```\n" + yaml.safe_dump(config, sort_keys=False) + "```"


@kdkit.hookimpl
def kdkit_before_epoch(trainer, epoch):
    if _state.enabled and trainer.is_main:
        _state.writer(trainer.stage.name).add_scalar("epoch", epoch, trainer.step)


@kdkit.hookimpl
def kdkit_after_step(trainer, step, loss, logs):
    if not (_state.enabled and trainer.is_main):
        return
    w = _state.writer(trainer.stage.name)
    w.add_scalar("train/loss", loss, step)
    for k, v in logs.items():
        w.add_scalar(f"train/{k}", v, step)


@kdkit.hookimpl
def kdkit_after_evaluation(trainer, epoch, metrics):
    if not (_state.enabled and trainer.is_main):
        return
    w = _state.writer(trainer.stage.name)
    for k, v in metrics.items():
        if k.startswith("val.") and isinstance(v, (int, float)):
            w.add_scalar("val/" + k[4:], v, epoch + 1)


@kdkit.hookimpl
def kdkit_after_epoch(trainer, epoch, metrics):
    if not (_state.enabled and trainer.is_main):
        return
    w = _state.writer(trainer.stage.name)
    for i, group in enumerate(trainer.optimizer.param_groups):
        w.add_scalar(f"lr/group{i}", group["lr"], epoch + 1)
    for k, v in metrics.items():
        if k.startswith("train.") and isinstance(v, (int, float)):
            w.add_scalar("epoch/" + k[6:], v, epoch + 1)
    w.flush()


@kdkit.hookimpl
def kdkit_run_finished(run_dir, summary):
    if not _state.enabled or run_dir is None:
        return
    w = _state.writer("summary")
    for key, value in _flatten(summary):
        w.add_scalar(f"summary/{key}", value, 0)
    _state.close()
    _state.enabled = False
