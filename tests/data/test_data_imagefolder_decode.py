"""How ImageFolder reads an image: PIL decodes it (a file cut short in its pixel data is a one-line
error), and without augmentation torchvision's v2 kernels transform it, to the v2.Compose's tensors.

torchvision 0.29's ``torchvision.io.decode_image`` was measured as a faster decoder (issue 23,
item 2) and rejected: on the PNG below it crashes the process with a segmentation fault.  This
holds any later decoder change to the one-line error."""
from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from kdkit.data.imagefolder import EvalTransform, ImageFolderDataset
from kdkit.data.transforms import build_transform
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


# --- the deterministic transform: v2 kernels without the Compose -------------------------------------

def _tree(root, size, per_class=2):
    rng = np.random.RandomState(1)
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
            Image.fromarray(arr).save(root / "train" / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("image_size,size,normalize", [
    (None, (32, 32), True),    # small, uniform: no resize
    (None, (20, 12), True),    # small, mixed: straight resize to 20
    (None, (100, 70), True),   # large: short side to 256, centre crop 224
    (24, (100, 70), False),    # downscale, centre crop, values in [0, 1]
    (40, (17, 33), True),      # upscale, centre crop of a tall image
])
def test_the_eval_transform_is_the_kernel_path_with_the_compose_s_tensors(tmp_path, image_size, size, normalize):
    ds = ImageFolderDataset("train", str(_tree(tmp_path, size)), image_size=image_size, augment="none",
                            normalize=normalize, mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
    assert isinstance(ds.transform, EvalTransform)  # the v2.Compose cost as much as a 32 px decode
    compose = build_transform("none", ds.image_size, ds.mean, ds.std, native_size=ds.native_size,
                              normalize=ds.normalize, center_crop=ds.center_crop)
    assert isinstance(ds.with_augment("weak").transform, v2.Compose)  # random ops keep the Compose
    for i in range(len(ds)):
        img = ds._raw(i)
        for source in (img, v2.functional.pil_to_tensor(img)):
            x, ref = ds.transform(source), compose(source)
            assert type(x) is torch.Tensor and x.dtype == torch.float32 and torch.equal(x, ref)
        assert torch.equal(ds[i][0], compose(img)) and ds[i][0].shape == (3, ds.image_size, ds.image_size)


def test_the_eval_transform_pickles_for_dataloader_workers(tmp_path):
    ds = ImageFolderDataset("train", str(_tree(tmp_path, (40, 30))), image_size=16, augment="none")
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[1][0], ds[1][0]) and "EvalTransform(size=16" in repr(ds.transform)
