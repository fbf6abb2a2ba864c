"""Built-in kdkit plugin ``soda``: semantic-cohesive two-stage knowledge distillation for
cross-modal hashing (Sun, Chen, Yan — arXiv 2510.09664), with the cross-modal datasets it needs.

Uses only kdkit's public API (``kdkit``, ``kdkit.distill``, ``kdkit.ops``).  Heavy modules (torch,
open_clip) are imported only when a component is built.  See ``docs/soda.md``.
"""
from __future__ import annotations

import kdkit
from kdkit import ConfigKey

__version__ = "0.1.0"


_SPLITS = {
    "query_size": ConfigKey(None, "query-set size (null: the split preset's)", type=int, range="[1, inf)"),
    "train_size": ConfigKey(None, "training-set size (null: the split preset's)", type=int, range="[1, inf)"),
    "split_seed": ConfigKey(None, "seed of the query/train permutation (null: the split preset's)", type=int,
                            range="[0, inf)"),
}
_HANDLING = {
    "on_no_label": ConfigKey("drop", "a sample without any label: drop (count logged), keep (never relevant) or "
                                     "error", choices=("drop", "keep", "error")),
    "on_empty_caption": ConfigKey("placeholder", "an empty caption: placeholder (data.empty_placeholder), drop or "
                                                 "error", choices=("placeholder", "drop", "error")),
}
_PRESET = ("auto", "mith", "dcmh", "dchmt", "dsph")


def _file_options(description: str) -> dict:
    """Options of the MIRFLICKR-25K / NUS-WIDE readers (docs/soda.md: layouts, splits, handling)."""
    return {
        "layout": ConfigKey("auto", f"file layout of {description}: auto, clip (index/label/caption .mat) or dcmh "
                                    "(IAll/YAll/LAll)", choices=("auto", "clip", "dcmh")),
        "file": ConfigKey(None, "the single DCMH .mat file (null: found under data.root)", type=str),
        "split_preset": ConfigKey("mith", "query/train split of a published protocol", choices=_PRESET),
        **_SPLITS,
        **_HANDLING,
        "empty_placeholder": ConfigKey("123456", "text that replaces an empty caption (DCHMT's)"),
        "classes_file": ConfigKey(None, "label names, one per line (null: the dataset's known names)", type=str),
        "vocab_file": ConfigKey(None, "one tag per bag-of-words column (DCMH YAll has no words)", type=str),
    }


#: name -> (import path of the factory, declared options, one-line description)
DATASETS = {
    "soda_scenes": ("kdkit_soda.data:scenes_factory", {
        "size": ConfigKey(3000, "number of generated scenes", range="[1, inf)"),
        "image_size": ConfigKey(64, "side of the generated images in pixels", range="[1, inf)"),
        "generator_seed": ConfigKey(0, "seed of the scene generator", range="[0, inf)"),
        "split_preset": ConfigKey("auto", "query/train split (auto: 10 % query, 50 % train)", choices=_PRESET),
        **_SPLITS,
    }, "embedded offline default for soda: seeded procedural multi-label scenes with captions"),
    "mirflickr25k": ("kdkit_soda.data:mirflickr_factory", _file_options("MIRFLICKR-25K"),
                     "MIRFLICKR-25K, CLIP-era (caption/index/label.mat) or DCMH (IAll/YAll/LAll) layout"),
    "nuswide": ("kdkit_soda.data:nuswide_factory", _file_options("NUS-WIDE"),
                "NUS-WIDE, CLIP-era (caption.mat|caption.txt/index/label.mat) or DCMH layout"),
    "crossmodal_jsonl": ("kdkit_soda.data:jsonl_factory", {
        "manifest": ConfigKey("manifest.jsonl", "the manifest, relative to data.root"),
        "classes_file": ConfigKey(None, "label names, one per line (null: the labels met in the manifest)",
                                  type=str),
        "split_preset": ConfigKey("auto", "query/train split (auto: 10 % query, 50 % train)", choices=_PRESET),
        **_SPLITS,
        **_HANDLING,
        "empty_placeholder": ConfigKey("", "text that replaces an empty caption"),
    }, "JSONL manifest: {image, text, labels} per line"),
}


@kdkit.hookimpl
def kdkit_register_datasets(register):
    for name, (target, options, description) in DATASETS.items():
        register(name, target, description=description, options=options)


@kdkit.hookimpl
def kdkit_register_methods(register):
    register("soda", "kdkit_soda.method:SodaMethod",
             description="SODA: label-prompt image teacher, then a text student fitted to its frozen image codes")
