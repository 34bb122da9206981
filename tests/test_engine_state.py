"""Pieces of the numpy engine's state against what they replace: the vectorised table builder
against model.stage1.build_tables, the trace preparation's ids."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from bench.shapes import data_heavy, pt_heavy
from model.engine import run_engine
from model.engine_state import CLASS_OF_KIND, TracePrep, fast_tables
from model.stage1 import TableLayoutError, build_tables
from model.trace import trace_from_scenario
from tests.strategies import scenarios
from tests.test_engine_differential import facts


def same_tables(a, b):
    assert (a.root, a.tables_used) == (b.root, b.tables_used)
    assert a.descriptors == b.descriptors
    assert a.leaf_addr == b.leaf_addr


@settings(max_examples=300, deadline=None)
@given(scenarios(max_steps=1))
def test_fast_tables_equal_build_tables(scn):
    same_tables(fast_tables(scn), build_tables(scn))


@pytest.mark.parametrize("make", [lambda: data_heavy(10, heap_pages=700),
                                  lambda: pt_heavy(10, regions=300)])
def test_fast_tables_on_shapes(make):
    scn, _ = make()
    same_tables(fast_tables(scn), build_tables(scn))


def test_fast_tables_errors_are_build_tables_errors():
    scn, _ = pt_heavy(10, regions=300)
    small = scn.__class__(**{**scn.__dict__, "memslots": (
        scn.memslots[0].__class__(**{**scn.memslots[0].__dict__, "pages": 20}),
        scn.memslots[1])})
    with pytest.raises(TableLayoutError) as a:
        fast_tables(small)
    with pytest.raises(TableLayoutError) as b:
        build_tables(small)
    assert (a.value.key, str(a.value)) == (b.value.key, str(b.value))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_trace_prep_ids(scn):
    tr = trace_from_scenario(scn)
    prep = TracePrep(scn, tr)
    ci = prep.ci(0, len(tr))
    sk = ci >> 2
    vp = prep.sk_vp[sk]
    # every access's sub-key names its 4 KiB VA page and vCPU
    assert np.array_equal(prep.vpages[vp], tr.va & ~np.uint64(4095))
    assert np.array_equal(prep.sk_vcpu[sk], tr.vcpu)
    # and its class
    assert np.array_equal(ci & 3, CLASS_OF_KIND[tr.kind])
    # any sub-range gives the same ids
    if len(tr) > 2:
        assert np.array_equal(prep.ci(1, len(tr) - 1), ci[1:-1])
    # TLB keys: one per (vCPU, granule page)
    g = scn.machine.geometry.granule
    for i in range(len(tr)):
        k = prep.tkey(int(tr.vcpu[i]), int(tr.va[i]) & ~(g - 1))
        assert k == prep.sk_tkey[sk[i]] >= 0


@pytest.mark.parametrize("table_span,pair_max", [(0, 0), (0, 1 << 26), (1 << 22, 0),
                                                 (1 << 22, 1 << 26)],
                         ids=["sorted-pairs-sorted", "sorted-pairtable", "table-pairsorted",
                              "table-pairtable"])
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(scn=scenarios())
def test_trace_prep_branches_agree(monkeypatch, table_span, pair_max, scn):
    """Every way of numbering pages and (vCPU, page) pairs gives the same ids and results."""
    tr = trace_from_scenario(scn)
    want_prep = TracePrep(scn, tr)
    want = facts(run_engine(scn))
    monkeypatch.setattr(TracePrep, "TABLE_SPAN", table_span)
    monkeypatch.setattr(TracePrep, "TABLE_SPAN_MAX", table_span)
    monkeypatch.setattr(TracePrep, "PAIR_TABLE_MAX", pair_max)
    prep = TracePrep(scn, tr)
    n = len(tr)
    a, b = want_prep.ci(0, n), prep.ci(0, n)
    # same partition of the accesses into (sub-key, class), same pages per sub-key
    assert np.array_equal(want_prep.vpages[want_prep.sk_vp[a >> 2]], prep.vpages[prep.sk_vp[b >> 2]])
    assert np.array_equal(want_prep.sk_vcpu[a >> 2], prep.sk_vcpu[b >> 2])
    assert facts(run_engine(scn)) == want
