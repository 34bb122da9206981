"""The x86 comparison in the beer report (issue #12; model/x86.py, docs/x86.md).

Per case (workload x host) where dirty logging happens and the x86 machines ran, one row per
machine: arm64 `fix` (upstream) and `ha-promote` on the default machine, `x86-ept-ad` (EPT
A/D + PML) and `x86-ept` (A/D off, write-protect logging):

* false_dirty_pt_per_round: page-table pages marked dirty that nothing wrote, per dirty round
  (a harvest, or the open round at the end) — dirty_false_positive_pt / dirty_rounds;
* resent_bytes: what pre-copy re-sends for pages marked dirty that nothing wrote
  (dirty_false_positive x 4 KiB host page);
* exits: stage-2 faults (EPT violations on x86) + MMIO exits + PML-full exits;
* pml_full_exits: of those, PML buffer-full exits (x86-ept-ad only).

Under an x86 machine every policy row of a run is the same machine (the hardware reports the
access type), so the first row stands for all.  The arm64 verdict (bench.verdict) is computed
without the x86 rows: `arm64_rows` drops them.
"""
from __future__ import annotations

import pandas as pd

from model.arch import HOST_PAGE

X86_VARIANTS = ("x86-ept-ad", "x86-ept")
ARM64_ROWS = (("default", "fix"), ("default", "ha-promote"))
COLUMNS = ["case", "machine", "rounds", "false_dirty_pt", "false_dirty_pt_per_round",
           "resent_bytes", "exits", "pml_full_exits", "double_faults"]
LEGEND = ("false_dirty_pt: page-table pages marked dirty that nothing wrote, all rounds; "
          "per_round: over dirty_rounds (harvests + the round open at the end); "
          "resent_bytes: dirty_false_positive x 4 KiB (what pre-copy re-sends for clean "
          "pages); exits: stage-2 faults + MMIO exits + PML-full exits; double_faults: "
          "translation then permission fault on one page-table page within an access "
          "(arm64 fix's and x86-ept's second fault).  x86 rows: every policy is the same "
          "machine (docs/x86.md).")


def arm64_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["variant"].isin(X86_VARIANTS)]


def _row(case: str, machine: str, r: dict) -> dict:
    rounds = int(r["dirty_rounds"])
    return {"case": case, "machine": machine, "rounds": rounds,
            "false_dirty_pt": int(r["dirty_false_positive_pt"]),
            "false_dirty_pt_per_round": r["dirty_false_positive_pt"] / rounds if rounds else 0.0,
            "resent_bytes": int(r["dirty_false_positive"]) * HOST_PAGE,
            "exits": int(r["s2_faults"] + r["mmio_exits"] + r["pml_full_exits"]),
            "pml_full_exits": int(r["pml_full_exits"]),
            "double_faults": int(r["double_faults"])}


def x86_table(df: pd.DataFrame) -> pd.DataFrame:
    """The x86 columns per case with dirty logging where an x86 machine ran."""
    rows = []
    for (w, host, seed), g in df.groupby(["workload", "host", "seed"], sort=False):
        x = g[g["variant"].isin(X86_VARIANTS)]
        if x.empty or not (g["dirty_rounds"] > 0).any():
            continue
        case = f"{w}/{host}"
        for var, pol in ARM64_ROWS:
            r = g[(g["variant"] == var) & (g["policy"] == pol)]
            if len(r):
                rows.append(_row(case, f"arm64 {pol}", r.iloc[0].to_dict()))
        for var in X86_VARIANTS:
            r = x[x["variant"] == var]
            if len(r):
                rows.append(_row(case, var, r.iloc[0].to_dict()))
    return pd.DataFrame(rows, columns=COLUMNS)


def _total(t: pd.DataFrame, machine: str, col: str) -> int:
    return int(t.loc[t["machine"] == machine, col].sum())


def verdict_line(df: pd.DataFrame) -> str:
    """One line (<= 72 columns) on arm64's choice (fix: walks are reads, a second fault when
    the walker writes) against x86 EPT A/D (walks are writes: no second fault, every walked
    page-table page dirty), over the cases where both ran with dirty logging."""
    t = x86_table(df)
    if t.empty:
        return "x86 vs arm64: no case ran the x86 machines with dirty logging"
    fd = _total(t, "x86-ept-ad", "false_dirty_pt") - _total(t, "arm64 fix", "false_dirty_pt")
    mib = fd * HOST_PAGE / (1 << 20)            # what pre-copy re-sends for them
    second = _total(t, "arm64 fix", "double_faults")
    full = (f"x86 EPT A/D: {fd:+d} clean PT pages ({mib:.1f} MiB); arm64 fix: {second} "
            f"2nd faults")
    short = f"EPT A/D: {fd:+d} clean PT pages; arm64 fix: {second} 2nd faults"
    return full if len(full) <= 72 else short[:72]


def markdown(df: pd.DataFrame) -> str:
    from .report import md_table
    t = x86_table(df)
    if t.empty:
        return ""
    return "\n".join(["## x86 beside arm64 (EPT A/D + PML, EPT without A/D)", "",
                      verdict_line(df), "", LEGEND, "", md_table(t), ""])


def arm64_files(paths):
    """The shipped micro-scenarios that run an arm64 machine (the x86 ones, e.g.
    x86_ept_ad_walk_dirties_pt.toml, are not arm64 policy cases)."""
    from model.scenario_io import load_scenario
    from model.x86 import is_x86
    return [p for p in paths if not is_x86(load_scenario(p).machine)]
