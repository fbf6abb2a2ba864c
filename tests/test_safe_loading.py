"""Nothing kdkit reads from a user or a cache can run code: every ``torch.load`` passes
``weights_only=True``, every ``np.load`` ``allow_pickle=False``, pickles only go through a restricted
unpickler — checked on the source — and a planted pickle in wordnet_relax's cache is refused."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("kdkit", "plugins", "examples") for p in (ROOT / d).rglob("*.py"))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _unsafe_loads(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        owner, attr = node.func.value.id, node.func.attr
        where = f"{path.relative_to(root)}:{node.lineno}"
        if owner == "torch" and attr == "load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and attr == "load" and _keyword(node, "allow_pickle") is not False:
            found.append(f"{where}: np.load without allow_pickle=False")
        elif owner == "pickle" and attr in ("load", "loads"):
            found.append(f"{where}: pickle.{attr} (use a restricted Unpickler)")
    return found


def test_the_scan_finds_unsafe_loads(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch, numpy as np, pickle\n"
                      "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p)\npickle.loads(b)\n"
                      "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\n")
    found = [f.split(": ", 1)[1] for f in _unsafe_loads(sample, tmp_path)]
    assert found == ["torch.load without weights_only=True"] * 2 + ["np.load without allow_pickle=False",
                                                                    "pickle.loads (use a restricted Unpickler)"]


def test_no_source_file_loads_user_or_cache_files_unsafely():
    assert len(SOURCES) > 50
    found = [f for path in SOURCES for f in _unsafe_loads(path)]
    assert not found, "\n".join(found)


class _Payload:
    """Unpickling this runs ``marker.write_text`` — what an attacker's cache file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_planted_pickle_in_the_wordnet_relax_cache_runs_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    from kdkit_wordnet_relax.paths import load_keyed, save_keyed

    key = {"what": "clip text embeddings", "model": "kdkit-tiny"}
    good = tmp_path / "good.pt"
    save_keyed(good, key, {"words": ["fox"], "embeddings": torch.ones(1, 4), "info": {"k": 3, "ratio": 0.5}})
    assert load_keyed(good, key)["words"] == ["fox"]  # a genuine cache entry still loads

    marker = tmp_path / "marker"
    planted = tmp_path / "planted.pt"
    torch.save({"key": key, "payload": _Payload(marker)}, planted)  # what an attacker would write
    assert load_keyed(planted, key) is None  # refused: recomputed
    assert not marker.exists()
