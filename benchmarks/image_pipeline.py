#!/usr/bin/env python
"""Images/s of kdkit's ImageFolder path against torchvision's ``ImageFolder`` + ``DataLoader`` (issue 23, item 2).

A tree is made once from Debian's Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, read with
kdkit's own IDX reader): the first ``--images / 10`` training images of each class, upscaled
(PIL bicubic) to 32 and 224 px, saved as RGB PNG and as RGB JPEG (quality 90), in
``TREE/<format>-<size>/train/<class>/<i>.<ext>``.  It is cached in ``--tree`` (default: a folder
under the system's temp dir named by the image count) and reused when complete.

For each (format, size, workers in ``--workers``):

* **kdkit**: the dataset built as a run builds it, ``kdkit.get_registry("datasets").build("imagefolder",
  "train", ROOT, augment="none")`` (``image_size`` null: 32 px images are kept as they are, 224 px ones
  resized to 256 and centre-cropped to 224), iterated through the trainer's loader
  (:func:`kdkit.engine.data.make_train_loader`, batch ``--batch``);
* **torchvision**: ``torchvision.datasets.ImageFolder(ROOT/train, transform=T)`` and a shuffling ``DataLoader``
  of the same batch and workers, where ``T`` is the ``transforms.v2.Compose`` of kdkit's ``build_transform``
  for the same options (the same operations, which kdkit's dataset runs as bare kernels), and torchvision's
  own PIL loader.

A round builds the loader and iterates ``--epochs`` epochs (worker start-up included, as in a run);
images/s = images x epochs / seconds.  The two paths alternate within each round (which goes first
alternates too), ``--rounds`` rounds, medians and the ratio kdkit / torchvision are reported.  Before
timing, the first ``--check`` files are compared: both paths must yield the same labels, and their
tensors may differ by at most ``--tolerance`` 8-bit levels (the normalisation undone); the largest
difference is reported.  The CPU model, its ISA and the load average before and after are printed
and written to ``--json``.

The full measurement (run on a quiet machine)::

    .venv/bin/python benchmarks/image_pipeline.py --images 1000 --rounds 5 --epochs 3 --json image_pipeline.json

A toy check (seconds)::

    .venv/bin/python benchmarks/image_pipeline.py --images 20 --rounds 1 --epochs 1 --sizes 32 --workers 0
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_defaults import cpu_description, loadavg  # benchmarks/ is not a package

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FORMATS = {"png": ("PNG", ".png", {}), "jpeg": ("JPEG", ".jpg", {"quality": 90})}


def build_tree(tree: Path, images: int, sizes: list[int], formats: list[str], source: Path = FASHION_MNIST) -> dict:
    """``{(format, size): root}``, writing the images that are missing (a finished root holds a ``.done`` file)."""
    import numpy as np
    from PIL import Image

    from kdkit.data.mnist import FASHION_MNIST_RAW_CLASSES, first_per_class, read_idx

    roots = {(fmt, size): tree / f"{fmt}-{size}" for fmt in formats for size in sizes}
    todo = {key: root for key, root in roots.items() if not (root / ".done").is_file()}
    if not todo:
        return roots
    if images % 10:
        raise SystemExit(f"--images must be a multiple of 10 (one tenth per class), got {images}")
    pixels = read_idx(source / "train-images-idx3-ubyte.gz")
    labels = np.asarray(read_idx(source / "train-labels-idx1-ubyte.gz"))
    keep = first_per_class(labels, images // 10, FASHION_MNIST_RAW_CLASSES, what="Fashion-MNIST")
    for (fmt, size), root in todo.items():
        kind, ext, options = FORMATS[fmt]
        for n, i in enumerate(keep):
            folder = root / "train" / f"class{int(labels[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.asarray(pixels[i]), "L").convert("RGB")
            if size != img.width:
                img = img.resize((size, size), Image.BICUBIC)
            img.save(folder / f"{n:06d}{ext}", kind, **options)
        (root / ".done").write_text(f"{len(keep)}\n")
    return roots


def kdkit_dataset(root: Path):
    import kdkit

    return kdkit.get_registry("datasets").build("imagefolder", "train", str(root), augment="none")


def kdkit_loader(dataset, batch: int, workers: int):
    from kdkit.engine.data import make_train_loader

    return make_train_loader(dataset, batch, seed=0, num_workers=workers)[0]


def compose_transform(kd):
    """The ``v2.Compose`` a torchvision user writes for kdkit's deterministic pipeline (the dataset itself
    runs the same kernels without the Compose: :class:`kdkit.data.imagefolder.EvalTransform`)."""
    from kdkit.data.transforms import build_transform

    return build_transform("none", kd.image_size, kd.mean, kd.std, native_size=kd.native_size,
                           normalize=kd.normalize, center_crop=kd.center_crop)


def torchvision_dataset(root: Path, transform):
    from torchvision import datasets

    return datasets.ImageFolder(str(root / "train"), transform=transform)


def torchvision_loader(dataset, batch: int, workers: int):
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def time_loader(make, n_images: int, epochs: int) -> float:
    """Images/s of building a loader and iterating it ``epochs`` times."""
    t0 = time.perf_counter()
    loader = make()
    seen = 0
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            seen += len(batch[1])
    seconds = time.perf_counter() - t0
    del loader
    if seen != n_images * epochs:
        raise SystemExit(f"a loader yielded {seen} images, expected {n_images * epochs}")
    return n_images * epochs / seconds


def compare(kd, tv, count: int) -> dict:
    """Labels and largest difference (8-bit levels, normalisation undone) of the first ``count`` files."""
    paths_kd, paths_tv = [p for p, _ in kd.samples], [p for p, _ in tv.samples]
    if paths_kd != paths_tv:
        raise SystemExit("kdkit and torchvision list different files")
    worst, labels_equal = 0.0, True
    for i in range(min(count, len(kd))):
        (x, y), (u, t) = kd[i], tv[i]
        labels_equal &= int(y) == int(t)
        if x.shape != u.shape:
            raise SystemExit(f"{paths_kd[i]}: kdkit yields {tuple(x.shape)}, torchvision {tuple(u.shape)}")
        levels = (kd.to_pixels(x[None]) - kd.to_pixels(u[None])).abs().max().item() * 255
        worst = max(worst, levels)
    return {"files": min(count, len(kd)), "labels_equal": labels_equal, "max_diff_levels": round(worst, 3)}


def measure(root: Path, workers: int, batch: int, rounds: int, epochs: int, check: int, tolerance: float) -> dict:
    kd = kdkit_dataset(root)
    tv = torchvision_dataset(root, compose_transform(kd))
    same = compare(kd, tv, check)
    same["within_tolerance"] = same["labels_equal"] and same["max_diff_levels"] <= tolerance
    paths = {"kdkit": lambda: kdkit_loader(kd, batch, workers),
             "torchvision": lambda: torchvision_loader(tv, batch, workers)}
    rates: dict = {name: [] for name in paths}
    for r in range(rounds):
        for name in (("kdkit", "torchvision") if r % 2 == 0 else ("torchvision", "kdkit")):
            rates[name].append(round(time_loader(paths[name], len(kd), epochs), 1))
    kd_rate, tv_rate = statistics.median(rates["kdkit"]), statistics.median(rates["torchvision"])
    return {"images": len(kd), "image_size": kd.image_size, "workers": workers, "rounds": rates,
            "kdkit_images_per_s": kd_rate, "torchvision_images_per_s": tv_rate,
            "ratio": round(kd_rate / tv_rate, 3), "same_tensors": same}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=None, help="folder of the cached image tree")
    parser.add_argument("--images", type=int, default=1000, help="training images (a multiple of 10)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round (one loader per round)")
    parser.add_argument("--check", type=int, default=50, help="files whose tensors are compared")
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="largest allowed difference in 8-bit levels (decoder and resize rounding)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--source", type=Path, default=FASHION_MNIST, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    tree = args.tree or Path(tempfile.gettempdir()) / f"kdkit-image-pipeline-{args.images}"
    roots = build_tree(tree, args.images, args.sizes, args.formats, args.source)
    cpu = cpu_description()
    report = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "load_before": loadavg(), "tree": str(tree),
              "batch": args.batch, "epochs": args.epochs, "tolerance_levels": args.tolerance, "results": []}
    print(f"CPU: {cpu['model']} ({cpu['isa']}, {cpu['cores']} cores); load average {report['load_before']}")
    print(f"{'format':>6} {'size':>4} {'workers':>7} {'kdkit img/s':>12} {'torchvision img/s':>18} {'ratio':>6} "
          f"{'max diff':>8}")
    for (fmt, size), root in roots.items():
        for workers in args.workers:
            row = {"format": fmt, "size": size, **measure(root, workers, args.batch, args.rounds, args.epochs,
                                                          args.check, args.tolerance)}
            report["results"].append(row)
            print(f"{fmt:>6} {size:>4} {workers:>7} {row['kdkit_images_per_s']:>12.1f} "
                  f"{row['torchvision_images_per_s']:>18.1f} {row['ratio']:>6.3f} "
                  f"{row['same_tensors']['max_diff_levels']:>8.2f}", flush=True)
    report["load_after"] = loadavg()
    print(f"load average after: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if all(r["same_tensors"]["within_tolerance"] for r in report["results"]) else 1)
