"""The x86 comparison machines (model/x86.py, docs/x86.md): hand-derived micro-scenarios and
properties of dirty marking by walks.

Properties (hypothesis, >= 300 examples each in CI):
* x86-ept-ad: in every dirty round, the false-dirty page-table pages (marked, nothing wrote
  them) are exactly the distinct page-table pages the round's walks read.  The expected set
  comes from a log of completed descriptor reads kept by this test (a wrapper around the
  walker's read callback), not from the dirty bitmap or any counter of the code under test.
* x86-ept: walks never mark a page-table page dirty (every marked one was written).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from model.arch import HOST_PAGE
from model.reference import Vm, run_reference
from model.scenario_io import load_scenario
from tests.strategies import scenarios

SCN = Path(__file__).resolve().parents[1] / "workloads" / "scenarios"
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def load(name, isa=None):
    scn = load_scenario(SCN / name)
    return scn if isa is None else replace(scn, machine=replace(scn.machine, isa=isa))


def test_ept_ad_walk_dirties_every_walked_table_page():
    # header of x86_ept_ad_walk_dirties_pt.toml: 4 walk faults + 1 data fault before logging,
    # then a logged walk marks pages 0..3 without an exit; nothing wrote them
    res = run_reference(load("x86_ept_ad_walk_dirties_pt.toml"))
    for pol, r in res.items():
        assert r.s2_faults == {"s1ptw_translation": 4, "s1ptw_permission": 0,
                               "data_translation": 1, "data_permission": 0}, pol
        assert [(h.slot, h.dirty_pages, h.written_pages) for h in r.harvests] == [
            ("pt", [0, 1, 2, 3], []), ("ram", [], [])], pol
        assert r.dirty_metrics()["dirty_false_positive_pt"] == 4
        assert r.pml_full_exits == 0


def test_same_steps_without_ept_ad_mark_nothing():
    for isa in ("x86-ept", "arm64"):
        r = run_reference(load("x86_ept_ad_walk_dirties_pt.toml", isa), ["fix"])["fix"]
        assert [h.dirty_pages for h in r.harvests] == [[], []], isa


def test_ept_walk_is_read_then_ad_update_faults_again():
    # header of x86_ept_walk_is_read.toml: 4 read faults (read-only), the accessed-flag
    # update of the PTE in page 3 faults again (double fault), data read fault: 6 exits
    res = run_reference(load("x86_ept_walk_is_read.toml"))
    for pol, r in res.items():
        assert r.s2_faults == {"s1ptw_translation": 4, "s1ptw_permission": 1,
                               "data_translation": 1, "data_permission": 0}, pol
        assert r.double_faults == 1
        assert [(h.slot, h.dirty_pages, h.written_pages) for h in r.harvests] == [
            ("pt", [3], [3])]


def test_ept_ad_on_the_same_steps_saves_one_exit_and_dirties_three():
    r = run_reference(load("x86_ept_walk_is_read.toml", "x86-ept-ad"), ["fix"])["fix"]
    assert sum(r.s2_faults.values()) == 5 and r.double_faults == 0
    assert [(h.dirty_pages, h.written_pages) for h in r.harvests] == [([0, 1, 2, 3], [3])]


def test_pml_full_exit_every_513th_logged_page():
    # 600 data pages stored once each in one logging round on one vCPU with nothing else
    # exiting in between (the pages are mapped writable before logging starts): entries
    # 1..512 fill the buffer, the 513th takes one PML-full exit (SDM: log-full event when
    # the PML index leaves 0..511), 513..600 fit in the emptied buffer -> 1 exit.
    from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step
    n = 600
    va0 = 0x4000_0000
    maps = (Mapping(va=va0, ipa=0x8000_0000, pages=n),)
    stores = tuple(Step("access", va=va0 + i * 4096, kind="write64") for i in range(n))
    steps = stores + (Step("enable_dirty_log", slot="ram"),) + stores + (
        Step("harvest", slot="ram"),)
    scn = Scenario("pml", Machine(isa="x86-ept-ad"), Guest(pt_slot="pt"),
                   (Memslot("pt", 0x1000_0000, 16), Memslot("ram", 0x8000_0000, n)),
                   mappings=maps, steps=steps)
    r = run_reference(scn, ["fix"])["fix"]
    assert r.pml_full_exits == 1
    assert len(r.harvests[0].dirty_pages) >= n


class WalkLogVm(Vm):
    """The reference VM with a log of the pages whose descriptors walks read, per slot,
    since that slot's dirty round began."""

    def __init__(self, scn, policy):
        super().__init__(scn, policy)
        self.walked = {s.name: set() for s in scn.memslots}

    def s1_walk(self, va, read_desc):
        def logged(addr):
            d = read_desc(addr)
            if d is not None:
                page = addr & ~(HOST_PAGE - 1)
                s = self.scn.slot_of(page)
                if s is not None:
                    self.walked[s.name].add((page - s.ipa) // HOST_PAGE)
            return d
        return super().s1_walk(va, logged)


def rounds(scn):
    """Run `scn` on WalkLogVm: (marked, written, walked, pt pages) of every dirty round that
    did not start with KVM_DIRTY_LOG_INITIALLY_SET (where every bit starts set)."""
    vm = WalkLogVm(scn, "fix")
    init_set = {s.name: False for s in scn.memslots}
    out = []
    for i, st in enumerate(scn.steps):
        if st.op == "enable_dirty_log":
            vm.walked[st.slot] = set()
            init_set[st.slot] = st.initially_set
        n = len(vm.r.harvests)
        vm.run_step(i, st)
        if st.op == "harvest":
            h = vm.r.harvests[n]
            if not init_set[st.slot]:
                out.append((st.slot, set(h.dirty_pages), set(h.written_pages),
                            vm.walked[st.slot]))
            init_set[st.slot] = False
            vm.walked[st.slot] = set()
    r = vm.finish()
    for s in sorted(r.logging_slots):
        if not init_set[s]:
            out.append((s, set(r.dirty_pages[s]), set(r.written_pages[s]), vm.walked[s]))
    pt = r.pt_pages
    return [(s, m, w, k, pt.get(s, set())) for s, m, w, k in out]


@PROPS
@given(scenarios(isas=("x86-ept-ad",)))
def test_ept_ad_false_dirty_pt_pages_are_the_walked_ones(scn):
    for slot, marked, written, walked, pt in rounds(scn):
        assert (marked & pt) - written == (walked & pt) - written, slot


@PROPS
@given(scenarios(isas=("x86-ept",)))
def test_ept_walks_never_mark_page_table_pages(scn):
    for slot, marked, written, _walked, pt in rounds(scn):
        assert not (marked & pt) - written, slot


def test_isa_key_is_optional_and_defaults_to_arm64():
    from model.scenario_io import parse_scenario
    scn = load("x86_ept_walk_is_read.toml")
    assert scn.machine.isa == "x86-ept"
    data = {"version": 1, "name": "n", "machine": {"granule": "4k", "va_bits": 48},
            "guest": {"pt_slot": "pt"}, "memslots": [{"name": "pt", "ipa": 0x4000_0000,
                                                       "pages": 8}],
            "mappings": [{"va": 0, "ipa": 0x4000_4000}], "steps": []}
    assert parse_scenario(data, "<t>").machine.isa == "arm64"


def test_x86_report_columns_by_hand():
    # one logging case: arm64 fix (2 second faults, no false dirty) and x86-ept-ad (6 clean
    # page-table pages over 3 rounds, 1 false data page, 40 faults + 2 MMIO + 1 PML-full)
    import pandas as pd
    from bench.x86_report import verdict_line, x86_table
    base = {"workload": "w", "host": "precopy", "seed": 1, "dirty_rounds": 3,
            "mmio_exits": 0, "pml_full_exits": 0, "double_faults": 0,
            "dirty_false_positive": 0, "dirty_false_positive_pt": 0, "s2_faults": 50}
    rows = [dict(base, variant="default", policy="fix", double_faults=2),
            dict(base, variant="default", policy="ha-promote", s2_faults=48,
                 dirty_false_positive=2, dirty_false_positive_pt=2),
            dict(base, variant="x86-ept-ad", policy="fix", s2_faults=40, mmio_exits=2,
                 pml_full_exits=1, dirty_false_positive=7, dirty_false_positive_pt=6),
            dict(base, variant="x86-ept", policy="fix", double_faults=2)]
    t = x86_table(pd.DataFrame(rows)).set_index("machine")
    assert list(t.index) == ["arm64 fix", "arm64 ha-promote", "x86-ept-ad", "x86-ept"]
    ad = t.loc["x86-ept-ad"]
    assert (ad["false_dirty_pt"], ad["false_dirty_pt_per_round"]) == (6, 2.0)
    assert ad["resent_bytes"] == 7 * 4096
    assert (ad["exits"], ad["pml_full_exits"]) == (43, 1)
    assert t.loc["arm64 fix", "exits"] == 50
    line = verdict_line(pd.DataFrame(rows))
    assert len(line) <= 72 and "2 2nd faults" in line and "+6 clean PT pages" in line
