"""``benchmarks/image_pipeline.py`` at toy size: a 20-image tree from a fake Fashion-MNIST, kdkit's
ImageFolder path against torchvision's ``ImageFolder`` + ``DataLoader`` — same files, same labels,
the same tensors, and the report's fields."""
from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import image_pipeline


def fake_fashion_mnist(folder: Path, n: int = 20) -> Path:
    """IDX files of ``n`` random 28 x 28 images, labels 0..9 in turn (what the benchmark reads)."""
    folder.mkdir()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for name, array in (("train-images-idx3-ubyte.gz", images), ("train-labels-idx1-ubyte.gz", labels)):
        header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def test_toy_run_yields_the_same_labels_and_tensors_and_writes_its_report(tmp_path, capsys):
    source = fake_fashion_mnist(tmp_path / "fmnist")
    out = tmp_path / "r.json"
    report = image_pipeline.main(["--source", str(source), "--tree", str(tmp_path / "tree"), "--images", "20",
                                  "--sizes", "32", "--workers", "0", "--rounds", "1", "--epochs", "1",
                                  "--batch", "8", "--check", "20", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert {"cpu", "load_before", "load_after", "tolerance_levels", "results"} <= set(report)
    assert report["cpu"]["isa"] in ("AVX-512 VPOPCNTDQ", "AVX2", "neither")
    assert [(r["format"], r["size"], r["workers"]) for r in report["results"]] == [("png", 32, 0), ("jpeg", 32, 0)]
    for row in report["results"]:
        assert row["images"] == 20 and row["image_size"] == 32
        assert row["kdkit_images_per_s"] > 0 and row["torchvision_images_per_s"] > 0 and row["ratio"] > 0
        # both read the file with PIL and run the same operations: the same tensors, whatever the format
        assert row["same_tensors"] == {"files": 20, "labels_equal": True, "max_diff_levels": 0.0,
                                       "within_tolerance": True}
    assert "kdkit img/s" in capsys.readouterr().out


def test_both_paths_list_the_same_files_and_yield_the_same_items(tmp_path):
    source = fake_fashion_mnist(tmp_path / "fmnist")
    roots = image_pipeline.build_tree(tmp_path / "tree", 20, [32], ["png"], source)
    kd = image_pipeline.kdkit_dataset(roots["png", 32])
    tv = image_pipeline.torchvision_dataset(roots["png", 32], image_pipeline.compose_transform(kd))
    assert kd.samples == tv.samples and len(kd) == 20 and sorted(set(kd.targets)) == list(range(10))
    for i in range(len(kd)):
        (x, y), (u, t) = kd[i], tv[i]
        assert y == t and x.shape == (3, 32, 32) and bool((x == u).all())
