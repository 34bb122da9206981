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
from .runner import KEY_COLUMNS, METRIC_COLUMNS, TIMING_COLUMNS

# the columns that hold numbers (metrics.csv, timings.csv), checked as numbers
NUMBER_COLUMNS = frozenset(METRIC_COLUMNS) | (frozenset(TIMING_COLUMNS) - set(KEY_COLUMNS)
                                              - {"engine"})


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
        raw = f.read_bytes()
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except Exception as e:                           # noqa: BLE001 (pandas raises many kinds)
        raise CompareError(f"{f}: unreadable CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise CompareError(f"{f}: missing column {missing[0]!r}")
    if raw and not raw.endswith(b"\n"):
        raise CompareError(f"{f} is damaged: its last line is cut (truncated file?)")
    _check_fields(raw, f)
    return _validated(df, f)


def _check_fields(raw: bytes, f: Path) -> None:
    """Every line has the header's number of fields (a cut or spliced file has not)."""
    import csv
    import io
    rows = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace")))
    width = len(next(rows, []))
    for n, row in enumerate(rows, 2):
        if row and len(row) != width:
            raise CompareError(f"{f} is damaged: line {n} has {len(row)} fields, the header "
                               f"{width} (truncated file?)")


def _validated(df: pd.DataFrame, f: Path) -> pd.DataFrame:
    """Every number cell a number (or empty: not applicable), no key twice: else "damaged"
    (exit 2)."""
    numeric = [c for c in df.columns if c in NUMBER_COLUMNS]
    numbers = {}
    for c in numeric:
        numbers[c] = v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & ~df[c].str.lower().isin(["", "nan"])
        if bad.any():
            r = int(bad.to_numpy().nonzero()[0][0])
            raise CompareError(f"{f} is damaged: line {r + 2}, column {c!r}: "
                               f"{df[c].iloc[r]!r} is not a number")
    df = pd.concat([df.drop(columns=numeric), pd.DataFrame(numbers, index=df.index)],
                   axis=1)[list(df.columns)]
    for c in KEY_COLUMNS:
        if (df[c] == "").any():
            r = int((df[c] == "").to_numpy().nonzero()[0][0])
            raise CompareError(f"{f} is damaged: line {r + 2}, key column {c!r} is empty")
    dup = df.duplicated(list(KEY_COLUMNS) + [c for c in ("engine",) if c in df], keep="first")
    if dup.any():
        r = int(dup.to_numpy().nonzero()[0][0])
        key = ", ".join(f"{k}={df[k].iloc[r]}" for k in KEY_COLUMNS)
        raise CompareError(f"{f} is damaged: line {r + 2} repeats the row of {key}")
    return df


def compare(a: Path, b: Path, threshold: float = 0.10, throughput: bool = True
            ) -> tuple[int, str]:
    """Returns (exit status, report text)."""
    check_threshold(threshold)
    ma, mb = _load(a, "metrics.csv", True), _load(b, "metrics.csv", True)
    keys = list(KEY_COLUMNS)
    for df in (ma, mb):
        df["seed"] = df["seed"].astype(str)
    j = ma.merge(mb, on=keys, how="outer", suffixes=("_a", "_b"), indicator="side")
    lines = [f"compare {a} -> {b}"]
    status = 0
    only = j[j["side"] != "both"]
    if len(only):
        status = 1
        lines.append(f"{len(only)} run/policy rows are in only one result set:")
        where = only["side"].map({"left_only": f"only in {a}", "right_only": f"only in {b}"})
        lines.append(md_table(only[keys].assign(where=where.astype(str))))
    both = j[j["side"] == "both"]
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
