"""The beer verdict: does avoiding fix's second stage-2 fault (ha-promote) ever pay?

From the tidy metrics of many runs (bench.runner rows), per case (workload x host x variant):
exits ha-promote saves over fix, the false-dirty pages and extra/false uffd round trips it
costs, the net under the cost model, the break-even exit cost, and the one-line answer.
Also the seed thread's claims: the share of guest memory in page tables, each policy's
false-positive dirty rate (Oliver: "negligible"?), and how the answer changes with
hw_update = always (Marc's atomic-OR reading).
"""
from __future__ import annotations

import pandas as pd

from .cost import PARAMS, CostModel, net_saving_us, overhead_us, run_time_us, vcpu_time_us

# A saving "matters" if it is at least 1 % of the run's modelled time (guest work plus host
# overhead under fix) and the exits avoided are at least 1 % of fix's stage-2 faults: below
# that no benchmark of a real workload would see it.
MATTERS_SHARE = 0.01
# ... and at least this many exits avoided (~30 us at the default exit cost): a handful of
# exits in a short trace can be 1 % of its tiny modelled run and still be noise.  ASSUMPTION.
MIN_EXITS_SAVED = 10
# The rule in words, for every report that states it (beer, run, sweep): one definition.
MATTERS_RULE = (f"a case matters when ha-promote's net saving over fix (cost model) is > 0 "
                f"and >= {100 * MATTERS_SHARE:g}% of the run's modelled time over all its "
                f"vCPUs, its measured q beats the break-even q*, it avoids "
                f">= {MIN_EXITS_SAVED} exits and >= {100 * MATTERS_SHARE:g}% of fix's stage-2 "
                f"faults, and neither policy breaks the guest (injected abort or failed "
                f"KVM_RUN)")


def case_name(r) -> str:
    return f"{r['workload']}/{r['host']}/{r['variant']}"


def _break_even(fix: dict, host: str, cm: CostModel) -> dict:
    """q measured over fix's complete dirty rounds, the break-even q* at the case's own link,
    the same-access detail p, and the envelope solved on q: the rate of page-table pages
    taking an S1PTW translation fault per round at which the saving would matter
    (bench/breakeven.py)."""
    from .breakeven import case_envelope, measured_q, p_same_access
    gs = fix.get("guest_seconds") or 0.0
    if "s2_s1ptw_translation" not in fix:   # a hand-made row without the fault classes
        return {"q_measured": None, "q_break_even": None, "p_same_access": None,
                "envelope": None, "envelope_unit": ""}
    try:
        env = case_envelope(fix, host, cm, gs) if gs > 0 else None
    except ValueError:                  # a host the break-even does not know
        env = None
    rate, unit = env.as_tuple() if env is not None else (None, "")
    return {"q_measured": measured_q(fix),
            "q_break_even": env.p_star if env is not None else None,
            "p_same_access": p_same_access(fix),
            "envelope": rate if rate is None or rate != float("inf") else None,
            "envelope_unit": unit}


def _numa_pt_rate(fix: dict) -> float | None:
    """The most page-table pages per second NUMA balancing can unmap in this case's VM: its
    fastest scan (task_scan_min for the VM's RSS, bench/breakeven.host_unmap_rates_pages_s)
    times the share of the VM's pages that hold page tables — the host-side limit to set
    against the envelope."""
    from .breakeven import host_unmap_rates_pages_s
    gib = fix.get("guest_gib")
    if not gib or pd.isna(gib) or "pt_pages" not in fix:
        return None
    vm_pages = gib * 2 ** 18
    fast = host_unmap_rates_pages_s(gib * 2 ** 30 / 1e6)["numa_balancing_fastest"]
    return fast * min(1.0, fix["pt_pages"] / vm_pages)


def _per_migration(fix: dict, net_us: float) -> float | None:
    """The net saving of one whole migration, ms: the window's when it holds exactly one
    (ptwbench run --until migrated; the realistic cases); None otherwise."""
    ms = fix.get("migration_seconds")
    if not ms or pd.isna(ms):
        return None
    return net_us / 1000.0


