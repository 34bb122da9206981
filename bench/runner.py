"""One run: a workload x host scenario x hardware variant, all policies -> tidy rows.

`run_workload` returns a `Run`: one metrics row per policy (every docs/semantics.md §5 metric, no
timing: the same seed gives byte-identical metrics.csv), plus timings and metadata kept apart
(`timings.csv`, `meta.json`), in the spirit of pyperf's metadata.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import platform
import subprocess
import sys
import tempfile
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from model.policies import DEFAULT_ORDER
from model.results import PolicyResult
from model.stage1 import build_tables
from workloads.base import Workload

from workloads.clock import access_time

from .cost import CostModel, overhead_us
from .variants import variant_workload

KEY_COLUMNS = ("workload", "host", "variant", "seed", "policy")
METRIC_COLUMNS = (
    "accesses", "walks", "descriptor_reads",
    "s2_faults", "s2_s1ptw_translation", "s2_s1ptw_permission", "s2_data_translation",
    "s2_data_permission", "double_faults",
    "uffd_events", "uffd_extra", "uffd_false_write",
    "uffd_missing_read", "uffd_missing_write", "uffd_minor_read", "uffd_minor_write",
    "uffd_wp_read", "uffd_wp_write", "uffd_wp_false_write",
    "dirty_marked_pt", "dirty_marked_data", "dirty_true", "dirty_false_positive",
    "dirty_false_positive_pt", "dirty_false_negative",
    # rounds (docs/time-and-hosts.md): judged at the harvest that ends each round; the
    # rounds still open at the end apart (pending, never false)
    "dirty_rounds", "dirty_rounds_open", "dirty_pending_marked", "dirty_pending_unwritten",
    "s1ptw_tf_round_pages", "s1ptw_tf_round_written", "s1ptw_tf_round_neutral",
    "s1ptw_tf_pending",
    "guest_aborts", "mmio_exits", "vcpu_run_failures", "efaults", "stage1_faults",
    "pml_full_exits", "host_unmapped_pages",
    "pt_pages", "data_pages", "vcpus",
    # the case's migration link (MB/s; 0: none) and whole migration or background snapshot
    # in the window (s; 0: none completed), and the case's q against its break-even (bench/breakeven.py;
    # empty: no page-table page took an S1PTW translation fault in a complete round)
    "link_mb_s", "migration_seconds", "q_measured", "q_break_even",
    # the modelled clock (workloads/clock.py): guest time, the host time this policy adds
    # (bench/cost.py), and per-second rates over guest time
    "guest_gib", "guest_seconds", "host_seconds", "s2_faults_per_s", "double_faults_per_s",
    "uffd_events_per_s", "dirty_false_positive_per_s", "host_unmapped_pages_per_s",
)
RATE_METRICS = ("s2_faults", "double_faults", "uffd_events", "dirty_false_positive",
                "host_unmapped_pages")
COLUMNS = KEY_COLUMNS + METRIC_COLUMNS
# timings (pyperf-style): `samples` timed runs of the engine after `warmups` untimed ones;
# `seconds` is their median, with min/max/stdev as the spread; rates from the median;
# `build_seconds` generating/importing/parsing the workload, `import_seconds` importing the
# engine's modules in this process (0 when already imported)
TIMING_COLUMNS = KEY_COLUMNS + ("engine", "samples", "warmups", "seconds", "seconds_min",
                                "seconds_max", "seconds_stdev", "accesses_per_s",
                                "walks_per_s", "build_seconds", "import_seconds")


@dataclass
class Run:
    rows: list[dict]                              # one per policy, COLUMNS
    timings: list[dict]                           # one per policy, TIMING_COLUMNS
    meta: dict = field(default_factory=dict)
    results: dict[str, PolicyResult] = field(default_factory=dict, repr=False)


def guest_footprint(w: Workload) -> tuple[int, int]:
    """(page-table pages, data pages) of the guest, in 4 KiB pages: the share of guest memory
    that holds page tables (the seed thread's "S1 PTs ought to account for a small amount")."""
    if "pt_pages" in w.meta and "data_pages" in w.meta:
        return int(w.meta["pt_pages"]), int(w.meta["data_pages"])
    scn = w.scenario
    per = scn.machine.granule // 4096
    return build_tables(scn).tables_used * per, sum(m.pages for m in scn.mappings) * per


def case_facts(w: Workload) -> dict:
    """What the cost model needs to know of the case besides the counts: its vCPUs (the
    trace's highest vCPU id + 1), its migration link in MB/s (0: no migration) and the
    duration of the whole migration — or background snapshot — completed in the window
    (0: none)."""
    hosts = {h.get("scenario"): h for h in w.meta.get("host", [])}
    mig, snap = hosts.get("migration", {}), hosts.get("bg_snapshot", {})
    whole = mig.get("migration_s") or snap.get("snapshot_s") or 0.0
    return {"vcpus": int(w.trace.vcpu.max()) + 1 if len(w.trace) else 1,
            "link_mb_s": float(mig.get("link_mb_s") or 0.0),
            "migration_seconds": round(float(whole), 9)}


def q_of_case(fix: dict | None, host: str, cm: CostModel) -> dict:
    """q measured over the complete rounds of fix's run and its break-even q* at the case's
    own link (bench/breakeven.py); None where there is nothing to measure."""
    from .breakeven import measured_q, q_break_even
    if fix is None:
        return {"q_measured": None, "q_break_even": None}
    q = measured_q(fix)
    try:
        qs = q_break_even(host, cm, fix.get("link_mb_s"))
    except ValueError:                              # a host the break-even does not know
        qs = None
    return {"q_measured": None if q is None else round(q, 9),
            "q_break_even": None if qs is None else round(qs, 9)}


def _import_engines() -> tuple[float, Callable, Callable]:
    t0 = time.perf_counter()
    from model.engine import run_trace
    from model.reference_trace import run_reference_trace
    return time.perf_counter() - t0, run_trace, run_reference_trace


def _reporting(trace, progress, per_access: int):
    """`trace` whose intervals() tell `progress` how many accesses the engine has run (both
    engines walk a trace by its intervals); undone by `del trace.intervals`."""
    inner = trace.intervals

    def intervals():
        for start, end, events in inner():
            yield start, end, events
            progress.update((end - start) * per_access)
    trace.intervals = intervals
    return trace


def run_workload(w: Workload, *, host: str = "none", variant: str = "default", seed: int = 0,
                 engine: str = "numpy", policies=DEFAULT_ORDER, repeat: int = 1,
                 warmup: int = 0, progress=None) -> Run:
    """All policies on one workload: metrics from the first run, timings over `repeat` timed
    runs after `warmup` untimed ones (every run gives the same metrics: checked).
    `progress`: a bench.progress.Progress told the accesses run (its total: `run_total`)."""
    import_s, run_trace, run_reference_trace = _import_engines()
    w = variant_workload(w, variant)
    scn = w.scenario
    runner = run_trace if engine == "numpy" else run_reference_trace
    pt_pages, data_pages = guest_footprint(w)
    if progress is not None:
        _reporting(w.trace, progress, 1)
    try:
        samples, results = _timed_runs(w, scn, runner, policies, repeat, warmup)
    finally:
        if progress is not None:
            del w.trace.intervals
    return _run_rows(w, scn, host, variant, seed, engine, samples, results, warmup, import_s,
                     pt_pages, data_pages)


def run_total(w: Workload, engine: str, policies, repeat: int, warmup: int) -> int:
    """The accesses `run_workload` reports: the reference engine walks the trace once per
    policy, the numpy engine once for all."""
    per = len(tuple(policies)) if engine == "reference" else 1
    return len(w.trace) * per * (max(1, repeat) + warmup)


def _timed_runs(w, scn, runner, policies, repeat, warmup):
    for _ in range(warmup):
        runner(scn, w.trace, tuple(policies))
    samples, results = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        r = runner(scn, w.trace, tuple(policies))
        samples.append(time.perf_counter() - t0)
        if results is None:
            results = r
        elif {p: x.metrics(None) for p, x in r.items()} != {
                p: x.metrics(None) for p, x in results.items()}:
            raise RuntimeError(f"{w.name}: repeated runs disagree (nondeterministic engine)")
    return samples, results


def _run_rows(w, scn, host, variant, seed, engine, samples, results, warmup, import_s,
              pt_pages, data_pages) -> Run:
    dt = statistics.median(samples)
    oracle = results.get("oracle")
    rows, timings = [], []
    key = {"workload": w.name, "host": host, "variant": variant, "seed": seed}
    spread = {"samples": len(samples), "warmups": warmup, "seconds": round(dt, 6),
              "seconds_min": round(min(samples), 6), "seconds_max": round(max(samples), 6),
              "seconds_stdev": round(statistics.stdev(samples), 6) if len(samples) > 1 else 0.0,
              "build_seconds": round(float(w.meta.get("build_seconds", 0.0)), 6),
              "import_seconds": round(import_s, 6)}
    clock = access_time(w)
    # the VM's memory: every memslot (what the host scans and migrates)
    guest_gib = round(sum(s.pages for s in scn.memslots) * 4096 / (1 << 30), 6)
    gs = len(w.trace) * clock.ns * 1e-9
    cm = CostModel()
    case = case_facts(w)
    metrics = {p: {**r.metrics(oracle), **case} for p, r in results.items()}
    case.update(q_of_case(metrics.get("fix"), host, cm))
    for p, r in results.items():
        m = {**metrics[p], **case}
        m.setdefault("uffd_extra", 0)
        m.update(pt_pages=pt_pages, data_pages=data_pages, guest_gib=guest_gib,
                 guest_seconds=round(gs, 9),
                 host_seconds=round(overhead_us(m, host, cm) * 1e-6, 9))
        for k in RATE_METRICS:
            m[f"{k}_per_s"] = round(m[k] / gs, 3) if gs else 0.0
        rows.append({**key, "policy": p, **{c: m[c] for c in METRIC_COLUMNS}})
        # the numpy engine runs the policies together: every row carries the whole run's
        # time, and rates are the trace's accesses (walks) per second of it
        timings.append({**key, "policy": p, "engine": engine, **spread,
                        "accesses_per_s": round(r.accesses / dt) if dt else 0,
                        "walks_per_s": round(r.walks / dt) if dt else 0})
    meta = {"workload": w.name, "workload_meta": _jsonable(w.meta), "host": host,
            "variant": variant, "seed": seed, "engine": engine, "policies": list(results),
            "machine": _jsonable(vars(scn.machine)), "guest": _jsonable(vars(scn.guest)),
            "accesses": len(w.trace), "events": len(w.trace.events), "seconds": dt,
            "samples_seconds": [round(x, 6) for x in samples], "warmups": warmup,
            "clock": {"access_ns": clock.ns, "access_ns_range": [clock.lo_ns, clock.hi_ns],
                      "basis": clock.basis, "guest_seconds": gs},
            "cost_model_us": cm.as_dict()}
    return Run(rows, timings, meta, results)


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (str, int, float, bool)) or d is None:
        return d
    if hasattr(d, "tolist"):                      # numpy scalars and (small) arrays
        size = getattr(d, "size", 1)
        return d.tolist() if size <= 64 else f"<array of {size}>"
    return str(d)


