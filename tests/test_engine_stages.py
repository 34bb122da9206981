"""Stages of the engine's pipeline (model/engine_chunk.py) against the reference functions
they vectorise, on every input combination: the fault-resolution stages against
model.host.Host.handle_abort on one page of a 4K anonymous slot; tier 1's stage-1 fault flag
against model.reference.Vm.s1_check.  (The walk stage: tests/test_engine_walk.py.)"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE, DESC_VALID
from model.engine_chunk import (F_DBM, F_FOUND, F_PXN, PageAttrs, _code_lut, _pack,
                                _permission_fault, _translation_fault)
from model.engine_state import CLS_A, CLS_L, CLS_S, CLS_X, UFFD_CODES
from model.host import S2_RO, S2_RW, S2_UNMAPPED, Abort, Host, Outcome
from model.host_ops import HOST_MISSING, HOST_STATE_NAMES
from model.policies import fix
from model.reference import Stage1Fault, Vm, Walk
from model.results import PolicyResult
from model.scenario import Guest, Machine, Memslot, Scenario

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
