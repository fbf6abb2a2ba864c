"""``kdkit plot``: ``--out`` names the file written, in a format matplotlib can write (issue 22)."""
from __future__ import annotations

import json

import pytest

from kdkit.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"stage": "student", "epoch": e, "train.loss": 1.0 / (e + 1), "val.top1": 50.0 + e} for e in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _plot(capsys, *argv):
    status = main(["plot", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def _listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("out", ["run/metrics.jsonl", "curves", "curves.txt"], ids=["jsonl", "no-suffix", "txt"])
def test_an_unsupported_format_is_one_line_naming_the_supported_ones(run_dir, tmp_path, capsys, monkeypatch, out):
    """`--out RUN/metrics.jsonl` was matplotlib's "Format 'jsonl' is not supported" traceback;
    `--out curves` wrote curves.png and printed `curves`."""
    monkeypatch.chdir(tmp_path)
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    before = _listing(tmp_path)
    status, _, err = _plot(capsys, run_dir, "--out", out)
    assert status == 2 and err.count("\n") == 1, err
    assert "kdkit: error: --out" in err and "png" in err and "svg" in err, err
    assert _listing(tmp_path) == before and (run_dir / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.parametrize("out", ["", "run"], ids=["empty", "directory"])
def test_an_empty_or_directory_out_is_one_line(run_dir, tmp_path, capsys, monkeypatch, out):
    """`--out ''` wrote ./.png."""
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    status, _, err = _plot(capsys, run_dir, "--out", out)
    assert status == 2 and err.count("\n") == 1 and "kdkit: error: --out" in err, err
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("name, magic", [("c.svg", b"<?xml"), ("c.PNG", b"\x89PNG"), ("c.pdf", b"%PDF")])
def test_the_named_file_is_written_in_its_format(run_dir, tmp_path, capsys, name, magic):
    status, out, err = _plot(capsys, run_dir, "--out", tmp_path / name)
    assert status == 0, err
    assert out.strip() == str(tmp_path / name)
    assert (tmp_path / name).read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "run"])  # no temp file left
