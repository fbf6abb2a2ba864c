"""What the parser fuzz targets share: byte mutations of a valid file, and a watchdog for hangs.

`mutated(seed)` starts from the bytes of a valid file in the real format and applies a few edits
of the kinds that break parsers: bit flips, bytes set to boundary values (0, 0x7f, 0x80, 0xff) or
multi-byte integers set to extremes (lengths and shapes in headers), truncation, insertion,
deletion and duplication of a span.
"""
from __future__ import annotations

import contextlib
import signal
import tempfile
from pathlib import Path

from hypothesis import strategies as st

#: Values that make header fields extreme: zero, sign bits, all ones, just past a power of two.
_BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
_EXTREME_WORDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                  b"\x00\x00\x00\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x01\x00", b"\xff" * 8, b"\x00" * 8)


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 6) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        edit = draw(st.sampled_from(("flip", "boundary", "word", "truncate", "insert", "delete", "duplicate")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif edit == "boundary" and data:
            data[pos] = draw(st.sampled_from(_BOUNDARY_BYTES))
        elif edit == "word":
            word = draw(st.sampled_from(_EXTREME_WORDS))
            data[pos:pos + len(word)] = word
        elif edit == "truncate":
            del data[pos:]
        elif edit == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif edit == "duplicate":
            span = bytes(data[pos:pos + draw(st.integers(1, 64))])
            data[pos:pos] = span
    return bytes(data)


class Hang(BaseException):
    """An example ran past its time limit (BaseException: a parser's ``except Exception`` must not eat it)."""


@contextlib.contextmanager
def time_limit(seconds: float = 10.0):
    """Fail an example that runs longer than ``seconds`` (SIGALRM; checked between Python bytecodes)."""
    def _on_alarm(signum, frame):
        raise Hang(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def scratch_dir():
    """A fresh folder per example (pytest's tmp_path is per test, shared by all of its examples)."""
    with tempfile.TemporaryDirectory(prefix="kdkit-fuzz-") as name:
        yield Path(name)


def family_settings(tests_in_family: int):
    """Settings for one of the ``tests_in_family`` tests of a parser family: together they run the
    family's budget, KDKIT_FUZZ_EXAMPLES inputs (the per-target count of scripts/fuzz.sh)."""
    from _fuzz import fuzz_examples, fuzz_settings

    return fuzz_settings(max_examples=max(1, -(-fuzz_examples() // tests_in_family)))