def _matters(r: dict, fix: dict, net: float, matters_share: float) -> bool:
    """MATTERS_RULE on one case's row; q must beat q* where q is measured (the saving and
    its false positives are decided per round: a case cannot matter with q <= q*)."""
    q, qs = r["q_measured"], r["q_break_even"]
    beats = q is None or qs is None or q > qs
    return bool(net > 0 and r["run_share"] >= matters_share and beats
                and r["exits_saved"] >= max(MIN_EXITS_SAVED, matters_share * fix["s2_faults"])
                and not r["breaks_guest"])


def verdict_table(df: pd.DataFrame, cm: CostModel, matters_share: float = MATTERS_SHARE
                  ) -> pd.DataFrame:
    rows = []
    keys = ["workload", "host", "variant", "seed"]
    for key, g in df.groupby(keys, sort=False):
        by = {r["policy"]: r for r in g.to_dict("records")}
        if "fix" not in by or "ha-promote" not in by:
            continue
        fix, hap = by["fix"], by["ha-promote"]
        host = key[1]
        o_fix, o_hap = overhead_us(fix, host, cm), overhead_us(hap, host, cm)
        net = net_saving_us(fix, hap, host, cm)
        exits_saved = fix["s2_faults"] - hap["s2_faults"]
        saved_us = exits_saved * cm.exit_us + (
            fix["uffd_events"] - hap["uffd_events"]) * cm.uffd_rt_us(host)
        # what its false dirty pages cost (re-sent at the case's link); its false uffd-wp
        # WRITE events are round trips, already in saved_us (uffd_saved)
        cost_us = (hap["dirty_false_positive"] - fix["dirty_false_positive"]) \
            * cm.resend_us_at(fix.get("link_mb_s"))
        non_exit = (o_hap - hap["s2_faults"] * cm.exit_us) - (o_fix - fix["s2_faults"] * cm.exit_us)
        rows.append({
            "case": case_name(fix), "workload": key[0], "host": host, "variant": key[2],
            "seed": key[3],
            "fix_double_faults": fix["double_faults"],
            "exits_saved": exits_saved,
            "uffd_saved": fix["uffd_events"] - hap["uffd_events"],
            "false_dirty_extra": hap["dirty_false_positive"] - fix["dirty_false_positive"],
            "uffd_false_write_extra": hap["uffd_false_write"] - fix["uffd_false_write"],
            "saved_us": saved_us, "cost_us": cost_us, "net_us": net,
            "fix_overhead_us": o_fix,
            "net_share": net / o_fix if o_fix else 0.0,
            # the net saving over the run time of all the guest's vCPUs (bench/cost.py)
            "run_share": net / run_time_us(fix, host, cm) if fix["accesses"] or o_fix
            else 0.0,
            "rounds_complete": int(fix.get("dirty_rounds", 0) or 0),
            "link_mb_s": float(fix.get("link_mb_s") or 0.0),
            "net_ms_per_migration": _per_migration(fix, net),
            # the exit cost at which ha-promote breaks even (None: it never saves an exit)
            "break_even_exit_us": (non_exit / exits_saved) if exits_saved > 0 else None,
            # ha-promote turning a walk into an injected abort or a failed KVM_RUN is no
            # saving: the guest breaks (page tables in a read-only slot, as with EFI)
            # (or fix itself breaking it: then the comparison says nothing)
            "breaks_guest": bool(hap["guest_aborts"] > 0 or fix["guest_aborts"] > 0
                                 or hap["vcpu_run_failures"] > fix["vcpu_run_failures"]),
            "matters": False,
            # the clock and the measured break-even (bench/breakeven.py)
            "guest_gib": fix.get("guest_gib"), "guest_seconds": fix.get("guest_seconds"),
            **_break_even(fix, host, cm),
            "numa_fast_pt_pages_s": _numa_pt_rate(fix),
        })
        r = rows[-1]
        r["vcpu_share"] = net / vcpu_time_us(fix, cm) if vcpu_time_us(fix, cm) else 0.0
        r["matters"] = _matters(r, fix, net, matters_share)
    return pd.DataFrame(rows)


# What is being compared, in one line, for every headline.
COMPARED = ("ha-promote (an S1PTW stage-2 translation fault is a write when TCR_EL1.HA is "
            "set) against fix (upstream: a read; a second fault if the walker writes)")


