"""Internal default plugin: registers kdkit's built-in datasets.

Each dataset is its class's import path (imported when a run builds it: listing plugins stays cheap)
plus its declared options; the class is called as ``cls(split, root, **options)``.
"""
from __future__ import annotations

import kdkit
from kdkit.config.keys import ConfigKey


def _augment(default: str, help_text: str) -> ConfigKey:
    return ConfigKey(default, help_text, type=str, nullable=True)


def _per_class(default, help_text: str) -> ConfigKey:
    return ConfigKey(default, help_text, type=int, nullable=default is None, range="[1, inf)")


def _image_size(default: int, help_text: str = "side of the yielded images in pixels") -> ConfigKey:
    return ConfigKey(default, help_text, range="[1, inf)")


_NORMALIZE = ConfigKey(True, "subtract the dataset's mean and divide by its std (else values in [0, 1])")

_CIFAR_OPTIONS = {
    "download": ConfigKey(False, "download the archive with torchvision when data.root lacks it (needs the internet)"),
    "image_size": _image_size(32, "side of the yielded images (32: native; other sizes resize)"),
    "augment": _augment("weak", "train split: weak (padded random crop + flip), none or strong (+ AutoAugment, "
                                "cutout)"),
    "normalize": _NORMALIZE,
    "verify": ConfigKey(False, "check the archive's MD5 sums before reading"),
}

_IDX_OPTIONS = {
    "image_size": _image_size(28, "side of the yielded images (28: native; other sizes resize)"),
    "normalize": _NORMALIZE,
}

#: name -> (class import path, declared options, one-line description)
DATASETS = {
    "shapes": ("kdkit.data.shapes:ShapesDataset", {
        "num_classes": ConfigKey(10, "number of classes (a prefix of the shapes' WordNet nouns, at most 16)",
                                 range="[1, inf)"),
        "image_size": _image_size(32),
        "train_per_class": _per_class(200, "images per class in the training split"),
        "test_per_class": _per_class(50, "images per class in the test split"),
        "seed": ConfigKey(0, "seed of the generator (the splits are independent draws)", range="[0, inf)"),
        "augment": _augment("none", "train split: none (default: position, size and rotation are already "
                                    "random), weak or strong"),
        "normalize": _NORMALIZE,
        "cache_dir": ConfigKey(None, "folder caching the generated arrays (null: memory only)", type=str),
    }, "embedded offline default: seeded procedurally generated figures (10 WordNet-noun classes, 32 px)"),
    "cifar100": ("kdkit.data.cifar:CIFAR100Dataset", _CIFAR_OPTIONS,
                 "CIFAR-100 in torchvision's on-disk format (download only with data.download=true)"),
    "cifar10": ("kdkit.data.cifar:CIFAR10Dataset", _CIFAR_OPTIONS,
                "CIFAR-10 in torchvision's on-disk format (download only with data.download=true)"),
    "fashion_mnist": ("kdkit.data.mnist:FashionMNIST", {
        **_IDX_OPTIONS,
        "augment": _augment("weak", "train split: weak (default: 3-px padded random crop + flip), none, strong "
                                    "(+ AutoAugment, cutout)"),
        "train_per_class": _per_class(None, "null: every training image; N: the first N of each class in file "
                                            "order (balanced)"),
        "test_per_class": _per_class(None, "null: every test image; N: the first N of each class in file order"),
    }, "Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist); 10 WordNet-noun classes, 28 px"),
    "mnist": ("kdkit.data.mnist:MNIST", {
        **_IDX_OPTIONS,
        "augment": _augment("none", "train split: none (default), weak or strong (both flip horizontally, which "
                                    "mirrors digits)"),
        "train_per_class": _per_class(None, "null: every training image; N: the first N of each digit in file "
                                            "order (at most 5421)"),
        "test_per_class": _per_class(None, "null: every test image; N: the first N of each digit in file order "
                                           "(at most 892)"),
    }, "MNIST digits from their IDX files (data.root: the files or torchvision's MNIST/raw)"),
    "imagefolder": ("kdkit.data.imagefolder:ImageFolderDataset", {
        "image_size": ConfigKey(None, "side of the yielded images (resized, centre-cropped for evaluation); null: "
                                      "the images' own size when all sides are <= 64 px, else 224", type=int,
                                range="[1, inf)"),
        "augment": _augment("weak", "train split: weak (random resized crop + flip + rotation for large images), "
                                    "none or strong"),
        "normalize": ConfigKey(True, "subtract mean and divide by std (else values in [0, 1])"),
        "mean": ConfigKey(None, "per-channel mean for normalize (null: ImageNet's)", type=list, items=float),
        "std": ConfigKey(None, "per-channel std for normalize (null: ImageNet's)", type=list, items=float),
        "class_map": ConfigKey(None, "folder -> class-name mapping file, JSON or text (null: folder names)",
                               type=str),
        "class_map_first": ConfigKey(True, "keep only the text before the first comma of a mapped name"),
        "train_dir": ConfigKey("train", "folder of the train split under data.root"),
        "test_dir": ConfigKey(None, "folder of the test split (null: test, else val)", type=str),
    }, "image folders ROOT/{train,val|test}/<class>/...; optional class-name mapping file"),
    "text": ("kdkit.data.text:TextClassificationDataset", {
        "tokenizer": ConfigKey(None, "local Hugging Face tokenizer directory (save_pretrained); required",
                               type=str),
        "max_length": ConfigKey(128, "tokens per sample (padded with the pad token, truncated)", range="[1, inf)"),
        "text_field": ConfigKey("text", "the JSONL field / CSV column holding the text"),
        "label_field": ConfigKey("label", "the JSONL field / CSV column holding the label (string or integer)"),
        "train_file": ConfigKey(None, "file of the train split under data.root (null: train.jsonl or train.csv)",
                                type=str),
        "test_file": ConfigKey(None, "file of the test split (null: test.jsonl/.csv, else val.jsonl/.csv)",
                               type=str),
    }, "text classification: ROOT/{train,test}.{jsonl,csv} with text and label, tokenised by a local "
       "Hugging Face tokenizer (the hf extra)"),
}


@kdkit.hookimpl
def kdkit_register_datasets(register):
    for name, (target, options, description) in DATASETS.items():
        register(name, target, description=description, options=options)
