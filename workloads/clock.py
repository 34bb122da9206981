"""The modelled clock: how much guest time one traced access stands for (issue 9).

A trace records memory accesses only; the work between them (instructions, cache hits) is
folded into a time per access that each generator declares here, with its reasoning and a
range for the sensitivity analysis.  The knob `access_ns` overrides it for one run.  Guest
time is accesses x access_ns; host events of the calibrated host scenarios
(workloads/host_timed.py) are placed on this clock; stage-2 faults and userfaultfd round trips
add host time from the cost model (bench/cost.py), reported separately per policy.

`--seconds S` (`with_seconds`) sizes a run in guest time: the workload's access stream is
repeated (a service keeps serving the same mix) or cut to S / access_ns accesses.  Repeats
carry the accesses and the periodic guest-kernel work (aging passes) only: the generator's
page faults and table stores happened in the first pass, as a warm process's would have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.trace import Trace
from model.trace_stream import TiledColumn, TiledTrace

from .aging import window_summary
from .base import Workload, WorkloadError


PERIODIC_OPS = ("guest_age",)


@dataclass(frozen=True)
class AccessTime:
    ns: float                 # guest time one traced access stands for
    lo_ns: float              # sensitivity range
    hi_ns: float
    basis: str                # why; ASSUMPTION where no measurement backs it


ACCESS_TIME = {
    "stream": AccessTime(6.4, 3.0, 20.0, "ASSUMPTION: one 64-byte line per access at ~10 GB/s "
                         "of single-core streaming bandwidth (64 B / 10 GB/s)"),
    "memstress": AccessTime(50.0, 10.0, 150.0, "ASSUMPTION: one 8-byte store per 4 KiB page "
                            "(dirty_log_perf_test's guest loop): a TLB and cache miss each, "
                            "partly hidden by the prefetcher in order"),
    "zipf": AccessTime(250.0, 100.0, 2500.0, "ASSUMPTION: a key-value operation of ~0.5 us "
                       "in-process (hash, compare, copy; memcached/Redis serve ~1-2 M ops/s "
                       "per core without networking) over its two traced accesses"),
    "sparse": AccessTime(100.0, 50.0, 300.0, "ASSUMPTION: every access a TLB and DRAM miss "
                         "(~100 ns load-to-use latency on current Arm servers)"),
    "pointer_chase": AccessTime(100.0, 80.0, 150.0, "ASSUMPTION: one dependent DRAM access "
                                "per hop (~100 ns load-to-use latency)"),
    "mmap_churn": AccessTime(200.0, 50.0, 1000.0, "ASSUMPTION: short-lived mappings, touched "
                             "briefly: page-fault and TLB-miss heavy accesses"),
    "fork": AccessTime(50.0, 10.0, 150.0, "ASSUMPTION: random heap accesses, a cache miss "
                       "each, CoW faults in the guest between them"),
    "gc": AccessTime(20.0, 5.0, 100.0, "ASSUMPTION: a copying/marking collector scanning "
                     "objects mostly in order (prefetch-friendly)"),
    "shared_db": AccessTime(150.0, 50.0, 500.0, "ASSUMPTION: a tuple access in a shared "
                            "buffer page: a TLB miss whose walk misses the caches (sparse "
                            "leaf tables) and a DRAM access (~100 ns each, partly "
                            "overlapped), with cache hits between"),
    "micro": AccessTime(10.0, 1.0, 100.0, "ASSUMPTION: a few instructions per access at "
                        "~3 GHz (hand-written micro-scenarios have no time of their own)"),
    "import": AccessTime(10.0, 1.0, 100.0, "ASSUMPTION: a few instructions per access "
                         "(a recorded trace gives its own: valgrind's instruction count)"),
}


def access_time(w: Workload) -> AccessTime:
    """The time per access of workload `w`: its meta's `access_ns` (a knob or a recording's
    own), else its generator's."""
    gen = w.meta.get("generator", "import")
    base = ACCESS_TIME.get(gen, ACCESS_TIME["import"])
    ns = w.meta.get("access_ns")
    rec = (w.meta.get("time_per_access") or {}).get("ns_per_access")
    if not ns and rec:                         # a recording's own (workloads/trace_dir.py)
        return AccessTime(float(rec), base.lo_ns, base.hi_ns,
                          w.meta["time_per_access"].get("basis", "valgrind instructions"))
    if ns:
        return AccessTime(float(ns), base.lo_ns, base.hi_ns,
                          w.meta.get("access_ns_basis", "set by the knob access_ns"))
    return base


