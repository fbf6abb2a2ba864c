"""A plugin used by the engine tests (loaded with --plugins-module / KDKIT_PLUGINS).

* registers ``mlp``, a BatchNorm-free teacher/student (for exact DDP comparisons);
* ``KDTEST_KILL=<hook>:<stage>:<epoch>[:<step>]`` SIGKILLs the process from inside that hook
  (``before_epoch`` = between stages when epoch is 0 of the next stage, ``after_evaluation`` =
  after the metrics line is written but before the checkpoint, ``after_step`` = mid-epoch);
* ``KDTEST_NAN=<stage>:<epoch>`` makes the ``nanloss`` loss return NaN from that epoch on;
* ``KDTEST_DUMP=<dir>`` saves every rank's stage weights after every epoch (before any best.pt is
  reloaded) to ``<dir>/rank<r>/<stage>/<epoch>.pt``.
"""
from __future__ import annotations

import os
import signal

import kdkit


def _mlp(num_classes: int, hidden: int = 32, image_size: int = 32, in_channels: int = 3, **_):
    import torch.nn as nn

    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(),
                         nn.Linear(in_channels * (image_size // 4) ** 2, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@kdkit.hookimpl
def kdkit_register_teachers(register):
    register("mlp", _mlp, description="BN-free MLP (tests)")


@kdkit.hookimpl
def kdkit_register_students(register):
    register("mlp", _mlp, description="BN-free MLP (tests)")


_state = {"stage": None, "epoch": None}


class NanLoss:
    def __call__(self, inputs):
        import torch.nn.functional as F

        spec = os.environ.get("KDTEST_NAN", "")
        loss = F.mse_loss(inputs.student_logits.float(), inputs.teacher_logits.float())
        if spec:
            stage, epoch = spec.split(":")
            if _state["stage"] == stage and _state["epoch"] is not None and _state["epoch"] >= int(epoch):
                return loss * float("nan")
        return loss


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("nanloss", NanLoss, description="MSE that turns NaN on request (tests)")


def _kill(hook: str, stage: str, epoch: int, step: int | None = None) -> None:
    spec = os.environ.get("KDTEST_KILL", "")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != hook or parts[1] != stage or int(parts[2]) != epoch:
        return
    if len(parts) > 3 and step != int(parts[3]):
        return
    os.kill(os.getpid(), signal.SIGKILL)


@kdkit.hookimpl
def kdkit_before_epoch(trainer, epoch):
    _state["stage"], _state["epoch"] = trainer.stage.name, epoch
    _kill("before_epoch", trainer.stage.name, epoch)


@kdkit.hookimpl
def kdkit_after_step(trainer, step, loss, logs):
    _kill("after_step", trainer.stage.name, trainer.epoch, step)


@kdkit.hookimpl
def kdkit_after_evaluation(trainer, epoch, metrics):
    _kill("after_evaluation", trainer.stage.name, epoch)


@kdkit.hookimpl
def kdkit_after_epoch(trainer, epoch, metrics):
    out = os.environ.get("KDTEST_DUMP", "")
    if not out:
        return
    import torch

    from kdkit.engine.distributed import rank

    path = os.path.join(out, f"rank{rank()}", trainer.stage.name, f"{epoch}.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, path)
