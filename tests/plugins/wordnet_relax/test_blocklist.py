"""The default blocklist of offensive lemmas and its extension."""
from __future__ import annotations

import pytest
from wr_helpers import POOL_WORDS

from kdkit.errors import ConfigError
from kdkit_wordnet_relax.blocklist import apply_blocklist, build_blocklist, default_blocklist, normalize_lemma
from kdkit_wordnet_relax.relaxer import WordNetRelaxer


def test_default_blocklist_content():
    words = default_blocklist()
    assert 80 <= len(words) <= 400
    assert {"motherfucker", "white trash", "wetback"} <= words
    # everyday nouns whose main sense is harmless stay usable
    assert not {"shrimp", "queen", "taco", "tool", "paddy", "euphemism"} & words
    assert all(w == normalize_lemma(w) for w in words)


def test_apply_normalises_case_and_underscores():
    kept, dropped = apply_blocklist(["White_Trash", "fox", "Motherfucker", "white wine"], default_blocklist())
    assert kept == ["fox", "white wine"]
    assert dropped == ["White_Trash", "Motherfucker"]


def test_extra_lemmas_and_files(tmp_path):
    extra_file = tmp_path / "more.txt"
    extra_file.write_text("# my additions\nsea_cucumber\nWHALE  # trailing comment\n")
    words = build_blocklist(True, ["Dog", str(extra_file)])
    assert {"dog", "sea cucumber", "whale", "motherfucker"} <= words
    assert build_blocklist(False, "cat") == {"cat"}
    with pytest.raises(ConfigError, match="does not exist"):
        build_blocklist(True, [str(tmp_path / "missing.txt")])


def test_pool_applies_blocklist(pool_file):
    relaxer = WordNetRelaxer(pool="file", pool_file=str(pool_file), blocklist_extra=["dog", "cat"])
    words, info = relaxer.noun_pool(["circle"])
    assert "motherfucker" not in words and "dog" not in words and "cat" not in words
    assert "fox" in words
    assert info["blocked"] == 3
    assert info["pool_size_full"] == len(set(POOL_WORDS))
    open_relaxer = WordNetRelaxer(pool="file", pool_file=str(pool_file), blocklist=False)
    assert "motherfucker" in open_relaxer.noun_pool(["circle"])[0]
