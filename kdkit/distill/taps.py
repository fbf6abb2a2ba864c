"""Feature taps: intermediate outputs of a model, by module path, through forward hooks.

A path is a name as ``model.named_modules()`` spells it (``layer3``, ``layer4.1.conv2``,
``features.7``).  The model is not edited: a forward hook on each tapped module stores its output
during the forward pass, :meth:`FeatureTaps.pop` hands the outputs of the last forward over and
forgets them, so no activation outlives the step that uses it.

:func:`list_layers` lists the paths with their output shapes from one forward pass (``kdkit layers``
prints it); a wrong path's error names the model's feature maps from that same listing, one per
resolution first (:func:`tap_candidates`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from kdkit.errors import ConfigError

__all__ = ["FeatureTaps", "module_paths", "unwrap_model", "Layer", "list_layers", "probe_input", "probe_layers",
           "tap_candidates"]

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

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False, owner: str = "model",
                 partners: Mapping[str, tuple[nn.Module, str, str]] | None = None):
        self.model = unwrap_model(model)
        self.owner = owner
        #: path -> (the other model, the path a term pairs with it there, how errors name that model): a
        #: wrong path's hint then lists first the feature maps of the size the other side's map has
        self.partners = dict(partners or {})
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
        # first what a feature term can use: the model's feature maps, from one forward pass
        listed = _feature_map_hint(self.model, self.partners.get(path))
        maps = f"feature maps it can tap, one per resolution: {listed}; " if listed else ""
        raise ConfigError(f"{self.owner} ({type(self.model).__name__}) has no module {path!r}; {maps}nearest valid "
                          f"paths: {', '.join(near) if near else '(the model has no submodules)'}"
                          + ("; `kdkit layers MODEL` lists every path with its output shape" if listed else ""))

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


# --- the listing of tappable paths (kdkit layers, and the hint of a wrong path) ---------------------

@dataclass(frozen=True)
class Layer:
    """One tappable module: its path, class name and output shape in one forward pass (``None`` when
    its output is not a tensor, ``()`` when it did not run)."""

    path: str
    type: str
    shape: tuple | None

    @property
    def feature_map(self) -> bool:
        """A 4-D ``N x C x H x W`` output: what a feature term (FitNet, AT, ...) taps."""
        return self.shape is not None and len(self.shape) == 4

    def to_dict(self) -> dict:
        return {"path": self.path, "type": self.type, "shape": None if self.shape is None else list(self.shape)}


def probe_input(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Zero inputs (batch of 1) to try ``model`` on: ``input_shape`` (``C x H x W``) when given, else
    the channels of its first convolution (3 without one) at 32 x 32, then 224 x 224."""
    if input_shape is not None:
        return [torch.zeros(1, *input_shape)]
    conv = next((m for m in unwrap_model(model).modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    return [torch.zeros(1, channels, size, size) for size in (32, 224)]


def list_layers(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every tappable path of ``model`` with its output shape, from one forward pass on ``x``, in the
    order the outputs are produced (a container right after its last child; a module called again keeps
    the place of its first output and shows its last one, as taps keep it); modules that did not run
    come last with shape ``()``.  The model runs in eval mode under
    ``no_grad`` and is left in the mode it was in; its exception propagates."""
    model = unwrap_model(model)
    modules = [(name, m) for name, m in model.named_modules() if name]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    order: dict[str, tuple | None] = {}

    def hook(name):
        def record(module, args, output):
            order[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.to(device))
    finally:
        model.train(was)
        for handle in handles:
            handle.remove()
    types = {name: type(m).__name__ for name, m in modules}
    return ([Layer(name, types[name], shape) for name, shape in order.items()]
            + [Layer(name, types[name], ()) for name, _ in modules if name not in order])


def probe_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[tuple, list[Layer]]:
    """``(input shape, list_layers(...))`` on the first of :func:`probe_input` the model runs on
    (``kdkit layers`` and a wrong path's hint); raises the last input's exception when none runs."""
    error: Exception | None = None
    for x in probe_input(model, input_shape):
        try:
            return tuple(x.shape[1:]), list_layers(model, x)
        except Exception as exc:  # noqa: BLE001 - try the next input size
            error = exc
    assert error is not None
    raise error


def tap_candidates(layers: Sequence[Layer], spatial: Sequence[int] | None = None) -> list[Layer]:
    """The feature maps of ``layers`` a feature term would tap, best first: per resolution the last,
    shallowest module producing it (a stage's output: ``layer1``, ``features.3``), in execution order;
    with ``spatial`` (``H, W``) the maps of that size come first."""
    # 1 x 1 maps are pooled vectors (a squeeze-excitation's, the head's), not maps to match
    maps = [(i, layer) for i, layer in enumerate(layers) if layer.feature_map and layer.shape[2] * layer.shape[3] > 1]
    ends: dict[tuple, tuple[int, Layer]] = {}
    for i, layer in maps:  # the last module of each resolution, preferring shallow paths at equal depth
        key = tuple(layer.shape[2:])
        held = ends.get(key)
        if held is None or layer.path.count(".") <= held[1].path.count("."):
            ends[key] = (i, layer)
    best = [layer for _, layer in sorted(ends.values(), key=lambda item: item[0])]
    if spatial is not None:
        best.sort(key=lambda layer: tuple(layer.shape[2:]) != tuple(spatial))
    return best


def _shape_text(shape: tuple | None) -> str:
    return "x".join(str(n) for n in shape[1:]) if shape else ("not run" if shape == () else "not a tensor")


def _feature_map_hint(model: nn.Module, partner: tuple[nn.Module, str, str] | None = None, limit: int = 8) -> str:
    """``"layer1 (16x32x32), layer2 (32x16x16), ..."`` for a wrong path's error, or ``""`` when the model
    cannot be run on a probe input (then the error names the nearest paths by spelling).  ``partner``
    (other model, its paired path, its name): the maps of the size that path has on the same input come
    first, and the hint says which size that is."""
    try:
        shape, layers = probe_layers(model)
    except Exception:  # noqa: BLE001 - only a hint: the error falls back to the nearest names
        return ""
    spatial, like = None, ""
    if partner is not None:
        other, other_path, other_owner = partner
        other_path = other_path[len("module."):] if other_path.startswith("module.") else other_path
        try:
            _, other_layers = probe_layers(unwrap_model(other), shape)
        except Exception:  # noqa: BLE001 - only a hint: without the partner's size, no preference
            other_layers = []
        found = next((layer for layer in other_layers if layer.path == other_path and layer.feature_map), None)
        if found is not None:
            spatial = tuple(found.shape[2:])
            like = f"; {other_owner}'s {other_path} is {_shape_text(found.shape)}"
    best = tap_candidates(layers, spatial)[:limit]
    listed = ", ".join(f"{layer.path} ({_shape_text(layer.shape)})" for layer in best)
    return f"{listed} (for a {'x'.join(map(str, shape))} input{like})" if best else ""