def guest_seconds(w: Workload) -> float:
    return len(w.trace) * access_time(w).ns * 1e-9


def _repeat_periodic(w: Workload, n: int) -> list:
    """The events of `w`'s trace, then its periodic guest-kernel work up to `n` accesses;
    page faults and table stores happen in the first pass only (the process is warm).
    Aging goes on on the clock (workloads/aging.py AgingState): a pass every period over
    the whole window, the clock hand continuing over the PTEs mapped at the base trace's
    end, whether or not the base trace was long enough to hold a pass.  A workload without
    that state (a micro-scenario) has its own passes repeated with each repeat."""
    tr = w.trace
    events = [e for e in tr.events if e[0] < len(tr)]
    state = w.meta.get("aging_state")
    if state is not None:
        return events + state.events_after(len(tr), n)
    periodic = [e for e in events if e[2].op in PERIODIC_OPS]
    for k in range(1, -(-n // len(tr))):
        events += [(p + k * len(tr), i, st) for p, i, st in periodic if p + k * len(tr) < n]
    return events


MAX_MATERIALISED = 2_000_000_000   # accesses held as arrays (scenario steps)
MAX_ACCESSES = 10 ** 12              # a window served again lazily (TiledColumn)


def cut(w: Workload, n: int, seconds: float | None = None) -> Workload:
    """`w`'s first `n` accesses and the events up to position n (an event at n applies after
    the last access: a migration's final sync).  A window served again stays lazy."""
    tr = w.trace
    events = [e for e in tr.events if e[0] <= n]
    meta = dict(w.meta, accesses_for_seconds=n)
    if seconds is not None:
        meta["seconds"] = seconds
    if isinstance(tr, TiledTrace):
        cols = [TiledColumn(c.base, n) for c in (tr.vcpu, tr.va, tr.kind)]
        return note_aging(Workload(w.name, w.scenario, TiledTrace(*cols, events, None),
                                   meta))
    cols = [np.asarray(c[:n]) for c in (tr.vcpu, tr.va, tr.kind)]
    soa = None if tr.step_of_access is None else np.asarray(tr.step_of_access[:n])
    return note_aging(Workload(w.name, w.scenario, Trace(*cols, events, soa), meta))


def note_aging(w: Workload) -> Workload:
    """meta's aging_passes / aging / aging_warning for `w`'s window (workloads/aging.py
    window_summary): an aging period the window cannot contain is named, not dropped."""
    w.meta.update(window_summary(w.meta.get("aging_state"), len(w.trace), access_time(w).ns,
                                 w.meta.get("aging_period_ms", 0.0)))
    return w


def with_seconds(w: Workload, seconds: float) -> Workload:
    """`w` sized to `seconds` of guest time (module doc): n = round(seconds / access_ns)."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise WorkloadError(f"--seconds: {seconds!r} is not a positive number of seconds")
    ns = access_time(w).ns
    n = max(1, round(seconds * 1e9 / ns))
    tr = w.trace
    if len(tr) == 0:
        raise WorkloadError(f"{w.name}: an empty trace cannot fill {seconds} s")
    if n > MAX_ACCESSES or (n > MAX_MATERIALISED and tr.step_of_access is not None):
        raise WorkloadError(f"--seconds {seconds}: {n} accesses at {ns} ns each is too many")
    if n <= len(tr):
        return cut(w, n, seconds)
    if tr.step_of_access is not None:         # a scenario's steps: small, copied
        cols = [np.resize(np.asarray(c), n) for c in (tr.vcpu, tr.va, tr.kind)]
        events = _repeat_periodic(w, n)
        soa = np.resize(tr.step_of_access, n)
    else:                                       # the access stream again
        # repeated lazily (model.trace_stream.TiledColumn): no copy of the repeats
        base = [np.asarray(c[:len(tr)]) for c in (tr.vcpu, tr.va, tr.kind)]
        cols = [TiledColumn(c, n) for c in base]
        events = _repeat_periodic(w, n)
        meta = dict(w.meta, seconds=seconds, accesses_for_seconds=n)
        return note_aging(Workload(w.name, w.scenario, TiledTrace(*cols, events, None), meta))
    meta = dict(w.meta, seconds=seconds, accesses_for_seconds=n)
    return note_aging(Workload(w.name, w.scenario, Trace(*cols, events, soa), meta))
