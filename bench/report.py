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


def plot_false_dirty(df: pd.DataFrame, variant: str) -> bytes:
    """False-positive dirty pages per policy, for the cases that have any (one variant)."""
    plt = _plt()
    d = df.pivot_table(index="case", columns="policy", values="dirty_false_positive",
                       aggfunc="sum").fillna(0)
    d = d[(d > 0).any(axis=1)].sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(d) + 1.5)))
    if len(d):
        d.plot.barh(ax=ax, width=0.8)
        ax.legend(title="policy", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no false-positive dirty page in any case", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("false-positive dirty pages (marked, never written)")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"False dirty pages per policy (variant: {variant}; cases with none omitted)")
    return plot_png(fig)


def plot_exits_vs_cost(v: pd.DataFrame) -> bytes:
    """What ha-promote saves over fix (exits and uffd round trips, in us of the cost model)
    against what its false writes cost; below the diagonal ha-promote pays, above it loses."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 6))
    ok = v[~v["breaks_guest"]]
    lim = max(1.0, float(max(ok["saved_us"].max(), ok["cost_us"].max()))) * 1.1 \
        if len(ok) else 1.0
    ax.fill_between([0, lim], [0, 0], [0, lim], color="tab:green", alpha=0.08,
                    label="below: ha-promote pays")
    ax.fill_between([0, lim], [0, lim], [lim, lim], color="tab:red", alpha=0.06,
                    label="above: fix pays")
    ax.plot([0, lim], [0, lim], lw=0.8, ls="--", color="grey", label="break-even")
    for var, g in ok.groupby("variant", sort=True):
        ax.scatter(g["saved_us"], g["cost_us"], s=18, label=f"variant {var}")
    top = ok.reindex(ok["net_us"].abs().sort_values(ascending=False).index).head(5)
    for k, (_, r) in enumerate(top.iterrows()):
        ax.annotate(f"{str(r['workload']).replace('micro:', '')[:30]} / {r['variant']}",
                    (r["saved_us"], r["cost_us"]), fontsize=7, xytext=(6, 10 + 9 * k),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.4})
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel("saved by ha-promote over fix (us: exits and uffd round trips)")
    ax.set_ylabel("cost of ha-promote's false writes (us)")
    ax.set_title("Saving against cost, every variant (cases that do not break the guest)")
    ax.legend(fontsize=7, loc="upper left")
    return plot_png(fig)


def plot_sensitivity(s: pd.DataFrame, baseline_us: float | None = None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(s) + 1.5))
    labels = [f"{r.param} x{r.factor:g}" for r in s.itertuples()]
    ax.barh(labels, s["best_net_us"], color=["tab:blue" if f < 1 else "tab:orange"
                                             for f in s["factor"]])
    if baseline_us is not None:
        ax.axvline(baseline_us, color="black", lw=1, ls="--",
                   label=f"baseline (x1): {baseline_us:.1f} us")
        ax.legend(fontsize=8)
    ax.axvline(0, color="grey", lw=0.6)
    ax.invert_yaxis()
    ax.set_xlabel("best net saving of ha-promote over fix (us); > 0: ha-promote cheaper")
    ax.set_title("Sensitivity: each cost constant x0.1 (blue) and x10 (orange), all variants")
    return plot_png(fig)
