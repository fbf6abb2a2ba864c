"""The plugin the runs of a sweep load (``--plugins-module kdkit.sweep``): the test top-1 of each
stage's last epoch, recorded as a ``test@last`` line of ``metrics.jsonl`` (see :mod:`kdkit.sweep`).
The hook is re-exported by :mod:`kdkit.sweep`, the module the runs register."""
from __future__ import annotations

from kdkit.hookspecs import hookimpl

#: ``split`` of the metrics.jsonl record holding a stage's test metrics at its last epoch.
LAST_EPOCH_SPLIT = "test@last"


@hookimpl
def kdkit_after_evaluation(trainer, epoch, metrics):
    """At a stage's last epoch, the test split with that epoch's weights (see the module docs)."""
    stage = trainer.stage
    if stage.test_data is None or epoch != trainer.epochs - 1:
        return
    from kdkit.engine.checkpoint import capture_rng_state, restore_rng_state

    rng = capture_rng_state()
    try:
        test = trainer.evaluate(stage.test_data)
    finally:
        restore_rng_state(rng)
    record = {"stage": stage.name, "epoch": epoch, "step": trainer.step, "split": LAST_EPOCH_SPLIT}
    record.update({f"test.{k}": v for k, v in test.items()})
    trainer.ctx.append_metrics(record)

