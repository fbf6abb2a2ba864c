"""Models by name, without a plugin: the *model sources* ``torchvision:NAME``, ``timm:NAME``, ``hf:DIR``,
``py:MODULE:CALLABLE`` and ``py:FILE.py:CALLABLE``.

:data:`SOURCES` is the one table: prefix -> resolver.  :mod:`kdkit.models.builtin` registers each
entry as a teacher and student *source* (a name ending with a colon, see :mod:`kdkit.registry`), so
``Registry.get("torchvision:resnet18")`` — and with it config resolution, ``--help-config`` and
``ctx.build_model`` — sees a :class:`~kdkit.registry.Component` with declared options.

A resolver ``resolve(rest) -> (factory, options, description)`` checks the name (an unknown model, a
missing package, directory, module or callable is a one-line :class:`ConfigError`) and declares the
options its builder's signature accepts; ``factory(num_classes, **options)`` builds the model.  The
weight options (``pretrained``, ``pretrained_key``, ``pretrained_strict``) are added by the registry,
which loads the file with :func:`kdkit.load_weights`.  Nothing downloads: a torchvision ``weights=``
enum, a timm hub id or a Hugging Face hub id is a one-line error asking for a local file.

Importing this module is cheap: torchvision, timm and transformers are imported when a name is resolved.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import typing
from contextlib import contextmanager
from typing import Any, Callable

from kdkit.config import ConfigKey
from kdkit.errors import ConfigError, KdkitError
from kdkit.paths import user_path
from kdkit.lazy import import_extra

__all__ = ["SOURCES", "torchvision_source", "timm_source", "hf_source", "py_source", "signature_options"]

#: prefix -> (resolver target, how a name is written, description).
SOURCES: dict[str, tuple[str, str, str]] = {
    "torchvision": ("kdkit.models.sources:torchvision_source", "torchvision:NAME",
                    "any classification model of torchvision.models (torchvision:mobilenet_v3_small)"),
    "timm": ("kdkit.models.sources:timm_source", "timm:NAME",
             "any timm model (timm:resnet18; needs the timm extra: pip install 'kdkit[timm]')"),
    "hf": ("kdkit.models.sources:hf_source", "hf:DIR",
           "a local Hugging Face image or sequence classifier directory (needs pip install 'kdkit[hf]')"),
    "py": ("kdkit.models.sources:py_source", "py:MODULE:CALLABLE",
           "your own factory callable(num_classes, **options): py:MODULE:CALLABLE or py:FILE.py:CALLABLE"),
}

_PLAIN = (bool, int, float, str, list, dict)


@dataclasses.dataclass(frozen=True)
class _NoDownload(ConfigKey):
    """An option that would download weights: any value but ``null`` is a one-line error."""

    def check(self, value, where: str):
        if value is None:
            return None
        section = where.rpartition(".")[0]
        hint = f"{section}.pretrained" if section else "pretrained"
        raise ConfigError(f"config key {where}: kdkit never downloads weights ({value!r}); download them "
                          f"elsewhere and pass the local file as {hint}")


# --- options from signatures --------------------------------------------------------------------

def _plain_types(annotation: Any) -> tuple[tuple, bool] | None:
    """``(types, nullable)`` a config value may take for ``annotation``; ``None`` when it takes none
    (a callable, a module class, ...)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        found, nullable = [], False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                nullable = True
                continue
            sub = _plain_types(arg)
            if sub:
                found += [t for t in sub[0] if t not in found]
        return (tuple(found), nullable) if found else None
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(annotation)}), False
    if annotation in _PLAIN:
        return (annotation,), False
    base = origin or annotation
    if base in (list, tuple) or (inspect.isclass(base) and base.__module__ == "collections.abc"
                                 and base.__name__ in ("Sequence", "MutableSequence")):
        items = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return ((list,), False) if all(_plain_types(a) for a in items) else None
    if base in (dict,) or (inspect.isclass(base) and base.__name__ in ("Mapping", "Dict")):
        return (dict,), False
    return None


def _parameters(obj: Callable) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(obj, eval_str=True)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: read them as written
        signature = inspect.signature(obj)
    return list(signature.parameters.values())


def signature_options(obj: Callable, skip: set[str], help_of: str, *, own_defaults: bool = False,
                      required: bool = True) -> dict:
    """The options a config can set among ``obj``'s keyword parameters: those whose annotation (or
    default) is a plain config type; ``"*": True`` when ``obj`` takes ``**kwargs``.

    With ``own_defaults`` a declared default is the parameter's own default (passed on when not
    given); otherwise ``null`` means "the builder's default" and is not passed on.  ``required=False``
    leaves out the parameters without a default (a model class's, which its builder fills in).
    """
    options: dict[str, Any] = {}
    for p in _parameters(obj):
        if p.kind is p.VAR_KEYWORD:
            options["*"] = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in skip or p.name == "self":
            continue
        if p.default is p.empty and not required:
            continue
        default = None if p.default is p.empty else p.default
        if isinstance(default, tuple):
            default = list(default)
        plain = default is None or isinstance(default, _PLAIN)
        found = _plain_types(p.annotation) if p.annotation is not p.empty else None
        if found is None:
            if p.annotation is not p.empty and not isinstance(p.annotation, str):
                continue  # typed, but nothing a config can write (a layer class, a callable)
            if default is None or not plain:
                continue  # no type to check against
            found = (type(default),), False
        if not plain:
            continue
        types = found[0] if len(found[0]) > 1 else found[0][0]
        text = f"{help_of} argument {p.name}"
        if own_defaults and p.default is not p.empty:
            options[p.name] = ConfigKey(default, text, type=types, nullable=found[1] or default is None)
        else:
            shown = "" if p.default is p.empty or p.default is None else f", {default!r} in its signature"
            options[p.name] = ConfigKey(None, f"{text} (null: the builder's default{shown})", type=types)
    return options


