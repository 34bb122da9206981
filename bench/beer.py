"""`ptwbench beer`: the main job — the beer verdict over the built-in workloads.

Every built-in workload under the host scenarios where the policies can differ (stage 2
unmapped under page-table pages: first touch, post-copy, snapshot, memory pressure, block
splitting under logging, read-only firmware tables), on the default machine and the hardware
variants, all policies; then the verdict (bench.verdict) and the reports.
"""
from __future__ import annotations

import json
import os
import signal
import time
import tomllib
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from . import report, x86_report

from .catalog import build, micro_workload, scenario_files
from .cost import CostModel
from .spec_checks import (SpecError, check_engine, check_host, check_host_knobs, check_knobs,
                          check_seeds, check_variant, check_workload)
from .meta import envelope
from .runner import (COLUMNS, TIMING_COLUMNS, csv_text, meta_json, run_workload,
                     write_dir_atomic)
from .variants import contradiction
from .verdict import (COMPARED, MATTERS_RULE, answer, by_variant, false_dirty_rate,
                      hw_always_effect, pt_share, sensitivity, verdict_table)


def default_spec_text() -> str:
    return (resources.files("bench") / "beer_default.toml").read_text()


SPEC_KEYS = {"seed": int, "engine": str, "micro": bool, "micro_variants": list, "case": list}
CASE_KEYS = {"workloads": (list, str), "hosts": list, "variants": list, "knobs": dict,
             "host_knobs": dict, "label": str, "seconds": (int, float), "section": str,
             "until": str}
SECTIONS = ("realistic", "stress")     # issue 9: calibrated cases first, stress cases apart


def load_spec(text: str, source: str) -> dict:
    """Parse and check a beer spec; every error is one line naming the key."""
    from workloads import registry as reg
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from None
    for k, v in spec.items():
        if k not in SPEC_KEYS:
            raise SpecError(f"{source}: {k}: unknown key")
        if not isinstance(v, SPEC_KEYS[k]) or (SPEC_KEYS[k] is int and isinstance(v, bool)):
            raise SpecError(f"{source}: {k}: expected {SPEC_KEYS[k].__name__}")
    if "seed" in spec:
        check_seeds([spec["seed"]], f"{source}: seed")
    if not spec.get("micro", True) and not spec.get("case"):
        raise SpecError(f"{source}: case: no [[case]] and micro = false: nothing to run")
    check_engine(spec.get("engine", "numpy"), f"{source}: engine")
    for v in spec.get("micro_variants", []):
        check_variant(v, f"{source}: micro_variants")
    for i, c in enumerate(spec.get("case", [])):
        at = f"{source}: case[{i}]"
        if not isinstance(c, dict):
            raise SpecError(f"{at}: expected a table")
        for k, v in c.items():
            if k not in CASE_KEYS:
                raise SpecError(f"{at}.{k}: unknown key")
            if not isinstance(v, CASE_KEYS[k]):
                raise SpecError(f"{at}.{k}: wrong type")
        if c.get("section", "stress") not in SECTIONS:
            raise SpecError(f"{at}.section: {c['section']!r} is not one of "
                            f"{', '.join(SECTIONS)}")
        if "seconds" in c and not (isinstance(c["seconds"], (int, float))
                                   and not isinstance(c["seconds"], bool)
                                   and 0 < c["seconds"] < 1e6):
            raise SpecError(f"{at}.seconds: {c['seconds']!r} is not a number of seconds "
                            f"in (0, 1e6)")
        if "until" in c:
            from .catalog import UNTIL
            if c["until"] not in UNTIL:
                raise SpecError(f"{at}.until: {c['until']!r} is not one of {', '.join(UNTIL)}")
            if "seconds" in c:
                raise SpecError(f"{at}.until: give until or seconds, not both")
            need = UNTIL[c["until"]][0]
            if any(need not in hh.split("+") for hh in c.get("hosts", ["none"])):
                raise SpecError(f"{at}.until: until = {c['until']!r} needs the {need} host "
                                f"scenario in every host of the case")
        if c.get("section") == "realistic" and not c.get("label"):
            raise SpecError(f"{at}.label: a realistic case needs a label (it names the case)")
        ws = c.get("workloads", "*")
        if isinstance(ws, str) and ws != "*":
            raise SpecError(f"{at}.workloads: expected a list of workloads or \"*\", "
                            f"not the string {ws!r}")
        for w in (list(reg.GENERATORS) if ws == "*" else ws):
            check_workload(w, f"{at}.workloads")
        for hh in c.get("hosts", ["none"]):
            check_host(hh, f"{at}.hosts")
        for v in c.get("variants", ["default"]):
            check_variant(v, f"{at}.variants")
            for w, knobs in c.get("knobs", {}).items():
                why = contradiction(v, knobs.get("cpu") if isinstance(knobs, dict) else None)
                if why:
                    raise SpecError(f"{at}.knobs.{w}: {why}")
        for w, knobs in c.get("knobs", {}).items():
            if not isinstance(knobs, dict) or (w not in reg.GENERATORS and w not in ws):
                raise SpecError(f"{at}.knobs.{w}: not a table of a known workload")
            if ws != "*" and w not in ws:     # it would be silently ignored
                raise SpecError(f"{at}.knobs.{w}: {w} is not one of this case's workloads")
            if w in reg.GENERATORS:
                check_knobs(w, knobs, f"{at}.knobs.{w}")
            else:                     # a recorded program: the linux profile's knobs only
                check_profile_knobs(w, knobs, f"{at}.knobs.{w}")
        used = {h for hh in c.get("hosts", ["none"]) for h in hh.split("+")}
        for h, knobs in c.get("host_knobs", {}).items():
            check_host(h, f"{at}.host_knobs")
            if h not in used:                 # it would be silently ignored
                raise SpecError(f"{at}.host_knobs.{h}: {h} is not in this case's hosts")
            check_host_knobs(h, knobs if isinstance(knobs, dict) else {None: 0},
                             f"{at}.host_knobs.{h}")
    return spec


