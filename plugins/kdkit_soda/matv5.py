"""A structural check of MATLAB v5 ``.mat`` files, run before scipy reads one.

scipy's v5 reader (seen with 1.17) looks the type code of a numeric or character data element up
in a C table without a range check, so a corrupt code crashes the process with a segmentation
fault instead of raising (scipy PR #25349).  :func:`v5_problem` follows the elements in the order
scipy's reader reads them (by array class, not by the declared sizes, which scipy does not
follow either) — inside ``miCOMPRESSED`` elements too, decompressing them as a stream — and
reports the first element scipy could not read safely.  Data bytes are skipped, not read: an
uncompressed file costs one seek per element.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import BinaryIO

#: The type codes of data elements (miINT8 .. miUTF32, without the unused 8, 10, 11, and the
#: containers miMATRIX = 14, miCOMPRESSED = 15).
DATA_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
MI_MATRIX, MI_COMPRESSED = 14, 15
HEADER_BYTES = 128
#: Cell arrays and structs nest matrices; real files nest a few levels, and scipy's reader recurses.
MAX_DEPTH = 64


class _Corrupt(Exception):
    pass


class _FileRegion:
    """Bytes ``start .. start + size`` of an open file."""

    def __init__(self, fh: BinaryIO, start: int, size: int):
        self.fh, self.pos, self.end = fh, start, start + size

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Corrupt("an element runs past the end of the file")
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Corrupt("an element runs past the end of the file")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _Corrupt("an element runs past the end of the file")
        self.pos += n


class _Inflated:
    """The decompressed stream of one ``miCOMPRESSED`` element, read forward in chunks."""

    CHUNK = 1 << 16

    def __init__(self, source: _FileRegion):
        self.source, self.inflate, self.buffer = source, zlib.decompressobj(), b""

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            # output is capped per call, so a small corrupt stream cannot inflate to gigabytes at once
            data = self.inflate.unconsumed_tail
            if not data:
                take = min(self.CHUNK, self.source.end - self.source.pos)
                if take <= 0 or self.inflate.eof:
                    raise _Corrupt("a compressed element ends early")
                data = self.source.read(take)
            try:
                self.buffer += self.inflate.decompress(data, self.CHUNK)
            except zlib.error as exc:
                raise _Corrupt(f"bad compressed data ({exc})") from None

    def read(self, n: int) -> bytes:
        self._fill(n)
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, self.CHUNK)
            self.read(step)
            n -= step


# mxCELL .. mxOPAQUE class codes of the array flags
CELL, STRUCT, OBJECT, CHAR, SPARSE, FUNCTION, OPAQUE = 1, 2, 3, 4, 5, 16, 17
NUMERIC = range(6, 16)  # double, single, int8 .. uint64


def _element(stream, order: str) -> tuple[int, int]:
    """Read one data element's tag, skip its data and padding (scipy's ``read_element``)."""
    mdtype, count = struct.unpack(order + "II", stream.read(8))
    if mdtype >> 16:  # small data element: byte count in the high half, data inside the tag
        if mdtype >> 16 > 4:
            raise _Corrupt("a small data element claims more than 4 bytes")
        return mdtype & 0xFFFF, mdtype >> 16
    stream.skip(count + (-count) % 8)
    return mdtype, count


def _data(stream, order: str) -> None:
    """A numeric or character data element: scipy indexes its type table with the code."""
    mdtype, _ = _element(stream, order)
    if mdtype not in DATA_TYPES:
        raise _Corrupt(f"unknown data element type {mdtype}")


def _element_bytes(stream, order: str) -> bytes:
    """A small element's data (dimensions, field-name length, field names)."""
    mdtype, count = struct.unpack(order + "II", stream.read(8))
    if mdtype >> 16:
        if mdtype >> 16 > 4:
            raise _Corrupt("a small data element claims more than 4 bytes")
        return struct.pack(order + "I", count)[: mdtype >> 16]  # the tag's second word is the data
    if count > 1 << 24:  # dimensions and field names: nothing real is this long
        raise _Corrupt("an array header element is too long")
    data = stream.read(count)
    stream.skip((-count) % 8)
    return data


def _matrix(stream, order: str, depth: int) -> None:
    """One ``miMATRIX`` element from its tag on, in the order of scipy's ``read_mi_matrix``."""
    mdtype, count = struct.unpack(order + "II", stream.read(8))
    if mdtype != MI_MATRIX:
        raise _Corrupt(f"expected a matrix element, found type {mdtype}")
    if count:
        _matrix_body(stream, order, depth)


def _matrix_body(stream, order: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Corrupt(f"matrices nested more than {MAX_DEPTH} deep")
    stream.skip(8)  # the array-flags tag: scipy does not look at it
    flags, _nzmax = struct.unpack(order + "II", stream.read(8))
    mclass, is_complex = flags & 0xFF, flags >> 11 & 1
    if mclass == OPAQUE:
        for _ in range(3):
            _element(stream, order)
        _matrix(stream, order, depth + 1)
        return
    dims_bytes = _element_bytes(stream, order)
    # MATLAB writes at least two int32 dimensions; fewer also crash scipy's reader (a char array, seen)
    if len(dims_bytes) % 4 or len(dims_bytes) < 8:
        raise _Corrupt(f"array dimensions of {len(dims_bytes)} bytes (expected 2 or more int32)")
    dims = struct.unpack(f"{order}{len(dims_bytes) // 4}i", dims_bytes)
    _element(stream, order)  # the name
    count = math.prod(dims) if dims else 0
    if mclass in NUMERIC:
        for _ in range(1 + is_complex):
            _data(stream, order)
    elif mclass == SPARSE:
        for _ in range(3 + is_complex):
            _data(stream, order)
    elif mclass == CHAR:
        _data(stream, order)
    elif mclass == CELL:
        for _ in range(max(count, 0)):
            _matrix(stream, order, depth + 1)
    elif mclass in (STRUCT, OBJECT):
        if mclass == OBJECT:
            _element(stream, order)  # the class name
        name_length = _element_bytes(stream, order)
        names = _element_bytes(stream, order)
        length = struct.unpack(order + "i", name_length)[0] if len(name_length) == 4 else 0
        n_fields = len(names) // length if length > 0 else 0
        for _ in range(max(count, 0) * n_fields):
            _matrix(stream, order, depth + 1)
    elif mclass == FUNCTION:
        _matrix(stream, order, depth + 1)
    else:
        raise _Corrupt(f"unknown array class {mclass}")


def v5_problem(fh: BinaryIO, file_size: int) -> str | None:
    """What makes the v5 file ``fh`` unsafe for scipy's reader, or None (see the module docstring)."""
    fh.seek(126)
    order = "<" if fh.read(2) == b"IM" else ">"  # scipy's rule for the endian indicator
    pos = HEADER_BYTES
    try:
        while file_size - pos >= 8:
            fh.seek(pos)
            mdtype, count = struct.unpack(order + "II", fh.read(8))
            body = pos + 8
            if count == 0:  # scipy refuses an empty variable itself
                return None
            if mdtype == MI_MATRIX:  # scipy reads on by structure, past the declared size if need be
                _matrix_body(_FileRegion(fh, body, file_size - body), order, 0)
            elif mdtype == MI_COMPRESSED:
                inflated = _Inflated(_FileRegion(fh, body, min(count, file_size - body)))
                _matrix(inflated, order, 0)
            else:  # scipy refuses it itself
                return None
            pos = body + count
    except _Corrupt as exc:
        return f"{exc} (at byte {pos})"
    return None
