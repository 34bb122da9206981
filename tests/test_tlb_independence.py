"""DOMAIN.md §6: TLB capacity changes only how many walks happen, not the fault, dirty and
uffd counts.  Checked against the reference simulator by running every generated scenario
again with no TLB at all (the guest flushes before every access).  This holds with
hw_update = always too: every event that protects or unmaps stage 2 also flushes the TLBs,
so the first access after it walks (and writes) either way; extra walks rewrite pages already
written in the same round."""
from dataclasses import replace

from hypothesis import given, settings

from model.reference import run_reference
from model.scenario import Step
from tests.strategies import scenarios


def no_tlb(scn):
    steps = []
    for st in scn.steps:
        if st.op == "access":
            steps.append(Step("flush_tlb"))
        steps.append(st)
    return replace(scn, steps=tuple(steps))


def counts(r):
    m = r.metrics()
    for k in ("walks", "descriptor_reads"):
        m.pop(k)
    return m, r.uffd_events and [e.as_json() | {"step": None} for e in r.uffd_events], \
        r.dirty_pages, r.written_pages, [h.dirty_pages for h in r.harvests]


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_fault_dirty_uffd_counts_do_not_depend_on_the_tlb(scn):
    a = run_reference(scn)
    b = run_reference(no_tlb(scn))
    for p in a:
        assert counts(a[p]) == counts(b[p]), p
        assert b[p].walks >= a[p].walks
