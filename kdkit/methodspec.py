"""The method protocol, declared once: what ``kdkit train --method NAME`` runs (as
:mod:`kdkit.hookspecs` declares the hooks; the built-in methods themselves are in :mod:`kdkit.methods`).

A *method* is a class registered with the ``kdkit_register_methods`` hook (:mod:`kdkit.hookspecs`).
kdkit calls its members by name, so any class with them works; :class:`Method` (``kdkit.Method``)
is their one declaration, with the types kdkit calls them with and the defaults of the optional
ones — subclass it (``kdkit.distill.KDMethod`` and every built-in method do) and override what the
method has:

===========================  ==========  ==========================================================
member                       required    called by
===========================  ==========  ==========================================================
``default_config()``         yes         config resolution: the full declared tree
                                         (:func:`kdkit.base_config` plus the method's
                                         :class:`kdkit.ConfigKey` s)
``check_config(config,       no          config resolution, before a run directory exists: rules
registry)``                              across keys
``component_sections``       no          config resolution: extra ``{"config.path": "registry
                                         kind"}`` sections (see :mod:`kdkit.config`)
``run(ctx)``                 yes         ``kdkit train``: trains the stages, returns the summary
                                         (``summary.json``)
``stages(config)``           no          ``kdkit sweep`` (before anything runs: a row naming
                                         another stage is refused) and the run (a stage it
                                         trains must be declared)
``evaluate(ctx)``            no          ``kdkit eval --run DIR``
``encode(ctx, modality,      no          ``kdkit encode --run DIR``: packed binary codes
bits, split, texts)``
``stage_model(ctx, stage,    no          ``kdkit export``: the model of a trained stage, its best
num_classes)``                           checkpoint loaded (without it: the ``teachers`` /
                                         ``student`` models of the config, as for ``kd``)
===========================  ==========  ==========================================================

``ctx`` is the :class:`kdkit.RunContext` of the run; a distillation method's student stage is
:class:`kdkit.distill.StudentStage`.  Importing this module is cheap (no torch): a plugin's method
module may subclass :class:`Method` at import time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from kdkit.errors import KdkitError

if TYPE_CHECKING:
    import numpy as np

    from kdkit.config.view import FrozenConfig
    from kdkit.engine.context import RunContext
    from kdkit.registry import Registry

__all__ = ["Method", "declared_stages", "StageDeclarationWarning"]


class StageDeclarationWarning(UserWarning):
    """A method declared a stage (:meth:`Method.stages`) that its run did not train: a bug in the
    method (the test suite turns it into an error)."""


def declared_stages(method_cls: type, config: "FrozenConfig") -> "list[str] | None":
    """``method_cls.stages(config)`` checked: a list of stage names, or ``None`` when the method
    declares none (also a class that does not subclass :class:`Method` and has no ``stages``)."""
    stages = getattr(method_cls, "stages", None)
    names = stages(config) if stages is not None else None
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) and n for n in names)):
        raise KdkitError(f"method {method_cls.__name__}: stages() must return a list of stage names or None, "
                         f"got {names!r}")
    return list(names) if names is not None else None


class Method:
    """The members kdkit calls on a method (see the module docs); the optional ones have defaults here."""

    #: extra config sections naming components: ``{"config.path": "registry kind"}``
    component_sections: ClassVar[dict[str, str]] = {}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The full declared config tree: :func:`kdkit.base_config` plus the method's keys."""
        from kdkit.config import base_config

        return base_config()

    @classmethod
    def check_config(cls, config: "FrozenConfig", registry: Callable[[str], "Registry"] | None = None) -> None:
        """Rules beyond the declared keys, checked on the resolved ``config`` (frozen: read
        ``config.train.lr``) before a run directory exists; raise :class:`kdkit.ConfigError`.
        ``registry(kind)`` looks components up."""

    @classmethod
    def stages(cls, config: "FrozenConfig") -> "list[str] | None":
        """The names of the stages a run of ``config`` trains (``ctx.fit``), in order; ``None`` (the
        default): not declared.  A sweep checks its rows against them before anything runs, and a
        run refuses to train a stage its method did not declare (a bug in the method, caught
        before that stage trains)."""
        return None

    def run(self, ctx: "RunContext") -> dict[str, Any]:  # pragma: no cover - abstract
        """Train the method's stages (``ctx.fit``) and return the summary written to ``summary.json``."""
        raise NotImplementedError

    def evaluate(self, ctx: "RunContext") -> dict[str, Any]:
        """``kdkit eval --run DIR``: the best checkpoints of a finished run on the test split."""
        raise KdkitError(f"method {ctx.config.method!r} does not support 'kdkit eval'")

    def encode(self, ctx: "RunContext", modality: str, bits: int, split: str = "retrieval",
               texts: Sequence[str] | None = None) -> tuple["np.ndarray", Sequence[int] | None, dict[str, Any]]:
        """``kdkit encode --run DIR``: ``(codes uint8 (N, bits / 8), dataset indices or None, metadata)``
        of ``modality`` (``"image"`` | ``"text"``) on ``split``, or of ``texts`` when given."""
        raise KdkitError(f"method {ctx.config.get('method')!r} of run {ctx.run_dir} does not support 'kdkit encode'")
