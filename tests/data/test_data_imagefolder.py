"""ImageFolder layout with class-name mapping files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdkit.data.imagefolder import ImageFolderDataset, read_class_map
from kdkit.errors import DataError

WNIDS = {"n01440764": "tench, Tinca tinca", "n02102040": "English springer, English springer spaniel"}


def make_tree(root, splits=("train", "val"), per_class=3, size=(40, 30)):
    rng = np.random.RandomState(0)
    for split in splits:
        for wnid in WNIDS:
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_folder_names_and_labels(tmp_path):
    make_tree(tmp_path)
    ds = ImageFolderDataset("train", str(tmp_path), image_size=16)
    assert ds.raw_classes == sorted(WNIDS) and ds.classes == sorted(WNIDS)
    assert ds.targets == [0, 0, 0, 1, 1, 1]
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    u = ds.get_uint8(0)
    assert u.dtype == torch.uint8 and u.shape == (3, 16, 16)
    test = ImageFolderDataset("test", str(tmp_path), image_size=16)  # falls back to val/
    assert len(test) == 6 and test.augment == "none"
    assert torch.equal(test[0][0], test[0][0])


def test_text_mapping_file_like_imagenet(tmp_path):
    make_tree(tmp_path)
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{k} {v}\n" for k, v in WNIDS.items()))
    ds = ImageFolderDataset("train", str(tmp_path), image_size=16, class_map=str(mapping))
    assert ds.classes == ["tench", "English springer"]
    ds_full = ImageFolderDataset("train", str(tmp_path), image_size=16, class_map=str(mapping), class_map_first=False)
    assert ds_full.classes[0] == "tench, Tinca tinca"


def test_tab_and_json_mapping(tmp_path):
    tab = tmp_path / "map.txt"
    tab.write_text("# comment\nn01440764\tfreshwater fish\n\nn02102040\tspaniel\n")
    assert read_class_map(tab) == {"n01440764": "freshwater fish", "n02102040": "spaniel"}
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"n01440764": "tench"}))
    make_tree(tmp_path / "data")
    ds = ImageFolderDataset("test", str(tmp_path / "data"), image_size=8, class_map=str(js))
    assert ds.classes == ["tench", "n02102040"]  # unmapped folders keep their name


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        ImageFolderDataset("train", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="data.root"):
        ImageFolderDataset("train", None)
    make_tree(tmp_path / "d", splits=("train",))
    with pytest.raises(DataError, match="split 'test'"):
        ImageFolderDataset("test", str(tmp_path / "d"))
    with pytest.raises(DataError, match="class map file not found"):
        ImageFolderDataset("train", str(tmp_path / "d"), class_map=str(tmp_path / "nope.txt"))
    bad = tmp_path / "d" / "train" / "n01440764" / "9.png"
    bad.write_bytes(b"not an image")
    ds = ImageFolderDataset("train", str(tmp_path / "d"), image_size=8)
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("9.png")][0]
    with pytest.raises(DataError, match="9.png"):
        ds[idx]
