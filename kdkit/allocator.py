"""glibc's malloc tuned for CPU training, in the process, before torch allocates anything.

Why: with glibc's defaults a CPU training step hands the freed activations back to the kernel and
faults them in again on the next step — 10,000 to 28,000 minor page faults per step, 40-80 % of
the step's time (``benchmarks/train_step.py --allocator both``).  Two settings keep them in the
heap: an mmap threshold of 32 MiB (glibc's largest; below it a freed block is reused, not unmapped)
and a trim threshold of 2 GiB (free memory at the top of the heap is kept up to that).  Results
are unchanged: only where the memory comes from changes.

Why ``mallopt`` and not jemalloc/tcmalloc: those need ``LD_PRELOAD`` before the process starts (a
re-exec of every command, torchrun's workers included) and a package the machine may not have;
``mallopt(3)`` sets the same two glibc parameters the ``MALLOC_*_`` environment variables do, from
inside the process, with nothing to install.  A preloaded allocator or those variables, when
present, are left alone.

:func:`tune` is called by the CLI (:func:`kdkit.cli.main`, so every ``kdkit`` command and each
torchrun worker); ``KDKIT_MALLOC_TUNING=0`` turns it off; ``kdkit info`` shows :func:`describe`.
Library users call ``kdkit.allocator.tune()`` themselves, first thing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune", "describe", "ENV_SWITCH", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: ``KDKIT_MALLOC_TUNING=0`` (or off / false / no): glibc's defaults
ENV_SWITCH = "KDKIT_MALLOC_TUNING"
#: the tuned values: glibc's largest mmap threshold on 64-bit; the largest trim threshold ``mallopt``'s
#: ``int`` takes (the environment variable's 4 GiB does not fit)
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: environment that already decides the allocator: left alone
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_state: str | None = None


def tune() -> str:
    """Set glibc's mmap and trim thresholds once (see the module docs); returns :func:`describe`."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        _state = f"glibc malloc defaults ({ENV_SWITCH}=0)"
        return _state
    preload = os.environ.get("LD_PRELOAD", "")
    preloaded = next((name for name in _PRELOADED if name in preload), None)
    if preloaded:
        _state = f"{preloaded} (LD_PRELOAD), left as it is"
        return _state
    set_by_env = [k for k in _ALLOCATOR_ENV if k in os.environ]
    if set_by_env:
        _state = f"glibc malloc as the environment sets it ({', '.join(set_by_env)}), left as it is"
        return _state
    libc_name, _version = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        _state = "the platform's malloc, unchanged (the tuning is for glibc)"
        return _state
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state = (f"glibc malloc tuned: mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
              f"{TRIM_THRESHOLD / 2**30:.0f} GiB ({ENV_SWITCH}=0 turns it off)" if ok
              else "glibc malloc defaults (mallopt refused the tuning)")
    return _state


def describe() -> str:
    """What is in effect: the line :func:`tune` returned, or that it has not run in this process."""
    return _state or f"glibc malloc defaults (not tuned in this process; the kdkit CLI tunes it unless {ENV_SWITCH}=0)"
