"""docs/semantics.md §6: TLB capacity changes only how many walks happen, not the fault, dirty and
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


def test_tlb_independence_across_a_harvest_with_hw_update_always():
    # The case that needs the harvest's TLB flush: with hw_update = always a walk rewrites
    # the leaf; after a harvest write-protects the leaf's table page, the next access must
    # walk (and take the S1PTW permission fault) whether or not a TLB held the translation.
    from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Vmm
    scn = Scenario(
        "always", Machine(hw_update="always"), Guest(tcr_ha=True, pt_slot="pt"),
        (Memslot("pt", 0x4000_0000, 8, log_dirty=True), Memslot("data", 0x8000_0000, 4)),
        Vmm(), (Mapping(0x1000, 0x8000_0000, 1),),
        (Step("access", va=0x1000, kind="read64"), Step("harvest", slot="pt"),
         Step("access", va=0x1000, kind="read64")))
    a, b = run_reference(scn)["fix"], run_reference(no_tlb(scn))["fix"]
    assert counts(a) == counts(b)
    # by hand: the second access rewrites the leaf (pt page 3) after the harvest
    assert a.written_pages["pt"] == [3] and a.s2_faults["s1ptw_permission"] == 2