def check_profile_knobs(workload: str, knobs: dict, at: str) -> None:
    from workloads import registry as reg
    from workloads.base import WorkloadError
    bad = sorted(set(knobs) - reg.PROFILE_KNOB_NAMES)
    if bad:
        raise SpecError(f"{at}.{bad[0]}: not a knob of the linux profile (a recorded "
                        f"program takes only those)")
    try:
        reg.make_profile(knobs, workload)
    except WorkloadError as e:
        raise SpecError(f"{at}: {e}") from None


REAL_PREFIXES = ("catalogue:", "compact:", "trace:", "import:")


def workload_kind(spec_name: str) -> str:
    """real: a recorded program (the catalogue, a trace); synthetic: a generator."""
    return "real" if str(spec_name).startswith(REAL_PREFIXES) else "synthetic"


def real_vs_synthetic(df: pd.DataFrame, v: pd.DataFrame, kinds: dict) -> pd.DataFrame:
    """The realistic cases side by side, real programs and generators apart: what each
    touches and how it faults (fix, default machine), so a reader can see whether the
    generators behave like real programs."""
    names = set(v.loc[v["section"] == "realistic", "workload"]) if "section" in v else set()
    d = df[df["workload"].isin(names) & (df["policy"] == "fix")
           & (df["variant"] == "default")]
    if not len(d):
        return pd.DataFrame()
    p = v.drop_duplicates("workload").set_index("workload")["q_measured"]
    secs = d["guest_seconds"].where(d["guest_seconds"] > 0)
    out = pd.DataFrame({
        "kind": d["workload"].map(kinds).fillna("synthetic"), "workload": d["workload"],
        "data_mib": d["data_pages"] * 4096 / 2**20,
        "pt_share": d["pt_pages"] / (d["pt_pages"] + d["data_pages"]).where(lambda x: x > 0),
        "accesses_per_s": d["accesses"] / secs,
        "s2_faults_per_s": d["s2_faults"] / secs,
        "s1ptw_faults_per_s": d["s2_s1ptw_translation"] / secs,
        "q_measured": d["workload"].map(p)})
    return out.sort_values(["kind", "workload"], kind="stable").reset_index(drop=True)


