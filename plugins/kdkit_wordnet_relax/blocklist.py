"""The blocklist of offensive lemmas kept out of every noun pool.

The default list (``blocklist.txt`` in this package) holds WordNet noun lemmas glossed as slurs
or obscenities; see the file's header for how it was made.  ``relax.blocklist_extra`` extends
it with a list of lemmas and/or paths of files in the same format; ``relax.blocklist: false``
switches the default list off (not recommended).

``python -m kdkit_wordnet_relax.blocklist`` prints the candidates derived from the glosses, for
maintainers who want to review the list again.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Iterable

from kdkit import ConfigError

#: Glosses that mark a sense as a slur or an obscenity.
GLOSS_PATTERN = re.compile(
    r"ethnic slur|(offensive|obscene|vulgar|derogatory|disparaging|insulting|contemptuous|abusive) "
    r"(and insulting |and disparaging |slang )?(terms?|names?|words?|slang|expression|word for)"
    r"|(considered|regarded as) offensive|vulgar slang"
)


def normalize_lemma(text: str) -> str:
    """Lower case, underscores to spaces, runs of white space collapsed."""
    return " ".join(str(text).replace("_", " ").lower().split())


def parse_lines(lines: Iterable[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(normalize_lemma(line))
    return out


def default_blocklist() -> set[str]:
    """The lemmas in the packaged ``blocklist.txt``."""
    text = resources.files("kdkit_wordnet_relax").joinpath("blocklist.txt").read_text(encoding="utf-8")
    return parse_lines(text.splitlines())


def build_blocklist(use_default: bool = True, extra: Iterable[str] | str | None = None) -> set[str]:
    """The effective blocklist: the default list (unless ``use_default`` is false) plus ``extra``.

    ``extra`` items are lemmas, or paths of files with one lemma per line (an item counts as a
    file when it names an existing file or ends with ``.txt``).
    """
    words = default_blocklist() if use_default else set()
    if extra is None:
        return words
    if isinstance(extra, (str, os.PathLike)):
        extra = [extra]
    for item in extra:
        item_s = str(item)
        path = Path(os.path.expanduser(item_s))  # an unknown ~user: not found, no crash
        if path.is_file() or item_s.endswith(".txt"):
            if not path.is_file():
                raise ConfigError(f"relax.blocklist_extra: file {item_s!r} does not exist")
            words |= parse_lines(path.read_text(encoding="utf-8").splitlines())
        else:
            words.add(normalize_lemma(item_s))
    return words


def apply_blocklist(words: Iterable[str], blocklist: set[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: a word is dropped when its normalised form is in ``blocklist``."""
    kept, dropped = [], []
    for w in words:
        (dropped if normalize_lemma(w) in blocklist else kept).append(w)
    return kept, dropped


def gloss_candidates(wn) -> list[str]:
    """Noun lemmas whose dominant sense WordNet glosses as a slur or obscenity (for review)."""
    flagged = {s for s in wn.all_synsets("n") if GLOSS_PATTERN.search(s.definition().lower())}
    out = set()
    for synset in flagged:
        for lemma in synset.lemmas():
            others = [x for x in wn.lemmas(lemma.name(), pos="n") if x.synset() not in flagged]
            if lemma.count() >= max((x.count() for x in others), default=-1):
                out.add(normalize_lemma(lemma.name()))
    return sorted(out)


def main() -> int:  # pragma: no cover - a maintainer's tool
    from kdkit_wordnet_relax.wordnet_data import get_wordnet

    shipped = default_blocklist()
    for word in gloss_candidates(get_wordnet()):
        print(("  " if word in shipped else "- ") + word)
    print("# '- ' marks candidates not in the shipped list (reviewed out or new)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
