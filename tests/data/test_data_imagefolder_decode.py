"""How ImageFolder decodes: PIL, and a file cut short in its pixel data is a one-line error.

torchvision 0.29's ``torchvision.io.decode_image`` was measured as a faster decoder (issue 23,
item 2) and rejected: on the PNG below it crashes the process with a segmentation fault.  This
holds any later decoder change to the one-line error."""
from __future__ import annotations

import struct
import zlib

import pytest

from kdkit.data.imagefolder import ImageFolderDataset
from kdkit.errors import DataError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_cut_short_in_its_pixel_data_is_a_one_line_error_not_a_crash(tmp_path):
    # a valid 100 x 100 RGB header (CRCs right) and 64 bytes of pixel data: a truncated download
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 100, 100, 8, 2, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "0.png").write_bytes(png)
    ds = ImageFolderDataset("train", str(tmp_path), image_size=8, augment="none")
    with pytest.raises(DataError, match=r"^cannot read image .*0\.png: OSError: image file is truncated") as err:
        ds[0]
    assert "\n" not in str(err.value)
