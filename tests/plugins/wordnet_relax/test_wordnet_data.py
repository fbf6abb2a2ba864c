"""WordNet data resolution: nltk data, the downloader, assembly from Debian's files, the error."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from wr_helpers import DEBIAN_WORDNET, needs_debian_wordnet

from kdkit.errors import KdkitError
from kdkit_wordnet_relax import wordnet_data


@pytest.fixture
def isolated_nltk(monkeypatch):
    """nltk sees no data directory at all (and forgets the memoised reader)."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    wordnet_data.reset()
    yield nltk
    wordnet_data.reset()


def test_lexnames_table_is_wordnet_30():
    lines = wordnet_data.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[18] == "18\tnoun.person\t1"
    assert lines[43] == "43\tverb.weather\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if man.is_file():  # the same table as the Debian manual page lexnames(5WN)
        text = gzip.open(man, "rt", encoding="latin-1").read()
        table = re.findall(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)\s*\t", text, flags=re.M)
        assert [f"{n}\t{name}" for n, name in table] == [ln.rsplit("\t", 1)[0] for ln in lines]


@needs_debian_wordnet
def test_assemble_copies_files_and_writes_lexnames(tmp_path, isolated_nltk):
    target = wordnet_data.assemble(DEBIAN_WORDNET, tmp_path / "nltk_data")
    assert target == tmp_path / "nltk_data" / "corpora" / "wordnet"
    for name in wordnet_data.REQUIRED_FILES:
        path = target / name
        assert path.is_file() and not path.is_symlink(), name
        assert path.stat().st_size == (DEBIAN_WORDNET / name).stat().st_size
    assert (target / "lexnames").read_text() == wordnet_data.lexnames_text()
    # a second call keeps the complete copy as it is
    mtime = (target / "data.noun").stat().st_mtime_ns
    wordnet_data.assemble(DEBIAN_WORDNET, tmp_path / "nltk_data")
    assert (target / "data.noun").stat().st_mtime_ns == mtime


@needs_debian_wordnet
def test_get_wordnet_assembles_offline_then_reuses(tmp_path, isolated_nltk, monkeypatch):
    calls = []
    monkeypatch.setattr(wordnet_data, "_try_download", lambda timeout: calls.append(timeout) or False)
    monkeypatch.setenv("KDKIT_OFFLINE", "1")
    wn = wordnet_data.get_wordnet(tmp_path)
    assert calls == []  # offline: no download attempt
    assert wn.get_version() == "3.0"
    assert "canine.n.02" in {s.name() for s in wn.synset("fox.n.01").hypernyms()}
    assert str(tmp_path / "nltk_data") in isolated_nltk.data.path
    assert sum(1 for _ in wn.all_lemma_names(pos="n")) == 117798
    # a fresh process-like state finds the assembled copy without copying again
    isolated_nltk.data.path[:] = []
    mtime = (tmp_path / "nltk_data" / "corpora" / "wordnet" / "data.noun").stat().st_mtime_ns
    wn2 = wordnet_data.get_wordnet(tmp_path)
    assert wn2.synsets("apple")
    assert (tmp_path / "nltk_data" / "corpora" / "wordnet" / "data.noun").stat().st_mtime_ns == mtime


@needs_debian_wordnet
def test_download_is_tried_by_default_before_assembly(tmp_path, isolated_nltk, monkeypatch):
    calls = []
    monkeypatch.setattr(wordnet_data, "_try_download", lambda timeout: calls.append(timeout) or False)
    monkeypatch.delenv("KDKIT_OFFLINE", raising=False)
    monkeypatch.delenv("KDKIT_NO_DOWNLOAD", raising=False)
    wn = wordnet_data.get_wordnet(tmp_path)
    assert len(calls) == 1 and calls[0] <= 10  # a short timeout guard
    assert wn.synsets("dog")


def test_download_attempt_fails_fast_offline(monkeypatch):
    """The real downloader against an unreachable network returns False without hanging."""
    import socket
    import time

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: refuse())
    start = time.monotonic()
    assert wordnet_data._try_download(timeout=2.0) is False
    assert time.monotonic() - start < 20


def test_clear_error_when_nothing_is_available(tmp_path, isolated_nltk, monkeypatch):
    monkeypatch.setattr(wordnet_data, "DEBIAN_WORDNET_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("KDKIT_WORDNET_DIR", str(tmp_path / "also-missing"))
    monkeypatch.setenv("KDKIT_OFFLINE", "1")
    with pytest.raises(KdkitError) as err:
        wordnet_data.get_wordnet(tmp_path / "cache")
    msg = str(err.value)
    assert "apt-get install wordnet-base wordnet-sense-index" in msg
    assert "python -m nltk.downloader wordnet" in msg


def test_wordnet_dir_env_and_incomplete_source(tmp_path, monkeypatch):
    src = tmp_path / "wn"
    src.mkdir()
    (src / "data.noun").write_text("")
    monkeypatch.setenv("KDKIT_WORDNET_DIR", str(src))
    monkeypatch.setattr(wordnet_data, "DEBIAN_WORDNET_DIR", str(tmp_path / "missing"))
    assert wordnet_data.source_dir() is None  # incomplete: not used
    with pytest.raises(KdkitError, match="not a WordNet 3.0 database"):
        wordnet_data.assemble(src, tmp_path / "out")
