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

``KDKIT_MEMORY_LIMIT_BYTES`` sets the available memory (bytes) instead of reading it from the system.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from typing import Any, Callable, NamedTuple

from kdkit.errors import ConfigError
from kdkit.registry import WEIGHT_OPTIONS, singular

__all__ = ["ENV_LIMIT", "Memory", "available_memory", "model_bytes", "check_fits"]

#: Environment variable: the available memory in bytes (overrides what the system reports).
ENV_LIMIT = "KDKIT_MEMORY_LIMIT_BYTES"

#: Sources whose factory is not probed: ``hf:`` reads the directory's weights file while it builds.
UNPROBED_SOURCES = ("hf:",)

#: cgroup memory controllers, v2 then v1: (limit file, usage file, its stat key of reclaimable page cache).
_CGROUPS = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "total_inactive_file"),
)

_SIZES: dict[tuple, int | None] = {}


class Memory(NamedTuple):
    """Bytes available now, and where the figure comes from as the error says it ("available")."""

    bytes: int
    source: str


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _meminfo_available(text: str | None) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split()[:1] and value.split()[0].isdigit():
            return int(value.split()[0]) * 1024  # kB
    return None


def _cgroup_available() -> int | None:
    for limit_path, usage_path, inactive_key in _CGROUPS:
        limit, usage = (_read(limit_path) or "").strip(), (_read(usage_path) or "").strip()
        if not (limit.isdigit() and usage.isdigit()) or int(limit) >= 1 << 60:
            continue  # absent, or no limit ("max"; v1 writes a huge number)
        # page cache that the kernel drops before it OOM-kills counts as free (as `docker stats` does)
        inactive = 0
        for line in (_read(usage_path.rsplit("/", 1)[0] + "/memory.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key and value.strip().isdigit():
                inactive = int(value)
        return max(0, int(limit) - max(0, int(usage) - inactive))
    return None


def available_memory() -> Memory | None:
    """The memory a new model may take now: :data:`ENV_LIMIT` when set, else Linux's ``MemAvailable``
    or the cgroup's limit less its usage, whichever is smaller, else the physical memory; ``None``
    when none of them can be read."""
    override = os.environ.get(ENV_LIMIT)
    if override is not None:
        if not override.strip().isdigit() or int(override) < 1:
            raise ConfigError(f"{ENV_LIMIT}={override!r}: expected the available memory in bytes, a positive "
                              f"integer; unset it to use what the system reports")
        return Memory(int(override), f"set by {ENV_LIMIT}")
    found = [Memory(n, source) for n, source in ((_meminfo_available(_read("/proc/meminfo")), "available"),
                                                 (_cgroup_available(), "left under this cgroup's limit"))
             if n is not None]
    if found:
        return min(found)
    try:
        return Memory(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "installed")
    except (AttributeError, ValueError, OSError):
        return None


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


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


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
    raise ConfigError(f"{label} needs {_size(need)} for its parameters and buffers, more than the "
                      f"{_size(memory.bytes)} of memory {memory.source}"
                      "; choose a smaller model or smaller size options (width, depth, ...)")
