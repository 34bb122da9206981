"""Reports: markdown (tabulate), plain text for a mailing-list reply (<= 72 columns), CSV,
and PNG plots (matplotlib, Agg)."""
from __future__ import annotations

import io
import textwrap

import pandas as pd
from tabulate import tabulate

TEXT_WIDTH = 72


NA = "—"          # a cell with no value: each report states what it means there


def md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table; missing values (NaN, None) are written as NA ("—"), never as
    'nan' (each report states what "—" means where it can appear)."""
    d = df.astype(object).where(df.notna(), None)
    return tabulate(d, headers="keys", tablefmt="github", showindex=False, floatfmt=floatfmt,
                    missingval=NA)


def text_table(df: pd.DataFrame, floatfmt: str = ".3g", numparse: bool = True) -> str:
    """A plain table that fits TEXT_WIDTH columns: long cells are cut with '~'.
    `numparse = False`: string cells stay as written (numbers formatted by the caller)."""
    import tabulate as tabmod
    d = df.copy()
    tabmod.MIN_PADDING = 0                   # no extra header padding in plain text
    try:
        return _text_table(d, floatfmt, numparse)
    finally:
        tabmod.MIN_PADDING = 2


def _text_table(d: pd.DataFrame, floatfmt: str, numparse: bool = True) -> str:
    for width in (24, 20, 16, 13, 11, 9, 7):
        cut = d.map(lambda v: _cut(v, width))
        cut.columns = [_cut(c, width) for c in d.columns]
        out = tabulate(cut, headers="keys", tablefmt="simple", showindex=False,
                       floatfmt=floatfmt, disable_numparse=not numparse)
        if max(len(line) for line in out.splitlines()) <= TEXT_WIDTH:
            return out
    # still too wide: one record per block
    lines = []
    for _, row in d.iterrows():
        for c in d.columns:
            lines.append(_cut(f"{c}: {row[c]}", TEXT_WIDTH))
        lines.append("")
    return "\n".join(lines)


def _cut(v, width: int):
    if isinstance(v, str) and len(v) > width:
        return v[: width - 1] + "~"
    return v


def wrap(text: str) -> str:
    return "\n".join(textwrap.fill(p, TEXT_WIDTH, break_on_hyphens=False) if p.strip() else ""
                     for p in text.split("\n"))


def plot_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


DECADES = 100                  # values spanning at least this ratio get a log axis


def spans_decades(values) -> bool:
    """Whether the positive values span >= DECADES x (a linear axis would hide the small)."""
    v = pd.Series(values, dtype=float).abs()
    v = v[v > 0]
    return len(v) > 1 and float(v.max()) >= DECADES * float(v.min())


def _log_axis(ax, axis: str, values) -> None:
    """A log axis when the values span decades: symlog (zero stays on the plot; linear
    below the smallest non-zero magnitude), else linear."""
    if not spans_decades(values):
        return
    import math
    v = pd.Series(values, dtype=float).abs()
    lin = 10.0 ** math.floor(math.log10(float(v[v > 0].min())))    # a power of ten
    getattr(ax, f"set_{axis}scale")("symlog", linthresh=lin, linscale=1.0)


def _legend_outside(ax, **kw) -> None:
    """The legend right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
              **kw)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


OFFSETS = [(8, 8), (8, -16), (-8, 8), (-8, -16), (12, 26), (12, -34), (-12, 26), (-12, -34)]


