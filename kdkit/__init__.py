"""kdkit — plugin-based knowledge distillation for PyTorch.

The public API — everything a plugin, built-in or third-party, may use — is what this module
exports (``__all__``), the :mod:`kdkit.distill` namespace (the pieces distillation methods are
built from) and the compiled ops in :mod:`kdkit.ops`.  Every other module is internal and may
change.  ``docs/writing-plugins.md`` documents each name; a test fails when a plugin imports
anything else.

Importing :mod:`kdkit` is cheap: the names below that need torch (the engine, the data helpers)
are imported on first use, and the compiled ops, open_clip and nltk load only when used.

Inside, the modules form layers, each importing only those below it (import-linter checks it,
``docs/architecture.md`` explains it): ``cli`` > ``commands`` > ``sweep`` > ``methods`` | ``losses`` >
``distill`` > ``engine`` > ``data`` | ``models`` | ``clip`` | ``retrieval`` | ``metrics`` | ``bench`` >
``ops`` > ``plugins`` > ``registry`` | ``methodspec`` > ``config`` > ``seeding`` | ``files`` | ``paths`` |
``lazy`` | ``hookspecs`` > ``errors``.  Distillation sits above the engine: the engine never imports
:mod:`kdkit.distill`.
"""
from __future__ import annotations

import importlib

from kdkit.errors import ConfigError, DataError, KdkitError, PluginError, UnknownComponentError
from kdkit.hookspecs import hookimpl
from kdkit.lazy import lazy_import

__version__ = "0.1.0"

#: name -> module of the public names imported on first use (PEP 562).
_LAZY = {
    # methods: configs, the run context and its stages
    "ConfigKey": "kdkit.config",
    "base_config": "kdkit.config",
    "train_section": "kdkit.config",
    "Method": "kdkit.methodspec",
    "RunContext": "kdkit.engine.context",
    "Stage": "kdkit.engine.trainer",
    "StageResult": "kdkit.engine.trainer",
    "TrainingError": "kdkit.engine.trainer",
    "freeze": "kdkit.engine.trainer",
    "classification_eval": "kdkit.engine.trainer",
    # data: device transfer (of a batch, for a stage's own eval_fn / step_fn)
    "to_device": "kdkit.engine.data",
    # seeding, files, caches
    "derive_seed": "kdkit.seeding",
    "seed_everything": "kdkit.seeding",
    "atomic_torch_save": "kdkit.files",
    "atomic_write_text": "kdkit.files",
    "cache_root": "kdkit.paths",
    # models: a local weights file into any model (DDP / compile / wrapper prefixes handled)
    "load_weights": "kdkit.models.weights",
    # several processes
    "all_gather_with_grad": "kdkit.engine.distributed",
    "all_reduce_mean": "kdkit.engine.distributed",
    "is_main_process": "kdkit.engine.distributed",
    # retrieval evaluation
    "mean_average_precision": "kdkit.metrics",
    # CLIP (open_clip): one frozen image/text encoder
    "ClipEncoder": "kdkit.clip",
    "build_clip": "kdkit.clip",
}
_RENAMED = {"is_main_process": "is_main"}

#: names that left the public API with the one student stage (kdkit.distill.StudentStage does what
#: they were public for); they still resolve, with a DeprecationWarning, for one release
_DEPRECATED = {
    "plain_defaults": ("kdkit.config", "kdkit.distill.StudentStage takes a method's declared distill section"),
    "WithIndex": ("kdkit.engine.data", "kdkit.distill.StudentStage indexes the student's training data"),
    "TeacherCache": ("kdkit.distill.cache", "kdkit.distill.StudentStage caches the teachers' outputs "
                                            "(distill.teacher_cache)"),
    "make_eval_loader": ("kdkit.engine.data", "use torch.utils.data.DataLoader(dataset, batch_size, shuffle=False)"),
    "dataset_classes": ("kdkit.engine.data", "ctx.classification_data() returns the classes"),
}

__all__ = [
    "__version__",
    "hookimpl",
    "KdkitError",
    "ConfigError",
    "DataError",
    "PluginError",
    "UnknownComponentError",
    "get_registry",
    "get_plugin_manager",
    "lazy_import",
    *_LAZY,
]


def get_plugin_manager():
    """The process-wide :class:`kdkit.plugins.PluginManager` (plugins loaded on first use)."""
    from kdkit.plugins import get_plugin_manager as _get

    return _get()


def get_registry(kind: str):
    """The :class:`kdkit.registry.Registry` of ``kind`` (``"methods"``, ``"datasets"``, ...)."""
    return get_plugin_manager().registry(kind)


def __getattr__(name: str):
    if name in _DEPRECATED:
        from kdkit.lazy import deprecated_name

        return deprecated_name("kdkit", name, *_DEPRECATED[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
