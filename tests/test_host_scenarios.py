"""Host scenarios: each schedule's defining property, and what it does to the policies.

Expectations follow from docs/semantics.md §3 (what write-protects or unmaps stage 2) and §3.1 (which
faults each policy calls writes), not from a run's output.
"""
import math

import numpy as np
import pytest

from model.reference_trace import run_reference_trace
from workloads.base import WorkloadError
from workloads.registry import HOST_SCENARIOS, apply_host, build, make

SMALL = dict(vcpus=2, bytes_per_vcpu=256 << 10, iterations=2)


def events(wl, op):
    return [e for e in wl.trace.events if e[2].op == op]


def test_every_issue_host_scenario_is_registered():
    assert {"precopy", "postcopy", "snapshot", "pressure", "firmware"} <= set(HOST_SCENARIOS)


@pytest.mark.parametrize("manual", [False, True])
def test_precopy_schedule_and_rounds(manual):
    wl = make("memstress", 1, **SMALL)
    mig = apply_host(wl, "precopy", rounds=3, start_frac=0.25, manual_protect=manual)
    n = len(wl.trace)
    slots = [s.name for s in wl.scenario.memslots]
    on = events(mig, "enable_dirty_log")
    assert sorted(e[2].slot for e in on) == sorted(slots)
    assert {e[0] for e in on} == {n // 4} and all(e[2].initially_set == manual for e in on)
    hv = events(mig, "harvest")
    pos = sorted({e[0] for e in hv})
    assert len(hv) == 3 * len(slots) and len(pos) == 3
    assert len(set(np.diff([n // 4] + pos))) == 1          # evenly spaced rounds
    # the workload's own accesses and events are untouched
    assert np.array_equal(mig.trace.va, wl.trace.va)
    assert [e for e in mig.trace.events if e[2].op.startswith("guest")] == wl.trace.events
    for p, r in run_reference_trace(mig.scenario, mig.trace).items():
        assert len(r.harvests) == 3 * len(slots)
        assert r.metrics()["dirty_false_negative"] == 0, p
        if manual:   # KVM_DIRTY_LOG_INITIALLY_SET: the first harvest returns every page
            first = [h for h in r.harvests if h.step == pos[0]]
            assert all(len(h.dirty_pages) == mig.scenario.slot(h.slot).pages for h in first)


@pytest.mark.parametrize("eager_split", [False, True])
def test_precopy_thp_block_split_exposes_page_tables_without_eager_split(eager_split):
    # page tables share 2 MiB blocks with data (layout shared); after logging starts a write
    # to a read-only block unmaps the rest of it, page-table pages included, so the walker
    # takes S1PTW translation faults, which legacy/ha-promote (HA set) call writes
    # (docs/semantics.md §3.3).  Eagerly split blocks stay mapped read-only: no such faults.
    wl = build("memstress", 1, "precopy", host_knobs=dict(backing="anon_thp", start_frac=0.5,
                                                          rounds=2, eager_split=eager_split),
               demand=False, layout="shared", bytes_per_vcpu=1 << 20)
    m = {p: r.metrics() for p, r in run_reference_trace(wl.scenario, wl.trace).items()}
    for p in ("fix", "oracle"):
        assert m[p]["dirty_false_positive"] == 0
    for p in ("legacy", "ha-promote"):
        assert (m[p]["dirty_false_positive_pt"] > 0) == (not eager_split)


@pytest.mark.parametrize("mode", ["missing", "minor"])
def test_postcopy_every_page_arrives_through_one_fault(mode):
    wl = build("gc", 1, "postcopy", host_knobs=dict(mode=mode), heap_bytes=1 << 20,
               demand=False)
    for s in wl.scenario.memslots:
        assert not s.populated and s.uffd == mode
        assert s.backing in (("anon",) if mode == "missing" else ("shmem", "hugetlb"))
    res = run_reference_trace(wl.scenario, wl.trace)
    per = {}
    for p, r in res.items():
        ev = [(e.slot, e.page) for e in r.uffd_events]
        assert len(ev) == len(set(ev))                   # one resolution per page
        assert {e.mode for e in r.uffd_events} == {mode}
        per[p] = r.uffd_counts()
    # the walker's first reads of the (pre-built) tables: WRITE for legacy, READ for fix
    assert per["fix"]["uffd_false_write"] == per["oracle"]["uffd_false_write"] == 0
    assert per["legacy"]["uffd_false_write"] > 0
    assert per["legacy"]["uffd_events"] == per["fix"]["uffd_events"]


@pytest.mark.parametrize("name,knobs", [("memstress", dict(SMALL, write_percent=40)),
                                        ("mmap_churn", dict(rounds=12)),
                                        ("fork", dict(accesses=600, heap_bytes=64 << 12))])
def test_snapshot_wp_faults_are_exactly_the_written_pages(name, knobs):
    wl = build(name, 2, "snapshot", **knobs)
    assert {e[2].op for e in wl.trace.events if e[0] == 0} >= {"uffd_wp"}
    res = run_reference_trace(wl.scenario, wl.trace)
    for p, r in res.items():
        wp = {(e.slot, e.page) for e in r.uffd_events if e.mode == "wp"}
        written = {(s, i) for s, pages in r.written_pages.items() for i in pages}
        if p in ("fix", "oracle"):
            assert wp == written, p          # every written page copied once, nothing else
        else:
            assert wp >= written, p


@pytest.mark.parametrize("mode", ["swap", "zap", "ksm"])
def test_pressure_schedule(mode):
    wl = make("memstress", 3, **SMALL)
    hp = apply_host(wl, "pressure", mode=mode, period_accesses=50, fraction=0.1, run_pages=4)
    ops = [e for e in hp.trace.events if not e[2].op.startswith("guest")]
    op = "swap_out" if mode == "swap" else "zap"
    assert {e[2].op for e in ops} == {op}
    assert sorted({e[0] for e in ops}) == list(range(50, len(wl.trace), 50))
    slots = {s.name: s for s in wl.scenario.memslots}
    run = 1 if mode == "ksm" else 4
    passes = {}
    for pos, _i, st in ops:
        # one step per pass and slot: the union of ceil(0.1 * pages / run) runs of `run`
        # contiguous pages at random starts
        assert (pos, st.slot) not in passes
        passes[pos, st.slot] = st
        n = slots[st.slot].pages
        p = np.asarray(st.pages)
        assert len(p) and p[0] >= 0 and p[-1] < n and (np.diff(p) > 0).all()
        k = math.ceil(0.1 * n / run)
        assert run <= len(p) <= k * run
        stretch = np.split(p, np.flatnonzero(np.diff(p) > 1) + 1)
        assert min(len(x) for x in stretch) >= run          # made of whole runs
        if mode == "ksm":
            assert st.slot != wl.scenario.guest.pt_slot
    assert {s for _pos, s in passes} == set(slots) - (
        {wl.scenario.guest.pt_slot} if mode == "ksm" else set())
    base = run_reference_trace(wl.scenario, wl.trace, ("fix",))["fix"].metrics()
    r = run_reference_trace(hp.scenario, hp.trace, ("fix",))["fix"].metrics()
    assert r["s2_faults"] > base["s2_faults"]               # reclaimed pages fault again


@pytest.mark.parametrize("tcr_ha", [False, True])
def test_firmware_read_only_page_tables(tcr_ha):
    wl = build("sparse", 1, "firmware", host_knobs=dict(tcr_ha=tcr_ha), regions=8,
               accesses=200)
    pt = wl.scenario.slot(wl.scenario.guest.pt_slot)
    assert pt.readonly and not wl.trace.events
    assert wl.scenario.guest.tcr_ha == tcr_ha
    m = {p: r.metrics() for p, r in run_reference_trace(wl.scenario, wl.trace).items()}
    # legacy: every S1PTW translation fault is a write to a read-only slot -> abort, and
    # nothing ever gets mapped; ha-promote does the same when HA is set (docs/semantics.md §1)
    assert m["legacy"]["guest_aborts"] == m["legacy"]["accesses"] == 200
    assert m["ha-promote"]["guest_aborts"] == (200 if tcr_ha else 0)
    assert m["fix"]["guest_aborts"] == m["oracle"]["guest_aborts"] == 0


def test_firmware_refuses_guest_page_table_stores():
    with pytest.raises(WorkloadError, match="stores to its page tables"):
        apply_host(make("sparse", regions=4, accesses=20), "firmware")
    with pytest.raises(WorkloadError, match="cannot run under firmware"):
        build("fork", 0, "firmware")


def test_host_scenarios_compose():
    wl = make("memstress", 1, **SMALL)
    both = apply_host(apply_host(wl, "pressure", period_accesses=40), "precopy", rounds=2)
    assert both.name == "memstress+pressure+precopy"
    assert [h["scenario"] for h in both.meta["host"]] == ["pressure", "precopy"]
    pos = [e[0] for e in both.trace.events]
    assert pos == sorted(pos)