def _given(options: dict) -> dict:
    """The options set in the config (``null``: the builder's own default, not passed on)."""
    return {k: v for k, v in options.items() if v is not None}


def checked_model(label: str, build: Callable[[], Any]):
    """``build()`` as a model: a failure or a result that is not an ``nn.Module`` is one line naming ``label``."""
    from torch import nn

    try:
        model = build()
    except KdkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model code: one line, not a traceback
        lines = str(exc).strip().splitlines()
        raise ConfigError(f"{label} failed to build the model: {type(exc).__name__}"
                          f"{': ' + lines[0] if lines else ''}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{label} returned {type(model).__name__}, not a torch.nn.Module; "
                          "a model factory must return the model")
    return model


def _unknown(kind: str, name: str, names: list[str], listing: str) -> ConfigError:
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(f"unknown {kind} model {name!r}; {hint}(list them: {listing})")


# --- torchvision --------------------------------------------------------------------------------

def torchvision_source(name: str):
    """``torchvision:NAME``: ``torchvision.models.get_model(NAME, num_classes=...)``; options are the
    keyword parameters of the builder and of the model class it returns."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise _unknown("torchvision", name, names,
                       "python -c 'import torchvision as t; print(t.models.list_models(module=t.models))'")
    builder = torchvision.models.get_model_builder(name)
    cls = inspect.signature(builder).return_annotation
    skip = {"weights", "progress", "num_classes"}
    options = signature_options(builder, skip, f"torchvision {name}")
    more = options.pop("*", False)
    if more and inspect.isclass(cls):
        options = {**signature_options(cls.__init__, skip, cls.__name__, required=False), **options}
        options.pop("*", None)  # the builder checks what reaches the class
    if "aux_logits" in options:  # GoogLeNet / Inception: plain logits in training too
        options["aux_logits"] = ConfigKey(False, "auxiliary classifiers (their outputs are not distilled)")
    options["weights"] = _NoDownload(None, "not supported: kdkit never downloads; use pretrained: FILE", type=str)

    def build(num_classes: int, **opts):
        opts = _given({k: v for k, v in opts.items() if k != "weights"})
        return checked_model(f"torchvision:{name}",
                             lambda: torchvision.models.get_model(name, num_classes=num_classes, **opts))

    return build, options, f"torchvision.models.{name} ({getattr(cls, '__name__', 'model')})"


# --- timm ---------------------------------------------------------------------------------------

def timm_source(name: str):
    """``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=...)``; options are the
    keyword parameters of the model class (``drop_rate``, ``img_size``, ...)."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise ConfigError("kdkit never downloads models; use timm:ARCH and pass a local weights "
                          "file as pretrained")
    timm = import_extra("timm", "timm")
    from timm.models import model_entrypoint, split_model_name_tag

    arch, _tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise _unknown("timm", name, timm.list_models(), "python -c 'import timm; print(timm.list_models())'")
    cls = inspect.signature(model_entrypoint(arch)).return_annotation
    skip = {"num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"}
    options = (signature_options(cls.__init__, skip, cls.__name__, required=False) if inspect.isclass(cls)
               else {"*": True})
    options.pop("*", None)

    def build(num_classes: int, **opts):
        return checked_model(f"timm:{name}", lambda: timm.create_model(name, pretrained=False,
                                                                      num_classes=num_classes, **_given(opts)))

    return build, options, f"timm {name} ({getattr(cls, '__name__', 'model')})"


# --- Hugging Face -------------------------------------------------------------------------------

_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")


