"""Stages of the engine's pipeline (model/engine_chunk.py) against the reference functions
they vectorise: the fault-resolution stages against model.host.Host.handle_abort on one page
of a 4K anonymous slot, on every input combination; tier 1's stage-1 fault flag against
model.reference.Vm.s1_check; over a chunk, access by access (tests/stage_harness.py), the
TLB history (_tlb_history) against Vm._attempt's TLB rule, the hardware-update needs
(_hw_needs) against Vm.s1_updates, the unmet stage-2 needs (_unmet_needs) against the checks
of Vm.s2_fault, and the state the apply stages (_apply_shared, _apply_faults) leave against
the reference's — on hypothesis chunks and on every bit combination of one walk, plus
hand-derived rows.  (The walk stage: tests/test_engine_walk.py.)"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE, DESC_VALID
from model.engine_chunk import (F_DBM, F_FOUND, F_PXN, T_PATH, T_UPD, PageAttrs, _code_lut,
                                _pack, _permission_fault, _translation_fault)
from model.engine_state import CLS_A, CLS_L, CLS_S, CLS_X, UFFD_CODES
from model.host import S2_RO, S2_RW, S2_UNMAPPED, Abort, Host, Outcome
from model.host_ops import HOST_MISSING, HOST_STATE_NAMES
from model.policies import DEFAULT_ORDER, fix
from model.reference import Stage1Fault, Vm, Walk
from model.results import PolicyResult
from model.scenario import Guest, Machine, Memslot, Scenario
from tests.stage_harness import HW_DATA, chunk_cases, hw_case, ref_needs, ref_updates, run_case

PAGE = 0x8000_0000 + 5 * 4096
STATES = range(len(HOST_STATE_NAMES))


def reference(uffd: str, h: int, st: int, write: bool, logging: bool, permission: bool):
    """Host.handle_abort of a data abort on PAGE: (outcome, host state, stage-2 state,
    dirty, uffd events as (mode, write))."""
    slot = Memslot("data", 0x8000_0000, 16, uffd=uffd)
    scn = Scenario("stage", Machine(), Guest(True, True, False, "pt"),
                   (Memslot("pt", 0x4000_0000, 8), slot))
    host = Host(scn, {}, fix, PolicyResult("fix"))
    host.host[PAGE] = h
    if st != S2_UNMAPPED:
        host.s2[PAGE] = st
    host.logging["data"] = logging
    out = host.handle_abort(Abort(ipa=PAGE, s1ptw=False, permission=permission,
                                  instruction=False, wnr=write, isv=True, store=write),
                            walk_writes_page=False, ha=True)
    return (out, host.host[PAGE], host.s2.get(PAGE, S2_UNMAPPED), 5 in host.dirty["data"],
            [(e.mode, e.write) for e in host.r.uffd_events])


def attrs(uffd: str) -> PageAttrs:
    f = np.zeros(1, dtype=bool)
    return PageAttrs(hard0=f, bb=f, ro=f, rslot=f, ispt=f,
                     uf=np.array([UFFD_CODES[uffd]], dtype=np.uint8),
                     slot_no=np.zeros(1, dtype=np.int16))


def events(uffd, ev_missing, ev_wp, write):
    if ev_missing:
        return [(uffd, write)]
    return [("wp", True)] if ev_wp else []


@pytest.mark.parametrize("uffd", list(UFFD_CODES))
def test_translation_fault_stage_is_handle_abort(uffd):
    for h, write, logging in itertools.product(STATES, (False, True), (False, True)):
        F1, ev1m, ev1w, h1, writable1, st1 = _translation_fault(
            attrs(uffd), np.array([S2_UNMAPPED], np.int8), np.array([h], np.int8),
            np.array([write]), np.array([logging]))
        out, want_h, want_st, want_dirty, want_ev = reference(uffd, h, S2_UNMAPPED, write,
                                                             logging, permission=False)
        ctx = (uffd, HOST_STATE_NAMES[h], write, logging)
        assert out is Outcome.RESTART and bool(F1[0]), ctx
        assert (int(h1[0]), int(st1[0])) == (want_h, want_st), ctx
        assert bool(writable1[0] & logging) == want_dirty, ctx      # mark_page_dirty
        assert events(uffd, ev1m[0], ev1w[0], write) == want_ev, ctx


@pytest.mark.parametrize("uffd", list(UFFD_CODES))
def test_permission_fault_stage_is_handle_abort(uffd):
    for h, logging in itertools.product(STATES, (False, True)):
        if h == HOST_MISSING:
            continue                       # left to the reference code (_resolve's cut)
        F2, ev2w, h2 = _permission_fault(np.array([S2_RO], np.int8), np.array([h], np.int8),
                                         np.array([True]))
        out, want_h, want_st, want_dirty, want_ev = reference(uffd, h, S2_RO, True, logging,
                                                             permission=True)
        ctx = (uffd, HOST_STATE_NAMES[h], logging)
        assert out is Outcome.RESTART and bool(F2[0]), ctx
        assert (int(h2[0]), S2_RW) == (want_h, want_st), ctx
        assert logging == want_dirty, ctx                            # a write fault: dirty
        assert events(uffd, False, ev2w[0], True) == want_ev, ctx


CLASS_KIND = {CLS_L: "read64", CLS_S: "write64", CLS_X: "exec", CLS_A: "at"}


@pytest.mark.parametrize("tcr", [(False, False), (True, False), (True, True)],
                         ids=["no-ha", "ha", "ha-hd"])
def test_tier1_stage1_fault_flag_is_s1_check(tcr):
    """Tier 1's packed table (_code_lut, through _pack) flags a stage-1 fault exactly when
    Vm.s1_check raises on the leaf (or the walk finds none), for every leaf bit combination
    and access class."""
    scn = Scenario("stage", Machine(), Guest(*tcr, False, "pt"),
                   (Memslot("pt", 0x4000_0000, 8),))
    vm = Vm(scn, "fix")
    _, s1lut = _code_lut(vm.ha, vm.hd)
    for found, dbm, pxn, af, ap2, cls in itertools.product(*[(False, True)] * 5, CLASS_KIND):
        sfx = np.array([found * F_FOUND | dbm * F_DBM | pxn * F_PXN], np.uint8)
        lb = np.array([af * 1 | ap2 * 2], np.uint8)
        x = _pack(sfx, lb, np.zeros(1, np.int8), np.zeros(1, np.int8), np.array([cls]), None)
        leaf = (DESC_VALID | DESC_TABLE | (DESC_DBM if dbm else 0) | (DESC_PXN if pxn else 0)
                | (DESC_AF if af else 0) | (DESC_AP2 if ap2 else 0))
        try:
            vm.s1_check(Walk([], leaf, 3, 0), CLASS_KIND[cls])
            want = not found
        except Stage1Fault:
            want = True
        assert bool(s1lut[x[0]]) == want, (tcr, found, dbm, pxn, af, ap2, CLASS_KIND[cls])


# ---- tier 2 over a chunk against the reference, access by access (tests/stage_harness.py) ------
# Each case: a prefix (a warm VM, or tests/strategies.scenarios' steps: events, accesses, TLB
# flushes / TLBIs, dirty logging, uffd, host ops), random bit changes of leaves (AF, DBM,
# AP[2], PXN, valid) and table descriptors (AF: FEAT_HAFT) just before the chunk, then the
# chunk.  "tier1": tier 2
# gets tier 1's selection (as the engine runs); "all": every access of the chunk, so the
# TLB-history stage sees repeated accesses of a key.  Only accesses before the cut (the
# first one the vectorised path leaves to the reference code) are compared.
STAGE_SETTINGS = settings(max_examples=100, deadline=None,
                          suppress_health_check=list(HealthCheck))
MODES = ("tier1", "all")


def _pt_ipa(run, off) -> int:
    return run.g.base.pt_base + 8 * int(off)


def _canon(scn, ipa: int):
    """A page IPA, or "out" outside every memslot (the engine's sentinel page index)."""
    return ipa if scn.slot_of(ipa) is not None else "out"


def _tier2_accesses(i0, run):
    """(q, chunk position, policy, reference record) of every tier-2 access before the cut."""
    rec = run.rec
    for q in range(rec.cut):
        pos = i0 + int(rec.I[q])
        for p, vm in run.refs.items():
            yield q, pos, p, vm.recs[pos]


def engine_tlb_view(rec, q: int) -> tuple[bool, int, bool, bool]:
    """Access q as _tlb_history sees it: (walks, TLB entry state before it: 0 none, 1 clean,
    2 dirty, takes a stage-1 fault, reaches its data access).  The entry is dirty from D on
    (D < q: before q; -1: at chunk start), valid from the key's first fill ff on."""
    tlb, a = rec.tlb, rec.a
    D, ff, s0 = int(tlb.D[q]), int(tlb.ff[q]), int(a.s0[q])
    state = 2 if D < q else 1 if (s0 > 0 or ff < q) else 0
    s1 = False if tlb.s1fault is None else bool(tlb.s1fault[q])
    data = True if tlb.data is None else bool(tlb.data[q])
    return bool(tlb.walk[q]), state, s1, data


@STAGE_SETTINGS
@given(chunk_cases(), st.sampled_from(MODES))
def test_tlb_history_stage_is_reference_tlb(case, mode):
    """_tlb_history against Vm._attempt's TLB rule, access by access: the first attempt walks
    iff the vCPU's TLB holds no entry for the granule page — for a store, no dirty one: an
    entry caches the leaf with its AP[2], and a store through a clean (AP[2] = 1) entry walks
    again, so the dirty-state update is made on the descriptor in memory (AArch64.S1Translate's
    hardware update step); AT always walks (model: AT never hits).  The entry state seen
    (none / clean / dirty), the stage-1 fault (Vm.s1_check, or PXN through a cached entry) and
    whether the data access is reached (Vm._data_access) agree too.  With tier 1's selection,
    the accesses it skips do nothing but count in the reference (one attempt, no walk, no
    fault)."""
    scn, muts = case
    i0, runs = run_case(scn, muts, DEFAULT_ORDER, mode)
    for run in runs:
        rec = run.rec
        for q, pos, p, r in _tier2_accesses(i0, run):
            att0 = r.attempts[0]
            want = (att0.walked, att0.state, r.stage1_faults > 0, r.attempts[-1].data)
            assert engine_tlb_view(rec, q) == want, (pos, p, r)
        if mode == "tier1":
            chosen = set() if rec.I is None else {i0 + int(x) for x in rec.I}
            for p, vm in run.refs.items():
                for pos, r in vm.recs.items():
                    if pos in chosen:
                        continue
                    checks = [c for att in r.attempts for c in att.checks]
                    did = (len(r.attempts), r.attempts[0].walked, r.stage1_faults)
                    assert did == (1, False, 0), (pos, p, r)
                    assert all(c[4] is None for c in checks), (pos, p, r)


def engine_updates(run, q: int) -> tuple[set, bool, bool]:
    """Access q's hardware updates as _hw_needs says: (descriptor IPAs it writes — its leaf,
    FEAT_HAFT table descriptors —, sets its leaf's AF, clears its leaf's AP[2])."""
    a, hw = run.rec.a, run.rec.hw
    wc = run.g.shared.walk
    addrs = set()
    if hw.need_leaf[q]:
        addrs.add(_pt_ipa(run, wc.leaf_off_u[a.lid[q]]))
    for h in hw.haft:
        if h.need[q]:
            addrs.add(_pt_ipa(run, wc.tab_off_u[h.tab[q]]))
    return (addrs, hw.need_af is not None and bool(hw.need_af[q]),
            hw.need_dbm is not None and bool(hw.need_dbm[q]))


@STAGE_SETTINGS
@given(chunk_cases(), st.sampled_from(MODES))
def test_hw_needs_stage_is_reference_s1_updates(case, mode):
    """_hw_needs against Vm.s1_updates, access by access: the descriptors each access's walks
    write (over its attempts: an update whose stage-2 write faults is made again after the
    restart).  Rules (model.semantics, AArch64.S1Translate's hardware update step): with HA,
    a walk sets the leaf's AF when clear (written back only `if new_desc != descriptor`,
    R_LFTXR); with
    HA+HD a store through a DBM leaf with AP[2] = 1 clears AP[2] (R_PQJJR); with FEAT_HAFT
    every table descriptor used with AF = 0 gets AF (R_CGKWB); hw_update = "always" writes
    the leaf on every completed walk; AT updates only when the CPU's AT sets AF (R_XQSMX)."""
    scn, muts = case
    i0, runs = run_case(scn, muts, DEFAULT_ORDER, mode)
    for run in runs:
        for q, pos, p, r in _tier2_accesses(i0, run):
            assert engine_updates(run, q) == ref_updates(r), (pos, p, r)


def _needs_by_access(run) -> dict:
    """_unmet_needs' rows by access: {q: {(type, order, page IPA or "out", write)}}."""
    out: dict = {}
    base = run.g.base
    total = base.idx.total
    for n in run.rec.needs or []:
        for q, o, pg, w, t in zip(n.q.tolist(), n.order.tolist(), n.page.tolist(),
                                  n.write.tolist(), n.type.tolist()):
            page = base.idx.ipa_of(pg) if pg < total else "out"
            out.setdefault(q, set()).add((t, o, page, bool(w)))
    return out


@STAGE_SETTINGS
@given(chunk_cases(), st.sampled_from(MODES))
def test_unmet_needs_stage_is_reference_s2_checks(case, mode):
    """_unmet_needs against the stage-2 checks Vm._attempt makes (Vm.s2_fault: each
    descriptor read of a walk, AArch64.S2Translate of the S1PTW access; each hardware update,
    a stage-2 write, AArch64.MemSwapTableDesc — a read-only stage 2 faults it: the S1PTW
    permission fault of dirty logging; the data access, a write for a store) over all of an
    access's attempts, kept when some policy of the group did not allow it at chunk start;
    NEED_ORDER is the order the reference makes them in (levels top-down, table updates
    top-down, the leaf update, the data access)."""
    scn, muts = case
    i0, runs = run_case(scn, muts, DEFAULT_ORDER, mode)
    for run in runs:
        rows = _needs_by_access(run)
        for q, pos, p, r in _tier2_accesses(i0, run):
            want = {(t, o, _canon(scn, pg), w) for t, o, pg, w in ref_needs(run, r)}
            assert rows.get(q, set()) == want, (pos, p, r)


def _shared_state(run, vm) -> tuple:
    """After the chunk: guest page-table memory (non-zero descriptors by IPA) and every TLB
    entry (vCPU, granule VA page) -> TlbEntry, on the engine's shared state."""
    sh = run.g.shared
    sh.sync_tlb()
    base = run.g.base
    mem = {base.pt_base + 8 * int(o): int(v) for o, v in zip(*sh.pt.nonzero())}
    tlb = {}
    for v in range(base.prep.n_vcpu):
        view = vm.vcpu_tlb(v)
        for gp in base.prep.gpages.tolist():
            e = view.get(gp)
            if e is not None:
                tlb[(v, gp)] = e
    return mem, tlb


def _ref_shared_state(ref) -> tuple:
    mem = {a: v for page in ref.host.content.values() for a, v in page.items() if v}
    tlb = {}
    for v in range(3):
        for gp, e in ref.vcpu_tlb(v).items():
            tlb[(v, gp)] = e
    return mem, tlb


def _host_state(scn, host) -> dict:
    """A policy's host side per slot: stage 2, stage-2 blocks, host pages, dirty bitmap,
    written pages, logging."""
    out = {}
    for s in scn.memslots:
        pages = range(s.ipa, s.end, 4096)
        out[s.name] = ([host.s2.get(p, S2_UNMAPPED) for p in pages],
                       [host.s2_block.get(p) for p in pages],
                       [host.host.get(p) for p in pages],
                       sorted(host.dirty[s.name]), sorted(host.written[s.name]),
                       host.logging[s.name])
    return out


def _counts(r) -> tuple:
    return (r.accesses, r.walks, r.descriptor_reads, r.stage1_faults, dict(r.s2_faults),
            r.double_faults, r.guest_aborts, r.mmio_exits, r.vcpu_run_failures, r.efaults,
            [(e.step, e.slot, e.page, e.mode, e.write, e.written) for e in r.uffd_events])


@STAGE_SETTINGS
@given(chunk_cases(), st.sampled_from(MODES))
def test_apply_stages_leave_the_reference_state(case, mode):
    """_apply_shared and _apply_faults (with tier 1's _count_settled): after the chunk's
    vectorised part, the state equals the reference's after the same accesses — page-table
    memory (the hardware updates' AF / AP[2] writes, AArch64.MemSwapTableDesc), every TLB
    entry (state and cached leaf), and per policy stage 2, host pages, dirty bitmap
    (mark_page_dirty_in_slot), written pages, fault / walk / read counts and userfaultfd
    events (Host.handle_abort)."""
    scn, muts = case
    i0, runs = run_case(scn, muts, DEFAULT_ORDER, mode)
    for run in runs:
        assert_applied_state(scn, run)


def assert_applied_state(scn, run, ctx=()) -> None:
    for vm in run.g.vms:
        ref = run.refs[vm.r.policy]
        ctx = (*ctx, vm.r.policy, run.end)
        assert _shared_state(run, vm) == _ref_shared_state(ref), ctx
        assert _host_state(scn, vm.host) == _host_state(scn, ref.host), ctx
        assert _counts(vm.r) == _counts(ref.r), ctx


# ---- _hw_needs / _unmet_needs on every bit combination of one walk (table-driven) ------------
# (HA, HD, FEAT_HAFT) as effective controls: none, AF only, AF + dirty state, each with HAFT
TCRS = {"none": (False, False, False), "ha": (True, False, False), "ha-hd": (True, True, False),
        "ha-haft": (True, False, True), "ha-hd-haft": (True, True, True)}
HW_KINDS = (("read64", "write64"), ("write64", "read64"), ("at", "write64"), ("exec", "read64"))


@pytest.mark.parametrize("tcr", list(TCRS))
def test_hw_and_unmet_needs_stages_on_every_bit_combination(tcr):
    """Every leaf (AF, DBM, AP[2]) × table AF (with HAFT) × hw_update on-change / always ×
    AT sets AF or not × page-table pages unmapped (logging or not) / read-only (dirty logging)
    / read-write at stage 2 × two accesses (load then store, store then load, AT then store,
    fetch then load, on two vCPUs): _tlb_history, _hw_needs and _unmet_needs against the
    reference, and the state the apply stages leave (policy fix: under logging a S1PTW
    translation maps read-only, so a later hardware update takes the permission fault — a
    double fault only when it is the same access's)."""
    ha, hd, haft = TCRS[tcr]
    n = 0
    for af, dbm, ap2, tab_af, always, at_af, pt_s2, kinds in itertools.product(
            (False, True), (False, True), (False, True), (True, False) if haft else (True,),
            (False, True), (False, True), ("unmapped", "unmapped-logging", "ro", "rw"),
            HW_KINDS):
        if at_af and "at" not in kinds:
            continue
        scn, muts, _leaf, _tabs = hw_case(af, dbm, ap2, tab_af, ha, hd, haft, always, at_af,
                                          pt_s2, kinds)
        i0, runs = run_case(scn, muts, ("fix",), "all")
        (run,) = runs
        rows = _needs_by_access(run)
        for q, pos, p, r in _tier2_accesses(i0, run):
            ctx = (af, dbm, ap2, tab_af, always, at_af, pt_s2, kinds, q)
            att0 = r.attempts[0]
            assert engine_tlb_view(run.rec, q) == (att0.walked, att0.state, r.stage1_faults > 0,
                                                   r.attempts[-1].data), ctx
            assert engine_updates(run, q) == ref_updates(r), ctx
            want = {(t, o, _canon(scn, pg), w) for t, o, pg, w in ref_needs(run, r)}
            assert rows.get(q, set()) == want, ctx
            n += 1
        assert_applied_state(scn, run, (af, dbm, ap2, tab_af, always, at_af, pt_s2, kinds))
    assert n > 0


# Hand-derived rows (kernel-selftest style): access 0 then access 1 of hw_case, expected
# (descriptors written: "leaf" / "tables", sets AF, clears AP[2]) and unmet needs as
# (type, NEED_ORDER, page: "l1" / "l2" / "leaf" page-table page or "data", write); L = 3:
# reads 0..2, table updates 3..4, leaf update 6, data 7.
_C = dict(af=True, dbm=True, ap2=False, tab_af=True, ha=True, hd=True, haft=False,
          always=False, at_sets_af=False, pt_s2="ro")
HAND_ROWS = [
    # dirty logging of the page-table slot: a store through a clean writable PTE (DBM, AP[2]
    # = 1) clears AP[2] (R_PQJJR) — a stage-2 write to a read-only page: the S1PTW
    # permission fault; the other vCPU's load then finds the leaf dirty: no update (R_LFTXR)
    ("store-clean-dbm-logging", dict(_C, ap2=True), ("write64", "read64"),
     [(({"leaf"}, False, True), {(T_UPD, 6, "leaf", True)}),
      ((set(), False, False), set())]),
    # without HD, DBM is ignored: the store to AP[2] = 1 is a stage-1 permission fault
    # (AArch64.S1CheckPermissions), no update, no stage-2 need
    ("store-clean-no-hd", dict(_C, ap2=True, hd=False), ("write64", "read64"),
     [((set(), False, False), set()), ((set(), False, False), set())]),
    # an old PTE (AF = 0) with HA: the first walk sets AF (AArch64 hardware AF update),
    # a stage-2 write; the second walk finds it young
    ("load-old-ha-logging", dict(_C, af=False), ("read64", "read64"),
     [(({"leaf"}, True, False), {(T_UPD, 6, "leaf", True)}),
      ((set(), False, False), set())]),
    # hw_update = always: every completed walk writes its leaf back, changed or not — each
    # is a stage-2 write of a page that was read-only at chunk start
    ("load-young-always-logging", dict(_C, always=True), ("read64", "read64"),
     [(({"leaf"}, False, False), {(T_UPD, 6, "leaf", True)}),
      (({"leaf"}, False, False), {(T_UPD, 6, "leaf", True)})]),
    ("load-young-on-change-logging", dict(_C), ("read64", "read64"),
     [((set(), False, False), set()), ((set(), False, False), set())]),
    # FEAT_HAFT: table descriptors with AF = 0 get AF (R_CGKWB), top-down; page-table pages
    # unmapped: every descriptor read is a translation-fault need, each update a write need
    ("load-haft-unmapped", dict(_C, haft=True, tab_af=False, pt_s2="unmapped"),
     ("read64", "read64"),
     [(({"l1", "l2"}, False, False),
       {(T_PATH, 0, "l1", False), (T_PATH, 1, "l2", False), (T_PATH, 2, "leaf", False),
        (T_UPD, 3, "l1", True), (T_UPD, 4, "l2", True)}),
      ((set(), False, False),
       {(T_PATH, 0, "l1", False), (T_PATH, 1, "l2", False), (T_PATH, 2, "leaf", False)})]),
    # AT: a walk, hardware updates only when the CPU's AT sets AF (R_XQSMX); the store after
    # it then sets AF itself
    ("at-old-no-at-af", dict(_C, af=False, pt_s2="rw"), ("at", "write64"),
     [((set(), False, False), set()), (({"leaf"}, True, False), set())]),
    ("at-old-at-af", dict(_C, af=False, pt_s2="rw", at_sets_af=True), ("at", "write64"),
     [(({"leaf"}, True, False), set()), ((set(), False, False), set())]),
    # two vCPUs store through a clean DBM leaf: both walk, only the first changes the leaf
    # (the second walk reads it dirty: nothing to write back, R_LFTXR)
    ("store-store-clean-dbm", dict(_C, ap2=True, pt_s2="rw"), ("write64", "write64"),
     [(({"leaf"}, False, True), set()), ((set(), False, False), set())]),
    # no HA: AF = 0 is an Access flag fault, nothing written
    ("load-old-no-ha", dict(_C, af=False, ha=False, hd=False), ("read64", "read64"),
     [((set(), False, False), set()), ((set(), False, False), set())]),
]


@pytest.mark.parametrize("name,cfg,kinds,want", HAND_ROWS, ids=[r[0] for r in HAND_ROWS])
def test_hw_and_unmet_needs_stages_hand_derived(name, cfg, kinds, want):
    scn, muts, leaf, tabs = hw_case(kinds=kinds, **cfg)
    names = {leaf: "leaf", tabs[0]: "l1", tabs[1]: "l2"}
    pages = {a & ~4095: n for a, n in names.items()}
    pages[HW_DATA] = "data"
    i0, (run,) = run_case(scn, muts, ("fix",), "all")
    assert run.rec.cut == len(kinds)
    rows = _needs_by_access(run)
    for q, (w_upd, w_needs) in enumerate(want):
        addrs, set_af, clear_ap2 = engine_updates(run, q)
        assert ({names[a] for a in addrs}, set_af, clear_ap2) == w_upd, q
        assert {(t, o, pages[pg], w) for t, o, pg, w in rows.get(q, ())} == w_needs, q


# Hand-derived TLB histories (kernel-selftest style): one leaf, a sequence of (vCPU, kind);
# per access (walks, TLB entry state before it: 0 none / 1 clean / 2 dirty, stage-1 fault).
# Page-table and data pages read-write at stage 2, HA + HD unless said.
_T = dict(af=True, dbm=True, ap2=False, tab_af=True, ha=True, hd=True, haft=False,
          always=False, at_sets_af=False, pt_s2="rw")
TLB_ROWS = [
    # a young dirty leaf: the first access of each vCPU walks and fills a dirty entry; every
    # later one hits (a store too: the entry caches AP[2] = 0); no AT, no fault: the simple path
    ("young-dirty", _T, ((0, "read64"), (0, "read64"), (0, "write64"), (1, "write64"),
                         (1, "read64")),
     [(True, 0, False), (False, 2, False), (False, 2, False), (True, 0, False),
      (False, 2, False)]),
    # AT walks whatever the TLB holds and fills nothing
    ("at", _T, ((0, "at"), (0, "read64"), (0, "at"), (0, "read64")),
     [(True, 0, False), (True, 0, False), (True, 2, False), (False, 2, False)]),
    # a clean writable leaf (DBM, AP[2] = 1): a load fills a clean entry; a store through it
    # walks, clears AP[2] (HD) and fills a dirty one; another vCPU's first load then finds the
    # leaf dirty and fills a dirty entry
    ("clean-dbm", dict(_T, ap2=True),
     ((0, "read64"), (0, "read64"), (0, "write64"), (0, "read64"), (1, "read64"),
      (1, "write64")),
     [(True, 0, False), (False, 1, False), (True, 1, False), (False, 2, False),
      (True, 0, False), (False, 2, False)]),
    # without HD the store through the clean entry walks and takes the stage-1 permission
    # fault; the entry stays clean
    ("clean-dbm-no-hd", dict(_T, ap2=True, hd=False),
     ((0, "read64"), (0, "write64"), (0, "read64")),
     [(True, 0, False), (True, 1, True), (False, 1, False)]),
    # PXN (the mapping is not executable): a fetch hitting the cached entry faults on it
    ("pxn-hit", _T, ((0, "read64"), (0, "exec"), (0, "read64")),
     [(True, 0, False), (False, 2, True), (False, 2, False)]),
]


@pytest.mark.parametrize("name,cfg,seq,want", TLB_ROWS, ids=[r[0] for r in TLB_ROWS])
def test_tlb_history_stage_hand_derived(name, cfg, seq, want):
    scn, muts, _leaf, _tabs = hw_case(kinds=tuple(k for _v, k in seq),
                                      vcpus=tuple(v for v, _k in seq), **cfg)
    for mode in MODES:
        i0, (run,) = run_case(scn, muts, ("fix",), mode)
        got = {int(run.rec.I[q]): engine_tlb_view(run.rec, q)[:3] for q in range(run.rec.cut)}
        if mode == "all":
            assert run.rec.cut == len(seq)
        for pos, view in got.items():            # tier 1 mode: the accesses it selects
            assert view == want[pos], (mode, pos)
    # the derivation agrees with the reference (Vm._attempt's first try of each access)
    ref = run.refs["fix"]
    assert [(r.attempts[0].walked, r.attempts[0].state, r.stage1_faults > 0)
            for _p, r in sorted(ref.recs.items())] == want


# ---- the apply stages on userfaultfd data slots (table-driven) -------------------------------
@pytest.mark.parametrize("uffd", ["missing", "minor", "wp"])
def test_apply_stages_on_uffd_data_slots(uffd):
    """A missing (uffd MISSING / MINOR) or write-protected (uffd WP) data page, the page
    tables warm: load then store, store then load, on two vCPUs, with and without dirty
    logging; every policy.  The vectorised faults' userfaultfd events (mode, write flag —
    the policy's kvm_is_write_fault() for a translation fault, handle_userfault's
    UFFD_PAGEFAULT_FLAG_WRITE — and whether the access wrote the page), host pages, stage 2
    and dirty bitmap against the reference's Host.handle_abort."""
    for populated, logging, kinds in itertools.product(
            (False, True), (False, True), (("read64", "write64"), ("write64", "read64"),
                                           ("exec", "read64"))):
        if populated and uffd != "wp":
            continue                         # no missing page: no event
        scn, muts, _leaf, _tabs = hw_case(
            af=True, dbm=True, ap2=False, tab_af=True, ha=True, hd=True, haft=False,
            always=False, at_sets_af=False, pt_s2="rw", kinds=kinds, data_uffd=uffd,
            data_populated=populated, data_logging=logging)
        # exec: the mapping must be executable (no PXN) for the fetch to reach its data
        scn = dataclasses.replace(scn, mappings=(dataclasses.replace(
            scn.mappings[0], executable=True),))
        i0, (run,) = run_case(scn, muts, DEFAULT_ORDER, "all")
        assert run.rec.cut == 2 and run.rec.plan is not None, (populated, logging, kinds)
        # MISSING / MINOR: the first access to the missing page raises one; WP: a write to
        # the write-protected page (a missing page under WP: a fresh page, no event)
        want_ev = (uffd != "wp" and not populated) or (uffd == "wp" and populated
                                                        and "write64" in kinds)
        assert all(bool(vm.r.uffd_events) == want_ev for vm in run.g.vms), \
            (populated, logging, kinds)
        assert_applied_state(scn, run, (populated, logging, kinds))
