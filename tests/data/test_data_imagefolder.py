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


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    # torchvision's ImageFolder refuses it too; kdkit used to make it a class no image belongs to
    make_tree(tmp_path)
    (tmp_path / "train" / "n09999999").mkdir()
    (tmp_path / "train" / "n09999999" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*train/n09999999 holds no image; add images or remove"):
        ImageFolderDataset("train", str(tmp_path), image_size=8)


def test_class_map_json_nested_too_deep_is_a_data_error(tmp_path):
    deep = tmp_path / "map.json"
    deep.write_text('{"a": ' + '[' * 100_000)
    with pytest.raises(DataError, match="is not valid JSON"):
        read_class_map(deep)


def test_a_decompression_bomb_image_is_a_data_error(tmp_path):
    # a valid PNG header claiming 30000 x 30000 pixels: PIL refuses it with a non-OSError exception
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    make_tree(tmp_path, splits=("train",), per_class=1)
    bomb = tmp_path / "train" / "n01440764" / "0.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    ds = ImageFolderDataset("train", str(tmp_path), image_size=8)
    with pytest.raises(DataError,
                       match=r"cannot read image .*0.png: DecompressionBombError: Image size \(900000000 pixels\)"):
        ds[0]


@pytest.mark.parametrize("image_size", [None, 8])
def test_an_image_past_pil_s_pixel_limit_is_refused_where_pil_only_warns(tmp_path, monkeypatch, image_size):
    # PIL warns from MAX_IMAGE_PIXELS and refuses from twice as many: between the two it decoded (a 150 KB
    # PNG of 12,000 x 12,000 px took 2.7 GB); here the limit is lowered under a real, whole 8 x 8 image
    make_tree(tmp_path, splits=("train",), per_class=1, size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    message = r"cannot read image .*\.png: DecompressionBombError: 8 x 8 pixels, more than PIL.Image.MAX_IMAGE_PIXELS"
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DataError, match=message):
        ImageFolderDataset("train", str(tmp_path), image_size=image_size)[0]  # the header probe, or the decode


def test_folder_names_with_control_characters_keep_the_message_on_one_line(tmp_path):
    make_tree(tmp_path, splits=("train",), per_class=1)
    (tmp_path / "train" / "bad\nname").mkdir()
    with pytest.raises(DataError) as info:
        ImageFolderDataset("train", str(tmp_path), image_size=8)
    assert "\n" not in str(info.value) and "bad\\nname'" in str(info.value)


def test_a_png_with_a_truncated_header_is_a_data_error(tmp_path):
    # found by tests/fuzz/test_fuzz_imagefolder.py: PIL raises ValueError("Truncated IHDR chunk"), not OSError
    make_tree(tmp_path, splits=("train",), per_class=1)
    png = tmp_path / "train" / "n01440764" / "0.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0cIHDR\x00\x00\x00\x04\x00\x00\x00\x04\x08\x02\x00\x00\x00&\x93"
                    b"\t)\x00\x00\x00\x0cIDATx\x9cc` \x1d\x00\x00\x004\x00\x01v^\xae\xc3\x00\x00\x00\x00IEND\xaeB`\x82")
    ds = ImageFolderDataset("train", str(tmp_path), image_size=8)
    with pytest.raises(DataError, match=r"cannot read image .*0.png: ValueError: Truncated IHDR chunk"):
        ds[0]


def test_small_images_keep_their_own_size_by_default(tmp_path):
    """image_size null: 28 px images stay 28 px (no resize: the pixels are the file's), in both splits."""
    make_tree(tmp_path, size=(28, 28))
    train = ImageFolderDataset("train", str(tmp_path), augment="none", normalize=False)
    test = ImageFolderDataset("test", str(tmp_path), normalize=False)
    assert train.image_size == test.image_size == 28 and train.native_size == 28
    stored = torch.from_numpy(np.array(Image.open(train.samples[0][0]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(train.get_uint8(0), stored)
    assert torch.allclose(train[0][0], stored.float() / 255)


def test_mixed_small_images_resize_to_the_largest_side_and_large_ones_to_224(tmp_path):
    make_tree(tmp_path / "small", size=(40, 30))
    ds = ImageFolderDataset("train", str(tmp_path / "small"), augment="none")
    assert ds.image_size == 40 and ds.native_size is None and not ds.center_crop
    assert ds[0][0].shape == (3, 40, 40)
    make_tree(tmp_path / "large", per_class=1, size=(80, 60))
    large = ImageFolderDataset("test", str(tmp_path / "large"))
    assert large.image_size == 224 and large.center_crop and large[0][0].shape == (3, 224, 224)
    assert ImageFolderDataset("train", str(tmp_path / "large"), image_size=16)[0][0].shape == (3, 16, 16)


def _cats_and_dogs(root, n=5):
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / "train" / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("target", ["..", ".", "../dog", "../../train"])
def test_a_directory_symlink_back_into_the_split_is_refused(tmp_path, target):
    # issue 22: `ln -s .. train/cat/loop` gave 394 images instead of 10, dogs labelled cat, and no error
    _cats_and_dogs(tmp_path)
    link = tmp_path / "train" / "cat" / "loop"
    link.symlink_to(target)
    with pytest.raises(DataError) as info:
        ImageFolderDataset("train", str(tmp_path), image_size=8)
    msg = str(info.value)
    assert "\n" not in msg and str(link) in msg and "points back into" in msg


def test_a_directory_symlink_leaving_the_root_is_refused(tmp_path):
    _cats_and_dogs(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "x.png")
    link = tmp_path / "data" / "train" / "dog" / "more"
    link.symlink_to(outside)
    with pytest.raises(DataError, match="leaves data.root") as info:
        ImageFolderDataset("train", str(tmp_path / "data"), image_size=8)
    assert str(link) in str(info.value)


def test_directory_symlinks_inside_the_root_are_followed_once(tmp_path):
    _cats_and_dogs(tmp_path)
    pool = tmp_path / "pool" / "cats"
    pool.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(pool / f"p{i}.png")
    (tmp_path / "train" / "cat" / "more").symlink_to(pool)
    ds = ImageFolderDataset("train", str(tmp_path), image_size=8)
    assert ds.targets == [0] * 8 + [1] * 5
    assert [p for p, _ in ds.samples][5:8] == [str(tmp_path / "train" / "cat" / "more" / f"p{i}.png") for i in range(3)]
    (tmp_path / "train" / "dog" / "again").symlink_to(pool)  # the same folder reached twice
    with pytest.raises(DataError, match="another link already reached"):
        ImageFolderDataset("train", str(tmp_path), image_size=8)
