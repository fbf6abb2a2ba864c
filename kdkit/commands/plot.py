"""``kdkit plot RUN_DIR [--out FILE]``: PNG training curves from ``metrics.jsonl``.

One figure with a row per metric family (loss, top-1, ...) and a line per stage, written to exactly
``--out`` in the format its extension names (one matplotlib writes: png, svg, pdf, ...).  Needs
matplotlib (``pip install kdkit[plot]``).
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from kdkit.errors import KdkitError
from kdkit.files import atomic_write_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'kdkit train'")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="image file; its extension is the format (default: RUN_DIR/curves.png)")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise KdkitError(f"{run_dir}: no metrics.jsonl (is it a kdkit run directory?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KdkitError(f"{path} is not UTF-8 text (a damaged file?)") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise KdkitError(f"{path}: line {i} is not JSON") from None
        # the trainer writes one object per evaluation: {"stage": str, "epoch": int, "<split>.<metric>": ...}
        if not (isinstance(record, dict) and isinstance(record.get("stage"), str)
                and isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool)):
            raise KdkitError(f"{path}: line {i} is not a kdkit metrics record (an object with a stage name "
                             "and an integer epoch)")
        records.append(record)
    return records


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out_path = Path(out) if out is not None else run_dir / "curves.png"
    if out is not None and not str(out).strip():
        raise KdkitError("--out is empty; give an image file, e.g. --out curves.png")
    if out_path.is_dir():
        raise KdkitError(f"--out {out_path} is a directory; give an image file, e.g. --out {out_path / 'curves.png'}")
    records = [r for r in read_metrics(run_dir) if r.get("split") != "test"]
    if not records:
        raise KdkitError(f"{run_dir}/metrics.jsonl has no per-epoch evaluations to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KdkitError("kdkit plot needs matplotlib: pip install kdkit[plot]") from None
    from matplotlib.backend_bases import FigureCanvasBase

    # matplotlib would append .png to a name without an extension and fail late on an unknown one
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = out_path.suffix[1:].lower()
    if fmt not in formats:
        what = f": .{fmt} is not an image format matplotlib writes" if fmt else " has no extension"
        raise KdkitError(f"--out {out_path}{what}; end the name in one of: {', '.join(sorted(formats))}")
    keys = sorted({k for r in records for k, v in r.items()
                   if "." in k and isinstance(v, (int, float)) and not isinstance(v, bool)})
    families: dict[str, list[str]] = {}
    for k in keys:  # "train.loss", "val.loss" -> family "loss"
        families.setdefault(k.split(".", 1)[1], []).append(k)
    if not families:
        raise KdkitError(f"{run_dir}/metrics.jsonl has no numeric metrics to plot")
    stages = list(dict.fromkeys(r["stage"] for r in records))
    fig, axes = plt.subplots(len(families), 1, figsize=(7, 2.6 * len(families)), squeeze=False)
    for ax, (family, fkeys) in zip(axes[:, 0], families.items()):
        for stage in stages:
            rows = [r for r in records if r["stage"] == stage]
            for k in fkeys:
                xs = [r["epoch"] + 1 for r in rows if k in r]
                ys = [r[k] for r in rows if k in r]
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, label=f"{stage} {k.split('.', 1)[0]}")
        ax.set_ylabel(family)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    buffer = io.BytesIO()  # the format given, into memory, then atomically to exactly out_path
    fig.savefig(buffer, format=fmt, dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path


def run(args: argparse.Namespace) -> int:
    path = plot_run(args.run_dir, args.out)
    print(path)
    return 0
