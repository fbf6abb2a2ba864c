#!/usr/bin/env python3
"""Write a class-balanced subset of Fashion-MNIST (the original gzipped IDX files, as Debian's
``dataset-fashion-mnist`` installs them) as an ImageFolder tree of PNGs, for kdkit's ``imagefolder``
dataset: ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``.

    sudo apt-get install dataset-fashion-mnist
    python scripts/fashion_mnist_imagefolder.py /tmp/fmnist --train-per-class 200 --test-per-class 50
    kdkit train --plugin wordnet_relax --set data.name=imagefolder --set data.root=/tmp/fmnist \\
        --set data.image_size=32

The first N images of each class (in file order) are taken; folder names are WordNet nouns.
"""
from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes of data for shape {shape} (truncated?)")
    return body.reshape(shape)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=DEBIAN)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args(argv)
    from PIL import Image

    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        try:
            images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        except (OSError, ValueError) as exc:
            print(f"error: {exc} (apt-get install dataset-fashion-mnist, or --source DIR)", file=sys.stderr)
            return 2
        for c, name in enumerate(CLASSES):
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate((labels == c).nonzero()[0][:per_class]):
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{k:05d}.png")
    print(f"wrote {args.out}/train and {args.out}/test ({len(CLASSES)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
