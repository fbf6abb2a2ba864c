"""Configuration: declared keys, YAML files (safe loading only, no duplicate keys), dotted ``--set`` overrides.

Precedence, highest first: ``--set a.b=value`` > ``--config FILE`` > the method's
``default_config()``.  The defaults are the schema, and each key is declared once:

* a leaf is a :class:`ConfigKey` (default, one-line help, type, choices / range / pattern, list
  item type, nullability) or a plain value (typed by its default; a ``None`` default accepts
  anything); :func:`base_config` and :func:`train_section` declare the engine's keys, and a plain
  value a method writes over one keeps its declaration (:func:`inherit_declarations`);
* every key of a default mapping is the set of valid keys at that level — an unknown key is a
  :class:`~kdkit.errors.ConfigError` naming its dotted path and listing the valid keys; an empty
  mapping ``{}`` is an open mapping whose keys are not checked;
* a list whose default holds a mapping uses that first mapping as the template of every item
  (missing keys are filled from it, unknown keys are errors);
* *component sections* (``data`` -> datasets, ``student`` -> students, ``teachers[]`` ->
  teachers, ...) additionally accept the options the selected component declared when it was
  registered (``register(name, target, options={...})``, :class:`kdkit.registry.Component`); a
  component registered without ``options`` makes the section open.  Choosing another component
  drops the default component's options and brings the chosen one's.

Values of ``--set`` are parsed as YAML scalars or flow collections (``--set train.lr=0.1``,
``--set train.milestones=[10,20]``, ``--set student.name=resnet8``); a numeric path
component indexes a list (``--set teachers.0.name=resnet20``).  :func:`resolve_method_config`
checks a method's whole config before a run directory exists; :func:`method_config_help` is
``kdkit train --method NAME --help-config``.

The package's modules, one concern each: :mod:`~kdkit.config.keys` (declarations and value checks),
:mod:`~kdkit.config.schema` (the engine's keys), :mod:`~kdkit.config.files` (YAML and ``--set``),
:mod:`~kdkit.config.resolve` (merging and validation), :mod:`~kdkit.config.help` (``--help-config``).
"""
from __future__ import annotations

from kdkit.config.files import apply_sets, check_dotted_keys, dump_yaml, load_yaml, parse_set, write_config
from kdkit.config.help import config_rows, format_config_help, method_config_help
from kdkit.config.keys import ConfigKey, inherit_declarations, plain_defaults
from kdkit.config.resolve import get_path, merge, resolve_config, resolve_method_config, validate
from kdkit.config.schema import COMPONENT_SECTIONS, ENGINE_KEYS, base_config, train_section

__all__ = [
    "ConfigKey",
    "base_config",
    "train_section",
    "plain_defaults",
    "inherit_declarations",
    "config_rows",
    "format_config_help",
    "resolve_method_config",
    "method_config_help",
    "load_yaml",
    "parse_set",
    "apply_sets",
    "check_dotted_keys",
    "merge",
    "validate",
    "resolve_config",
    "dump_yaml",
    "write_config",
    "get_path",
    "COMPONENT_SECTIONS",
    "ENGINE_KEYS",
]
