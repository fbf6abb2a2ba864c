"""``table.png``: the sweep's table as a plot (needs matplotlib, ``pip install kdkit[plot]``)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

#: a mean further than this many interquartile ranges outside the row means' quartiles is drawn as an
#: arrow at the axis edge (Tukey's "far out"): one collapsed row (CAT-KD, 46.5 %) stretched the axis
#: from 20 to 90 % and left the other rows (78-87 %) in one column
FAR_OUT_IQR = 3.0


def _bulk_range(means: list[float]) -> tuple[float, float]:
    """The range of the row means that is not far out (:data:`FAR_OUT_IQR`); unbounded below 4 means."""
    if len(means) < 4:
        return -math.inf, math.inf
    q1, _, q3 = statistics.quantiles(means, n=4, method="inclusive")
    return q1 - FAR_OUT_IQR * (q3 - q1), q3 + FAR_OUT_IQR * (q3 - q1)


def draw_table(table: dict):
    """The figure of :func:`plot_table` and its axes ``(fig, ax)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in table["rows"] if r["best"]["mean"] is not None or r["last"]["mean"] is not None]
    rows.sort(key=lambda r: (r["best"]["mean"] if r["best"]["mean"] is not None else -math.inf))
    style = {"teacher": ("tab:gray", "s"), "baseline": ("tab:orange", "D"), "method": ("tab:blue", "o")}
    low, high = _bulk_range([r[sel]["mean"] for r in rows for sel in ("best", "last") if r[sel]["mean"] is not None])
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.42 * max(len(rows), 1)))

    def draw(y, r, sel):
        color, marker = style[r["kind"]]
        s, dy, face = r[sel], (0.12 if sel == "best" else -0.12), (color if sel == "best" else "none")
        ax.errorbar(s["mean"], y + dy, xerr=s["std"] or 0.0, fmt=marker, color=color, mfc=face, capsize=3,
                    markersize=6)

    far = []
    for y, r in enumerate(rows):
        for sel in ("best", "last"):
            if r[sel]["mean"] is not None:
                if low <= r[sel]["mean"] <= high:
                    draw(y, r, sel)
                else:
                    far.append((y, r, sel))
    outside: dict = {}  # (y, side) -> the values off the axis and the row's colour
    if far:
        left, right = ax.get_xlim()
        ax.set_xlim(left, right)  # the bulk's axis: a far mean that still falls on it is drawn there
        for y, r, sel in far:
            s = r[sel]
            if left <= s["mean"] <= right:
                draw(y, r, sel)
                continue
            text = f"{s['mean']:.1f} ± {s['std'] or 0.0:.1f}" + (" (last)" if sel == "last" else "")
            texts, _ = outside.setdefault((y, "left" if s["mean"] < left else "right"), ([], style[r["kind"]][0]))
            texts.append(text)
    # a seed that diverged is not in the mean: the label says how many (a row where all did is not drawn)
    labels = [r["id"] + (f" ({len(r['diverged'])}/{len(r['diverged']) + r['best']['n']} diverged)"
                         if r.get("diverged") else "") for r in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    for (y, side), (texts, color) in outside.items():  # an arrow at the axis edge, pointing out, and the values
        edge, away = (0.0, 1) if side == "left" else (1.0, -1)
        ax.annotate(", ".join(texts), xy=(edge, y), xycoords=ax.get_yaxis_transform(), xytext=(away * 30, 0),
                    textcoords="offset points", ha="left" if side == "left" else "right", va="center",
                    fontsize=8, color=color, arrowprops={"arrowstyle": "->", "color": color})
    ax.set_xlabel(f"{table['metric']}, mean ± std over seeds"
                  + ("; arrows: means off the axis" if outside else ""))
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=k) for k, (c, m) in style.items()
               if any(r["kind"] == k for r in rows)]
    handles += [Line2D([], [], color="k", marker="o", linestyle="", label="val-best epoch"),
                Line2D([], [], color="k", marker="o", mfc="none", linestyle="", label="last epoch")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(f"{table['sweep']} (seeds {', '.join(map(str, table['seeds']))})")
    fig.tight_layout()
    return fig, ax


def plot_table(table: dict, path: Path) -> Path | None:
    """``table.png``: one line per row, sorted by mean; filled = val-best, hollow = last epoch; error
    bars ± std; teachers, baselines and methods in distinct colours and markers.  Seeds that diverged
    are left out (the label counts them); a row whose seeds all diverged is not drawn.  A mean far
    outside the others (:data:`FAR_OUT_IQR`) is an arrow at the axis edge with its value."""
    try:
        import matplotlib  # noqa: F401 - the plot extra is optional
    except ImportError:
        return None
    fig, _ = draw_table(table)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