class Job(NamedTuple):
    """One run of the beer: a workload (built from its knobs, or a micro-scenario file)
    under one host scenario and hardware variant, all policies."""
    kind: str                     # "gen" (a generator or recorded program) | "micro"
    workload: object              # its name, or the micro-scenario's path
    knobs: dict | None
    host: str
    host_knobs: dict | None
    variant: str
    label: str = ""
    section: str = "stress"
    seconds: float | None = None
    until: str | None = None

    def build_key(self) -> tuple:
        """Jobs with the same key share one built workload."""
        return (self.kind, str(self.workload), json.dumps(self.knobs, sort_keys=True),
                self.host, json.dumps(self.host_knobs, sort_keys=True), self.label,
                self.seconds, self.until)


def cases(spec: dict):
    """A Job for every case of the spec; workload x host pairs the registry calls
    incompatible are skipped."""
    from workloads import registry as reg
    for c in spec.get("case", []):
        ws = c.get("workloads", "*")
        for w in (list(reg.GENERATORS) if ws == "*" else ws):
            for host in c.get("hosts", ["none"]):
                if not all(reg.compatible(w, None if h == "none" else h)
                           for h in host.split("+")):
                    continue
                for v in c.get("variants", ["default"]):
                    hk = c.get("host_knobs", {})
                    hk = ({h: hk.get(h, {}) for h in host.split("+")} if "+" in host
                          else hk.get(host, {}))
                    yield Job("gen", w, c.get("knobs", {}).get(w, {}), host, hk, v,
                              c.get("label", ""), c.get("section", "stress"),
                              c.get("seconds"), c.get("until"))


