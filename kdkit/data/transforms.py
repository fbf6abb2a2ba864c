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

from typing import Callable, Sequence

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
    crop_padding = max(1, size // 8)  # of "weak" on small images
    mean, std = list(map(float, mean)), list(map(float, std))

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
        ops += [v2.RandomCrop(size, padding=crop_padding), v2.RandomHorizontalFlip()]
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
        ops.append(v2.Normalize(mean, std))
    if augment == "strong":
        # Cutout: one square of side size/2 (area 1/4), filled with 0 (= the mean after normalising).
        ops.append(v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0))
    ops.append(v2.ToPureTensor())
    pipeline = v2.Compose(ops)
    if not (needs_resize or augment == "strong" or size > SMALL_IMAGE_MAX):  # see _BatchPipeline
        pipeline.kdkit_batched = (tuple(ops), _BatchPipeline(size, crop_padding if augment == "weak" else 0,
                                                             mean, std, normalize))
    return pipeline


def batch_form(transform) -> Callable | None:
    """The batched form of ``transform`` when it is a pipeline :func:`build_transform` made and still holds the
    steps it was made with (see :class:`_BatchPipeline`), else ``None``: apply ``transform`` image by image."""
    ops, batched = getattr(transform, "kdkit_batched", ((), None))
    return batched if batched is not None and tuple(getattr(transform, "transforms", ())) == ops else None


class _BatchPipeline:
    """What :func:`build_transform`'s pipeline does to each image, done to a whole ``uint8`` batch ``N x C x H x W``
    at once, with bit-identical results: the same random draws from torch's global RNG in the same order (per image:
    the crop's top, its left, then the flip's coin, as ``RandomCrop`` and ``RandomHorizontalFlip`` draw them) and
    the same element-wise arithmetic on each pixel.  Made only where that can be promised: not with resizing (its
    kernels are not checked batch against image), ``strong`` (AutoAugment's operations) or large images.

    Why: ``transforms.v2`` applies a pipeline to one image at a time, and its per-call overhead (about 100 us per
    28-pixel image for the six steps of ``weak``) was a fifth of a Fashion-MNIST student's CPU training step;
    torchvision has no batched form that draws per-image parameters.  A class, not a closure, so that datasets
    holding it still pickle (``DataLoader`` workers started by spawn or forkserver receive the dataset pickled)."""

    def __init__(self, size: int, padding: int, mean: list[float], std: list[float], normalize: bool):
        self.size, self.padding, self.mean, self.std, self.normalize = size, padding, mean, std, normalize

    def __call__(self, images):
        import torch
        from torchvision.transforms.v2 import functional as F

        if images.dim() != 4 or images.dtype != torch.uint8 or images.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected a uint8 batch N x C x {self.size} x {self.size}, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if self.padding:
            images = _crop_and_flip(images, self.padding)
        images = F.to_dtype(images, torch.float32, scale=True)
        return F.normalize(images, self.mean, self.std) if self.normalize else images


def _crop_and_flip(images, padding: int):
    """``RandomCrop(size, padding)`` then ``RandomHorizontalFlip()`` on each image of ``images``, in one gather."""
    import torch

    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    span = 2 * padding + 1  # the crop's possible offsets on each axis
    tops, lefts, flips = [], [], []
    for _ in range(n):  # scalar draws, in the per-image pipeline's order, so the RNG stream is the same
        tops.append(int(torch.randint(0, span, size=())))
        lefts.append(int(torch.randint(0, span, size=())))
        flips.append(not bool(torch.rand(1) >= 0.5))
    padded = torch.nn.functional.pad(images, [padding] * 4, value=0)
    offsets = torch.arange(size)
    rows = torch.tensor(tops).view(n, 1, 1, 1) + offsets.view(1, 1, size, 1)
    left = torch.tensor(lefts).view(n, 1)
    forward, mirrored = left + offsets, left + offsets.flip(0)
    cols = torch.where(torch.tensor(flips).view(n, 1), mirrored, forward).view(n, 1, 1, size)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]
