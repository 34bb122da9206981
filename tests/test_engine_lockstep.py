"""The numpy engine's mechanisms against the reference: lockstep groups, long traces with
repeated accesses (the tier-1 codes), the benchmark shapes at small sizes, chunk boundaries.

* lockstep: all policies in one run equal each policy run on its own (groups split exactly
  where the policies' guest memory or TLBs diverge);
* long traces: micro-scenarios whose accesses repeat many times, from several vCPUs, give
  the same results as the reference replay (model.reference_trace.run_reference_trace);
* shapes: bench/shapes.py's generators at small n, every chunk size.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.shapes import data_heavy, pt_heavy
from model import engine
from model import engine_chunk
from model.engine import run_engine, run_trace
from model.engine_state import ArrayHost, Base, FastVm, Shared
from model.host import Host
from model.policies import DEFAULT_ORDER
from model.reference import Vm
from model.reference_trace import run_reference_trace
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step
from model.trace import KIND_CODE, Trace
from tests.strategies import scenarios
from tests.test_engine_differential import facts

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("thorough", max_examples=10_000, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SCALE = 1 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 10   # thorough: x10


def assert_same_trace(scn, tr):
    ref = facts(run_reference_trace(scn, tr))
    fast = facts(run_trace(scn, tr))
    for p in ref:
        assert fast[p] == ref[p], f"policy {p} differs"


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(engine, "MIN_WINDOW", 1)
    monkeypatch.setattr(engine, "MAX_WINDOW", 3)
    monkeypatch.setattr(engine_chunk, "SUB", 2)


# ---- lockstep ---------------------------------------------------------------------------
@settings(max_examples=150 * SCALE)
@given(scenarios())
def test_lockstep_equals_separate_runs(scn):
    together = facts(run_engine(scn))
    for p in DEFAULT_ORDER:
        alone = facts(run_engine(scn, [p]))
        assert alone[p] == together[p], f"policy {p} differs"


def test_groups_split_when_policies_diverge():
    """Page tables in a read-only slot (EFI firmware): legacy's write-classified S1PTW
    faults inject aborts, fix maps the tables read-only and completes: TLBs diverge."""
    scn = Scenario(
        "ro-tables", Machine(hafdbs=0), Guest(pt_slot="pt"),
        (Memslot("pt", 0x4000_0000, 8, readonly=True), Memslot("data", 0x8000_0000, 8)),
        mappings=(Mapping(0x1000_0000, 0x8000_0000, 4),),
        steps=tuple(Step("access", va=0x1000_0000 + (i % 4) * 4096,
                         kind=("read64", "write64")[i % 2]) for i in range(40)))
    ref = facts(run_engine(scn))
    assert ref == facts(__import__("model.reference", fromlist=["x"]).run_reference(scn))
    r = run_engine(scn)
    assert r["legacy"].guest_aborts > 0 and r["fix"].guest_aborts == 0


def test_engine_state_has_the_reference_attributes():
    """FastVm / ArrayHost replicate Vm.__init__ / Host.__init__: same attributes."""
    scn, tr = data_heavy(10, heap_pages=4)
    base = Base(scn, tr)
    sh = Shared(base, True)
    fast = FastVm(base, "fix", sh)
    ref = Vm(scn, "fix")
    assert set(vars(ref)) <= set(dir(fast))
    assert set(vars(ref.host)) <= set(dir(fast.host))
    assert isinstance(fast.host, ArrayHost) and isinstance(fast.host, Host)


# ---- long traces ------------------------------------------------------------------------
@st.composite
def long_traces(draw, max_steps: int = 25):
    """A micro-scenario whose every access step becomes a run of accesses: the same VA page
    again and again, other kinds and vCPUs mixed in, other steps kept as events."""
    scn = draw(scenarios(max_steps=max_steps))
    vcpu, va, kind, events = [], [], [], []
    pool = sorted({s.va for s in scn.steps if s.op == "access"}) or [scn.mappings[0].va]
    for i, s in enumerate(scn.steps):
        if s.op != "access":
            events.append((len(va), i, s))
            continue
        for _ in range(draw(st.integers(1, 12))):
            r = draw(st.integers(0, 9))
            if r < 6:                                   # the step itself, again
                vcpu.append(s.vcpu), va.append(s.va), kind.append(KIND_CODE[s.kind])
            elif r < 8:                                 # another kind on the same VA
                vcpu.append(s.vcpu), va.append(s.va)
                kind.append(draw(st.integers(0, len(KIND_CODE) - 1)))
            else:                                       # elsewhere, another vCPU
                vcpu.append(draw(st.integers(0, 2))), va.append(draw(st.sampled_from(pool)))
                kind.append(draw(st.integers(0, len(KIND_CODE) - 1)))
    steps = None if draw(st.booleans()) else np.arange(len(va), dtype=np.int32) * 3
    tr = Trace(np.array(vcpu, dtype=np.uint16), np.array(va, dtype=np.uint64),
               np.array(kind, dtype=np.uint8), events, steps)
    return scn, tr


@settings(max_examples=150 * SCALE)
@given(long_traces())
def test_long_traces_equal_reference(lt):
    assert_same_trace(*lt)


@settings(max_examples=60 * SCALE)
@given(long_traces())
def test_long_traces_equal_reference_tiny_chunks(tiny_chunks, lt):
    assert_same_trace(*lt)


# ---- the benchmark shapes -----------------------------------------------------------------
SHAPES = [
    ("data", lambda: data_heavy(3000, heap_pages=300)),
    ("pt", lambda: pt_heavy(3000, regions=96, harvest_every=700)),
    ("pt-often", lambda: pt_heavy(2000, seed=3, regions=40, harvest_every=150)),
    ("pt-old-clean", lambda: pt_heavy(3000, seed=4, regions=64, harvest_every=500, af=False,
                                      dirty=False)),
    ("pt-old", lambda: pt_heavy(2000, seed=5, regions=64, harvest_every=900, af=False)),
]


def test_shape_variants_exercise_the_vectorised_faults():
    """The old/clean variant takes every fault class, double faults included, without the
    reference code (no access leaves the vectorised path)."""
    scn, tr = pt_heavy(3000, seed=4, regions=64, harvest_every=500, af=False, dirty=False)
    calls = []
    orig = engine.Group.scalar
    try:
        engine.Group.scalar = lambda self, fn: calls.append(1) or orig(self, fn)
        r = run_trace(scn, tr)
    finally:
        engine.Group.scalar = orig
    # no access leaves the vectorised path; host events run as array operations
    # (Group.host_event), the others through the reference code
    assert len(calls) == sum(st.op not in engine.HOST_EVENT_OPS for _p, _i, st in tr.events)
    assert len(tr.events) > 0
    m = r["fix"].metrics()
    assert m["double_faults"] > 0 and m["s2_s1ptw_permission"] > 0
    assert m["s2_data_permission"] > 0 and m["s2_s1ptw_translation"] > 0
    assert m["s2_data_translation"] > 0
    for p in ("legacy", "oracle"):                      # the walk's write predicted
        assert r[p].metrics()["double_faults"] == 0


@pytest.mark.parametrize("name,make", SHAPES, ids=[s[0] for s in SHAPES])
def test_shapes_equal_reference(name, make):
    assert_same_trace(*make())


@pytest.mark.parametrize("name,make", SHAPES, ids=[s[0] for s in SHAPES])
def test_shapes_equal_reference_tiny_chunks(tiny_chunks, name, make):
    assert_same_trace(*make())


def test_trace_from_scenario_unchanged_by_chunking(monkeypatch):
    """The same scenario at several chunk sizes: identical results."""
    scn, tr = pt_heavy(1500, regions=50, harvest_every=400)
    want = facts(run_trace(scn, tr))
    for lo, hi, sub in ((1, 1, 1), (7, 7, 3), (64, 1 << 12, 50)):
        monkeypatch.setattr(engine, "MIN_WINDOW", lo)
        monkeypatch.setattr(engine, "MAX_WINDOW", hi)
        monkeypatch.setattr(engine_chunk, "SUB", sub)
        assert facts(run_trace(scn, tr)) == want
