"""Refuse a model whose parameters would not fit in memory, before it is allocated.

:meth:`kdkit.registry.Component.build` calls :func:`check_fits` for every teacher and student: the
same factory call is made once on PyTorch's ``meta`` device (no memory, no weights loaded), the bytes
of its parameters and buffers are summed, and a model larger than :func:`available_memory` is a
one-line :class:`~kdkit.errors.ConfigError` instead of a ``DefaultCPUAllocator`` traceback or, past
overcommit, an OOM kill while its weights are initialised.

The probe changes nothing observable: the RNG state is restored after it, its warnings, log records
and output are dropped, and a factory that fails on the meta device (one that computes with its
weights) skips the check — the real build then reports its own errors.  Its size is cached per
component and call within the process (a probe costs 2-40 ms for the built-in models and
torchvision's ResNet-50, and a run builds each model more than once); the available memory is read
afresh each time.

``KDKIT_MEMORY_LIMIT_BYTES`` sets the available memory (bytes) instead of reading it from the system
(:mod:`kdkit.memory`).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from typing import Any, Callable

from kdkit.errors import ConfigError
from kdkit.memory import ENV_LIMIT, Memory, available_memory, format_bytes
from kdkit.registry import WEIGHT_OPTIONS, singular

__all__ = ["ENV_LIMIT", "Memory", "available_memory", "model_bytes", "check_fits"]

#: Sources whose factory is not probed: ``hf:`` reads the directory's weights file while it builds.
UNPROBED_SOURCES = ("hf:",)

_SIZES: dict[tuple, int | None] = {}


#: In-place ops that change a tensor's shape: the probe runs them.
_RESHAPING = frozenset({"resize_", "resize_as_", "set_", "as_strided_", "squeeze_", "unsqueeze_", "t_",
                        "transpose_", "swapdims_", "swapaxes_"})


@functools.cache
def _skip_in_place():
    """A torch function mode that skips the other in-place ops on meta tensors: weight initialisation
    (``normal_``, ``clamp_``, ...) sets values the probe does not need, and on the meta device many of
    those ops import ``torch._dynamo`` (1.5-3 s once per process, more than the whole build)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInPlace(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if (name.endswith("_") and not name.endswith("__") and name not in _RESHAPING and args
                    and isinstance(args[0], torch.Tensor) and args[0].is_meta):
                return args[0]
            return func(*args, **(kwargs or {}))

    return SkipInPlace


@contextlib.contextmanager
def _unobserved():
    """The probe's warnings, log records and printed output dropped, the RNG state put back after it."""
    from kdkit.seeding import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        restore_rng_state(state)


def model_bytes(build: Callable[[], Any]) -> int | None:
    """Bytes of the parameters and buffers of the model ``build()`` makes, made on the meta device;
    ``None`` when ``build()`` fails there or returns no ``nn.Module``."""
    import torch
    from torch import nn

    try:
        with _unobserved(), torch.device("meta"), _skip_in_place()():
            model = build()
    except Exception:  # noqa: BLE001 - not buildable on meta: the real build reports its own errors
        return None
    if not isinstance(model, nn.Module):
        return None
    # a lazy module's parameters get their shape at the first forward: not counted
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
               if not nn.parameter.is_lazy(t))


def check_fits(component, args: tuple, given: dict, options: dict) -> None:
    """A one-line :class:`ConfigError` when ``component.factory(*args, **given, **options)`` would hold
    more parameters and buffers than :func:`available_memory`; ``options`` are the checked options
    (weight options included), ``pretrained`` is never loaded here."""
    if component.metadata.get("source") in UNPROBED_SOURCES:
        return
    memory = available_memory()
    if memory is None:
        return
    call = {k: v for k, v in options.items() if not (component.loads_weights and k in WEIGHT_OPTIONS)}
    if "pretrained" in call:  # a factory that loads its own weights: build it without them
        call["pretrained"] = None
    key = (component.kind, component.name, component.plugin, id(component.target), repr(args),
           repr(sorted(given.items())), repr(sorted(call.items())))
    if key not in _SIZES:
        _SIZES[key] = model_bytes(lambda: component.factory(*args, **given, **call))
    need = _SIZES[key]
    if need is None or need <= memory.bytes:
        return
    declared = component.options
    chosen = ", ".join(f"{k}={v!r}" for k, v in call.items()
                       if k not in WEIGHT_OPTIONS and (k not in declared or v != declared[k].default))
    label = f"{singular(component.kind)} {component.name!r}" + (f" ({chosen})" if chosen else "")
    raise ConfigError(f"{label} needs {format_bytes(need)} for its parameters and buffers, more than the "
                      f"{format_bytes(memory.bytes)} of memory {memory.source}"
                      "; choose a smaller model or smaller size options (width, depth, ...)")
