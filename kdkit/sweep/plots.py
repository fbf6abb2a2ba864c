"""``table.png``: the sweep's table as a plot (needs matplotlib, ``pip install kdkit[plot]``)."""
from __future__ import annotations

import math
from pathlib import Path


def plot_table(table: dict, path: Path) -> Path | None:
    """``table.png``: one line per row, sorted by mean; filled = val-best, hollow = last epoch; error
    bars ± std; teachers, baselines and methods in distinct colours and markers.  Seeds that diverged
    are left out (the label counts them); a row whose seeds all diverged is not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return None
    rows = [r for r in table["rows"] if r["best"]["mean"] is not None or r["last"]["mean"] is not None]
    rows.sort(key=lambda r: (r["best"]["mean"] if r["best"]["mean"] is not None else -math.inf))
    style = {"teacher": ("tab:gray", "s"), "baseline": ("tab:orange", "D"), "method": ("tab:blue", "o")}
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.42 * max(len(rows), 1)))
    for y, r in enumerate(rows):
        color, marker = style[r["kind"]]
        for sel, dy, face in (("best", 0.12, color), ("last", -0.12, "none")):
            s = r[sel]
            if s["mean"] is not None:
                ax.errorbar(s["mean"], y + dy, xerr=s["std"] or 0.0, fmt=marker, color=color, mfc=face,
                            capsize=3, markersize=6)
    # a seed that diverged is not in the mean: the label says how many (a row where all did is not drawn)
    labels = [r["id"] + (f" ({len(r['diverged'])}/{len(r['diverged']) + r['best']['n']} diverged)"
                         if r.get("diverged") else "") for r in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"{table['metric']}, mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=k) for k, (c, m) in style.items()
               if any(r["kind"] == k for r in rows)]
    handles += [Line2D([], [], color="k", marker="o", linestyle="", label="val-best epoch"),
                Line2D([], [], color="k", marker="o", mfc="none", linestyle="", label="last epoch")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(f"{table['sweep']} (seeds {', '.join(map(str, table['seeds']))})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

