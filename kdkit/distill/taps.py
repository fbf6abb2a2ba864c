"""Feature taps: intermediate outputs of a model, by module path, through forward hooks.

A path is a name as ``model.named_modules()`` spells it (``layer3``, ``layer4.1.conv2``,
``features.7``).  The model is not edited: a forward hook on each tapped module stores its output
during the forward pass, :meth:`FeatureTaps.pop` hands the outputs of the last forward over and
forgets them, so no activation outlives the step that uses it.
"""
from __future__ import annotations

import difflib
from typing import Iterable

import torch
import torch.nn as nn

from kdkit.errors import ConfigError

__all__ = ["FeatureTaps", "module_paths", "unwrap_model"]

_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a DDP / DataParallel wrapper trains (the model itself otherwise)."""
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


def module_paths(model: nn.Module) -> list[str]:
    """Every tappable path of ``model`` (its named submodules, the root excluded)."""
    return [name for name, _ in unwrap_model(model).named_modules() if name]


class FeatureTaps:
    """Capture the outputs of ``paths`` of ``model`` on every forward pass.

    :param model: any ``nn.Module``; a DDP / DataParallel wrapper is looked through, and paths may
        carry its ``module.`` prefix.
    :param paths: module paths (see :func:`module_paths`); a wrong one is a
        :class:`~kdkit.errors.ConfigError` naming the nearest valid paths.
    :param detach: store detached outputs (for teachers: nothing of their graph is kept).
    :param owner: how errors name the model (``"student"``, ``"teacher 0"``, ...).

    Use as a context manager, or :meth:`attach` / :meth:`remove` (a :class:`~kdkit.engine.Stage`
    given ``taps`` attaches them when it starts and removes them when it ends, also on error)::

        with FeatureTaps(student, ["layer2", "layer3"], owner="student") as taps:
            logits = student(x)
            features = taps.pop()          # {"layer2": Tensor, "layer3": Tensor}

    A module called several times in one forward keeps its last output.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False, owner: str = "model"):
        self.model = unwrap_model(model)
        self.owner = owner
        self.detach = bool(detach)
        self.paths = []
        for path in paths:
            path = str(path)
            if path not in self.paths:
                self.paths.append(path)
        self.modules = {path: self._resolve(path) for path in self.paths}
        self._handles: list = []
        self._outputs: dict = {}

    def _resolve(self, path: str) -> nn.Module:
        name = path[len("module."):] if path.startswith("module.") else path
        modules = dict(self.model.named_modules())
        if name and name in modules:
            return modules[name]
        valid = [n for n in modules if n]
        near = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
        if not near:  # fall back to the paths that share the longest prefix
            head = name.split(".")[0]
            near = [n for n in valid if n.split(".")[0] == head][:5] or valid[:5]
        raise ConfigError(f"{self.owner} ({type(self.model).__name__}) has no module {path!r}; nearest valid paths: "
                          f"{', '.join(near) if near else '(the model has no submodules)'}")

    # --- hooks -------------------------------------------------------------------------------
    def _hook(self, path: str):
        def store(module, inputs, output):
            self._outputs[path] = _detach(output) if self.detach else output

        return store

    def attach(self) -> "FeatureTaps":
        if not self._handles:
            self._outputs.clear()
            self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self.modules.items()]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "FeatureTaps":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # --- outputs -----------------------------------------------------------------------------
    def pop(self) -> dict:
        """``{path: output}`` of the last forward pass; the taps forget them.  A path whose module
        did not run in that pass is missing."""
        out, self._outputs = self._outputs, {}
        return out

    def __repr__(self) -> str:
        return f"FeatureTaps({self.owner}: {', '.join(self.paths)}; {'attached' if self.attached else 'detached'})"


def _detach(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    return output
