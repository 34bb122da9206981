"""Pieces of the engine's state against what they replace: the table builder
(model.stage1.build_tables, on arrays) against the layout rule one granule at a time
(tests/layout_rule.py), the trace preparation's ids."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.shapes import data_heavy, pt_heavy
from model.arch import DESC_AF, DESC_TABLE, DESC_VALID
from model.engine import run_engine
from model.scenario import Mapping
from model.engine_state import CLASS_OF_KIND, TracePrep
from model.stage1 import TableLayoutError, build_tables
from model.trace import trace_from_scenario
from tests.layout_rule import layout_rule_tables
from tests.strategies import scenarios
from tests.test_engine_differential import facts
from tests.test_engine_walk import geometries, mapping_lists
from tests.test_engine_walk import scenario as walk_scenario


def same_tables(a, b):
    assert (a.root, a.tables_used) == (b.root, b.tables_used)
    assert a.descriptors == b.descriptors
    assert a.leaf_addr == b.leaf_addr
    assert a.table_ipas.tolist() == b.table_ipas.tolist()


@settings(max_examples=300, deadline=None)
@given(scenarios(max_steps=1))
def test_build_tables_follows_the_layout_rule(scn):
    same_tables(build_tables(scn), layout_rule_tables(scn))


@pytest.mark.parametrize("make", [lambda: data_heavy(10, heap_pages=700),
                                  lambda: pt_heavy(10, regions=300)])
def test_build_tables_on_shapes(make):
    scn, _ = make()
    same_tables(build_tables(scn), layout_rule_tables(scn))


def test_build_tables_errors_are_the_layout_rule_errors():
    scn, _ = pt_heavy(10, regions=300)
    small = scn.__class__(**{**scn.__dict__, "memslots": (
        scn.memslots[0].__class__(**{**scn.memslots[0].__dict__, "pages": 20}),
        scn.memslots[1])})
    assert_same_errors(small)


def assert_same_errors(scn):
    with pytest.raises(TableLayoutError) as a:
        build_tables(scn)
    with pytest.raises(TableLayoutError) as b:
        layout_rule_tables(scn)
    assert (a.value.key, str(a.value)) == (b.value.key, str(b.value))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_build_tables_small_slots_and_overlaps(data):
    """Random mappings (overlapping ones too) into page-table slots of 1..24 granules: the
    same tables, or the same error (key and message) as the layout rule."""
    geo = data.draw(geometries(), label="geo")
    mappings = data.draw(mapping_lists(geo), label="mappings")
    scn = walk_scenario(geo.granule, geo.va_bits, mappings,
                        pt_tables=data.draw(st.integers(1, 24), label="pt_tables"))
    try:
        want = layout_rule_tables(scn)
    except TableLayoutError:
        assert_same_errors(scn)
        return
    same_tables(build_tables(scn), want)


def test_build_tables_hand_computed():
    # 4K/48, VA 0xc0000000: L0 index 0, L1 index 3, L2 index 0, L3 index 0; tables at the
    # next granules of the slot in order of need; table descriptors with AF (PMD_TABLE_AF)
    pt = 0x4000_0000
    t = build_tables(walk_scenario(4096, 48, [Mapping(0xc000_0000, 0x3000_0000, 2)]))
    table = DESC_VALID | DESC_TABLE | DESC_AF
    assert t.descriptors == {pt: (pt + 0x1000) | table, pt + 0x1018: (pt + 0x2000) | table,
                             pt + 0x2000: (pt + 0x3000) | table,
                             pt + 0x3000: t.descriptors[pt + 0x3000],
                             pt + 0x3008: t.descriptors[pt + 0x3008]}
    assert t.tables_used == 4 and t.leaf_addr == {0xc000_0000: pt + 0x3000,
                                                  0xc000_1000: pt + 0x3008}
    assert t.descriptors[pt + 0x3008] & 0xffff_ffff_f000 == 0x3000_1000


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


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios(),
       st.lists(st.tuples(st.integers(0, 4095),
                          st.sampled_from((0, 1, DESC_AF, DESC_VALID | DESC_TABLE, 2**63 + 3))),
                max_size=12, unique_by=lambda t: t[0]),
       st.lists(st.integers(0, 7), max_size=3))
def test_bulk_descriptor_writes_equal_one_at_a_time(scn, writes, zero_pages):
    """Shared.write_descs / zero_pages (engine_guest's bulk stores) leave the same content,
    changed offsets and shape-version change as write_desc / zero_page one at a time."""
    from model.engine_state import Base, Shared
    base = Base(scn, trace_from_scenario(scn))
    bulk, one = Shared(base, True), Shared(base, True)
    # inside the page-table slot (FastVm.write_desc refuses any other address)
    writes = [(o, v) for o, v in writes if o < base.nptd]
    zero_pages = [p for p in zero_pages if p < base.pt.pages]
    o0s = np.array(sorted(set(p * 512 for p in zero_pages)), dtype=np.int64)
    bulk.zero_pages(o0s)
    for o0 in o0s.tolist():
        one.zero_page(o0)
    offs = np.array([o for o, _v in writes], dtype=np.int64)
    bulk.write_descs(offs, np.array([v for _o, v in writes], dtype=np.uint64))
    for o, v in writes:
        one.write_desc(o, v)
    ob, vb = bulk.pt.nonzero()
    oo, vo = one.pt.nonzero()
    np.testing.assert_array_equal(ob, oo)
    np.testing.assert_array_equal(vb, vo)
    for o in offs.tolist():
        assert bulk.read(o) == one.read(o), o
    assert (bulk.version > 0) == (one.version > 0)
    assert sorted(bulk.changed) == sorted(one.changed)
    assert bulk.changed_pages == one.changed_pages
