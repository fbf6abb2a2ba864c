"""Loading local weight files into models (kdkit never downloads weights)."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from kdkit.errors import DataError
from kdkit.paths import user_path

log = logging.getLogger("kdkit.models")

#: Keys under which checkpoint dicts commonly keep the model's state dict, tried in order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "student", "weights", "params")
#: Wrapper prefixes a saved key may carry (DDP, torch.compile, a wrapper module such as Lightning's or
#: kdkit's Hugging Face one) and the model's own keys may carry too: keys are matched without them.
PREFIXES = ("module.", "_orig_mod.", "model.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, key: str | None = None, *, path: str = "<weights>") -> dict[str, torch.Tensor]:
    """The model state dict inside ``obj``: ``obj`` itself, ``obj[key]`` (``key`` may be dotted,
    e.g. ``"models.student"``), or the first of :data:`STATE_DICT_KEYS` that holds one (searched
    one level deep as well, e.g. ``{"models": {"model": ...}}``)."""
    if key:
        cur = obj
        for part in str(key).split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                have = ", ".join(map(str, cur.keys())) if isinstance(cur, Mapping) else type(cur).__name__
                raise DataError(f"weights file {path}: no key {key!r} (found: {have})")
            cur = cur[part]
        if not _is_state_dict(cur):
            raise DataError(f"weights file {path}: {key!r} is not a state dict of tensors")
        return dict(cur)
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for k in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(k)):
                return dict(obj[k])
        for v in obj.values():
            if isinstance(v, Mapping):
                for k in STATE_DICT_KEYS:
                    if _is_state_dict(v.get(k)):
                        return dict(v[k])
        candidates = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(candidates) == 1:
            return dict(obj[candidates[0]])
    raise DataError(
        f"weights file {path} holds no model state dict; pass the key that holds it "
        f"(option pretrained_key, e.g. --set student.pretrained_key=state_dict)"
    )


def classifier_prefix(model: nn.Module) -> str | None:
    """Dotted name of the model's classifier (``model.classifier`` if it is a module in the
    model, else the last ``nn.Linear``), e.g. ``"fc"`` or ``"classifier"``."""
    head = getattr(model, "classifier", None)
    last = None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
        if isinstance(module, nn.Linear):
            last = name
    return last


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _match_keys(state: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` renamed to the model's keys: an exact key stays; any other is matched with the
    :data:`PREFIXES` removed on both sides (``module.fc.weight`` -> ``fc.weight``, ``fc.weight`` ->
    ``model.fc.weight``); an unmatched key keeps its name without them."""
    by_bare: dict[str, str] = {}
    for name in own:
        by_bare.setdefault(_strip(name), name)
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        target = name if name in own else by_bare.get(_strip(name), _strip(name))
        out.setdefault(target, tensor)
    return out


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    key: str | None = None,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load a local weights file (a state dict, or a checkpoint dict containing one) into ``model``.

    :param key: where the state dict is inside a checkpoint dict (dotted, e.g. ``"models.student"``);
        ``None``: found automatically (``state_dict``, ``model``, ... or the one state dict in it).
    :param strict: any weight that does not fit is an error (``False``: skipped with a logged note).

    The file is read with ``torch.load(weights_only=True)`` (a ``.safetensors`` file with safetensors,
    as timm and Hugging Face save them); keys are matched without the
    ``module.`` / ``_orig_mod.`` / ``model.`` prefixes of DDP, ``torch.compile`` and wrapper modules
    (on either side).  Classifier parameters whose shape differs
    (another number of classes) are skipped with a logged note, so the new head keeps its
    fresh initialisation.  Any other missing, unexpected or mis-shaped parameter is an error
    when ``strict`` (the default); with ``strict=False`` they are skipped with a note.

    :returns: ``{"loaded": [...], "skipped": [...], "missing": [...]}`` parameter names.
    :raises DataError: missing or unreadable file, or weights that do not fit the model.
    """
    path = str(user_path(path))  # as the config check of `pretrained` does
    if not os.path.isfile(path):
        raise DataError(f"pretrained weights file not found: {path} (kdkit never downloads weights; give a local file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise DataError(f"cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    own = model.state_dict()
    state = _match_keys(extract_state_dict(obj, key, path=path), own)
    head = classifier_prefix(model)

    def is_head(name: str) -> bool:
        return head is not None and (name == head or name.startswith(head + "."))

    loaded, skipped_head, problems = {}, [], []
    for name, tensor in state.items():
        if name not in own:
            problems.append(f"unexpected {name}")
        elif own[name].shape != tensor.shape:
            if is_head(name):
                skipped_head.append(name)
            else:
                problems.append(f"shape of {name}: file {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            loaded[name] = tensor
    missing = [n for n in own if n not in state and not n.endswith("num_batches_tracked")]
    problems += [f"missing {n}" for n in missing if not is_head(n)]
    if problems and strict:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(
            f"weights file {path} does not fit {type(model).__name__}: {'; '.join(problems[:5])}{more}"
        )
    if problems:
        log.warning("pretrained %s: skipped %d entries that do not fit: %s", path, len(problems), "; ".join(problems[:5]))
    if skipped_head or any(is_head(n) for n in missing):
        log.warning(
            "pretrained %s: loaded all but the classifier %r (its shape differs: another number of classes); "
            "the classifier starts from scratch", path, head,
        )
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "skipped": sorted(skipped_head), "missing": sorted(missing)}
