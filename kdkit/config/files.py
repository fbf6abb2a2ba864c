"""Config text: YAML files (safe loading only; duplicate keys and pathological documents refused in
one line), the resolved config written back, and dotted ``--set KEY=VALUE`` overrides."""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from kdkit.errors import ConfigError
from kdkit.files import regular_file

__all__ = ["load_yaml", "parse_yaml", "dump_yaml", "write_config", "plain_value", "parse_set", "apply_sets",
           "check_dotted_keys", "MAX_YAML_VALUES"]


#: libyaml's parser where PyYAML was built with it (its wheels are): 6-9x faster than the pure-Python one, which
#: took 8 ms for a 4 KB sweep file and 0.1 ms per ``--set`` value; the constructor (safe types only) is the same
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SAFE_LOADER):
    """``yaml.SafeLoader`` (:data:`_SAFE_LOADER`) that refuses a key given twice in one mapping (PyYAML keeps
    the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                # `<<: *alias` merges are YAML's way to override keys: only the keys written here count
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:  # unhashable: SafeConstructor reports it
                    continue
                if seen is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen.start_mark.line + 1}); "
                        "give each key once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file with :func:`parse_yaml`; errors are one-line :class:`ConfigError`."""
    # by type, before opening: reading /dev/zero never ends and opening a FIFO blocks
    path = regular_file(path, "config file", ConfigError)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    data = parse_yaml(text, f"invalid YAML in {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level, got {type(data).__name__}")
    return data


#: Values a config document may expand to; far above any real config, far below what aliases of
#: aliases ("billion laughs") or a self-referencing alias expand to when the config is walked.
MAX_YAML_VALUES = 100_000


def parse_yaml(text: str, what: str, with_position: bool = True):
    """``text`` read by a ``yaml.SafeLoader`` that refuses duplicate keys: every YAML read of a user
    file goes through here.  Malformed, duplicated or pathological YAML is a one-line
    :class:`ConfigError` starting with ``what``."""
    try:
        data = yaml.load(io.StringIO(text), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None and with_position else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "maximum nesting depth" in problem:  # libyaml's limit (1,000 levels); the pure-Python parser recurses
            raise ConfigError(f"{what}: collections nested too deeply") from None
        raise ConfigError(f"{what}{at}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{what}: collections nested too deeply") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as `2020-13-45`, `!!int x`, a 5000-digit int
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what}: a value cannot be read ({problem})") from None
    _check_expanded_size(data, what)
    return data


def _check_expanded_size(data, what: str) -> None:
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            # no alias needed: a document of 300,000 plain keys was blamed on aliases
            raise ConfigError(f"{what}: the document expands to more than {MAX_YAML_VALUES} values "
                              "(aliases of aliases, an alias inside itself, or that many values written out; "
                              "a config needs far fewer)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def dump_yaml(config: Mapping) -> str:
    return yaml.safe_dump(plain_value(config), sort_keys=False, default_flow_style=False)


def write_config(config: Mapping, path: str | Path) -> None:
    """Write the resolved config atomically."""
    from kdkit.files import atomic_write_text

    atomic_write_text(Path(path), dump_yaml(config))


def plain_value(value):
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- --set --------------------------------------------------------------------------------

def parse_set(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, parsed value).  The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or not key.isprintable() or any(not part for part in key.split(".")):  # no line breaks in messages
        raise ConfigError(f"--set: invalid key {key!r} in {item!r}")
    value = parse_yaml(raw, f"--set {key}: value {raw!r} is not valid YAML", with_position=False) if raw.strip() \
        else None
    if raw.strip() and isinstance(value, dict) and not raw.strip().startswith("{"):
        # "a=b: c" would silently become a mapping; almost certainly a mistake
        raise ConfigError(f"--set {key}: value {raw!r} parses as a mapping; quote it or use {{...}}")
    return key.split("."), value


def apply_sets(config: dict, sets: Iterable[str]) -> dict:
    """Apply ``--set`` items onto a copy of ``config`` (structure is validated later)."""
    config = copy.deepcopy(config)
    for item in sets or ():
        parts, value = parse_set(item)
        node = config
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, here)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i]) or '<root>'} is not a mapping")
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, ".".join(parts))] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    return config


def check_dotted_keys(mapping: Mapping, what: str) -> None:
    """Refuse two keys of one mapping of dotted keys (a sweep's ``base`` or ``set``) where one is a
    prefix of the other (``data.name`` beside ``data: {name: ...}``): applied as ``--set`` items,
    the later one silently replaces or is replaced by the other, depending on their order."""
    keys = [key for key in mapping if isinstance(key, str)]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            pa, pb = a.split("."), b.split(".")
            short, long_ = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
            if long_[:len(short)] != short:
                continue
            nested = mapping[".".join(long_)]
            for part in reversed(long_[len(short):]):  # the longer key written as the shorter one's value
                nested = {part: nested}
            leaf = _common_leaf(mapping[".".join(short)], nested, short)
            if leaf is not None:
                raise ConfigError(f"{what}: keys {a!r} and {b!r} both set {'.'.join(leaf)}; give each setting "
                                  "once, dotted or nested")
            raise ConfigError(f"{what}: keys {a!r} and {b!r} overlap (a mapping given for one replaces what the "
                              "other sets, depending on their order); merge them into one key")


def _common_leaf(x, y, path: list) -> list | None:
    """The first path below ``path`` that both ``x`` and ``y`` give a value for (``None``: none)."""
    if isinstance(x, Mapping) and isinstance(y, Mapping) and x and y:
        for key in x:
            if key in y:
                leaf = _common_leaf(x[key], y[key], path + [str(key)])
                if leaf is not None:
                    return leaf
        return None
    return path


def _list_index(node: list, part: str, path: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--set {path}: {part!r} must be a list index (the value is a list)") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"--set {path}: index {index} out of range (list has {len(node)} items)")
    return index
