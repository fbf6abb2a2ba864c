"""Built-in kdkit plugin ``soda``: semantic-cohesive two-stage knowledge distillation for
cross-modal hashing (Sun, Chen, Yan — arXiv 2510.09664), with the cross-modal datasets it needs.

Uses only kdkit's public API (``kdkit``, ``kdkit.distill``, ``kdkit.ops``).  Heavy modules (torch,
open_clip) are imported only when a component is built.  See ``docs/soda.md``.
"""
from __future__ import annotations

import kdkit

__version__ = "0.1.0"


def _lazy_dataset(attr: str):
    def factory(split, root, **options):
        from kdkit_soda import data

        return getattr(data, attr)(split, root, **options)

    # expose the real signature so `data.<option>` keys are validated by kdkit.config
    import inspect

    from kdkit_soda import data as _data

    target = getattr(_data, attr)
    factory.__signature__ = inspect.signature(target)
    factory.__doc__ = target.__doc__
    return factory


@kdkit.hookimpl
def kdkit_register_datasets(register):
    register("soda_scenes", _lazy_dataset("scenes_factory"),
             description="embedded offline default for soda: seeded procedural multi-label scenes with captions")
    register("mirflickr25k", _lazy_dataset("mirflickr_factory"),
             description="MIRFLICKR-25K, CLIP-era (caption/index/label.mat) or DCMH (IAll/YAll/LAll) layout")
    register("nuswide", _lazy_dataset("nuswide_factory"),
             description="NUS-WIDE, CLIP-era (caption.mat|caption.txt/index/label.mat) or DCMH layout")
    register("crossmodal_jsonl", _lazy_dataset("jsonl_factory"),
             description="JSONL manifest: {image, text, labels} per line")


@kdkit.hookimpl
def kdkit_register_methods(register):
    from kdkit_soda.method import SodaMethod

    register("soda", SodaMethod,
             description="SODA: label-prompt image teacher, then a text student fitted to its frozen image codes")
