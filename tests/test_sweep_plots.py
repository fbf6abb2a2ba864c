"""The sweep's ``table.png`` (kdkit/sweep/plots.py): one far outlier (the published table's CAT-KD, 46.5 ± 25 %
beside 78-87 %) used to stretch the axis so that the other rows sat in one column; it is now an arrow at the
axis edge with its value, and the axis spans the other rows."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from kdkit.sweep.plots import draw_table  # noqa: E402


def _row(rid, kind, best, last, std=0.5):
    stats = lambda mean: {"mean": mean, "std": std, "n": 3}  # noqa: E731
    return {"id": rid, "kind": kind, "best": stats(best), "last": stats(last), "diverged": []}


def _table(rows):
    return {"sweep": "t", "metric": "test top-1 (%)", "seeds": [0, 1, 2], "rows": rows}


BULK = [_row("teacher", "teacher", 86.5, 87.2), _row("baseline", "baseline", 83.4, 83.3),
        _row("kd", "method", 84.3, 84.4), _row("dkd", "method", 84.4, 84.6), _row("ft", "method", 78.3, 78.6),
        _row("fsp", "method", 86.7, 86.8)]


def _annotations(ax):
    return [t for t in ax.texts if hasattr(t, "arrow_patch") and t.arrow_patch is not None]


def test_a_far_outlier_is_an_arrow_at_the_axis_edge_with_its_value():
    import matplotlib.pyplot as plt

    fig, ax = draw_table(_table(BULK + [_row("catkd", "method", 46.52, 47.75, std=25.09)]))
    try:
        left, right = ax.get_xlim()
        assert 46.52 + 25.09 < left < 78.3 - 0.5 and right > 87.2 + 0.5  # the outlier's bar is off the axis too
        [arrow] = _annotations(ax)
        assert arrow.get_text() == "46.5 ± 25.1, 47.8 ± 25.1 (last)"
        assert arrow.xy[0] == 0.0  # the left edge (axes coordinates), on the catkd row (sorted first)
        assert [t.get_text() for t in ax.get_yticklabels()][int(arrow.xy[1])] == "catkd"
    finally:
        plt.close(fig)


def test_a_table_without_outliers_spans_every_row():
    import matplotlib.pyplot as plt

    fig, ax = draw_table(_table(BULK))
    try:
        left, right = ax.get_xlim()
        assert left < 78.3 - 0.5 and right > 87.2 + 0.5 and not _annotations(ax)
    finally:
        plt.close(fig)
