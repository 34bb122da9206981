"""The trace type (model.trace): kind codes, a scenario's accesses as a trace, validation
(hand-computed values)."""
from __future__ import annotations

import numpy as np
import pytest

from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step
from model.trace import (ISV_KINDS, KIND_CODE, KINDS, STORE_KINDS, STORE_MASK, Trace,
                         trace_from_scenario)

PT_IPA = 0x4000_0000


def scenario(mappings, steps) -> Scenario:
    return Scenario("trace-test", Machine(4096, 48, 2, False, "on-change", False),
                    Guest(False, False, False, "pt"), (Memslot("pt", PT_IPA, 128),),
                    mappings=tuple(mappings), steps=tuple(steps))


def test_kind_codes():
    assert KINDS[0] == "read64" and KIND_CODE["at"] == 7
    assert STORE_KINDS == {1, 3, 4, 5} and ISV_KINDS == {0, 1}
    assert STORE_MASK.tolist() == [False, True, False, True, True, True, False, False]


def test_trace_from_scenario():
    steps = (Step("flush_tlb"),
             Step("access", vcpu=1, va=0xc000_0000, kind="read64"),
             Step("clear_af", vcpu=0, va=0xc000_0000),
             Step("set_tcr", ha=True),
             Step("access", vcpu=0, va=0xc000_0008, kind="dc_zva"),
             Step("access", vcpu=2, va=0xc000_0010, kind="at"),
             Step("harvest", slot="pt"))
    scn = scenario([Mapping(0xc000_0000, 0x8000_0000, 1)], steps)
    tr = trace_from_scenario(scn)
    assert len(tr) == 3
    assert tr.vcpu.dtype == np.uint16 and tr.va.dtype == np.uint64 and tr.kind.dtype == np.uint8
    assert tr.vcpu.tolist() == [1, 0, 2]
    assert tr.va.tolist() == [0xc000_0000, 0xc000_0008, 0xc000_0010]
    assert tr.kind.tolist() == [0, 5, 7]
    assert tr.step_of_access.tolist() == [1, 4, 5]
    assert [(p, i, s.op) for p, i, s in tr.events] == [
        (0, 0, "flush_tlb"), (1, 2, "clear_af"), (1, 3, "set_tcr"), (3, 6, "harvest")]
    assert tr.nbytes == 3 * (11 + 4)
    assert [(a, b, [e[1] for e in ev]) for a, b, ev in tr.intervals()] == [
        (0, 1, [0]), (1, 3, [2, 3]), (3, 3, [6])]
    bare = Trace(tr.vcpu, tr.va, tr.kind)
    assert bare.nbytes == 33 and list(bare.intervals()) == [(0, 3, [])]


def test_trace_validation():
    with pytest.raises(ValueError):
        Trace(np.zeros(2), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.array([8]))
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.zeros(1),
              [(1, 0, Step("flush_tlb")), (0, 1, Step("flush_tlb"))])
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.zeros(1), [(2, 0, Step("flush_tlb"))])
    assert list(Trace(np.zeros(0), np.zeros(0), np.zeros(0)).intervals()) == []
