"""The numpy engine against the reference over workload traces: every generator (small), every
host scenario, and profile variants (granules, no HAFDBS, HAFT aging, shared layout with THP)
give identical docs/scenario-format.md JSON, §5 metrics and uffd `written` flags under every policy.

These traces exercise what micro-scenarios do not: the guest kernel's internal ops
(guest_pte, guest_free, guest_age, guest_fork, guest_switch), thousands of events, several
address spaces.
"""
from pathlib import Path

import pytest

from model import engine_guest
from model.engine import run_trace
from model.reference import run_reference
from model.reference_trace import run_reference_trace
from model.scenario_io import load_scenario
from model.trace import trace_from_scenario
from tests.wl_helpers import facts
from workloads.registry import GENERATORS, HOST_SCENARIOS, apply_host, compatible, make

SMALL = {
    "stream": dict(bytes_per_vcpu=24 << 10, passes=2),
    "memstress": dict(bytes_per_vcpu=96 << 10, iterations=3, write_percent=60),
    "zipf": dict(keys=2048, operations=300, mapping="shmem"),
    "sparse": dict(regions=24, accesses=400, write_percent=30),
    "pointer_chase": dict(nodes=120, hops=300),
    "mmap_churn": dict(rounds=10, touches=16),
    "fork": dict(heap_bytes=24 << 12, accesses=400, slice=100),
    "gc": dict(heap_bytes=256 << 10, object_bytes=2048),
    "shared_db": dict(processes=4, buffer_mb=8, pages_per_process=40, accesses=400,
                      private_kb=16),
}


def assert_same(wl):
    ref = facts(run_reference_trace(wl.scenario, wl.trace))
    fast = facts(run_trace(wl.scenario, wl.trace))
    for p in ref:
        assert fast[p] == ref[p], f"{wl.name}: policy {p} differs"


def test_small_knobs_cover_every_generator():
    assert set(SMALL) == set(GENERATORS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator(name):
    assert_same(make(name, 1, **SMALL[name]))


HOSTS = [("precopy", dict(rounds=3, start_frac=0.2)),
         ("precopy", dict(rounds=2, manual_protect=True, eager_split=True,
                          backing="anon_thp")),
         ("postcopy", dict(mode="missing")),
         ("postcopy", dict(mode="minor", resolve="slot")),
         ("snapshot", dict(start_frac=0.3)),
         ("pressure", dict(mode="swap", period_accesses=150, fraction=0.2)),
         ("pressure", dict(mode="ksm", period_accesses=200)),
         ("firmware", dict(tcr_ha=True)),
         # calibrated (workloads/host_timed.py), periods shrunk to a wake-up every few
         # hundred accesses
         ("numa", dict(scan_size_mb=1, scan_period_s=2e-5, first_s=0.0)),
         ("ksm", dict(sleep_ms=0.02, merge_percent=40.0)),
         ("khugepaged", dict(pages_to_scan=512, scan_sleep_ms=0.02)),
         ("migration", dict(link_gbit_s=100.0, downtime_limit_ms=0.0)),
         ("reclaim", dict(reclaim_mb_s=10.0, batch_period_ms=0.01)),
         ("far_memory", dict(cold_age_s=2e-5, scan_period_s=2e-5)),
         # a background snapshot saving every page within the trace (1 ms of release
         # period at 1,000 MB/s: a few hundred pages per release)
         ("bg_snapshot", dict(bandwidth_mb_s=1000.0, release_ms=0.002))]


def test_hosts_cover_every_host_scenario():
    assert {h for h, _ in HOSTS} == set(HOST_SCENARIOS)


@pytest.mark.parametrize("gen", ["memstress", "mmap_churn"])
@pytest.mark.parametrize("host,knobs", HOSTS, ids=[f"{h}{i}" for i, (h, _) in enumerate(HOSTS)])
def test_host_scenario(gen, host, knobs):
    if not compatible(gen, host):
        pytest.skip("the guest stores to its page tables")
    prof = dict(demand=False) if host == "firmware" else {}
    assert_same(apply_host(make(gen, 2, **SMALL[gen], **prof), host, **knobs))


@pytest.mark.parametrize("prof", [dict(granule="16k", va_bits=47),
                                  dict(granule="64k", va_bits=42, demand=False),
                                  dict(cpu="cortex-a72", age_period=120),
                                  dict(cpu="haft", age_period=120, age_fraction=0.5),
                                  dict(cpu="cortex-a55", hw_update="always"),
                                  dict(layout="shared", backing="anon_thp")],
                         ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_profiles(prof):
    for gen in ("fork", "zipf"):
        wl = make(gen, 3, **SMALL[gen], **prof)
        assert_same(apply_host(wl, "precopy", rounds=2, start_frac=0.3))


@pytest.mark.parametrize("path", sorted(Path("workloads/scenarios").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_reference_trace_replays_scenarios_like_run_reference(path):
    scn = load_scenario(path)
    assert facts(run_reference_trace(scn, trace_from_scenario(scn))) == facts(run_reference(scn))


def test_file_mapping_with_writeback_and_fault_around():
    wl = make("zipf", 5, keys=4096, operations=500, read_percent=60, mapping="file",
              writeback_period=150)
    assert any(e[2].op == "guest_pte" and len(e[2].vas) > 1 for e in wl.trace.events)
    assert_same(apply_host(wl, "precopy", rounds=3))


@pytest.mark.parametrize("gen,knobs,ops", [
    ("mmap_churn", SMALL["mmap_churn"], ("guest_pte", "guest_free")),
    ("fork", SMALL["fork"], ("guest_fork",)),
    ("zipf", dict(keys=4096, operations=500, read_percent=60, mapping="file",
                  writeback_period=150), ("guest_pte",))])
@pytest.mark.parametrize("host", [None, "precopy"])
def test_munmap_fork_writeback_run_in_bulk(monkeypatch, gen, knobs, ops, host):
    """The Linux profile's munmap (zap_pte_range, free_pgtables), fork (copy_page_range) and
    writeback (folio_mkclean) go through the engine's bulk path (engine_guest.GUEST_BULK),
    never left to the reference code on these present, 4K-backed page tables (guest_pte: the
    page faults' events with tables or pages to fill are), and the runs end equal.  Bulk
    from one VA on (BULK_MIN_VAS: a speed threshold only)."""
    monkeypatch.setattr(engine_guest, "BULK_MIN_VAS", 1)
    done = {op: [0, 0] for op in engine_guest.GUEST_BULK}
    for op, fn in list(engine_guest.GUEST_BULK.items()):
        def counted(g, si, st, fn=fn, n=done[op]):
            ok = fn(g, si, st)
            n[0 if ok else 1] += 1
            return ok
        monkeypatch.setitem(engine_guest.GUEST_BULK, op, counted)
    wl = make(gen, 1, **knobs)
    assert_same(apply_host(wl, host, rounds=2) if host else wl)
    for op in ops:
        assert done[op][0] > 0, f"{op}: never in bulk"
    for op in ("guest_free", "guest_fork"):
        assert done[op][1] == 0, f"{op}: left to the reference code"
    events = [e[2] for e in wl.trace.events if e[2].op == "guest_pte"]
    assert done["guest_pte"][0] == sum(not st.tables and not st.fill for st in events)
