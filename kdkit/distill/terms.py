"""The weighted terms of a distillation objective, as a config describes them (no torch here).

``distill.terms`` lists them; each entry::

    {loss: kl, weight: 0.5}                                   # logits, through distill.combine
    {loss: fitnet, weight: 100, student: layer2, teacher: layer3, teacher_index: 0, options: {}}
    {loss: at, weight: 1000, student: [layer1, layer2, layer3], teacher: [layer1, layer2, layer3]}

``loss`` names a registered loss, ``weight`` multiplies it, ``student`` / ``teacher`` name the
modules whose outputs the term receives (feature taps, see :class:`kdkit.distill.FeatureTaps`):
one path gives the term one tensor, a list of paths a list of tensors in that order (methods
that match several stages),
``teacher_index`` picks the teacher a feature term distils from, ``options`` go to the loss
factory, ``name`` labels the term in logs (default: the loss name).  A term without ``student`` or
``teacher`` is a logit term: with several teachers it goes through ``distill.combine``.  The
cross-entropy weight stays ``distill.alpha``.

Without ``distill.terms`` (``null``) the objective is the classic one: one term
``{loss: distill.loss, weight: 1 - distill.alpha, options: distill.loss_options}`` named ``kd``.
"""
from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields

from kdkit.config.keys import FLOAT_RE
from kdkit.errors import ConfigError

__all__ = ["TermSpec", "TERM_KEYS", "distill_section", "distill_terms", "agreement_samples", "check_distill"]

TERM_KEYS = ("loss", "weight", "name", "student", "teacher", "teacher_index", "options")


@dataclass(frozen=True)
class TermSpec:
    """One weighted term of the objective (see the module docs)."""

    loss: str
    weight: float = 1.0
    name: str = ""
    student: str | tuple[str, ...] | None = None
    teacher: str | tuple[str, ...] | None = None
    teacher_index: int = 0
    options: dict = field(default_factory=dict)

    @property
    def uses_features(self) -> bool:
        return self.student is not None or self.teacher is not None

    @staticmethod
    def path_list(paths: str | tuple[str, ...] | None) -> list[str]:
        """``student`` / ``teacher`` as a list of module paths (empty when not given)."""
        if paths is None:
            return []
        return [paths] if isinstance(paths, str) else list(paths)


def distill_section(**overrides) -> dict:
    """The declared keys of a ``distill`` config section (:class:`kdkit.ConfigKey`), with
    ``overrides`` as their defaults; a method adds its own keys to the returned mapping."""
    from kdkit.config import ConfigKey
    from kdkit.distill import COMBINE_RULES

    keys = {
        "alpha": ConfigKey(0.5, "weight of the cross-entropy term", range="[0, 1]"),
        "temperature": ConfigKey(4.0, "softmax temperature T of logit terms", range="(0, inf)"),
        "loss": ConfigKey("kl", "the classic single term: a name of the losses registry, weight 1 - alpha"),
        "loss_options": ConfigKey({}, "options of distill.loss's factory", type=dict),
        "terms": ConfigKey(None, "weighted terms instead of loss: [{loss, weight, student, teacher, "
                                 "teacher_index, options, name}] (feature terms tap module paths)", type=list),
        "combine": ConfigKey("avg_logits", "how several teachers combine", choices=COMBINE_RULES),
        "ema_momentum": ConfigKey(0.9, "momentum of the ema_inv_loss teacher weights", range="[0, 1)"),
        "teacher_cache": ConfigKey("auto", "where teacher logits and tapped features are cached per sample: "
                                           "memory, disk (a memory-mapped store in the cache directory, reused by "
                                           "later runs), off, or auto (off for augmented data, memory below 2 GiB, "
                                           "else disk); null/true/false mean auto/memory/off",
                                   type=(str, bool), choices=("auto", "memory", "disk", "off", True, False),
                                   nullable=True),
        "teacher_store_dtype": ConfigKey("float16", "dtype of the disk store's logits and features",
                                         choices=("float16", "bfloat16", "float32")),
        "teacher_store_topk": ConfigKey(0, "the disk store keeps each sample's k largest logits, the other classes "
                                           "their mean (0: dense logits)", range="[0, inf)"),
        "agreement_samples": ConfigKey(512, "check teacher argmax against labels on this many training "
                                            "samples, warn when far below its validation top-1 (0: off)",
                                       range="[0, inf)"),
    }
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise TypeError(f"distill_section(): unknown key {unknown[0]!r}; valid: {', '.join(keys)}")
    return {k: key.with_default(overrides[k]) if k in overrides else key for k, key in keys.items()}


def check_distill(distill: dict, defaults: dict | None = None, registry=None,
                  num_teachers: int | None = None) -> list[TermSpec]:
    """Check the terms of a resolved ``distill`` section without building anything (so before a run
    directory exists): their keys, their losses registered when ``registry(kind)`` is given (a loss
    that reads features, :attr:`kdkit.registry.Component.needs_features`, with both module paths),
    feature terms' ``teacher_index`` below ``num_teachers``.  The section's other keys are checked by their
    declarations (:func:`distill_section`).  Returns the terms."""
    specs = distill_terms(distill, defaults)
    if registry is not None:
        losses = registry("losses")
        for i, spec in enumerate(specs):
            # an unknown name is a one-line error listing the registered losses
            where = f"distill.terms.{i}.options" if distill["terms"] is not None else "distill.loss_options"
            loss = losses.get(spec.loss)
            _check_options(spec, loss, where)
            if loss.needs_features and (spec.student is None or spec.teacher is None):
                missing = " and ".join(k for k in ("student", "teacher") if getattr(spec, k) is None)
                raise ConfigError(f"config key distill.terms ({spec.name}): loss {spec.loss!r} distils features, "
                                  f"but the term names no {missing} module path; give it student: and teacher: "
                                  f"(e.g. {{loss: {spec.loss}, student: layer3, teacher: layer3}}; "
                                  "'kdkit layers MODEL' lists a model's paths)")
    if num_teachers is not None:
        for spec in specs:
            if spec.uses_features and spec.teacher_index >= num_teachers:
                raise ConfigError(f"config key distill.terms ({spec.name}): teacher_index {spec.teacher_index}, "
                                  f"but there are {num_teachers} teachers (0-based)")
    return specs


