"""Host events at one trace position, together (model/engine.py coalesce_host_ops): a run of
one page-by-page idempotent host op on one slot becomes one op on the union of its pages.

The merge is only right because of two properties of the ops' transitions
(model/host_ops.py), checked here on every host state code and backing, not taken from the
code: applying an op twice equals applying it once, and each page's new state depends on
that page alone.  thp_collapse has neither the second (collapse_huge_page looks at the whole
2 MiB range) and must stay out."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from model import engine
from model.engine import UNION_HOST_OPS, coalesce_host_ops
from model.host_ops import HOST_KSM, HOST_OPS, HOST_RW, HOST_STATE_NAMES
from model.reference import run_reference
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm

BACKINGS = ("anon", "anon_thp", "hugetlb", "shmem")
# every host state code, in every pair: enough to show a page-set dependence
CODES = np.array(list(itertools.product(range(len(HOST_STATE_NAMES)), repeat=2)),
                 dtype=np.int8)


@pytest.mark.parametrize("op", sorted(UNION_HOST_OPS))
@pytest.mark.parametrize("backing", BACKINGS)
def test_union_ops_are_idempotent_and_page_by_page(op, backing):
    f = HOST_OPS[op].transition
    for pair in CODES:
        once = f(pair.copy(), backing)
        assert np.array_equal(f(once.copy(), backing), once), (op, backing, pair)
        alone = np.array([f(pair[i:i + 1].copy(), backing)[0] for i in range(2)])
        assert np.array_equal(once, alone), (op, backing, pair)


def test_thp_collapse_depends_on_the_whole_range():
    # a KSM page in the range stops the collapse of its neighbours (the reason it is not merged)
    f = HOST_OPS["thp_collapse"].transition
    both = f(np.array([0, HOST_KSM], dtype=np.int8), "anon_thp")
    alone = f(np.array([0], dtype=np.int8), "anon_thp")
    assert both[0] == 0 and alone[0] == HOST_RW
    assert "thp_collapse" not in UNION_HOST_OPS


class _Base:
    """What coalesce_host_ops reads of model.engine_state.Base: the scenario's slots."""

    def __init__(self, scn):
        self.scn = scn


SLOTS = (Memslot("pt", 0x4000_0000, 16), Memslot("data", 0x8000_0000, 1024,
                                                 backing="anon_thp"))
SCN = Scenario("ev", Machine(), Guest(True, True, False, "pt"), SLOTS)


def pages_of(st):
    return list(range(st.first, st.first + st.count)) if st.pages is None else \
        [int(p) for p in st.pages]


def test_runs_of_one_op_on_one_slot_merge_in_order():
    evs = [Step("swap_out", slot="pt", first=0, count=4),
           Step("swap_out", slot="pt", pages=np.array([2, 5, 9])),
           Step("zap", slot="pt", first=1, count=2),
           Step("zap", slot="data", first=0, count=2),
           Step("zap", slot="data", pages=np.array([4])),
           Step("thp_collapse", slot="data", pages=np.arange(512)),
           Step("thp_collapse", slot="data", pages=np.arange(512)),
           Step("flush_tlb"),
           Step("swap_out", slot="pt", first=7, count=1)]
    out = coalesce_host_ops(_Base(SCN), [(100, 10 + k, st) for k, st in enumerate(evs)])
    got = [(si, st.op, st.slot, pages_of(st) if st.op != "flush_tlb" else None)
           for si, st in out]
    assert got == [(10, "swap_out", "pt", [0, 1, 2, 3, 5, 9]),
                   (12, "zap", "pt", [1, 2]),
                   (13, "zap", "data", [0, 1, 4]),
                   (15, "thp_collapse", "data", list(range(512))),
                   (16, "thp_collapse", "data", list(range(512))),
                   (17, "flush_tlb", "", None),
                   (18, "swap_out", "pt", [7])]


def test_no_merge_across_another_op():
    # uffd_wp then swap_out then uffd_wp: a page written-protected, swapped, ... must keep
    # its order (the ops do not commute: RW -> WP stays WP under swap_out)
    evs = [Step("uffd_wp", slot="pt", first=0, count=2), Step("swap_out", slot="pt", first=0,
                                                               count=2),
           Step("uffd_wp", slot="pt", first=2, count=2)]
    out = coalesce_host_ops(_Base(SCN), [(0, k, st) for k, st in enumerate(evs)])
    assert [st.op for _si, st in out] == ["uffd_wp", "swap_out", "uffd_wp"]


def _scenario(steps):
    """A 4K guest whose tables live in `pt` and map 8 data pages: back-to-back host ops on
    page-table and data pages between accesses that walk through them."""
    pt = Memslot("pt", 0x4000_0000, 8, log_dirty=True)
    data = Memslot("data", 0x8000_0000, 16)
    maps = (Mapping(va=0x1000_0000, ipa=0x8000_0000, pages=8, af=False, writable=True,
                    dirty=False),)
    return Scenario("ev", Machine(), Guest(True, True, False, "pt"), (pt, data), Vmm(), maps,
                    tuple(steps))


def _acc(k, kind="write64"):
    return Step("access", vcpu=k % 2, va=0x1000_0000 + (k % 8) * 4096, kind=kind)


@pytest.mark.parametrize("bulk", [True, False])
def test_back_to_back_host_ops_equal_the_reference(bulk, monkeypatch):
    monkeypatch.setattr(engine, "BULK_EVENTS", bulk)
    steps = [_acc(k) for k in range(8)]
    steps += [Step("swap_out", slot="pt", first=0, count=4),
              Step("swap_out", slot="pt", first=2, count=6),
              Step("zap", slot="data", first=0, count=3),
              Step("zap", slot="data", first=3, count=3),
              Step("harvest", slot="pt")]
    steps += [_acc(k, "read64") for k in range(8)] + [_acc(k) for k in range(8)]
    steps += [Step("numa_hint", slot="data", pages=np.array([1, 4])),
              Step("numa_hint", slot="data", pages=np.array([4, 6])),
              Step("swap_out", slot="pt", pages=np.array([0, 1]))]
    steps += [_acc(k) for k in range(8, 0, -1)]
    scn = _scenario(steps)
    ref = run_reference(scn)
    fast = engine.run_engine(scn)
    for p in ref:
        assert fast[p].metrics() == ref[p].metrics(), p
        assert fast[p].as_json() == ref[p].as_json(), p
    # the swap_outs of page-table pages made walks fault again: the ops did something
    assert ref["fix"].metrics()["s2_s1ptw_translation"] > 0


@pytest.mark.parametrize("sets, union", [
    ([[0, 1], [5, 9], [10]], [0, 1, 5, 9, 10]),                   # one after the other
    ([[0, 1000], [2, 1000]], [0, 2, 1000]),                        # few pages, far apart
    ([[0, 1, 2, 3], [2, 3, 4], []], [0, 1, 2, 3, 4]),              # dense, overlapping
    ([[], []], []),
])
def test_union_of_page_sets(sets, union):
    got = engine._union([np.array(p, dtype=np.int64) for p in sets])
    assert got.tolist() == union and got.dtype == np.int64
