"""Teachers: trained as stages of the run, or loaded from weights — one loop for every method."""
from __future__ import annotations

from typing import Callable, Sequence

from kdkit.errors import ConfigError

__all__ = ["train_teachers", "check_teachers"]


def check_teachers(teachers: Sequence[dict], where: str = "teachers") -> None:
    """The rule :func:`train_teachers` follows, checked when the config is resolved: a teacher that
    is not trained (``train: false``) is loaded from its ``pretrained`` weights file."""
    for i, tcfg in enumerate(teachers):
        # ``train`` is the method's declared key; ``pretrained`` is the teacher model's own option, which a
        # third-party model may not declare (then it cannot be loaded, only trained)
        if not tcfg.train and not tcfg.get("pretrained"):
            raise ConfigError(f"config key {where}.{i}: train: false needs pretrained weights "
                              f"(set {where}.{i}.pretrained=/path/to/weights.pt)")


def train_teachers(ctx, teachers: Sequence[dict], stage_names: Sequence[str], num_classes: int, test,
                   data: Callable[[dict], tuple], optimizer: dict, eval_fn=None,
                   model_options: Callable[[dict], dict] | None = None) -> list[tuple]:
    """Train (``train: true``) or load (``train: false`` + ``pretrained``) every teacher, frozen.

    :param teachers: the ``teachers`` config items; ``stage_names`` one per teacher.
    :param data: ``data(teacher_config) -> (train, val)`` — each teacher's training data (a teacher
        may see its own augmentation).
    :param optimizer: the teachers' ``train`` section (``teacher_train``).
    :param eval_fn: the stages' ``eval_fn`` (default: top-1 and loss).
    :param model_options: the factory section of a teacher config (default: the config itself).

    Returns ``[(model, result)]`` in config order; ``result`` has ``stage`` (``None`` when loaded),
    the test metrics (``top1``, ...), and for trained teachers ``val_top1`` and ``best_epoch``.
    """
    from kdkit.engine import Stage, freeze

    check_teachers(teachers)
    out = []
    for tcfg, sname in zip(teachers, stage_names):
        section = model_options(tcfg) if model_options is not None else tcfg
        model = ctx.build_model("teachers", section, num_classes, seed_tag=sname)
        if tcfg.train:
            train, val = data(tcfg)
            res = ctx.fit(Stage(name=sname, model=model, train_data=train, val_data=val, test_data=test,
                                eval_fn=eval_fn, optimizer=optimizer))
            result = {**res.test_metrics, "stage": sname, "val_top1": res.best_metrics.get("top1"),
                      "best_epoch": res.best_epoch}
            if res.stopped_epoch is not None:  # train.early_stop ended the stage early
                result["stopped_epoch"] = res.stopped_epoch
        else:
            freeze(model.to(ctx.device))
            result = {**ctx.evaluate(model, test, eval_fn=eval_fn), "stage": None, "pretrained": tcfg.pretrained}
        out.append((freeze(model.to(ctx.device)), result))
    return out