def annotate_apart(ax, points, labels) -> list:
    """Label each point where its text overlaps no label placed before it (trying a few
    offsets); a label that fits nowhere is left out.  Returns the annotations kept."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed, boxes = [], []
    for (x, y), text in zip(points, labels):
        for dx, dy in OFFSETS:
            a = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            fontsize=7, ha="left" if dx > 0 else "right",
                            arrowprops={"arrowstyle": "-", "lw": 0.4})
            box = a.get_window_extent(renderer)
            if not any(_overlaps(box, b) for b in boxes):
                placed.append(a)
                boxes.append(box)
                break
            a.remove()
    return placed


def plot_false_dirty(df: pd.DataFrame, variant: str) -> bytes:
    return plot_png(fig_false_dirty(df, variant))


def fig_false_dirty(df: pd.DataFrame, variant: str):
    """False-positive dirty pages per policy, for the cases that have any (one variant)."""
    plt = _plt()
    d = df.pivot_table(index="case", columns="policy", values="dirty_false_positive",
                       aggfunc="sum").fillna(0)
    d = d[(d > 0).any(axis=1)].sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(d) + 1.5)))
    if len(d):
        d.plot.barh(ax=ax, width=0.8)
        _log_axis(ax, "x", d.to_numpy().ravel())
        _legend_outside(ax, title="policy")
    else:
        ax.text(0.5, 0.5, "no false-positive dirty page in any case", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("false-positive dirty pages (marked, never written)")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"False dirty pages per policy (variant: {variant}; cases with none omitted)")
    return fig


LABELLED = 3                   # cases named on the exits-vs-cost plot: the largest net effects


def plot_exits_vs_cost(v: pd.DataFrame) -> bytes:
    return plot_png(fig_exits_vs_cost(v))


def fig_exits_vs_cost(v: pd.DataFrame):
    """What ha-promote saves over fix (exits and uffd round trips, in us of the cost model)
    against what its false writes cost; below the diagonal ha-promote pays, above it loses.
    Log axes when the values span decades; only the LABELLED cases with the largest net
    effect are named, where their labels do not overlap."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 6))
    ok = v[~v["breaks_guest"]]
    vals = pd.concat([ok["saved_us"], ok["cost_us"]]) if len(ok) else pd.Series([1.0])
    lim = max(1.0, float(vals.max())) * 1.1
    ax.fill_between([0, lim], [0, 0], [0, lim], color="tab:green", alpha=0.08,
                    label="below: ha-promote pays")
    ax.fill_between([0, lim], [0, lim], [lim, lim], color="tab:red", alpha=0.06,
                    label="above: fix pays")
    ax.plot([0, lim], [0, lim], lw=0.8, ls="--", color="grey", label="break-even")
    for var, g in ok.groupby("variant", sort=True):
        ax.scatter(g["saved_us"], g["cost_us"], s=18, label=f"variant {var}")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    _log_axis(ax, "x", vals)
    _log_axis(ax, "y", vals)
    ax.set_xlabel("saved by ha-promote over fix (us: exits and uffd round trips)")
    ax.set_ylabel("cost of ha-promote's false writes (us)")
    ax.set_title("Saving against cost, every variant (cases that do not break the guest)")
    _legend_outside(ax)
    top = ok[ok["net_us"] != 0]
    top = top.reindex(top["net_us"].abs().sort_values(ascending=False).index).head(LABELLED)
    annotate_apart(ax, list(zip(top["saved_us"], top["cost_us"])),
                   [f"{str(w).replace('micro:', '')} / {var}"
                    for w, var in zip(top["workload"], top["variant"])])
    return fig


def plot_sensitivity(s: pd.DataFrame, baseline_us: float | None = None) -> bytes:
    return plot_png(fig_sensitivity(s, baseline_us))


def fig_sensitivity(s: pd.DataFrame, baseline_us: float | None = None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(s) + 1.5))
    labels = [f"{r.param} x{r.factor:g}" for r in s.itertuples()]
    ax.barh(labels, s["best_net_us"], color=["tab:blue" if f < 1 else "tab:orange"
                                             for f in s["factor"]])
    _log_axis(ax, "x", s["best_net_us"])
    if baseline_us is not None:
        ax.axvline(baseline_us, color="black", lw=1, ls="--",
                   label=f"baseline (x1): {baseline_us:.1f} us")
        _legend_outside(ax)
    ax.axvline(0, color="grey", lw=0.6)
    ax.invert_yaxis()
    ax.set_xlabel("best net saving of ha-promote over fix (us); > 0: ha-promote cheaper")
    ax.set_title("Sensitivity: each cost constant x0.1 (blue) and x10 (orange), all variants")
    return fig
