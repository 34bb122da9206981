"""`ptwbench compare A B`: per-metric deltas between two result sets (pyperf compare_to /
pytest-benchmark --benchmark-compare-fail in spirit).

A and B are result directories (holding metrics.csv and, optionally, timings.csv).  Exit
status: 0 when every accuracy metric is identical and no throughput regressed beyond the
threshold; 1 otherwise; 2 on bad input.
"""
from __future__ import annotations

import math
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
    check_threshold(threshold)
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
        a_, b_ = both[f"{m}_a"], both[f"{m}_b"]
        d = both[(a_ != b_) & ~(a_.isna() & b_.isna())]      # two empty cells are equal
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
            st, text = compare_throughput(ta, tb, keys, threshold)
            status = max(status, st)
            lines += text
    return status, "\n".join(lines)


# pyperf-style: a throughput change is judged only on repeated samples, and only when it is
# both beyond the threshold and beyond the spread (B's fastest sample slower than A's slowest)
MIN_SAMPLES = 3


def check_threshold(threshold: float) -> float:
    """A regression threshold as a fraction: finite, >= 0 and < 1 (i.e. 0 <= percent < 100)."""
    if not (math.isfinite(threshold) and 0 <= threshold < 1):
        raise CompareError(f"--threshold: {threshold * 100:g} is not a percentage in [0, 100)")
    return threshold


def compare_throughput(ta: pd.DataFrame, tb: pd.DataFrame, keys: list[str],
                       threshold: float) -> tuple[int, list[str]]:
    for df in (ta, tb):
        df["seed"] = df["seed"].astype(str)
        if "samples" not in df:                  # timings of a single run, older format
            df["samples"] = 1
            df["seconds_min"] = df["seconds_max"] = df["seconds"]
    t = ta.merge(tb, on=keys, suffixes=("_a", "_b"))
    if t.empty:
        return 0, ["throughput: no rows in common"]
    t["ratio"] = t["seconds_a"] / t["seconds_b"].where(t["seconds_b"] > 0)   # b/a speed
    geo = float(t["ratio"].dropna().prod() ** (1 / max(1, t["ratio"].notna().sum())))
    enough = (t["samples_a"] >= MIN_SAMPLES) & (t["samples_b"] >= MIN_SAMPLES)
    lines = [f"throughput: geometric mean speed ratio b/a = {geo:.3f} over {len(t)} rows"]
    if not enough.any():
        lines.append(f"throughput: too few samples to judge (each side needs >= {MIN_SAMPLES} "
                     f"timed runs per row: ptwbench run --repeat {MIN_SAMPLES}); not gated")
        return 0, lines
    if not enough.all():
        lines.append(f"throughput: {int((~enough).sum())} row(s) with fewer than "
                     f"{MIN_SAMPLES} samples not judged")
    j = t[enough]
    slow = j[(j["seconds_b"] > j["seconds_a"] * (1 + threshold))
             & (j["seconds_min_b"] > j["seconds_max_a"])]
    if slow.empty:
        lines.append(f"throughput: no row slower by more than {100 * threshold:g}% beyond "
                     f"the spread ({len(j)} rows judged)")
        return 0, lines
    lines.append(f"{len(slow)} row(s) regressed by more than {100 * threshold:g}% (median), "
                 f"beyond the spread:")
    lines.append(md_table(slow[keys + ["samples_a", "seconds_a", "samples_b", "seconds_b",
                                       "ratio"]]))
    return 1, lines
