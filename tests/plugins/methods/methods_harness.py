"""What the end-to-end tests of the ``methods`` plugin share: tiny run settings, a plugin that
interrupts the student stage mid-epoch (to test exact resume), and a plugin manager with both."""
from __future__ import annotations

from contextlib import contextmanager

import kdkit

#: CIFAR ResNet-8s at width 4 (stages layer1..3 and the pooled `pool` embedding), 10 classes x 8 images
TINY = ["data.name=shapes", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
        "teachers=[{name: resnet8, width: 4}]", "student.name=resnet8", "student.width=4",
        "teacher_train.epochs=1", "train.epochs=2", "train.batch_size=16", "teacher_train.batch_size=16",
        "train.lr=0.01", "logging.progress=false"]


class Interrupt(Exception):
    pass


class _InterruptPlugin:
    """Raises :class:`Interrupt` after the ``at``-th step of the student stage's second epoch (mid-epoch,
    after the first epoch's checkpoint; ``None``: never)."""

    at: int | None = None
    seen = 0

    @kdkit.hookimpl
    def kdkit_after_step(self, trainer, step, loss, logs):
        if self.at is not None and trainer.stage.name == "student" and trainer.epoch == 1:
            self.seen += 1
            if self.seen == self.at:
                raise Interrupt


INTERRUPT = _InterruptPlugin()


@contextmanager
def methods_plugin_manager():
    """A plugin manager with the ``methods`` plugin and :data:`INTERRUPT`."""
    import kdkit_methods

    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_methods, INTERRUPT) as pm:
        yield pm