def _ignore_sigint() -> None:
    """Pool workers: Ctrl-C is the parent's to handle; SIGTERM (the pool's terminate) ends
    a worker quietly (not the parent's handler, inherited through fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_group(args) -> list[tuple]:
    """The jobs of one workload (built once): (job index, workload name, section, kind,
    rows, timings, meta) per job.  Runs in a worker process."""
    items, seed, engine = args
    j = items[0][1]
    wl = (micro_workload(j.workload) if j.kind == "micro"
          else build(j.workload, j.knobs, j.host, j.host_knobs, seed, j.seconds, j.until))
    if j.label:                               # tell apart cases of one generator
        wl.name = f"{wl.name}@{j.label}"
    wkind = workload_kind(j.workload) if j.kind == "gen" else "synthetic"
    out = []
    for i, job in items:
        run = run_workload(wl, host=job.host, variant=job.variant, seed=seed, engine=engine)
        out.append((i, wl.name, job.section, wkind, run.rows, run.timings, run.meta))
    return out


def _execute(work: list, n: int, bar) -> dict[int, tuple]:
    """Every group of jobs on `n` processes (fork), results by job index."""
    done: dict[int, tuple] = {}
    if n == 1:
        for args in work:
            for r in _run_group(args):
                done[r[0]] = r
                bar.update()
    else:
        import multiprocessing as mp
        # the largest groups first, so that the cores finish together; Ctrl-C reaches the
        # parent only (workers ignore SIGINT), which stops the workers and leaves no output
        work.sort(key=lambda a: -len(a[0]))
        pool = mp.get_context("fork").Pool(n, initializer=_ignore_sigint)
        try:
            results = pool.imap_unordered(_run_group, work)
            while True:
                # wait in short steps: Ctrl-C may reach another thread (tqdm's monitor), and
                # Python runs its handler only when the main thread runs
                try:
                    out = results.next(timeout=0.2)
                except mp.TimeoutError:
                    continue
                except StopIteration:
                    break
                for r in out:
                    done[r[0]] = r
                    bar.update()
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    return done


def run_beer(spec: dict, out_root: Path, cm: CostModel | None = None,
             progress: bool | None = None, stamp: str | None = None,
             workers: int | None = None, hunt_line: str | None = None) -> Path:
    """The beer verdict of `spec`; `workers` processes (default: one per core); `hunt_line`:
    a hunt's summary (bench/hunt.py hunt_summary_line) for verdict.txt."""
    from .progress import Progress
    cm = cm or CostModel()
    seed = int(spec.get("seed", 0))
    engine = spec.get("engine", "numpy")
    jobs = list(cases(spec))
    if spec.get("micro", True):
        for p in x86_report.arm64_files(scenario_files()):
            for v in spec.get("micro_variants", ["default"]):
                jobs.append(Job("micro", p, None, "scenario", None, v))
    t0 = time.perf_counter()
    # jobs that share a workload build it once: one group each, groups spread over the
    # cores (results gathered in job order: the CSVs do not depend on the worker count)
    groups: dict[tuple, list] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.build_key(), []).append((i, job))
    work = [(items, seed, engine) for items in groups.values()]
    n = max(1, min(workers or os.cpu_count() or 1, len(work)))
    # a bar on a terminal, a line every few seconds elsewhere (bench/progress.py)
    bar = Progress(len(jobs), "beer", "run", show=None if progress is None or progress
                   else False)
    try:
        done = _execute(work, n, bar)
    finally:
        bar.close()
    rows, timings, metas, section, kinds = [], [], [], {}, {}
    for i in range(len(jobs)):
        _i, name, sec, wkind, r_rows, r_timings, r_meta = done[i]
        section[name] = sec
        kinds[name] = wkind
        rows += r_rows
        timings += r_timings
        metas.append(r_meta)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    dfx, df = df, x86_report.arm64_rows(df)   # x86 comparison machines: their own section
    v = verdict_table(df, cm)
    v.insert(1, "section", v["workload"].map(section).fillna("stress"))
    v.insert(2, "workload_kind", v["workload"].map(kinds).fillna("synthetic"))
    v = pd.concat([v[v["section"] == s] for s in SECTIONS], ignore_index=True)
    sens = sensitivity(df, cm)
    real_sens = realistic_sensitivity(df, v, cm)
    rvs = real_vs_synthetic(df, v, kinds)
    # the default name is the time: two beers finishing in the same second into one root
    # both keep their results (beer-STAMP, beer-STAMP-2); a stamp given is checked up front
    unique = stamp is None
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    files = {
        "metrics.csv": csv_text(rows, COLUMNS),
        "timings.csv": csv_text(timings, TIMING_COLUMNS),
        "verdict.csv": v.to_csv(index=False, lineterminator="\n"),
        "meta.json": meta_json(envelope("beer", spec=spec, runs=metas,
                                        seconds=time.perf_counter() - t0,
                                        cost_model=cm.as_dict())),
    }
    files["report.md"] = (markdown(df, v, sens, cm, real_sens, rvs)
                          + x86_report.markdown(dfx))
    files["verdict.txt"] = (text(df, v, sens, cm, real_sens, hunt_line)
                            + x86_report.verdict_line(dfx) + "\n")
    files["false_dirty.png"] = report.plot_false_dirty(df.assign(case=df.apply(
        lambda r: f"{r['workload']}", axis=1))[df["variant"] == "default"], "default")
    files["exits_vs_cost.png"] = report.plot_exits_vs_cost(v)
    files["sensitivity.png"] = report.plot_sensitivity(
        sens, float(v["net_us"].max()) if len(v) else None)
    try:
        return write_dir_atomic(out_root / f"beer-{stamp}", files, unique=unique)
    except FileExistsError:
        raise SpecError(f"--stamp: {out_root / f'beer-{stamp}'} appeared while this beer "
                        f"ran (another beer with the same --stamp?); nothing written") from None


SUMMARY_COLS = ["case", "fix_double_faults", "exits_saved", "false_dirty_extra",
                "uffd_false_write_extra", "net_us", "breaks_guest", "matters"]
NOT_APPLICABLE = ("— = not applicable: break_even_exit_us when ha-promote saves no exit "
                  "(no exit cost makes it pay); a rate with nothing to divide by (no page "
                  "marked dirty, no run with logging)")
PLOTS = [("false_dirty.png", "False-positive dirty pages per policy"),
         ("exits_vs_cost.png", "What ha-promote saves against what its false writes cost"),
         ("sensitivity.png", "Sensitivity of the best net saving to each cost constant")]


