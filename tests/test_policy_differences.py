"""Where the policies differ, with expectations derived by hand from docs/semantics.md / docs/scenario-format.md.

Layout used throughout (docs/scenario-format.md "Stage-1 table layout", 4K granule, 48-bit VA): with one
mapping the tables are root = pt page 0, L1 = page 1, L2 = page 2, L3 (the leaf table) =
page 3.  A walk reads one descriptor in each of those four pages, top-down.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance import TEST_GVA, load_rows, parse_row, row_to_scenario
from model.reference import run_reference
from model.scenario import (ACCESS_KINDS, HW_UPDATE, Guest, Machine, Mapping, Memslot,
                            Scenario, Step, Vmm)

POLICIES = ("fix", "legacy", "ha-promote", "oracle")
RAW = {r["name"]: r for r in load_rows()}
TABLE_PAGES = [0, 1, 2, 3]


def row_scn(name: str) -> Scenario:
    return row_to_scenario(parse_row(RAW[name]))


# ---------------------------------------------------------------------------------------------
# 1. legacy dirties the walked page-table pages in the no_af dirty-log cases

NO_AF_DIRTY = [n for n in RAW if "DIRTY_LOG" in n and n.endswith("/no_af")
               and not n.startswith("TEST_RO")]


def test_no_af_dirty_rows_are_the_three_expected():
    assert sorted(NO_AF_DIRTY) == sorted([
        "TEST_DIRTY_LOG/guest_read64/no_af",
        "TEST_DIRTY_LOG/guest_at/no_af",
        "TEST_UFFD_AND_DIRTY_LOG/guest_read64/no_af",
    ])


@pytest.mark.parametrize("name", NO_AF_DIRTY)
def test_legacy_dirties_walked_tables_in_no_af_dirty_log_cases(name):
    # HA is clear and the leaf has AF set: the walk only reads.  Stage 2 maps nothing at the
    # start (or the pt hole unmapped it), so the walk takes an S1PTW translation fault on each
    # of the four table pages in turn.  docs/semantics.md §3.1: legacy calls every S1PTW fault a write;
    # §3.2 step 4-5: under logging a write fault maps read-write and marks the page dirty.
    # So legacy marks pages 0,1,2,3; nothing writes them (no HA update, no guest store), so all
    # four would be false positives at a harvest; the scenario ends with the round open, so
    # they are pending (docs/time-and-hosts.md: rounds), not yet false.  fix calls them reads:
    # mapped read-only, nothing marked.
    res = run_reference(row_scn(name), ("fix", "legacy"))
    fix, legacy = res["fix"], res["legacy"]
    assert fix.dirty_pages["pt"] == []
    assert 3 not in fix.dirty_pages["pt"]             # pte_pg not dirty
    assert legacy.dirty_pages["pt"] == TABLE_PAGES
    assert legacy.written_pages["pt"] == []
    assert legacy.dirty_metrics()["dirty_pending_unwritten"] == 4
    assert legacy.dirty_metrics()["dirty_false_positive_pt"] == 0     # no harvest yet
    assert fix.dirty_metrics()["dirty_pending_marked"] == 0
    # Both walk through the same four translation faults; only the classification differs.
    assert fix.s2_faults["s1ptw_translation"] == legacy.s2_faults["s1ptw_translation"] == 4


def test_legacy_uffd_event_on_pt_is_a_false_write_in_uffd_no_af_case():
    # TEST_UFFD_AND_DIRTY_LOG/guest_read64/no_af: the root page (0) is the first one the walk
    # misses after the pt hole; one MISSING event, resolved for the whole slot.  legacy flags it
    # WRITE although the walker only reads (docs/semantics.md §1); fix flags it read.  The data event
    # is a read for both (LDR, WnR = 0).
    res = run_reference(row_scn("TEST_UFFD_AND_DIRTY_LOG/guest_read64/no_af"), ("fix", "legacy"))
    for pol, write in (("fix", False), ("legacy", True)):
        pt = [e for e in res[pol].uffd_events if e.slot == "pt"]
        assert [(e.page, e.write) for e in pt] == [(0, write)]
        data = [e for e in res[pol].uffd_events if e.slot == "data"]
        assert [(e.page, e.write) for e in data] == [(0, False)]
    assert res["legacy"].uffd_counts()["uffd_false_write"] == 1
    assert res["fix"].uffd_counts()["uffd_false_write"] == 0


# ---------------------------------------------------------------------------------------------
# 2. legacy injects guest aborts when the page tables sit in a read-only slot

RO_ROWS = [n for n in RAW if n.startswith("TEST_RO_MEMSLOT")]


@pytest.mark.parametrize("name", RO_ROWS)
def test_legacy_injects_abort_on_ro_page_tables(name):
    # The first descriptor fetch (root page 0, read-only slot) takes an S1PTW translation fault.
    # legacy: write -> "write and the slot is read-only" (§3.2 step 2) -> an instruction abort
    # injects a prefetch abort, an S1PTW a data abort: one guest abort, the access is abandoned
    # before user_mem_abort, so no page is ever mapped and no uffd event is raised.  Every
    # access of the row therefore ends in exactly one abort: 1 access, or 2 for guest_write64
    # (store + read-back).  fix: read -> mapped read-only, no abort at all.
    scn = row_scn(name)
    n_access = sum(1 for s in scn.steps if s.op == "access")
    res = run_reference(scn, ("fix", "legacy"))
    assert res["fix"].guest_aborts == 0
    assert res["legacy"].guest_aborts == n_access
    assert res["legacy"].uffd_events == []
    assert res["legacy"].mmio_exits == 0
    assert res["legacy"].vcpu_run_failures == 0
    assert res["legacy"].s2_faults["data_translation"] == 0


# ---------------------------------------------------------------------------------------------
# 3. ha-promote: HA = 1, AF already set, the table page unmapped -> false WRITE + false dirty

def _ha_af_set_hole(resolve: str) -> Scenario:
    return Scenario(
        name="ha-promote false write",
        machine=Machine(granule=4096, va_bits=48, hafdbs=2),
        guest=Guest(tcr_ha=True, pt_slot="pt"),
        memslots=(Memslot("pt", 0x4000_0000, 8, log_dirty=True, uffd="missing",
                          uffd_resolve=resolve),
                  Memslot("data", 0x8000_0000, 4)),
        mappings=(Mapping(va=TEST_GVA, ipa=0x8000_0000, af=True, writable=True, dirty=True),),
        steps=(Step(op="punch_hole", slot="pt"),
               Step(op="access", va=TEST_GVA, kind="read64")),
    )


def test_ha_promote_false_write_and_dirty_when_af_already_set():
    # uffd_resolve = "slot": the first miss (root page 0) raises one MISSING event and the
    # handler restores the whole slot (with AF set on the leaf).  Pages 1..3 are then present
    # but stage-2-unmapped: three more S1PTW translation faults without uffd events.
    # ha-promote (HA = 1, not protected): all four are writes -> the event is WRITE, and under
    # logging all four pages are mapped RW and marked dirty.  Nothing writes them: AF is already
    # set and hw_update = on-change, so no descriptor changes (R_LFTXR).  4 false-positive
    # dirty pages, 1 false WRITE event.  fix/oracle: read, nothing dirty, event is a read.
    res = run_reference(_ha_af_set_hole("slot"))
    hp, fix, orc = res["ha-promote"], res["fix"], res["oracle"]
    assert [(e.slot, e.page, e.write) for e in hp.uffd_events] == [("pt", 0, True)]
    assert [(e.slot, e.page, e.write) for e in fix.uffd_events] == [("pt", 0, False)]
    assert [(e.slot, e.page, e.write) for e in orc.uffd_events] == [("pt", 0, False)]
    assert hp.uffd_counts()["uffd_false_write"] == 1
    assert hp.dirty_pages["pt"] == TABLE_PAGES and hp.written_pages["pt"] == []
    assert hp.dirty_metrics()["dirty_pending_unwritten"] == 4       # the round is open
    assert fix.dirty_pages["pt"] == [] and orc.dirty_pages["pt"] == []
    assert fix.double_faults == hp.double_faults == 0


def test_ha_promote_false_write_per_page_resolution():
    # uffd_resolve = "page": each of the four table pages misses in turn -> four events, all
    # WRITE under ha-promote and all false; four reads under fix.
    res = run_reference(_ha_af_set_hole("page"), ("fix", "ha-promote"))
    assert [(e.page, e.write) for e in res["ha-promote"].uffd_events] == \
        [(p, True) for p in TABLE_PAGES]
    assert [(e.page, e.write) for e in res["fix"].uffd_events] == \
        [(p, False) for p in TABLE_PAGES]
    assert res["ha-promote"].uffd_counts()["uffd_false_write"] == 4


# ---------------------------------------------------------------------------------------------
# 4. fix: double fault (translation then permission) when HA = 1, AF clear, leaf table zapped

def _af_clear_after_zap(hw_update: str = "on-change", af_clear: bool = True) -> Scenario:
    steps = [Step(op="access", va=TEST_GVA, kind="read64")]
    if af_clear:
        steps.append(Step(op="clear_af", va=TEST_GVA))
    steps += [Step(op="harvest", slot="pt"),
              Step(op="zap", slot="pt", first=3, count=1),
              Step(op="access", va=TEST_GVA, kind="read64")]
    return Scenario(
        name="af clear after zap",
        machine=Machine(granule=4096, va_bits=48, hafdbs=2, hw_update=hw_update),
        guest=Guest(tcr_ha=True, pt_slot="pt"),
        memslots=(Memslot("pt", 0x4000_0000, 8, log_dirty=True),
                  Memslot("data", 0x8000_0000, 4)),
        mappings=(Mapping(va=TEST_GVA, ipa=0x8000_0000, af=True, writable=True, dirty=True),),
        steps=tuple(steps),
    )


def test_fix_double_fault_when_af_clear_after_zap_under_logging():
    # step 0 read: AF set, nothing to update.  fix: 4 S1PTW translation faults, all reads,
    #   mapped RO (logging).  ha-promote (HA = 1): 4 writes, mapped RW, marked 0..3.
    # step 1 clear_af: guest store to page 3.  fix: page 3 is RO -> data permission fault,
    #   write -> RW, marked.  ha-promote: already RW, no fault.
    # step 2 harvest: fix returns [3] (written [3]); ha-promote [0,1,2,3] (3 false).  Both
    #   write-protect what they return.
    # step 3 zap page 3 (stage 2 unmapped).
    # step 4 read: pages 0..2 still mapped RO, reads fine.  Page 3: S1PTW translation fault.
    #   fix: read -> mapped RO (logging); restart; the leaf has AF = 0 and HA = 1, so the
    #   walker must write page 3 -> S1PTW permission fault -> write -> RW, marked: the double
    #   fault (docs/semantics.md §1).  ha-promote: write -> RW at once, one fault only.
    #   oracle: the walk will set AF in page 3 -> write: one fault.
    res = run_reference(_af_clear_after_zap())
    fix, hp, orc = res["fix"], res["ha-promote"], res["oracle"]
    assert fix.double_faults == 1
    assert fix.s2_faults["s1ptw_translation"] == 5
    assert fix.s2_faults["s1ptw_permission"] == 1
    assert fix.s2_faults["data_permission"] == 1         # clear_af on the RO page 3
    assert hp.double_faults == 0
    assert hp.s2_faults["s1ptw_translation"] == 5
    assert hp.s2_faults["s1ptw_permission"] == 0
    assert orc.double_faults == 0 and orc.s2_faults["s1ptw_permission"] == 0
    assert [h.dirty_pages for h in fix.harvests] == [[3]]
    assert [h.dirty_pages for h in hp.harvests] == [[0, 1, 2, 3]]
    assert fix.dirty_pages["pt"] == hp.dirty_pages["pt"] == orc.dirty_pages["pt"] == [3]
    assert fix.written_pages["pt"] == [3]


# ---------------------------------------------------------------------------------------------
# 5. hw_update = "always": the leaf is written back on every walk with HA

def test_hw_update_always_gives_fix_a_double_fault_with_af_already_set():
    # Same shape without clear_af: AF stays set throughout.
    # on-change: no walk changes a descriptor, so fix never needs stage-2 write on a table
    #   page: 0 permission faults, 0 double faults, nothing dirty.
    # always: every completed walk with HA writes its leaf back (docs/scenario-format.md).  step 0: page 3
    #   translation fault (read, RO under logging) then the write-back -> permission fault:
    #   double fault #1, page 3 marked and really written.  The harvest write-protects page 3,
    #   the zap unmaps it, and step 4 repeats the pattern: double fault #2.
    on = run_reference(_af_clear_after_zap("on-change", af_clear=False))["fix"]
    al = run_reference(_af_clear_after_zap("always", af_clear=False), ("fix", "ha-promote"))
    assert on.double_faults == 0 and on.s2_faults["s1ptw_permission"] == 0
    assert on.dirty_pages["pt"] == [] and [h.dirty_pages for h in on.harvests] == [[]]
    fix = al["fix"]
    assert fix.double_faults == 2
    assert fix.s2_faults["s1ptw_permission"] == 2
    assert [h.dirty_pages for h in fix.harvests] == [[3]]
    assert [h.written_pages for h in fix.harvests] == [[3]]
    assert fix.dirty_pages["pt"] == [3] and fix.written_pages["pt"] == [3]
    # ha-promote maps page 3 RW on the translation fault: never a double fault.
    assert al["ha-promote"].double_faults == 0


# ---------------------------------------------------------------------------------------------
# 6. Random scenarios: oracle is exact, nobody misses a dirty page

VA_BASES = (0x1000_0000, 0x1000_2000, 0x1020_0000, 0x5000_0000, 0x80_0000_0000)
SLOT_IPAS = {"pt": 0x4000_0000, "data": 0x8000_0000, "data2": 0x8020_0000}


@st.composite
def slot_st(draw, name: str) -> Memslot:
    backing = draw(st.sampled_from(("anon", "anon", "anon_thp", "shmem", "hugetlb")))
    uffd_modes = ["none", "missing", "wp"] + (["minor"] if backing in ("shmem", "hugetlb") else [])
    thp = backing in ("anon_thp", "hugetlb")
    pages = 512 if thp and draw(st.booleans()) else 16
    return Memslot(
        name=name, ipa=SLOT_IPAS[name], pages=pages,
        readonly=draw(st.booleans()) if name != "pt" else draw(st.sampled_from((False,) * 4 + (True,))),
        log_dirty=draw(st.booleans()),
        backing=backing,
        populated=draw(st.sampled_from((True, True, True, False))),
        uffd=draw(st.sampled_from(uffd_modes)),
        uffd_resolve=draw(st.sampled_from(("page", "slot"))),
    )


@st.composite
def scenario_st(draw) -> Scenario:
    va_bits = draw(st.sampled_from((39, 48)))
    machine = Machine(granule=4096, va_bits=va_bits, hafdbs=draw(st.integers(0, 2)),
                      haft=draw(st.booleans()), hw_update=draw(st.sampled_from(HW_UPDATE)),
                      at_sets_af=draw(st.booleans()))
    guest = Guest(tcr_ha=draw(st.booleans()), tcr_hd=draw(st.booleans()),
                  tcr2_haft=draw(st.booleans()), pt_slot="pt",
                  vm_protected=draw(st.sampled_from((False, False, True))))
    slots = [draw(slot_st("pt")), draw(slot_st("data"))]
    if draw(st.booleans()):
        slots.append(draw(slot_st("data2")))
    by_name = {s.name: s for s in slots}
    # Mappings: 1..3 distinct VA bases (2 pages apart at least), each 1..2 pages, into a data
    # slot or into the pt slot beyond the tables (pages 12..15: at most 1 + 3 * 3 tables).
    bases = [b for b in VA_BASES if b + 2 * 4096 <= 1 << va_bits]
    chosen = draw(st.lists(st.sampled_from(bases), min_size=1, max_size=3, unique=True))
    mappings = []
    for va in chosen:
        pages = draw(st.integers(1, 2))
        slot = draw(st.sampled_from([s.name for s in slots]))
        lo = 12 if slot == "pt" else 0
        first = draw(st.integers(lo, 16 - pages))
        writable = draw(st.booleans())
        mappings.append(Mapping(va=va, ipa=by_name[slot].ipa + first * 4096, pages=pages,
                                af=draw(st.booleans()), writable=writable,
                                dirty=draw(st.booleans()), executable=draw(st.booleans())))
    vas = [m.va + i * 4096 for m in mappings for i in range(m.pages)]
    logging = {s.name for s in slots if s.log_dirty}
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        ops = ["access", "access", "access", "clear_af", "set_tcr", "punch_hole", "zap",
               "swap_out", "flush_tlb"]
        if any(s.uffd == "wp" for s in slots):
            ops.append("uffd_wp")
        if any(s.name not in logging for s in slots):
            ops.append("enable_dirty_log")
        if logging:
            ops.append("harvest")
        op = draw(st.sampled_from(ops))
        if op == "access":
            steps.append(Step(op=op, vcpu=draw(st.integers(0, 1)),
                              va=draw(st.sampled_from(vas)) + draw(st.sampled_from((0, 8))),
                              kind=draw(st.sampled_from(ACCESS_KINDS))))
        elif op == "clear_af":
            steps.append(Step(op=op, vcpu=draw(st.integers(0, 1)), va=draw(st.sampled_from(vas))))
        elif op == "set_tcr":
            steps.append(Step(op=op, ha=draw(st.sampled_from((None, True, False))),
                              hd=draw(st.sampled_from((None, True, False))),
                              haft=draw(st.sampled_from((None, True, False)))))
        elif op == "punch_hole":
            steps.append(Step(op=op, slot=draw(st.sampled_from(sorted(by_name)))))
        elif op in ("zap", "swap_out", "uffd_wp"):
            cands = sorted(n for n, s in by_name.items() if op != "uffd_wp" or s.uffd == "wp")
            s = by_name[draw(st.sampled_from(cands))]
            first = draw(st.integers(0, s.pages - 1))
            count = draw(st.integers(1, min(4, s.pages - first)))
            steps.append(Step(op=op, slot=s.name, first=first, count=count))
        elif op == "enable_dirty_log":
            name = draw(st.sampled_from(sorted(n for n in by_name if n not in logging)))
            logging.add(name)
            steps.append(Step(op=op, slot=name, initially_set=False,
                              eager_split=draw(st.booleans())))
        elif op == "harvest":
            steps.append(Step(op=op, slot=draw(st.sampled_from(sorted(logging)))))
        else:
            steps.append(Step(op=op))
    return Scenario(name="random", machine=machine, guest=guest, memslots=tuple(slots),
                    vmm=Vmm(mmio_store=draw(st.sampled_from(("ignore", "write_backing")))),
                    mappings=tuple(mappings), steps=tuple(steps))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_st())
def test_oracle_exact_and_no_policy_misses_a_dirty_page(scn):
    # docs/semantics.md §3.1: oracle calls an S1PTW translation fault a write iff this walk writes that
    # page, and every other fault as the hardware reports it; a write fault is the only thing
    # that marks a page (§3.2 step 5, writable = write under logging), and data/permission
    # write faults are followed by the write.  So oracle never marks a page nobody wrote and
    # never flags a uffd event WRITE without a write.  §5: dirty_false_negative must be 0 for
    # every policy (a non-zero value is a model bug).
    res = run_reference(scn, POLICIES)
    orc = res["oracle"]
    assert orc.dirty_metrics()["dirty_false_positive"] == 0
    assert orc.uffd_counts()["uffd_false_write"] == 0
    for pol in POLICIES:
        assert res[pol].dirty_metrics()["dirty_false_negative"] == 0, pol