def _check_options(spec: TermSpec, loss, where: str) -> None:
    """A term's ``options`` against the options its loss declared when it was registered
    (:attr:`kdkit.registry.Component.options`; a loss registered without ``options`` checks them itself)."""
    if loss.accepts_any:
        return
    declared = loss.options
    unknown = sorted(set(spec.options) - set(declared))
    if unknown:
        raise ConfigError(f"config key distill.terms ({spec.name}): loss {spec.loss!r} has no option {unknown[0]!r}; "
                          f"valid options: {', '.join(declared) or '(none)'}")
    loss.check_options(spec.options, where)  # each value against its declaration


def agreement_samples(distill: dict) -> int:
    """``distill.agreement_samples``: how many training samples the teacher-agreement guard checks
    (:class:`~kdkit.distill.agreement.TeacherAgreement`; 0 turns it off)."""
    return int(distill["agreement_samples"])


def _entry_defaults() -> dict:
    """What a key left out of a ``distill.terms`` entry means: :class:`TermSpec`'s defaults, the one
    source (``loss`` has none, ``name`` and ``options`` are filled from ``loss`` and ``{}``)."""
    return {f.name: None if f.default is MISSING else f.default for f in fields(TermSpec)}


def _term(i: int, entry) -> TermSpec:
    where = f"distill.terms.{i}"
    if not isinstance(entry, dict):
        raise ConfigError(f"config key {where}: expected a mapping like {{loss: kl, weight: 0.5}}, got {entry!r}")
    unknown = sorted(set(entry) - set(TERM_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {where}.{unknown[0]!r}; valid keys of a term: {', '.join(TERM_KEYS)}")
    entry = {**_entry_defaults(), **entry}
    loss = entry["loss"]
    if not isinstance(loss, str) or not loss:
        raise ConfigError(f"config key {where}.loss: a registered loss name is required (kdkit plugins lists them)")
    weight = entry["weight"]
    if isinstance(weight, str) and FLOAT_RE.match(weight.strip()):
        weight = float(weight)  # YAML 1.1 reads 1e-3 as a string; every float key of the config takes it
    # inf passed, trained the teachers and stopped the student at its first step as "diverged"
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ConfigError(f"config key {where}.weight: expected a finite number, got {weight!r}")
    paths = {}
    for key in ("student", "teacher"):
        value = entry[key]
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(p, str) and p for p in value):
                raise ConfigError(f"config key {where}.{key}: expected module paths such as [layer1, layer2], "
                                  f"got {value!r}")
            value = tuple(value)
        elif value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"config key {where}.{key}: expected a module path such as layer3 (or a list of "
                              f"them), got {value!r}")
        paths[key] = value
    index = entry["teacher_index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ConfigError(f"config key {where}.teacher_index: expected an integer >= 0, got {index!r}")
    options = entry["options"] or {}
    if not isinstance(options, dict):
        raise ConfigError(f"config key {where}.options: expected a mapping of loss options, got {options!r}")
    name = entry["name"] or loss
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"config key {where}.name: expected an identifier (letters, digits, _), got {name!r}")
    return TermSpec(loss=loss, weight=float(weight), name=name, student=paths["student"],
                    teacher=paths["teacher"], teacher_index=index, options=dict(options))


def distill_terms(distill: dict, defaults: dict | None = None) -> list[TermSpec]:
    """The terms of a ``distill`` config section, validated (see the module docs).

    ``defaults`` is the method's default ``distill`` section: with ``distill.terms`` given,
    ``distill.loss`` / ``loss_options`` (which describe the classic single term) must be left at
    their defaults, so that no setting is silently ignored.
    """
    terms = distill["terms"]
    if terms is None:
        alpha = float(distill["alpha"])
        return [TermSpec(loss=str(distill["loss"]), weight=1.0 - alpha, name="kd",
                         options=dict(distill["loss_options"]))]
    if not isinstance(terms, (list, tuple)):
        raise ConfigError(f"config key distill.terms: expected a list of terms like [{{loss: kl, weight: 0.5}}], "
                          f"got {terms!r}")
    if not terms:
        raise ConfigError("config key distill.terms: empty, so nothing would be distilled (train the student "
                          "alone with baseline.enabled=true, or list at least one term)")
    defaults = defaults or {}
    for key in ("loss", "loss_options"):
        if key in defaults and distill[key] != defaults[key]:
            raise ConfigError(f"config key distill.{key} describes the single classic term and cannot be combined "
                              f"with distill.terms: put the loss and its options in a term "
                              f"(distill.terms.N.loss / .options)")
    specs = [_term(i, entry) for i, entry in enumerate(terms)]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"config key distill.terms: two terms are named {duplicates[0]!r}; give them distinct "
                          "names (distill.terms.N.name)")
    if "ce" in names:
        raise ConfigError("config key distill.terms: the name 'ce' is the cross-entropy term's; choose another")
    for spec in specs:
        if not spec.uses_features and spec.teacher_index != 0:  # it was silently ignored
            raise ConfigError(f"config key distill.terms ({spec.name}): teacher_index {spec.teacher_index} on a logit "
                              f"term ({spec.loss}), which distils every teacher's logits combined by "
                              "distill.combine; teacher_index picks the teacher of a feature term (remove it)")
    return specs
