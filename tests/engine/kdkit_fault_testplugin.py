"""Fault injection for the run-directory tests (loaded with --plugins-module in a subprocess).

* ``KDTEST_CRASH=<file name>:<n>`` SIGKILLs the process just before the n-th ``os.replace`` onto a
  file of that name (its temp file is complete and fsynced): ``last.pt``, ``best.pt``,
  ``summary.json``, ``config.yaml``, or ``last.prev.pt`` (mid-rotation: the hard link exists);
* ``KDTEST_HOLD=<seconds>`` sleeps in ``kdkit_configure``, i.e. while the run directory is locked and
  before anything is trained.
"""
from __future__ import annotations

import os
import signal
import time

import kdkit

_real_replace = os.replace
_replaced: dict[str, int] = {}


def _replace(src, dst, *args, **kwargs):
    spec = os.environ.get("KDTEST_CRASH", "")
    if spec:
        name, n = spec.rsplit(":", 1)
        if os.path.basename(os.fspath(dst)) == name:
            _replaced[name] = _replaced.get(name, 0) + 1
            if _replaced[name] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
    return _real_replace(src, dst, *args, **kwargs)


os.replace = _replace


@kdkit.hookimpl
def kdkit_configure(config, run_dir):
    hold = float(os.environ.get("KDTEST_HOLD", "0") or 0)
    if hold:
        time.sleep(hold)
