"""Host scenarios: what the host does to a running workload, as an event schedule.

Each is `func(workload, **knobs) -> Workload`: a new workload whose scenario has the memslots
the scenario needs (uffd registration, backing, read-only) and whose trace has the host's
events merged into the workload's own (the accesses are shared, not copied).  Events use
only the docs/scenario-format.md ops (enable_dirty_log, harvest, uffd_wp, swap_out, zap), so every engine
runs them through model.reference.Vm.run_step.  Positions are access indices of the
workload's trace (guest-fault attempts included); at the same position the host's events come
before the guest kernel's.  Step numbers of host events are their positions.

Decisions where docs/semantics.md is silent:

* precopy: logging starts at `start_frac` (a fraction of the trace) on every memslot; rounds
  are evenly spaced over the rest of the trace unless `interval_accesses` says otherwise; the final
  would-be harvest of PolicyResult covers what remains.  manual_protect = KVM_CAP_MANUAL_
  DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET (harvest = GET + CLEAR).
* postcopy: the trace is what runs after the switch-over, so every slot starts missing (a
  punch_hole mid-trace would restore the pages' content as at the start of the scenario,
  undoing the guest's own page-table stores).  minor needs shmem or hugetlb backing: anon
  backings become shmem (QEMU's memory-backend-memfd, shared).  Background page pushing by the
  migration thread is not modelled: every page arrives through a fault.
* snapshot: uffd-wp (UFFDIO_WRITEPROTECT over all RAM, QEMU background-snapshot) at
  `start_frac`;
  each WP fault unprotects one page (or the slot with resolve = slot).
* pressure: every `period_accesses` accesses, runs of `run_pages` random pages covering
  `fraction` of each target slot are swapped out (kswapd reclaim: stage 2 unmapped, content
  kept) or zapped (MMU-notifier invalidation: NUMA balancing, THP split/migration).  ksm: single pages of
  the data slot are zapped (a KSM merge unmaps them); the merged page's host-side
  read-only state is not modelled (no such host op), so a later write maps it writable
  again without a CoW.
* firmware: the page-table slot is KVM_MEM_READONLY (EFI firmware tables in a flash/ROM
  memslot); the guest runs with TCR_EL1.HA as `tcr_ha` says (firmware leaves it clear).  The
  workload may not store to its page tables (no guest page-table events): built with
  demand = false and no aging, which `workloads.registry.build` arranges.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from model.scenario import INTERNAL_OPS, Step

from .base import Knob, Workload, WorkloadError, host_scenario, seed_knob

# the stress scenarios below place host events by trace position, not time: their numeric
# knobs have no real-host counterpart (the calibrated ones are in workloads/host_timed.py)
STRESS = "ASSUMPTION: stress schedule in trace positions ('what it takes'), not a host rate"
START = Knob("start_frac", 0.0, "where the host operation starts, as a fraction of the "
             "trace (a stress knob: trace position, not time)", lo=0.0, hi=1.0, source=STRESS)


def _pos(wl: Workload, frac: float, owner: str) -> int:
    if not 0 <= frac <= 1:
        raise WorkloadError(f"{owner}: start_frac {frac} is not in [0, 1]")
    return int(frac * len(wl.trace))


def with_events(wl: Workload, events: list[tuple[int, Step]], name: str, knobs: dict,
                scenario=None) -> Workload:
    """A new workload: `events` (position, Step) merged before the workload's own events at
    the same position."""
    tr = wl.trace
    merged = [(p, 0, k, (p, p, st)) for k, (p, st) in enumerate(events)]
    # the window's start (warm_stage2, workloads/linux.py) comes before any host event
    merged += [(e[0], -1 if e[2].op == "warm_stage2" else 1, k, e)
               for k, e in enumerate(tr.events)]
    merged.sort(key=lambda m: m[:3])
    # type(tr): a trace streamed from disk (model.trace_stream) stays on disk
    trace = type(tr)(tr.vcpu, tr.va, tr.kind, [m[3] for m in merged], tr.step_of_access)
    meta = dict(wl.meta)
    meta["host"] = list(meta.get("host", [])) + [dict(scenario=name, **knobs)]
    return Workload(f"{wl.name}+{name}", scenario or wl.scenario, trace, meta)


def _scn(wl: Workload, slots, name: str, **guest):
    s = wl.scenario
    return replace(s, name=f"{s.name}+{name}", memslots=tuple(slots),
                   guest=replace(s.guest, **guest) if guest else s.guest)


@host_scenario("precopy",
               "pre-copy live migration (QEMU/libvirt migrate, dirty_log_perf_test): dirty "
               "logging on every memslot, then a harvest (GET/CLEAR_DIRTY_LOG) per round",
               [START,
                Knob("rounds", 4, "harvests (migration rounds)", source=STRESS),
                Knob("interval_accesses", 0, "accesses between harvests (0: spread evenly)",
                     source=STRESS),
                Knob("manual_protect", False, "KVM_DIRTY_LOG_INITIALLY_SET: every bit set, "
                     "write-protection deferred to the first CLEAR"),
                Knob("eager_split", False, "KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: split blocks "
                     "when logging starts"),
                Knob("backing", "", "override the memslots' backing (''; anon, anon_thp, "
                     "hugetlb, shmem)", ("", "anon", "anon_thp", "hugetlb", "shmem"))])
def precopy(wl: Workload, *, start_frac, rounds, interval_accesses, manual_protect,
            eager_split, backing):
    start, interval = start_frac, interval_accesses
    name = "precopy"
    if rounds < 0 or interval < 0:
        raise WorkloadError(f"{name}: rounds and interval_accesses must be >= 0")
    n = len(wl.trace)
    p0 = _pos(wl, start, name)
    step = interval or max(1, (n - p0) // (rounds + 1))
    slots = [replace(s, backing=backing or s.backing) for s in wl.scenario.memslots]
    ev = [(p0, Step("enable_dirty_log", slot=s.name, initially_set=manual_protect,
                    eager_split=eager_split)) for s in slots]
    for k in range(1, rounds + 1):
        p = p0 + k * step
        if p > n:
            break
        ev += [(p, Step("harvest", slot=s.name)) for s in slots]
    knobs = dict(start_frac=start, rounds=rounds, interval_accesses=step,
                 manual_protect=manual_protect,
                 eager_split=eager_split, backing=backing)
    return with_events(wl, ev, name, knobs, _scn(wl, slots, name))


@host_scenario("postcopy",
               "post-copy live migration after the switch-over (QEMU postcopy-ram, "
               "demand_paging_test): every page starts missing on the destination and "
               "arrives through a userfaultfd MISSING (anon) or MINOR (shmem) fault",
               [Knob("mode", "missing", "uffd mode: missing (UFFDIO_COPY) or minor "
                     "(UFFDIO_CONTINUE, shmem/hugetlb)", ("missing", "minor")),
                Knob("resolve", "page", "what one resolution makes present: page or the "
                     "whole slot", ("page", "slot"))])
def postcopy(wl: Workload, *, mode, resolve):
    slots = []
    for s in wl.scenario.memslots:
        backing = s.backing
        if mode == "minor" and backing not in ("shmem", "hugetlb"):
            backing = "shmem"
        slots.append(replace(s, populated=False, uffd=mode, uffd_resolve=resolve,
                             backing=backing))
    return with_events(wl, [], "postcopy", dict(mode=mode, resolve=resolve),
                       _scn(wl, slots, "postcopy"))


@host_scenario("snapshot",
               "background snapshot (QEMU background-snapshot, CRIU): uffd-wp on all RAM, each "
               "first write after it is a WP fault the VMM resolves after copying the page",
               [START,
                Knob("resolve", "page", "what one WP resolution unprotects: page or slot",
                     ("page", "slot"))])
def snapshot(wl: Workload, *, start_frac, resolve):
    p0 = _pos(wl, start_frac, "snapshot")
    slots = [replace(s, uffd="wp", uffd_resolve=resolve) for s in wl.scenario.memslots]
    ev = [(p0, Step("uffd_wp", slot=s.name, first=0, count=s.pages)) for s in slots]
    return with_events(wl, ev, "snapshot", dict(start_frac=start_frac, resolve=resolve),
                       _scn(wl, slots, "snapshot"))


@host_scenario("pressure",
               "host memory pressure: periodic swap-out (kswapd), MMU-notifier zaps (NUMA "
               "balancing, THP splits) or KSM merges of a fraction of guest pages",
               [Knob("mode", "swap", "swap (swap_out), zap, or ksm (zap single data pages)",
                     ("swap", "zap", "ksm")),
                Knob("period_accesses", 1024, "accesses between reclaim passes", source=STRESS),
                Knob("fraction", 0.05, "fraction of each target slot's pages per pass",
                     source=STRESS),
                Knob("run_pages", 8, "contiguous pages per reclaimed run (ksm: 1)", source=STRESS),
                Knob("target", "all", "slots: all, data (not the page-table slot) or pt",
                     ("all", "data", "pt")),
                seed_knob("seed of the page choice")])
def pressure(wl: Workload, *, mode, period_accesses, fraction, run_pages, target, seed):
    name = "pressure"
    period, run = period_accesses, run_pages
    if period < 1 or run < 1 or not 0 < fraction <= 1:
        raise WorkloadError(f"{name}: period_accesses and run_pages must be >= 1, fraction in "
                            f"(0, 1]")
    scn = wl.scenario
    pt = scn.guest.pt_slot
    if mode == "ksm":
        run, target = 1, "data"
    slots = [s for s in scn.memslots
             if target == "all" or (target == "pt") == (s.name == pt)]
    if not slots:                     # layout "shared": one slot holds tables and data
        slots = list(scn.memslots)
    op = "swap_out" if mode == "swap" else "zap"
    rng = np.random.default_rng(seed)
    ev = []
    for p in range(period, len(wl.trace), period):
        for s in slots:
            r = min(run, s.pages)
            k = max(1, math.ceil(fraction * s.pages / r))
            # k runs of r contiguous pages at random starts, as one step over their union
            # (the ops are page by page and idempotent: model/engine.py UNION_HOST_OPS)
            first = rng.integers(0, s.pages - r + 1, k)
            pages = np.unique((first[:, None] + np.arange(r)).ravel())
            ev.append((p, Step(op, slot=s.name, pages=pages)))
    knobs = dict(mode=mode, period_accesses=period, fraction=fraction, run_pages=run,
                 target=target, seed=seed)
    return with_events(wl, ev, name, knobs)


@host_scenario("firmware",
               "read-only firmware page tables (EFI boot: UEFI's stage-1 tables in a "
               "KVM_MEM_READONLY flash memslot, the case that broke under v5.9..v6.2-rc)",
               [Knob("tcr_ha", False, "TCR_EL1.HA as the firmware sets it (EDK2: clear)")])
def firmware(wl: Workload, *, tcr_ha):
    name = "firmware"
    bad = sorted({st.op for _p, _i, st in wl.trace.events if st.op in INTERNAL_OPS})
    if bad:
        raise WorkloadError(f"{name}: the workload stores to its page tables ({', '.join(bad)});"
                            f" build it with demand=false and age_period=0, and no munmap/fork")
    scn = wl.scenario
    pt = scn.guest.pt_slot
    if any(m.ipa >= scn.slot(pt).ipa and m.ipa < scn.slot(pt).end for m in scn.mappings):
        raise WorkloadError(f"{name}: data pages live in the page-table slot (layout shared)")
    slots = [replace(s, readonly=True) if s.name == pt else s for s in scn.memslots]
    return with_events(wl, [], name, dict(tcr_ha=tcr_ha),
                       _scn(wl, slots, name, tcr_ha=tcr_ha,
                            tcr_hd=tcr_ha and scn.guest.tcr_hd,
                            tcr2_haft=tcr_ha and scn.guest.tcr2_haft))