# ---- environment metadata (pyperf-like) -------------------------------------------------
def environment() -> dict:
    """The machine and library versions (bench/meta.py; meta.json's `environment`)."""
    from .meta import environment as env
    return env()


# ---- output: atomic writes -----------------------------------------------------------------
def csv_text(rows: list[dict], columns) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r[c] for c in columns})
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _respect_umask(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; results get the modes the user's umask gives."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary name in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        _respect_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class OutputError(ValueError):
    """An output location that cannot be used: one line, exit 2, checked before any work."""


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]{0,119}")


def check_name(name: str, what: str) -> str:
    """A result directory's name: one path component, portable characters, <= 120 long."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise OutputError(f"{what}: {shown} is not a usable name (letters, digits and . _ + "
                          f"@ = -, starting with a letter or digit, at most 120 characters)")
    return name


def check_out_root(root: Path, what: str = "--out") -> Path:
    """The results root must be a directory or creatable as one (nothing is created here)."""
    root = Path(root)
    p = root
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {p} is not writable")
    free = _free_bytes(p)
    if free < MIN_FREE_BYTES:
        raise OutputError(f"{what}: {p} has {free / 1e6:.1f} MB free, under the "
                          f"{MIN_FREE_BYTES // 10**6} MB a result needs; free some space")
    name_max = _pathconf(p, "PC_NAME_MAX", 255)
    for part in root.parts:
        if len(os.fsencode(part)) > name_max:
            raise OutputError(f"{what}: a name of {len(part)} characters "
                              f"({part[:24]!r}...) is too long for the file system "
                              f"(at most {name_max})")
    if len(os.fsencode(str(root.absolute()))) > _pathconf(p, "PC_PATH_MAX", 4096) - 300:
        raise OutputError(f"{what}: the path is too long for the file system")
    return root


RUN_NAME_MAX = 120              # result directory names (check_name), before "-N" suffixes


# checked before any work: a nearly full disk is refused up front (a beer's directory is
# ~1-3 MB, a sweep's grows ~20 KB a point); a disk that fills later still gives one line
MIN_FREE_BYTES = 64 * 10**6


def _free_bytes(p: Path) -> int:
    try:
        st = os.statvfs(p)
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return MIN_FREE_BYTES


def _pathconf(p: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(p, name)
    except (OSError, ValueError, AttributeError):
        return default


def short_name(name: str, limit: int = RUN_NAME_MAX) -> str:
    """`name` as a directory name of at most `limit` characters: a long one (a workload named
    by a long path) keeps its start and end around a hash of the whole, so it stays unique."""
    import hashlib
    name = re.sub(r"[^A-Za-z0-9._+@=-]", "_", name).lstrip(".-_") or "run"
    if len(name) <= limit:
        return name
    h = hashlib.sha256(name.encode()).hexdigest()[:10]
    keep = (limit - len(h) - 2) // 2
    return f"{name[:keep]}~{h}~{name[-keep:]}"


def unique_run_dir(root: Path, name: str) -> Path:
    """`root/name`, or `root/name-2`, `-3`, ... if taken: run ids never collide."""
    final, k = Path(root) / name, 1
    while final.exists():
        k += 1
        final = Path(root) / f"{name}-{k}"
    return final


def write_dir_atomic(final: Path, files: dict[str, str | bytes], unique: bool = False) -> Path:
    """Write a whole result directory under a temporary name, then rename it into place:
    a failed or interrupted run leaves nothing behind.  `unique`: take the next free
    `final-N` instead of failing when `final` exists (run ids)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            write_atomic(tmp / name, data)
        _respect_umask(tmp, directory=True)
        while True:
            if final.exists():
                if not unique:
                    raise FileExistsError(f"{final} exists")
                final = unique_run_dir(final.parent, final.name)
                continue
            try:
                os.rename(tmp, final)
                break
            except OSError:                      # taken between the check and the rename?
                if not (unique and final.exists()):
                    raise
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def meta_json(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"
