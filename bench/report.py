"""Reports: markdown (tabulate), plain text for a mailing-list reply (<= 72 columns), CSV,
and PNG plots (matplotlib, Agg)."""
from __future__ import annotations

import io
import textwrap

import pandas as pd
from tabulate import tabulate

TEXT_WIDTH = 72


def md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=floatfmt)


def text_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A plain table that fits TEXT_WIDTH columns: long cells are cut with '~'."""
    import tabulate as tabmod
    d = df.copy()
    tabmod.MIN_PADDING = 0                   # no extra header padding in plain text
    try:
        return _text_table(d, floatfmt)
    finally:
        tabmod.MIN_PADDING = 2


def _text_table(d: pd.DataFrame, floatfmt: str) -> str:
    for width in (20, 16, 13, 11, 9, 7):
        cut = d.map(lambda v: _cut(v, width))
        cut.columns = [_cut(c, width) for c in d.columns]
        out = tabulate(cut, headers="keys", tablefmt="simple", showindex=False,
                       floatfmt=floatfmt, disable_numparse=False)
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
    return "\n".join(textwrap.fill(p, TEXT_WIDTH) if p.strip() else ""
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


def plot_false_dirty(df: pd.DataFrame) -> bytes:
    """False-positive dirty pages per policy and workload (default variant)."""
    plt = _plt()
    d = df.pivot_table(index="case", columns="policy", values="dirty_false_positive",
                       aggfunc="sum").fillna(0)
    fig, ax = plt.subplots(figsize=(9, max(3, 0.35 * len(d) + 1)))
    d.plot.barh(ax=ax)
    ax.set_xlabel("false-positive dirty pages (marked, never written)")
    ax.set_ylabel("")
    ax.set_title("False dirty pages per policy")
    return plot_png(fig)


def plot_exits_vs_cost(v: pd.DataFrame) -> bytes:
    """What ha-promote saves over fix (exits and uffd round trips, in us of the cost model)
    against what its false writes cost; above the diagonal it loses."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    ok = v[~v["breaks_guest"]]
    ax.scatter(ok["saved_us"], ok["cost_us"], s=18, label="cases")
    top = ok.reindex(ok["net_us"].abs().sort_values(ascending=False).index).head(5)
    for _, r in top.iterrows():
        ax.annotate(r["case"][:40], (r["saved_us"], r["cost_us"]), fontsize=6,
                    xytext=(4, 4), textcoords="offset points")
    lim = max(1.0, float(max(ok["saved_us"].max(), ok["cost_us"].max()))) if len(ok) else 1.0
    ax.plot([0, lim], [0, lim], lw=0.8, ls="--", color="grey", label="break-even")
    ax.set_xlabel("saved by ha-promote over fix (us: exits and uffd round trips)")
    ax.set_ylabel("cost of ha-promote's false writes (us)")
    ax.set_title("Saving against cost (cases that do not break the guest)")
    ax.legend(fontsize=7)
    return plot_png(fig)


def plot_sensitivity(s: pd.DataFrame) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r.param} x{r.factor:g}" for r in s.itertuples()]
    ax.barh(labels, s["best_net_us"])
    ax.set_xlabel("best net saving of ha-promote over fix (us)")
    ax.set_title("Sensitivity of the verdict to each cost constant")
    return plot_png(fig)