def realistic_sensitivity(df: pd.DataFrame, v: pd.DataFrame, cm: CostModel) -> pd.DataFrame:
    """The realistic answer at each cost constant's calibrated lo and hi (bench/calibration.py;
    the others at their defaults): cases that matter, the lowest break-even q*, the
    smallest margin q* - q (below 0: a case where ha-promote pays), the best net saving.
    Empty without realistic cases."""
    from .breakeven import sensitivity_table
    names = set(v.loc[v["section"] == "realistic", "workload"]) if "section" in v else set()
    d = df[df["workload"].isin(names)]
    if not len(d):
        return pd.DataFrame()

    def metric(m: CostModel) -> dict:
        r = verdict_table(d, m)
        gap = (r["q_break_even"] - r["q_measured"]).dropna()
        return {"matter": int(r["matters"].sum()),
                "q_star_min": float(r["q_break_even"].min()),
                "q_gap_min": float(gap.min()) if len(gap) else float("nan"),
                "best_net_us": float(r["net_us"].max())}
    return sensitivity_table(metric, cm)


def flips(real_sens: pd.DataFrame) -> list[str]:
    """The constants whose calibrated range changes the realistic answer."""
    if not len(real_sens):
        return []
    base = real_sens["matter"] > 0
    return [str(r["constant"]) for (_i, r), b in zip(real_sens.iterrows(), base)
            if (r["matter_lo"] > 0) != b or (r["matter_hi"] > 0) != b]


def markdown(df, v, sens, cm, real_sens=None, rvs=None) -> str:
    real = v[v["section"] == "realistic"] if "section" in v else v.iloc[:0]
    stress = v[v["section"] != "realistic"] if "section" in v else v
    out = ["# The beer verdict", "", f"Compared: {COMPARED}.", ""]
    if len(real):
        out += ["## Realistic cases", "", f"**{answer(real, 'realistic')}**", "",
                "Warm guests at real sizes under host behaviour calibrated in seconds, MB "
                "and MB/s (workloads/host_timed.py, docs/calibration.md), each over a "
                "window of guest time (workloads/clock.py) that covers what it judges: a "
                "whole migration (to its switch-over, whose last sync ends every dirty "
                "round) or a whole snapshot. Every false positive is judged at the harvest "
                "that ends its round (docs/time-and-hosts.md). q_measured: of the "
                "(page-table page, round) pairs with an S1PTW translation fault under fix, "
                "the share the guest wrote before the round's harvest (each one an exit "
                "ha-promote saves; each other one its false positive); q_break_even: "
                "t_false / (t_exit + t_false), t_false at the case's own link; "
                "p_same_access: the part of q a one-access window sees; envelope: the rate "
                "of such pairs per second at which the saving would matter "
                "(bench/breakeven.py), beside numa_fast_pt_pages_s: the most page-table "
                "pages per second NUMA balancing can unmap in that VM (its fastest scan for "
                "the VM's RSS times the page-table share); net_ms_per_migration and "
                "vcpu_share: ha-promote's net saving per whole migration and its share of "
                "all vCPUs' time.", "",
                report.md_table(real[REAL_COLS]), ""]
        if rvs is not None and len(rvs):
            n_real = int((rvs["kind"] == "real").sum())
            out += ["### Real programs beside the generators", "",
                    (f"{n_real} recorded program(s) (kind real) and the synthetic "
                     "generators, fix on the default machine: memory the workload touches, "
                     "the share of it in page tables, and fault rates per second of guest "
                     "time." if n_real else "No recorded program among the realistic "
                     "cases: only synthetic generators."), "",
                    report.md_table(rvs), ""]
        if real_sens is not None and len(real_sens):
            f = flips(real_sens)
            out += ["### Sensitivity of the realistic answer", "",
                    "Each cost constant at the low and high end of its calibrated range "
                    "(docs/calibration.md), the others at their defaults: realistic cases "
                    "that matter, the lowest break-even q* over them, the smallest margin "
                    "q* - q (where it reaches 0 the answer flips), and the best net "
                    "saving (us). "
                    + (f"The answer changes within the range of: {', '.join(f)}." if f
                       else "No constant's range changes the answer."), "",
                    report.md_table(real_sens[["constant", "unit", "confidence", "lo",
                                               "value", "hi", "matter_lo", "matter",
                                               "matter_hi", "q_star_min_lo", "q_star_min",
                                               "q_star_min_hi", "q_gap_min_lo", "q_gap_min",
                                               "q_gap_min_hi", "best_net_us_lo",
                                               "best_net_us_hi"]]), ""]
        out += ["## What it takes: the stress cases", "",
                "Small guests with host events scheduled per accesses and rates no host "
                "has: they show what it would take, not what happens.", ""]
    out += [f"**{answer(stress, 'stress' if len(real) else '')}**", "",
            f"How a case is judged: {MATTERS_RULE}.", "",
           "## Per hardware variant", "", report.md_table(by_variant(v)), ""]
    out += ["## Per case (ha-promote against fix)", "",
            "exits_saved: stage-2 faults ha-promote avoids; false_dirty_extra: pages it "
            "marks dirty that nothing wrote; uffd_false_write_extra: userfaultfd events it "
            "flags WRITE that wrote nothing; net_us: fix's modelled host overhead minus "
            "ha-promote's (positive: ha-promote is cheaper); net_share: net_us / fix's "
            "overhead; break_even_exit_us: the exit cost at which ha-promote would break "
            "even.", "", NOT_APPLICABLE + ".", "",
            report.md_table(v[SUMMARY_COLS + ["net_share", "break_even_exit_us"]]), ""]
    out += ["## The seed thread's claims", "", "### Share of guest memory in page tables", "",
            report.md_table(pt_share(df)), "",
            "### False-positive dirty rate per policy (runs with dirty logging)", "",
            report.md_table(false_dirty_rate(df)), "",
            "### hw_update = always (Marc's atomic-OR reading) against on-change", "",
            report.md_table(hw_always_effect(v)), ""]
    out += ["## Cost model", "", report.md_table(pd.DataFrame(
        [{"param": k, "value": val} for k, val in cm.as_dict().items()])), "",
            "Sources and assumptions: bench/cost.py and docs/cost-model.md.", "",
            "## Sensitivity of the stress cases (each constant x0.1 and x10)", "",
            report.md_table(sens), ""]
    out += ["## Plots", ""] + [f"![{title}]({f})\n" for f, title in PLOTS]
    out += ["## All metrics", "", "See metrics.csv (one row per policy and run) and "
            "timings.csv (engine throughput).", ""]
    return "\n".join(out)


