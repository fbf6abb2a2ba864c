"""Pipeline methods: distillation that is more than one teacher -> one student (``docs/methods.md``,
"Pipeline methods").  Each is a method class of its own, built from ``ctx.fit`` stages (every stage
checkpointed by the engine, so a killed run resumes exactly):

* ``dml`` — deep mutual learning (:class:`kdkit_methods.mutual.DMLMethod`): a cohort of peers trained
  together from scratch, each taught by the others;
* ``takd`` — teacher-assistant KD (:class:`kdkit_methods.chains.TAKDMethod`): teacher -> assistant(s) ->
  student, each step plain KD;
* ``born_again`` — born-again networks (:class:`kdkit_methods.chains.BornAgainMethod`): generations of
  the student's architecture, each distilled from the one before;
* ``byot`` — be your own teacher (:class:`kdkit_methods.self_distillation.BYOTMethod`): exits after the
  shallower stages of one network, taught by its deepest classifier.

This module holds what they share and imports no torch: the registry entries (:data:`METHODS`), a
stage's summary and the results table.
"""
from __future__ import annotations

#: name -> (class import path, one-line description), registered in the ``[pipeline]`` block of the
#: ``kdkit_register_methods`` hook (imported when a run or a config resolution needs the class)
METHODS = {
    "dml": ("kdkit_methods.mutual:DMLMethod",
            ("deep mutual learning (Zhang et al. 2018): a cohort of peers trained together, "
             "each CE + KL to the others")),
    "takd": ("kdkit_methods.chains:TAKDMethod",
             "teacher-assistant KD (Mirzadeh et al. 2020): teacher -> assistant(s) -> student, KD at each step"),
    "born_again": ("kdkit_methods.chains:BornAgainMethod",
                   ("born-again networks (Furlanello et al. 2018): generations of the student, "
                    "each distilled from the last; ensemble")),
    "byot": ("kdkit_methods.self_distillation:BYOTMethod",
             "be your own teacher (Zhang et al. 2019): exits after shallow stages taught by the deepest classifier"),
}


def stage_summary(result) -> dict:
    """A trained stage in a run summary: test top-1 at the best epoch, validation top-1 there, that
    epoch (``stopped_epoch`` too when ``train.early_stop`` ended the stage)."""
    out = {"top1": result.test_metrics.get("top1"), "val_top1": result.best_metrics.get("top1"),
           "best_epoch": result.best_epoch}
    if result.stopped_epoch is not None:
        out["stopped_epoch"] = result.stopped_epoch
    return out


def results_table(rows: list[tuple[str, float | None]], select_on: str) -> str:
    """``rows`` of ``(model, test top-1)`` as the table ``kd`` prints at the end of a run."""
    width = max(len(name) for name, _ in rows)
    lines = ["", f"results: test top-1 % (best epoch chosen on the {select_on} split)",
             f"  {'model'.ljust(width)}  top-1"]
    for name, top1 in rows:
        lines.append(f"  {name.ljust(width)}  {top1:6.2f}" if top1 is not None else f"  {name.ljust(width)}     -")
    return "\n".join(lines)


def log_data(ctx, train, val, test, num_classes: int) -> None:
    """The data line every kdkit method logs first."""
    cfg = ctx.config
    ctx.log(f"{cfg.method}: {cfg.data.name} with {num_classes} classes; train {len(train)}, "
            f"val {len(val) if val is not None else 0}, test {len(test)}; seed {cfg.seed}")


def kd_defaults() -> dict:
    """``kd``'s declared config (data, ``train``, ``student`` ...), for the methods that start from it."""
    from kdkit.distill import KDMethod

    return KDMethod.default_config()
