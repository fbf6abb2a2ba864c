"""Image transforms shared by kdkit's datasets (torchvision ``transforms.v2``, torch's RNG).

Every dataset keeps its images as ``uint8`` (``3 x H x W`` tensors or PIL images) and applies
one pipeline built here: optional resizing, the augmentation level, conversion to ``float32``
in ``[0, 1]`` and normalisation.  Random choices come from torch's global RNG (that is what
``transforms.v2`` uses), so the engine's per-epoch reseeding makes augmentation reproducible.

Augmentation levels (``augment`` option of every dataset, train split only):

* ``"none"``   — resize (and centre crop for large images) only;
* ``"weak"``   — small images (<= 64 px): random crop with padding ``size // 8`` + horizontal
  flip; large images: ``RandomResizedCrop(scale=(0.2, 1))`` + flip + rotation of 15 degrees
  (the "weak view" of the WordNet-relax authors' recipe);
* ``"strong"`` — ``"weak"`` + AutoAugment (CIFAR-10 policy) + one cutout (random erasing of
  a ``size/2``-side square, as Cutout(1, 16) at 32 px).
"""
from __future__ import annotations

from typing import Sequence

from kdkit.errors import ConfigError

AUGMENT_LEVELS = ("none", "weak", "strong")

#: Small images use crop-with-padding augmentation; larger ones random resized crops.
SMALL_IMAGE_MAX = 64


def check_augment(augment: str | None) -> str:
    augment = "none" if augment in (None, False) else ("weak" if augment is True else str(augment))
    if augment not in AUGMENT_LEVELS:
        raise ConfigError(
            f"data.augment must be one of {', '.join(AUGMENT_LEVELS)}; got {augment!r}"
        )
    return augment


def build_transform(
    augment: str = "none",
    image_size: int = 32,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    *,
    native_size: int | None = None,
    normalize: bool = True,
    center_crop: bool = False,
):
    """A ``transforms.v2`` pipeline mapping a ``uint8`` image to a normalised ``float32`` tensor.

    :param augment: ``"none"``, ``"weak"`` or ``"strong"`` (see the module docstring).
    :param image_size: side of the output image.
    :param native_size: the stored images' side when all have the same (CIFAR, shapes): no
        resize is done when it equals ``image_size``.  ``None`` (image folders): always resize.
    :param normalize: subtract ``mean`` and divide by ``std`` (else values stay in ``[0, 1]``).
    :param center_crop: for the deterministic path, resize the short side to
        ``image_size * 256 / 224`` and centre-crop ``image_size`` (ImageNet evaluation style);
        otherwise resize straight to ``image_size x image_size``.
    """
    import torch
    from torchvision.transforms import v2

    augment = check_augment(augment)
    size = int(image_size)
    ops: list = [v2.ToImage()]
    needs_resize = native_size is None or int(native_size) != size

    def deterministic_resize() -> list:
        if not needs_resize:
            return []
        if center_crop:
            return [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
        return [v2.Resize((size, size), antialias=True)]

    if augment == "none":
        ops += deterministic_resize()
    elif size <= SMALL_IMAGE_MAX:
        ops += deterministic_resize()
        ops += [v2.RandomCrop(size, padding=max(1, size // 8)), v2.RandomHorizontalFlip()]
    else:
        ops += [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15),
        ]
    if augment == "strong":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        ops.append(v2.Normalize(list(map(float, mean)), list(map(float, std))))
    if augment == "strong":
        # Cutout: one square of side size/2 (area 1/4), filled with 0 (= the mean after normalising).
        ops.append(v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)