TOP_CASES = 1
TEXT_LEGEND = {
    "case": "GUEST/AGING/LINK",
    "sec": "guest seconds (the whole migration)",
    "q": "share of walk-faulted page-table pages written after the fault, in "
         "the round (fix)",
    "q_star": "break-even q at the case's link",
    "rounds": "complete dirty rounds",
    "net_ms": "net saving per migration, ms",
    "cases": "cases on that variant",
    "matter": "cases that matter",
    "fix_2nd": "fix's second faults",
    "best_net_us": "ha-promote's best net saving, us",
    "saved": "exits ha-promote avoids",
    "fdirty": "extra false-dirty pages",
    "net_us": "net saving, us",
    "matters": "passes the bar (report.md)",
}
REAL_LEGEND = ("case", "sec", "q", "q_star", "rounds", "net_ms")
REAL_COLS = ["case", "workload_kind", "guest_gib", "guest_seconds", "rounds_complete",
             "q_measured", "q_break_even", "p_same_access", "envelope", "envelope_unit",
             "numa_fast_pt_pages_s",
             "exits_saved", "false_dirty_extra", "net_ms_per_migration", "vcpu_share",
             "matters"]


def _fmt_p(x) -> str:
    return "—" if x is None or pd.isna(x) else f"{x:.2g}"


def realistic_text(real: pd.DataFrame) -> pd.DataFrame:
    """The realistic cases as verdict.txt shows them (TEXT_LEGEND names the columns)."""
    return pd.DataFrame([{
        "case": _map_case(r), "sec": f"{r['guest_seconds']:.3g}",
        "rounds": int(r["rounds_complete"]), "q": _fmt_p(r["q_measured"]),
        "q_star": _fmt_p(r["q_break_even"]), "net_ms": f"{r['net_us'] / 1000:+.3g}",
        "matters": "yes" if r["matters"] else "no"} for _i, r in real.iterrows()])


