"""The reports of a ``wordnet_relax`` run: the results table printed at its end and the label-leakage
sweep (``sweep.csv``, ``sweep.md``, ``sweep.png`` — the paper's Figure 2).  They read the run's summary
only.  Importing this module is cheap (matplotlib loads when the plot is drawn)."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import kdkit  # kdkit.atomic_write_text is looked up when called: it imports torch

__all__ = ["results_table", "sweep_markdown", "write_sweep", "summary_json"]


def _fmt(v, width=7):
    """A number with 2 decimals in ``width`` characters, ``-`` for a missing one."""
    return f"{v:{width}.2f}" if isinstance(v, (int, float)) and v is not None and not math.isnan(v) else \
        "-".rjust(width)


def results_table(summary: dict) -> str:
    """The results table printed at the end of a run."""
    rows = []
    for key, t in summary.get("teachers", {}).items():
        if key == "multimodal":
            continue
        rows.append((f"T_m {t.get('name')} ({t.get('augment') or 'pretrained'} aug)", t.get("top1"), None,
                     t.get("entropy")))
    t_x = summary.get("teachers", {}).get("multimodal")
    if t_x:
        rows.append((f"T_x {t_x['backbone']} [CLIP img || text], ratio {t_x['ratio']:g}", t_x.get("top1"),
                     t_x.get("top1_relaxed"), t_x.get("entropy")))
    if "baseline" in summary:
        rows.append((f"baseline {summary['baseline']['name']} (no KD)", summary["baseline"].get("top1"), None, None))
    st = summary["student"]
    teachers = "T_m + T_x" if t_x else "T_m"
    rows.append((f"student {st['name']} (KD from {teachers}, {summary['distill']['combine']})", st.get("top1"),
                 None, None))
    width = max(len(r[0]) for r in rows)
    lines = ["", f"wordnet_relax results: test top-1 % (checkpoint chosen on the "
                 f"{summary['selection']['select_on']} split)",
             f"  {'model'.ljust(width)}   top-1  relaxed  entropy"]
    for name, top1, relaxed, ent in rows:
        lines.append(f"  {name.ljust(width)} {_fmt(top1)}  {_fmt(relaxed)}  {_fmt(ent)}")
    vocab = summary.get("relax", {})  # the summary's record of the relaxed vocabulary
    lines.append(f"  relax.ratio = {summary.get('ratio'):g}; {vocab.get('nouns')} relaxed nouns"
                 + (f" (pool capped to {vocab.get('pool_size_used')})" if vocab.get("pool_capped") else "")
                 + f"; CLIP {summary['clip']['model']} "
                 + ("pretrained" if summary.get("clip_pretrained") else "RANDOM INIT (not pretrained)"))
    lines.append("  T_x top-1: text as in training (exact class names for the un-relaxed share); 'relaxed': "
                 "label-free retrieved text only")
    lines.append("  entropy (nats): T_x on its distillation inputs (the training images), T_m on the test split")
    if summary.get("sweep"):
        lines.append("")
        lines.append(sweep_markdown(summary["sweep"]))
    return "\n".join(lines)


def sweep_markdown(rows: list[dict]) -> str:
    """The sweep rows (ratio, T_x and student top-1, T_x entropy) as a Markdown table."""
    lines = ["| ratio | T_x top-1 | T_x top-1 (relaxed text) | T_x entropy | student top-1 |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['ratio']:g} | {_fmt(r['teacher_top1'], 0)} | {_fmt(r['teacher_top1_relaxed'], 0)} | "
                     f"{_fmt(r['teacher_entropy'], 0)} | {_fmt(r['student_top1'], 0)} |")
    return "\n".join(lines)


def write_sweep(run_dir: Path, summary: dict, log=print) -> dict:
    """``sweep.csv``, ``sweep.md`` and (with matplotlib) ``sweep.png`` — the paper's Figure 2."""
    rows = summary["sweep"]
    run_dir = Path(run_dir)
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["ratio", "teacher_top1", "teacher_top1_relaxed", "teacher_entropy", "student_top1",
                "baseline_top1"])
    for r in rows:
        w.writerow([r["ratio"], r["teacher_top1"], r["teacher_top1_relaxed"], r["teacher_entropy"],
                    r["student_top1"], summary.get("baseline", {}).get("top1")])
    kdkit.atomic_write_text(run_dir / "sweep.csv", table.getvalue())
    kdkit.atomic_write_text(run_dir / "sweep.md", sweep_markdown(rows) + "\n")
    files = {"csv": str(run_dir / "sweep.csv"), "markdown": str(run_dir / "sweep.md")}
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib is an optional extra
        log("wordnet_relax: matplotlib is not installed; sweep.png not written (pip install matplotlib)")
        return files
    xs = [100 * r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, [r["teacher_top1"] for r in rows], "o-", label="teacher T_x")
    ax.plot(xs, [r["student_top1"] for r in rows], "s-", label="student")
    if summary.get("baseline", {}).get("top1") is not None:
        ax.axhline(summary["baseline"]["top1"], color="gray", ls="--", lw=1, label="student without KD")
    ax.set_xlabel("WordNet relaxation (% of training samples)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Label leakage vs WordNet relaxation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "sweep.png", dpi=120)
    plt.close(fig)
    files["png"] = str(run_dir / "sweep.png")
    log(f"wordnet_relax: sweep table and plot in {run_dir / 'sweep.md'}, {run_dir / 'sweep.png'}")
    return files


def summary_json(summary: dict) -> str:  # pragma: no cover - convenience
    return json.dumps(copy.deepcopy(summary), indent=2, sort_keys=True)