def answer(v: pd.DataFrame, scope: str = "") -> str:
    """The one-line answer (for a single case: that case's answer); `scope` names the
    section of the cases ("realistic", "stress")."""
    if scope:
        a = answer(v)
        head = "a workload where ha-promote's saving over fix matters: "
        return a.replace(head, f"{head}[{scope}] ", 1) if len(v) != 1 else \
            f"[{scope}] {a}"
    if v.empty:
        return "a workload where ha-promote's saving over fix matters: no (nothing was run)"
    if len(v) == 1:
        r = v.iloc[0]
        yes = "yes" if r["matters"] else "no"
        broken = "; the guest breaks" if r["breaks_guest"] else ""
        return (f"this case ({r['case']}): ha-promote's saving over fix matters: {yes} "
                f"({int(r['exits_saved'])} exits saved, net {r['net_us']:.0f} us = "
                f"{100 * r['run_share']:.2f}% of the run{broken})")
    yes = v[v["matters"]].sort_values(["net_us", "exits_saved"], ascending=False)
    if len(yes):
        b = yes.iloc[0]
        vs = sorted(set(yes["variant"]))
        only = f", only on {', '.join(vs)}" if "default" not in vs else ""
        return (f"a workload where ha-promote's saving over fix matters: yes ({len(yes)} of "
                f"{len(v)} cases{only}; best {b['case']}: {int(b['exits_saved'])} exits "
                f"saved, net {b['net_us']:.0f} us = {100 * b['run_share']:.1f}% of the run)")
    ok = v[~v["breaks_guest"]]
    best = (ok if len(ok) else v).sort_values(["net_us", "exits_saved"],
                                              ascending=False).iloc[0]
    return (f"a workload where ha-promote's saving over fix matters: no (0 of {len(v)} cases; "
            f"best {best['case']}: {int(best['exits_saved'])} exits saved, net "
            f"{best['net_us']:.0f} us = {100 * best['run_share']:.2f}% of the run)")


def by_variant(v: pd.DataFrame) -> pd.DataFrame:
    """The answer per hardware variant: cases that matter, and the best net saving."""
    rows = []
    for var, g in v.groupby("variant", sort=False):
        ok = g[~g["breaks_guest"]]
        best = ok.sort_values(["net_us", "exits_saved"], ascending=False).head(1)
        rows.append({"variant": var, "cases": len(g), "matter": int(g["matters"].sum()),
                     "fix_double_faults": int(g["fix_double_faults"].sum()),
                     "best_case": best["case"].iloc[0] if len(best) else "",
                     "best_net_us": float(best["net_us"].iloc[0]) if len(best) else 0.0})
    return pd.DataFrame(rows)


def sensitivity(df: pd.DataFrame, cm: CostModel) -> pd.DataFrame:
    rows = []
    for p in PARAMS:
        for f in (0.1, 10.0):
            v = verdict_table(df, cm.scaled(p, f))
            rows.append({"param": p, "factor": f,
                         "cases_that_matter": int(v["matters"].sum()) if len(v) else 0,
                         "best_net_us": float(v["net_us"].max()) if len(v) else 0.0})
    return pd.DataFrame(rows)


def pt_share(df: pd.DataFrame) -> pd.DataFrame:
    """Share of guest memory holding stage-1 tables, per workload."""
    d = df.drop_duplicates("workload")[["workload", "pt_pages", "data_pages"]].copy()
    d["pt_share"] = d["pt_pages"] / (d["pt_pages"] + d["data_pages"]).where(
        lambda x: x > 0, 1)
    return d


def false_dirty_rate(df: pd.DataFrame) -> pd.DataFrame:
    """Per policy: false-positive dirty pages / pages marked, over runs with dirty logging."""
    d = df.assign(marked=df["dirty_marked_pt"] + df["dirty_marked_data"])
    d = d[d["marked"] > 0]
    g = d.groupby("policy", sort=False)[["dirty_false_positive", "dirty_false_positive_pt",
                                         "marked"]].sum().reset_index()
    g["false_dirty_rate"] = g["dirty_false_positive"] / g["marked"]
    return g


def hw_always_effect(v: pd.DataFrame) -> pd.DataFrame:
    """The verdict per workload/host under hw_update = on-change (default) vs always."""
    a = v[v["variant"] == "default"][["workload", "host", "exits_saved", "net_us", "matters"]]
    b = v[v["variant"] == "hw-always"][["workload", "host", "exits_saved", "net_us",
                                        "matters"]]
    return a.merge(b, on=["workload", "host"], suffixes=("", "_always"))
