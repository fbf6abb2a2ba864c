#!/usr/bin/env python3
"""Write a class-balanced subset of Fashion-MNIST as an ImageFolder tree of PNGs:
``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``.

kdkit now reads Fashion-MNIST directly (``--set data.name=fashion_mnist``, with
``data.train_per_class`` / ``data.test_per_class`` for the same subset).  This script stays to
reproduce the runs docs/wordnet_relax.md reports, which went through the ``imagefolder`` dataset:

    sudo apt-get install dataset-fashion-mnist
    python scripts/fashion_mnist_imagefolder.py /tmp/fmnist --train-per-class 200 --test-per-class 50
    kdkit train --method wordnet_relax --set data.name=imagefolder --set data.root=/tmp/fmnist \\
        --set data.image_size=32

The files are read (and the first N images of each class, in file order, picked) by
:class:`kdkit.data.mnist.FashionMNIST`, so ``--source`` accepts whatever ``data.root`` does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Folder names in label order, as the reported runs used them: ImageFolder sorts folders by
#: name to number the classes, so another spelling (e.g. kdkit's "T-shirt") would reorder labels.
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def main(argv: list[str]) -> int:
    from kdkit.data.mnist import DEBIAN_FASHION_MNIST

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=Path(DEBIAN_FASHION_MNIST),
                        help="folder of the IDX files, or torchvision's root (default: Debian's)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args(argv)
    from PIL import Image

    from kdkit.data.mnist import FashionMNIST
    from kdkit.errors import KdkitError

    for split in ("train", "test"):
        try:
            data = FashionMNIST(split, str(args.source), augment="none", train_per_class=args.train_per_class,
                                test_per_class=args.test_per_class)
        except KdkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        written = dict.fromkeys(range(len(CLASSES)), 0)
        for folder in CLASSES:
            (args.out / split / folder).mkdir(parents=True, exist_ok=True)
        for index, label in enumerate(data.targets):
            grey = data.images[index, 0].numpy()
            Image.fromarray(grey).convert("RGB").save(args.out / split / CLASSES[label] / f"{written[label]:05d}.png")
            written[label] += 1
    print(f"wrote {args.out}/train and {args.out}/test ({len(CLASSES)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
