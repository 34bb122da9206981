"""Readable plots (issue 23, item 7): log axes where the values span >= 100x, a few
annotations that never overlap (matplotlib's text bounding boxes), legends outside the data."""
from __future__ import annotations

import itertools

import matplotlib
import pandas as pd
import pytest
from matplotlib.text import Annotation

from bench import report

matplotlib.use("Agg")


def verdict(saved, cost) -> pd.DataFrame:
    n = len(saved)
    return pd.DataFrame({"workload": [f"gen{i}+precopy@case-with-a-long-name-{i}"
                                      for i in range(n)],
                         "variant": ["default", "haft"] * (n // 2) + ["default"] * (n % 2),
                         "saved_us": saved, "cost_us": cost,
                         "net_us": [s - c for s, c in zip(saved, cost)],
                         "breaks_guest": [False] * n})


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def annotations(ax):
    return [t for t in ax.texts if isinstance(t, Annotation)]


def assert_legend_outside(fig, ax):
    r = drawn(fig)
    leg = ax.get_legend()
    assert leg is not None
    a, b = leg.get_window_extent(r), ax.get_window_extent(r)
    assert not (a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1)


# one outlier and a crowd near the origin, three of which share the largest net effects
OUTLIER = verdict([50_000.0, 3.0, 3.1, 3.2, 1.0, 2.0, 5.0, 8.0, 0.0],
                  [10.0, 0.5, 0.5, 0.5, 0.9, 1.0, 1.0, 2.0, 0.0])


def test_exits_vs_cost_log_axes_apart_labels_outside_legend():
    fig = report.fig_exits_vs_cost(OUTLIER)
    ax = fig.axes[0]
    assert ax.get_xscale() in ("log", "symlog") and ax.get_yscale() in ("log", "symlog")
    r = drawn(fig)
    notes = annotations(ax)
    assert 1 <= len(notes) <= report.LABELLED
    for a, b in itertools.combinations(notes, 2):
        x, y = a.get_window_extent(r), b.get_window_extent(r)
        assert not (x.x0 < y.x1 and y.x0 < x.x1 and x.y0 < y.y1 and y.y0 < x.y1), \
            (a.get_text(), b.get_text())
    assert_legend_outside(fig, ax)


def test_exits_vs_cost_crowded_labels_never_overlap():
    """Three cases on one spot: the labels go to different offsets or are left out."""
    v = verdict([10.0, 10.0, 10.0, 1.0], [1.0, 1.0, 1.0, 0.5])
    fig = report.fig_exits_vs_cost(v)
    ax = fig.axes[0]
    r = drawn(fig)
    boxes = [a.get_window_extent(r) for a in annotations(ax)]
    assert len(boxes) >= 2
    for x, y in itertools.combinations(boxes, 2):
        assert not (x.x0 < y.x1 and y.x0 < x.x1 and x.y0 < y.y1 and y.y0 < x.y1)


def test_linear_axes_when_values_are_close():
    fig = report.fig_exits_vs_cost(verdict([1.0, 2.0, 5.0, 8.0], [1.0, 2.0, 3.0, 4.0]))
    assert fig.axes[0].get_xscale() == "linear"


def test_false_dirty_log_axis_when_one_bar_dwarfs_the_rest():
    df = pd.DataFrame({"case": [f"c{i}" for i in range(6) for _ in range(2)],
                       "policy": ["fix", "ha-promote"] * 6,
                       "dirty_false_positive": [0, 50_000, 0, 3, 0, 12, 0, 40, 1, 7, 0, 2]})
    fig = report.fig_false_dirty(df, "default")
    ax = fig.axes[0]
    assert ax.get_xscale() in ("log", "symlog")
    assert_legend_outside(fig, ax)


def test_sensitivity_log_axis_and_legend_outside():
    s = pd.DataFrame({"param": ["exit_us", "exit_us", "resend_us", "resend_us"],
                      "factor": [0.1, 10, 0.1, 10], "best_net_us": [2.0, 9000.0, -4.0, 30.0]})
    fig = report.fig_sensitivity(s, 20.0)
    ax = fig.axes[0]
    assert ax.get_xscale() in ("log", "symlog")
    assert_legend_outside(fig, ax)


@pytest.mark.parametrize("values, want", [([1, 99], False), ([1, 100], True),
                                          ([0, 0, 5], False), ([-300, 2], True)])
def test_spans_decades(values, want):
    assert report.spans_decades(values) is want
