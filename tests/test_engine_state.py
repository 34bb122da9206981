"""Pieces of the numpy engine's state against what they replace: the vectorised table builder
against model.stage1.build_tables, the trace preparation's ids."""
import numpy as np
import pytest
from hypothesis import given, settings

from bench.shapes import data_heavy, pt_heavy
from model.engine_state import TracePrep, fast_tables
from model.stage1 import TableLayoutError, build_tables
from model.trace import trace_from_scenario
from tests.strategies import scenarios


def same_tables(a, b):
    assert (a.root, a.tables_used) == (b.root, b.tables_used)
    assert a.descriptors == b.descriptors
    assert a.leaf_addr == b.leaf_addr


@settings(max_examples=300)
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


@settings(max_examples=200)
@given(scenarios())
def test_trace_prep_ids(scn):
    tr = trace_from_scenario(scn)
    prep = TracePrep(scn, tr)
    sk = prep.ci >> 2
    vp = prep.sk_vp[sk]
    # every access's sub-key names its 4 KiB VA page and vCPU
    assert np.array_equal(prep.vpages[vp], tr.va & ~np.uint64(4095))
    assert np.array_equal(prep.sk_vcpu[sk], tr.vcpu)
    # TLB keys: one per (vCPU, granule page)
    g = scn.machine.geometry.granule
    for i in range(len(tr)):
        k = prep.tkey(int(tr.vcpu[i]), int(tr.va[i]) & ~(g - 1))
        assert k == prep.sk_tkey[sk[i]] >= 0