def _map_case(r) -> str:
    """A realistic case by its label (GUEST/AGING/LINK[/variation]); a label without a link
    gets its link or host scenario."""
    w = str(r["workload"])
    label = w.rsplit("@", 1)[1] if "@" in w else _real_case(r).split(":", 1)[0]
    if label.count("/") >= 2:
        return label
    link = link_name(r.get("link_mb_s", 0.0))
    return f"{label} {link}" if link != "-" else f"{label} {r['host']}"


def link_name(mb_s: float) -> str:
    """A migration link as people name it: 25G, 10G (Gbit/s), 128Mi (MiB/s); "-" none."""
    if not mb_s or pd.isna(mb_s):
        return "-"
    gbit = mb_s * 8 / 1000
    if gbit >= 1 and abs(gbit - round(gbit)) < 0.01:
        return f"{round(gbit)}G"
    return f"{mb_s * 1e6 / 2**20:.0f}Mi"


def map_key(r) -> tuple[str, str]:
    """(guest, aging regime) of a realistic case from its label GUEST/AGING[/LINK] (the
    map's row and column; a label without '/' is a guest with no aging regime named)."""
    label = str(r["workload"]).rsplit("@", 1)[1] if "@" in str(r["workload"]) else \
        _real_case(r).split(":", 1)[0]
    guest, _, rest = label.partition("/")
    return guest, rest.split("/", 1)[0] or "-"


def on_map(real: pd.DataFrame) -> list:
    """The index labels of the realistic cases the map shows: whole migrations at the map's
    links, labels GUEST/AGING/LINK without a further variation."""
    keep = []
    for i, r in real.iterrows():
        if pd.isna(r["net_ms_per_migration"]):
            continue
        label = str(r["workload"]).rsplit("@", 1)[-1]
        if link_name(r["link_mb_s"]) in MAP_LINKS and label.count("/") <= 2:
            keep.append(i)
    return keep


def realistic_map(real: pd.DataFrame) -> pd.DataFrame:
    """guest x (aging regime, link): ha-promote's net saving per whole migration, ms, with
    '*' where the case matters — the cases whose window is one whole migration."""
    d = real.loc[on_map(real)] if len(real) else real
    if not len(d):
        return pd.DataFrame()
    cells: dict[str, dict[str, str]] = {}
    cols: list[str] = []
    for _i, r in d.iterrows():
        guest, aging = map_key(r)
        col = f"{aging}:{link_name(r['link_mb_s'])}"
        if col not in cols:
            cols.append(col)
        mark = "*" if r["matters"] else ""
        cells.setdefault(guest, {})[col] = f"{r['net_ms_per_migration']:+.1f}{mark}"
    cols.sort(key=lambda c: (AGING_ORDER.get(c.split(":")[0], 9), c))
    return pd.DataFrame([{"guest": g, **{c: row.get(c, "") for c in cols}}
                         for g, row in cells.items()])


AGING_ORDER = {"none": 0, "damon": 1, "mglru": 2}
MAP_LINKS = ("10G", "25G")


def answer_line(real: pd.DataFrame) -> str:
    """The first line of verdict.txt: the answer, as a kernel developer reads it."""
    yes = real[real["matters"]]
    n = len(real)
    if len(yes):
        b = yes.sort_values("net_us", ascending=False).iloc[0]
        return (f"Yes: ha-promote pays in {len(yes)} of {n} realistic cases; best "
                f"{_map_case(b)}: {b['net_us'] / 1000:+.3g} ms per migration "
                f"({100 * b['vcpu_share']:.2g}% of vCPU time), q {_fmt_p(b['q_measured'])} "
                f"> q* {_fmt_p(b['q_break_even'])}.")
    has_q = real[real["q_measured"].notna() & real["q_break_even"].notna()]
    close = ""
    if len(has_q):
        c = has_q.assign(gap=has_q["q_break_even"] - has_q["q_measured"]).sort_values(
            "gap").iloc[0]
        close = (f"; closest {_map_case(c)}: q {_fmt_p(c['q_measured'])} vs q* "
                 f"{_fmt_p(c['q_break_even'])}, {c['net_us'] / 1000:+.3g} ms")
    return (f"No: ha-promote pays in none of {n} realistic cases (whole migrations)"
            f"{close}.")


