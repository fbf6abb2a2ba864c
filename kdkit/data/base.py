"""The common base of kdkit's image-classification datasets."""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from kdkit.data.transforms import batch_form, build_transform, check_augment

SPLITS = ("train", "test")


def check_split(split: str, dataset: str) -> str:
    from kdkit.errors import ConfigError

    if split not in SPLITS:
        raise ConfigError(f"dataset {dataset!r}: split must be one of {', '.join(SPLITS)}; got {split!r}")
    return split


class ImageClassificationDataset(Dataset):
    """A dataset of ``(float image 3 x H x W, int label)`` with class names for text use.

    Attributes every subclass sets:

    * ``classes`` — human-readable class names (``list[str]``, index = label), suitable for
      text prompts and WordNet look-ups (spaces, not underscores);
    * ``raw_classes`` — the names exactly as the source stores them (folder names, CIFAR's
      ``fine_label_names`` with underscores, ...);
    * ``targets`` — ``list[int]``, one label per sample;
    * ``split``, ``image_size``, ``augment``, ``mean``, ``std``.

    ``get_uint8(i)`` returns sample ``i`` as a ``uint8`` ``3 x image_size x image_size`` tensor
    without augmentation or normalisation (for CLIP preprocessing, visualisation);
    ``with_augment("none")`` returns a view on the same images with another augmentation level
    (e.g. a validation split held out from an augmented training split).
    """

    name: str = "dataset"
    classes: list[str]
    raw_classes: list[str]
    targets: list[int]
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.25, 0.25, 0.25)
    #: Side of the stored images when they all share it (None: varies, e.g. image folders).
    native_size: int | None = None
    #: Resize the short side and centre-crop (True) or resize to a square (False).
    center_crop: bool = False

    def _init_transform(
        self,
        split: str,
        image_size: int,
        augment: str | None,
        normalize: bool = True,
        transform: Callable | None = None,
    ) -> None:
        self.split = split
        self.image_size = int(image_size)
        self.augment = check_augment(augment) if split == "train" else "none"
        self.normalize = bool(normalize)
        self.transform = transform if transform is not None else self._default_transform(self.augment)

    def _default_transform(self, augment: str):
        return build_transform(
            augment,
            self.image_size,
            self.mean,
            self.std,
            native_size=self.native_size,
            normalize=self.normalize,
            center_crop=self.center_crop,
        )

    # --- subclasses implement -------------------------------------------------------------
    def _raw(self, index: int):
        """The stored image ``index`` (uint8 tensor ``3 x H x W`` or a PIL image)."""
        raise NotImplementedError

    # --- common API ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(self._raw(index)), int(self.targets[index])

    def get_uint8(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``uint8`` ``3 x image_size x image_size``, no augmentation."""
        from torchvision.transforms import v2

        ops = [v2.ToImage()]
        if self.native_size is None or self.native_size != self.image_size:
            if self.center_crop:
                ops += [v2.Resize(int(round(self.image_size * 256 / 224)), antialias=True),
                        v2.CenterCrop(self.image_size)]
            else:
                ops += [v2.Resize((self.image_size, self.image_size), antialias=True)]
        ops.append(v2.ToPureTensor())
        return v2.Compose(ops)(self._raw(index))

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of this dataset's images (``B x 3 x H x W``, as its default transform made them)
        back in ``[0, 1]``: the normalisation undone when ``normalize`` is on, values kept otherwise."""
        images = images.float()
        if not self.normalize:
            return images
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    def with_augment(self, augment: str | None) -> "ImageClassificationDataset":
        """A shallow copy sharing the images, with the default transform of ``augment``."""
        view = copy.copy(self)
        view.augment = check_augment(augment)
        view.transform = view._default_transform(view.augment)
        return view

    def with_transform(self, transform: Callable) -> "ImageClassificationDataset":
        """A shallow copy sharing the images whose samples go through ``transform`` instead."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
            f"image_size={self.image_size}, augment={self.augment!r})"
        )


class TensorImageDataset(ImageClassificationDataset):
    """Images held in memory as one ``uint8`` tensor ``N x 3 x H x W`` (shapes, CIFAR)."""

    images: torch.Tensor

    def _raw(self, index: int) -> torch.Tensor:
        return self.images[index]

    def __getitems__(self, indices: list) -> list:
        """``[self[i] for i in indices]``, the batch ``DataLoader`` fetches: through the batched form of the
        default pipeline where it has one (no resizing; the same values from the same random draws:
        :func:`kdkit.data.transforms.batch_form`), else image by image."""
        batched = batch_form(self.transform)
        if batched is None or not len(indices):
            return [self[i] for i in indices]
        images = batched(self.images[torch.as_tensor(list(indices), dtype=torch.long)])
        return [(image, int(self.targets[i])) for image, i in zip(images, indices)]

    def uint8_images(self) -> torch.Tensor:
        """All images as one ``uint8`` tensor ``N x 3 x image_size x image_size``."""
        if self.native_size == self.image_size:
            return self.images
        return torch.stack([self.get_uint8(i) for i in range(len(self))])
