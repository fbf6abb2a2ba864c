"""Divergence on request, for the tests of diverged runs (loaded with --plugins-module, or in-process
through ``plugin_manager_for_testing``); nothing is read from the environment, so parallel runs of a
sweep each follow their own config.

* loss ``infloss`` (``distill.loss: infloss``): an MSE between student and teacher logits that is
  ``inf`` in the student stage's epoch ``epoch`` (0-based) and after, for the run seeds in ``seeds``
  (all seeds when null): ``distill.loss_options: {epoch: 1, seeds: [1]}``;
* teacher ``blowup``: a small MLP whose logits are ``inf`` from its stage's epoch 0, so a run diverges
  before any checkpoint is written.
"""
from __future__ import annotations

import kdkit

_state = {"stage": None, "epoch": None, "seed": None}


@kdkit.hookimpl
def kdkit_configure(config, run_dir):
    _state["seed"] = config["seed"]


@kdkit.hookimpl
def kdkit_before_epoch(trainer, epoch):
    _state["stage"], _state["epoch"] = trainer.stage.name, epoch


class InfLoss:
    def __init__(self, epoch: int = 0, seeds=None):
        self.epoch, self.seeds = int(epoch), seeds

    def __call__(self, inputs):
        import torch.nn.functional as F

        loss = F.mse_loss(inputs.student_logits.float(), inputs.teacher_logits.float())
        if ((self.seeds is None or _state["seed"] in self.seeds) and _state["stage"] == "student"
                and _state["epoch"] is not None and _state["epoch"] >= self.epoch):
            return loss * float("inf")
        return loss


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("infloss", InfLoss, description="MSE that turns inf at a given student epoch (tests)")


def _blowup(num_classes: int, image_size: int = 32, in_channels: int = 3, **_):
    import torch.nn as nn

    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(),
                                     nn.Linear(in_channels * (image_size // 4) ** 2, num_classes))

        def forward(self, x):
            return self.net(x) * float("inf")

    return Blowup()


def _eval_blowup(num_classes: int, image_size: int = 32, in_channels: int = 3, **_):
    """Finite logits in training mode, inf in eval mode: the training loss stays finite, the
    validation loss does not."""
    model = _blowup(num_classes, image_size, in_channels)
    forward = model.forward

    def eval_forward(x):
        return forward(x) if not model.training else model.net(x)

    model.forward = eval_forward
    return model


@kdkit.hookimpl
def kdkit_register_teachers(register):
    register("blowup", _blowup, description="logits inf from the start (tests)")
    register("evalblowup", _eval_blowup, description="logits inf in eval mode only (tests)")
