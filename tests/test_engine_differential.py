"""The numpy engine against the reference simulator: every metric and page set equal.

CI runs the `ci` profile (>= 300 examples in all); `HYPOTHESIS_PROFILE=thorough` runs
10,000 by hand.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings

from model import engine, engine_guest, policies
from model.engine import run_engine
from model.reference import SimulationError, run_reference
from model.x86 import X86_ISAS
from tests.strategies import aged_workloads, scenarios

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("thorough", max_examples=10_000, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(ci: int) -> int:
    """A focused test's example count: its own in CI, the profile's (10,000) when thorough."""
    return ci if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else \
        settings.get_profile(os.environ["HYPOTHESIS_PROFILE"]).max_examples


def facts(results):
    """Everything a run reports: docs/scenario-format.md's JSON, the §5 metrics (walks, descriptor
    reads, dirty and uffd counts, rounds), each uffd event's `written` flag, and each dirty
    round's ground truth (written pages, S1PTW-translation-faulted pages, the open rounds')."""
    return {p: (r.as_json(), r.metrics(), [e.written for e in r.uffd_events],
                [(h.written_pages, h.s1ptw_tf_pages, h.s1ptw_tf_written) for h in r.harvests],
                r.s1ptw_tf_pending)
            for p, r in results.items()}


def assert_same(scn):
    """The engine as shipped, and with its reference-only shortcuts off (short intervals and
    dense fallbacks then go through vectorised chunks too), against the reference."""
    ref = facts(run_reference(scn))
    fast = facts(run_engine(scn))
    for p in ref:
        assert fast[p] == ref[p], f"policy {p} differs"
    saved = engine.SCALAR_INTERVAL, engine.MAX_SCALAR_RUN
    engine.SCALAR_INTERVAL, engine.MAX_SCALAR_RUN = 0, 0
    try:
        chunked = facts(run_engine(scn))
    finally:
        engine.SCALAR_INTERVAL, engine.MAX_SCALAR_RUN = saved
    for p in ref:
        assert chunked[p] == ref[p], f"policy {p} differs (vectorised chunks only)"


@given(scenarios())
def test_engine_equals_reference(scn):
    assert_same(scn)


@pytest.fixture
def tiny_windows(monkeypatch):
    # Windows of 1..2 accesses split quiet stretches everywhere: every prefix of the bulk
    # path meets the scalar path.
    monkeypatch.setattr(engine, "MIN_WINDOW", 1)
    monkeypatch.setattr(engine, "MAX_WINDOW", 2)


@settings(max_examples=examples(100))
@given(scenarios())
def test_engine_equals_reference_with_tiny_windows(tiny_windows, scn):
    assert_same(scn)


@settings(max_examples=examples(100))
@given(scenarios(focus="rounds"))
def test_engine_equals_reference_dirty_rounds(scn):
    """Rounds (issue 20): walk faults on page-table pages inside complete and open dirty
    rounds, pages written before or after them."""
    ref = run_reference(scn, ("fix",))["fix"]
    m = ref.metrics()
    event(f"walk-faulted pages in complete rounds: "
          f"{'some' if m['s1ptw_tf_round_pages'] else 'none'}")
    event(f"... written before the harvest: {'some' if m['s1ptw_tf_round_written'] else 'none'}")
    event(f"open rounds at the end: {'some' if m['dirty_rounds_open'] else 'none'}")
    assert_same(scn)


@settings(max_examples=examples(100))
@given(scenarios(focus="blocks_swap"))
def test_engine_equals_reference_swap_out_of_blocks(scn):
    """THP / hugetlb data slots with swap_out at high density (issue 11's swap_out rule)."""
    assert scn.memslots[1].backing in ("anon_thp", "hugetlb")
    event(f"swap_out steps: {min(3, sum(st.op == 'swap_out' for st in scn.steps))}+")
    assert_same(scn)


@settings(max_examples=examples(200))
@given(scenarios(focus="blocks_map"))
def test_engine_equals_reference_blocks_mapped_whole(scn):
    """Issue 10 item 5: a translation fault on a THP/hugetlb page outside logging maps its
    whole 2 MiB block (Host.map_translation), vectorised where every policy's outcome is
    that (engine_chunk._block_units), among swap_outs, zaps and logging that make other
    blocks fall back to the reference code."""
    from model import engine_chunk
    seen = []
    orig = engine_chunk._block_units

    def counted(g, pn, at):
        out = orig(g, pn, at)
        seen.append(0 if out[2] is None else int((out[2].first >= 0).sum()))
        return out
    with pytest.MonkeyPatch.context() as m:
        m.setattr(engine_chunk, "_block_units", counted)
        assert_same(scn)
    event(f"blocks mapped whole by the vectorised path: {min(2, sum(seen))}+")


@settings(max_examples=examples(100))
@given(scenarios(focus="clear_af_ro"))
def test_engine_equals_reference_clear_af_on_read_only_tables(scn):
    """clear_af on a read-only page-table slot, MMIO stores written back by the VMM."""
    assert scn.memslots[0].readonly and scn.vmm.mmio_store == "write_backing"
    assert_same(scn)


def _count_bulk(scn, ops) -> dict[str, list[int]]:
    """assert_same(scn), counting per op how often engine_guest's bulk function did the work
    and how often it left it to the reference code: {op: [bulk, fell back]}."""
    done = {op: [0, 0] for op in ops}
    with pytest.MonkeyPatch.context() as m:
        for op in ops:
            orig = engine_guest.GUEST_BULK[op]

            def counted(g, si, st, orig=orig, n=done[op]):
                ok = orig(g, si, st)
                n[0 if ok else 1] += 1
                return ok
            m.setitem(engine_guest.GUEST_BULK, op, counted)
        assert_same(scn)
    return done


@settings(max_examples=examples(300))
@given(scenarios(focus="host_bulk", max_steps=60))
def test_engine_equals_reference_host_ops_in_bulk(scn):
    """Issue 10: host operations on page sets (every op of model/host_ops.py) and aging
    passes at high density, applied in bulk by the engine (Group.host_event,
    engine_guest.bulk_age), against the reference's page-at-a-time code."""
    events = [st for st in scn.steps if st.op != "access"]
    event(f"events per access >= 1/2: {len(events) * 2 >= len(scn.steps) - len(events)}")
    event(f"aging passes: {min(2, sum(st.op == 'guest_age' for st in events))}+")
    merged = []
    orig_merge = engine.coalesce_host_ops

    def coalesce(base, evs):
        out = orig_merge(base, evs)
        merged.append(len(out) < len(evs))
        return out
    with pytest.MonkeyPatch.context() as m:
        m.setattr(engine, "coalesce_host_ops", coalesce)
        done = _count_bulk(scn, ("guest_age",))
    event(f"aging passes in bulk: {'some' if done['guest_age'][0] else 'none'}")
    event(f"host ops at one position merged: {'some' if any(merged) else 'none'}")


GUEST_OPS = ("guest_pte", "guest_free", "guest_fork", "guest_age")


@settings(max_examples=examples(300))
@given(scenarios(focus="guest_bulk", max_steps=60))
def test_engine_equals_reference_guest_kernel_work_in_bulk(monkeypatch, scn):
    """Issue 10 item 4: munmap's and writeback's PTE stores, free_pgtables, fork's table
    copies and aging at about one event per access among accesses and host ops, done in
    bulk by the engine (engine_guest.GUEST_BULK, even with one VA), against the
    reference's one kernel access at a time.  Where the reference refuses an op (a belief of
    the strategy the host's page handling made wrong) the engine must refuse it too."""
    monkeypatch.setattr(engine_guest, "BULK_MIN_VAS", 1)
    ops = [st.op for st in scn.steps]
    events = len(ops) - ops.count("access")
    event(f"events per access >= 1/10: {events * 10 >= ops.count('access')}"
          if len(ops) >= 10 else "run of < 10 steps")
    try:
        run_reference(scn)
    except SimulationError:
        event("the reference refuses an op")
        with pytest.raises(SimulationError):
            run_engine(scn)
        return
    done = _count_bulk(scn, GUEST_OPS)
    for op in GUEST_OPS[:3]:
        if op in ops:
            bulk, fell = done[op]
            event(f"{op}: {'bulk' if bulk else 'no bulk'}, "
                  f"{'fallback' if fell else 'no fallback'}")
    event(f"every guest op of the run in bulk: {not any(n[1] for n in done.values())}")


@settings(max_examples=examples(300))
@given(scenarios(isas=X86_ISAS))
def test_engine_equals_reference_x86(scn):
    # x86 comparison machines (docs/x86.md): the engine runs them through the reference
    # code access by access; every row (policy) must still equal the reference's
    assert_same(scn)


def _permission_read(f):
    """A policy unlike any shipped one: a permission fault is never a write (KVM then fails
    the access with -EFAULT, user_mem_abort); else fix's answer."""
    return False if f.permission else policies.fix(f)


def _v_permission_read(s1ptw, permission, instruction, wnr, ha, vm_protected, wwp):
    return np.logical_and(np.logical_not(permission),
                          policies.v_fix(s1ptw, permission, instruction, wnr, ha,
                                         vm_protected, wwp))


@settings(max_examples=100)
@given(scenarios())
def test_engine_asks_the_policy_table(monkeypatch, scn):
    """Every policy decision goes through model/policies.py's table: a policy added there
    (one row) that answers "read" for permission faults gives the same results in both
    engines; an engine that took every permission fault as a write would differ."""
    row = policies.PolicyRow("permission-read", _permission_read, _v_permission_read,
                             lookahead=False)
    with monkeypatch.context() as m:
        m.setitem(policies.POLICY_TABLE, row.name, row)
        m.setitem(policies.POLICIES, row.name, row.is_write)
        m.setitem(policies.VECTOR_POLICIES, row.name, row.vector)
        names = policies.DEFAULT_ORDER + (row.name,)
        ref = facts(run_reference(scn, names))
        fast = facts(run_engine(scn, names))
        m.setattr(engine, "SCALAR_INTERVAL", 0)      # vectorised chunks wherever they can go
        m.setattr(engine, "MAX_SCALAR_RUN", 0)
        chunked = facts(run_engine(scn, names))
    for p in ref:
        assert fast[p] == ref[p], f"policy {p} differs"
        assert chunked[p] == ref[p], f"policy {p} differs (vectorised chunks only)"
    event(f"efaults: {'some' if ref[row.name][1].get('efaults', 0) else 'none'}")


def test_lookahead_column_is_what_the_policies_read():
    """POLICY_TABLE's `lookahead` column: true exactly for the policies whose answer depends
    on FaultInfo.walk_writes_page (checked on every input combination)."""
    import itertools
    fields = ("s1ptw", "permission", "instruction", "wnr", "ha", "vm_protected")
    for name, row in policies.POLICY_TABLE.items():
        reads = any(row.is_write(policies.FaultInfo(*c, walk_writes_page=True))
                    != row.is_write(policies.FaultInfo(*c, walk_writes_page=False))
                    for c in itertools.product((False, True), repeat=len(fields)))
        assert row.lookahead == reads, name


@settings(max_examples=examples(12), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(aged_workloads())
def test_engine_equals_reference_on_aged_repeated_windows(args):
    """issue 20: aging continued over --seconds repeats, steady-state access flags, shared
    (interleaved, spread) layouts: both engines agree."""
    from model.engine import run_trace
    from model.reference_trace import run_reference_trace
    from workloads.registry import build
    w = build(**args)
    assert abs(w.meta.get("aging_passes", 0) - w.meta["aging"]["window_ms"]
               / w.meta["aging"]["period_ms"]) <= 1
    ref = facts(run_reference_trace(w.scenario, w.trace))
    assert facts(run_trace(w.scenario, w.trace)) == ref
