"""The memory a process may still take: what kdkit checks a model (:mod:`kdkit.models.footprint`) and
``kdkit bench``'s buffers against before allocating them.

``KDKIT_MEMORY_LIMIT_BYTES`` sets the available memory (bytes) instead of reading it from the system.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from kdkit.errors import ConfigError

__all__ = ["ENV_LIMIT", "Memory", "available_memory", "format_bytes"]

#: Environment variable: the available memory in bytes (overrides what the system reports).
ENV_LIMIT = "KDKIT_MEMORY_LIMIT_BYTES"

#: cgroup memory controllers, v2 then v1: (limit file, usage file, its stat key of reclaimable page cache).
_CGROUPS = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "total_inactive_file"),
)


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


def format_bytes(n: float) -> str:
    """``n`` bytes as the errors say it: 512 bytes, 3.5 KiB, ... GiB."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