def _real_case(r) -> str:
    """label:host (the workload's name is generator+hosts@label); a recorded program is
    named by its catalogue entry (or trace) instead of the label."""
    w = str(r["workload"])
    head = w.split("+", 1)[0]
    if workload_kind(head) == "real":
        label = head.split(":", 1)[1].split(",", 1)[0].rsplit("/", 1)[-1]
    else:
        label = w.rsplit("@", 1)[1] if "@" in w else head
    return f"{label}:{r['host']}"


def _short_case(r) -> str:
    """workload (its name carries its host scenarios) / variant: unique within a beer run."""
    w = str(r["workload"]).replace("micro:", "")
    return f"{w} / {r['variant']}"


def text(df, v, sens, cm, real_sens=None, hunt_line: str | None = None) -> str:
    """verdict.txt: a <= 60-line summary for a mailing-list reply (<= 72 columns); the
    realistic (calibrated) cases first, then what it takes (the stress cases)."""
    real = v[v["section"] == "realistic"] if "section" in v else v.iloc[:0]
    stress = v[v["section"] != "realistic"] if "section" in v else v
    bv = by_variant(stress)
    if len(bv):
        bv = bv[["variant", "cases", "matter", "fix_double_faults", "best_net_us"]].rename(
            columns={"fix_double_faults": "fix_2nd"})
    ok = stress[~stress["breaks_guest"]].sort_values(["net_us", "exits_saved"],
                                                     ascending=False)
    top = ok.head(TOP_CASES)
    best = []
    for i, r in enumerate(top.itertuples(index=False), 1):
        r = r._asdict()
        best.append(report.wrap(f"{i}. {_short_case(r)}"))
        best.append(f"   saved {int(r['exits_saved'])}, fdirty {int(r['false_dirty_extra'])}, "
                    f"net_us {r['net_us']:.1f}, matters {'yes' if r['matters'] else 'no'}")
    rmap = realistic_map(real) if len(real) else pd.DataFrame()
    head = [report.wrap(answer_line(real))] if len(real) else []
    if len(rmap):
        head += ["ms per whole migration ha-promote saves over fix (*: matters):",
                 report.text_table(rmap, numparse=False)]
    off = real[~real.index.isin(on_map(real))] if len(rmap) else real
    if len(off):
        head += ["", "Realistic cases off the map (every case: report.md):" if len(rmap)
                 else "Realistic cases (calibrated host behaviour, warm guests):",
                 report.text_table(realistic_text(off))]
    if hunt_line:
        head += [report.wrap(hunt_line[:1].upper() + hunt_line[1:])]
    if len(real):
        head += [""]
    if len(real) and real_sens is not None and len(real_sens):
        f = flips(real_sens)
        head += [report.wrap("Sensitivity: " + (
            f"the realistic answer changes within the calibrated range of {', '.join(f)}"
            if f else "no cost constant's calibrated range changes the realistic answer")
            + " (report.md)."), ""]
    body = [report.wrap(answer(stress, "stress" if len(real) else "")), "",
            report.wrap(f"Compared: {COMPARED}."), "",
            "What it takes (stress cases), per hardware variant:",
            report.text_table(bv), "",
            f"Best {len(top)} of {len(stress)} stress cases by net saving:",
            *best, ""] if len(stress) or not len(real) else [
            report.wrap(f"Compared: {COMPARED}."), ""]
    parts = head + body + [
                    "Legend: " + "; ".join(f"{k}: {d}" for k, d in TEXT_LEGEND.items()
                                           if len(real) or k not in REAL_LEGEND) + ".",
                    "",
                    f"Costs: exit {cm.exit_us:g} us, re-send 4 KiB at the case's link + "
                    f"{cm.resend_overhead_us:g} us, uffd {cm.uffd_local_us:g} us "
                    f"({cm.uffd_postcopy_us:g} post-copy): docs/calibration.md; all: "
                    f"report.md.", ""]
    return "\n".join(report.wrap(p) if not p.startswith((" ", "-")) and "\n" not in p
                     and len(p) > report.TEXT_WIDTH else p for p in parts)
