"""kdkit.memory: the memory a process may still take, from /proc/meminfo, the cgroup or the machine."""
from __future__ import annotations

from kdkit import memory


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup(monkeypatch):
    files = {"/proc/meminfo": "MemTotal:  32000000 kB\nMemAvailable:  8388608 kB\n",
             "/sys/fs/cgroup/memory.max": "6442450944\n", "/sys/fs/cgroup/memory.current": "4294967296\n",
             "/sys/fs/cgroup/memory.stat": "anon 1\ninactive_file 1073741824\n"}
    monkeypatch.setattr(memory, "_read", files.get)
    assert memory.available_memory() == (3 << 30, "left under this cgroup's limit")  # 6 - (4 - 1) GiB
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert memory.available_memory() == (8 << 30, "available")
    files.clear()
    assert memory.available_memory().source == "installed"
