"""`ptwbench compare A B`: per-metric deltas between two result sets (pyperf compare_to /
pytest-benchmark --benchmark-compare-fail in spirit).

A and B are result directories (holding metrics.csv and, optionally, timings.csv).  Exit
status: 0 when every accuracy metric is identical and no throughput regressed beyond the
threshold; 1 otherwise; 2 on bad input.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .report import md_table
from .runner import KEY_COLUMNS, METRIC_COLUMNS


class CompareError(ValueError):
    pass


def _load(d: Path, name: str, required: bool) -> pd.DataFrame | None:
    d = Path(d)
    f = d / name if d.is_dir() else (d if d.name == name else d.parent / name)
    if not f.exists():
        if required:
            raise CompareError(f"{d}: no {name}")
        return None
    try:
        df = pd.read_csv(f)
    except Exception as e:                           # noqa: BLE001 (pandas raises many kinds)
        raise CompareError(f"{f}: unreadable CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise CompareError(f"{f}: missing column {missing[0]!r}")
    return df


def compare(a: Path, b: Path, threshold: float = 0.10, throughput: bool = True
            ) -> tuple[int, str]:
    """Returns (exit status, report text)."""
    ma, mb = _load(a, "metrics.csv", True), _load(b, "metrics.csv", True)
    keys = list(KEY_COLUMNS)
    for df in (ma, mb):
        df["seed"] = df["seed"].astype(str)
    j = ma.merge(mb, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    lines = [f"compare {a} -> {b}"]
    status = 0
    only = j[j["_merge"] != "both"]
    if len(only):
        status = 1
        lines.append(f"{len(only)} run/policy rows are in only one result set:")
        lines.append(md_table(only[keys + ["_merge"]]))
    both = j[j["_merge"] == "both"]
    metrics = [m for m in METRIC_COLUMNS if f"{m}_a" in both and f"{m}_b" in both]
    changes = []
    for m in metrics:
        d = both[both[f"{m}_a"] != both[f"{m}_b"]]
        for r in d.to_dict("records"):
            changes.append({**{k: r[k] for k in keys}, "metric": m, "a": r[f"{m}_a"],
                            "b": r[f"{m}_b"], "delta": r[f"{m}_b"] - r[f"{m}_a"]})
    if changes:
        status = 1
        lines.append(f"{len(changes)} accuracy metric value(s) changed:")
        lines.append(md_table(pd.DataFrame(changes)))
    else:
        lines.append(f"accuracy: {len(both)} rows x {len(metrics)} metrics identical")
    if throughput:
        ta, tb = _load(a, "timings.csv", False), _load(b, "timings.csv", False)
        if ta is not None and tb is not None:
            for df in (ta, tb):
                df["seed"] = df["seed"].astype(str)
            t = ta.merge(tb, on=keys, suffixes=("_a", "_b"))
            t["ratio"] = t["accesses_per_s_b"] / t["accesses_per_s_a"].where(
                t["accesses_per_s_a"] > 0)
            slow = t[t["ratio"] < 1 - threshold]
            geo = float(t["ratio"].dropna().prod() ** (1 / max(1, t["ratio"].notna().sum())))
            lines.append(f"throughput: geometric mean ratio b/a = {geo:.3f} over {len(t)} rows")
            if len(slow):
                status = 1
                lines.append(f"{len(slow)} row(s) regressed by more than "
                             f"{100 * threshold:.0f}%:")
                lines.append(md_table(slow[keys + ["accesses_per_s_a", "accesses_per_s_b",
                                                   "ratio"]]))
    return status, "\n".join(lines)