def hf_source(directory: str):
    """``hf:DIR``: a local Hugging Face model directory (``config.json``, weights optional) as an image
    or sequence classifier, chosen from the config's ``architectures``; options are the model's own
    config keys (``hidden_dropout_prob``, ...), the directory's values by default."""
    form = f"hf:{directory}"
    path = user_path(directory)
    if not path.is_dir():
        raise ConfigError("no such local directory (kdkit never downloads models: save one with "
                          "save_pretrained, or download it elsewhere, and give its directory)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json; give a directory written by save_pretrained")
    transformers = import_extra("transformers", "hf")
    from transformers.models.auto import modeling_auto

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - the user's directory: one line
        raise ConfigError(f"cannot read its config.json: {type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0]}") from None
    arches = list(config.architectures or [])
    if any(a.endswith("ForImageClassification") for a in arches) or (
            not arches and config.model_type in modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES):
        auto, task = transformers.AutoModelForImageClassification, "image"
    elif any(a.endswith("ForSequenceClassification") for a in arches) or (
            not arches and config.model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES):
        auto, task = transformers.AutoModelForSequenceClassification, "sequence"
    else:
        raise ConfigError(f"{', '.join(arches) or config.model_type!r} is neither an image nor a sequence "
                          "classifier (architectures ending in ForImageClassification / ForSequenceClassification)")
    base = set(transformers.PretrainedConfig().to_dict())
    options = {}
    for key, value in config.to_dict().items():
        if key in base or key.startswith("_") or not isinstance(value, (bool, int, float, str)):
            continue
        options[key] = ConfigKey(None, f"config.json {key} (null: the directory's {value!r})", type=type(value))
    own_weights = [path / f for f in _HF_WEIGHTS if (path / f).is_file()]
    # `pretrained` is declared here, not left to the registry: the directory's own weights file is
    # loaded by from_pretrained (transformers maps its saved names onto the modules' names)
    from kdkit.registry import WEIGHT_OPTIONS

    options.update(WEIGHT_OPTIONS)

    def build(num_classes: int, pretrained=None, pretrained_key=None, pretrained_strict=True, **opts):
        def make():
            from kdkit.models.hf import HFClassifier

            with _quiet(transformers):
                cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                              num_labels=num_classes, **_given(opts))
                if own_weights:  # another number of classes: the head starts fresh
                    model = auto.from_pretrained(str(path), config=cfg, local_files_only=True,
                                                 ignore_mismatched_sizes=True)
                else:
                    model = auto.from_config(cfg)
            return HFClassifier(model, task)

        model = checked_model(form, make)
        if pretrained and user_path(pretrained).resolve() not in {f.resolve() for f in own_weights}:
            from kdkit.models.weights import load_weights

            load_weights(model, pretrained, key=pretrained_key, strict=pretrained_strict)
        return model

    return build, options, f"Hugging Face {type(config).__name__.replace('Config', '')} {task} classifier from {path}"


@contextmanager
def _quiet(transformers):
    """transformers' info lines and progress bars off while a model loads (its errors still raise)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


# --- the user's own factory ---------------------------------------------------------------------

@contextmanager
def _cwd_on_path():
    """The working directory on ``sys.path`` while importing (as ``python -m`` has it): ``py:my_models:make``
    finds ``./my_models.py``."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}{': ' + lines[0] if lines else ''}"


def _load_module(where: str):
    if where.endswith(".py"):
        path = user_path(where)
        if not path.is_file():
            raise ConfigError(f"file not found: {where}")
        path = path.resolve()
        name = f"kdkit_py_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            del sys.modules[name]
            raise ConfigError(f"importing {where} failed: {_first_line(exc)}") from None
        return module
    if not all(part.isidentifier() for part in where.split(".")):
        raise ConfigError(f"{where!r} is neither a module name nor a .py file; write py:MODULE:CALLABLE "
                          "or py:FILE.py:CALLABLE")
    try:
        with _cwd_on_path():
            return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise ConfigError(f"no module named {where!r} (on PYTHONPATH or in the working directory)") from None
        raise ConfigError(f"importing {where} failed: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"importing {where} failed: {_first_line(exc)}") from None


def py_source(spec: str):
    """``py:MODULE:CALLABLE`` or ``py:FILE.py:CALLABLE``: the user's factory ``callable(num_classes,
    **options)``; options are its keyword parameters (its own defaults), any with ``**kwargs``."""
    form = f"py:{spec}"
    where, colon, attribute = spec.rpartition(":")
    if not colon or not where or not attribute:
        raise ConfigError("write py:MODULE:CALLABLE or py:FILE.py:CALLABLE")
    module = _load_module(where)
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"{where} has no {attribute!r}")
    if not callable(factory):
        raise ConfigError(f"{attribute!r} is a {type(factory).__name__}, not a callable")
    params = _parameters(factory)
    takes = {p.name for p in params} | {"*" for p in params if p.kind is p.VAR_KEYWORD}
    if "num_classes" not in takes and "*" not in takes and not any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        raise ConfigError(f"{attribute} takes no num_classes; a model factory is callable(num_classes, **options)")
    first = next((p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)
    skip = {"num_classes"} | ({first} if first else set())
    options = signature_options(factory, skip, attribute, own_defaults=True)
    required = {p.name for p in params if p.default is p.empty}

    def build(num_classes: int, **opts):
        # a required option left null is not passed: the factory's own error names it
        opts = {k: v for k, v in opts.items() if v is not None or k not in required}
        return checked_model(form, lambda: factory(num_classes, **opts))

    doc = (inspect.getdoc(factory) or "").strip().splitlines()
    return build, options, doc[0] if doc else f"{attribute} from {where}"
