"""The modelled clock and the calibrated host scenarios (issue 9): each schedule derived by
hand from its rate and the window, then checked against what the scenario produces; runs
of them against the reference engine."""
import numpy as np
import pytest

from model.engine import run_trace
from model.reference_trace import run_reference_trace
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Vmm
from model.trace import Trace
from workloads import registry
from workloads.base import Workload, WorkloadError
from workloads.clock import access_time, guest_seconds, with_seconds

GIB_PAGES = (1 << 30) // 4096


def guest(ram_pages: int, n: int, access_ns: float, stores=None, backing="anon",
          pt_pages: int = 16) -> Workload:
    """A warm guest: a page-table slot and one RAM slot of `ram_pages`, the first 64 pages
    mapped at VA 0x1000_0000; `n` reads of those pages, or stores where `stores` says."""
    slots = (Memslot("pt", 0x4000_0000, pt_pages), Memslot("ram", 0x1_0000_0000, ram_pages,
                                                           backing=backing))
    scn = Scenario("g", Machine(), Guest(tcr_ha=True, tcr_hd=True, pt_slot="pt"), slots,
                   Vmm(), (Mapping(0x1000_0000, 0x1_0000_0000, 64),), ())
    page = np.arange(n) % 64 if stores is None else stores[1]
    va = (0x1000_0000 + page * 4096).astype(np.uint64)
    kind = np.zeros(n, np.uint8) if stores is None else stores[0].astype(np.uint8)
    return Workload("g", scn, Trace(np.zeros(n, np.uint16), va, kind),
                    {"generator": "memstress", "access_ns": access_ns})


def steps(w, op):
    return [(p, st) for p, _i, st in w.trace.events if st.op == op]


def test_numa_64mb_every_half_second_over_two_seconds_on_1gib():
    # 2 s at 0.1 ms per access = 20,000 accesses; scans at t = 0, 0.5, 1.0, 1.5 s (t = 2.0 is
    # the window's end): positions 0, 5000, 10000, 15000; 64 MB = 16,384 pages each, in
    # address order: the 16 page-table pages first, then RAM from page 0
    # (first_s = 0: the window starts at a scan, not after the kernel's 1 s scan delay)
    w = registry.apply_host(guest(GIB_PAGES, 20_000, 1e5), "numa", scan_size_mb=64,
                            scan_period_s=0.5, first_s=0.0)
    ev = steps(w, "numa_hint")
    by_pos = {}
    for p, st in ev:
        by_pos.setdefault(p, []).append(st)
    assert sorted(by_pos) == [0, 5000, 10000, 15000]
    for k, pos in enumerate(sorted(by_pos)):
        sts = by_pos[pos]
        assert sum(len(st.pages) for st in sts) == 16384
        ram = [st for st in sts if st.slot == "ram"][0]
        first = 16384 * k - 16 if k else 0
        assert ram.pages[0] == first and ram.pages[-1] == 16384 * (k + 1) - 16 - 1
    assert [st.slot for st in by_pos[0]] == ["pt", "ram"] and len(by_pos[0][0].pages) == 16


def test_numa_scan_wraps_around_the_guest():
    # 100 pages of guest (16 + 84); 1 MB = 256 pages per scan is more than the guest: every
    # scan covers all 100 pages once
    w = registry.apply_host(guest(84, 1000, 1e6), "numa", scan_size_mb=1, scan_period_s=0.25,
                            first_s=0.0)
    ev = steps(w, "numa_hint")
    assert sorted({p for p, _ in ev}) == [0, 250, 500, 750]
    assert all(len(st.pages) == (16 if st.slot == "pt" else 84) for _, st in ev)


def test_ksm_100_pages_every_20ms_over_100ms():
    # wake-ups at 0, 20, 40, 60, 80 ms over a 0.1 s window (1 us per access: 100,000
    # accesses); merge_percent = 100: every scanned page merges, 500 pages in address order
    w = registry.apply_host(guest(4096, 100_000, 1e3), "ksm", merge_percent=100.0)
    ev = steps(w, "ksm_merge")
    assert sorted({p for p, _ in ev}) == [0, 20_000, 40_000, 60_000, 80_000]
    pages = np.concatenate([st.pages + (0 if st.slot == "pt" else 16) for _, st in ev])
    assert np.array_equal(pages, np.arange(500))
    none = registry.apply_host(guest(4096, 100_000, 1e3), "ksm", merge_percent=0.0)
    assert steps(none, "ksm_merge") == []


def test_khugepaged_4096_pages_every_10s_over_25s():
    # 25 s at 1 ms per access: 25,000 accesses; wake-ups at 0, 10, 20 s; each scans 4096
    # pages of the THP-backed slot = 8 ranges of 512 pages, continuing where it stopped
    w = registry.apply_host(guest(8 * 4096, 25_000, 1e6, backing="anon_thp"), "khugepaged")
    ev = steps(w, "thp_collapse")
    assert sorted({p for p, _ in ev}) == [0, 10_000, 20_000]
    firsts = [int(st.pages[0]) for _, st in ev]
    assert firsts == list(range(0, 24 * 512, 512))
    assert all(len(st.pages) == 512 and st.slot == "ram" for _, st in ev)
    # a guest without THP backing: nothing to collapse
    assert steps(registry.apply_host(guest(4096, 25_000, 1e6), "khugepaged"),
                 "thp_collapse") == []


def migrating_guest() -> Workload:
    """1,000 pages (16 + 984), 3,000 accesses of 1 ms; stores to 250 distinct pages in
    [0, 1000) and to 100 in [1000, 1100)."""
    n = 3000
    kind = np.zeros(n, np.uint8)
    page = np.zeros(n, np.int64)
    kind[:250], page[:250] = 1, np.arange(250)
    kind[1000:1100], page[1000:1100] = 1, np.arange(300, 400)
    return guest(984, n, 1e6, stores=(kind, page))


def test_migration_iterations_follow_the_dirty_set():
    # 1,000 pages of guest (16 + 984) at 4.096 MB/s: the first pass takes 1 s = 1,000
    # accesses of 1 ms.  The guest stores to 250 distinct pages in [0, 1000): iteration 2
    # sends them, 250 * 4096 B / 4.096 MB/s = 0.25 s -> harvest at 1250; it stores to 100
    # pages in [1000, 1250): 0.1 s -> harvest at 1350; nothing in [1250, 1350): done.
    w = registry.apply_host(migrating_guest(), "migration",
                            bandwidth_mb_s=4.096, downtime_limit_ms=0.0, clear_chunk_mb=0)
    assert [p for p, st in steps(w, "enable_dirty_log")] == [0, 0]
    assert sorted({p for p, _ in steps(w, "harvest")}) == [1000, 1250, 1350]
    assert all(st.pages is None for _, st in steps(w, "harvest"))      # whole slots
    assert w.meta["host"][-1]["iterations_in_window"] == 3
    # the same at 10 Gbit/s = 1250 MB/s: the first pass (4.096 MB) takes 3.3 ms -> 3
    fast = registry.apply_host(migrating_guest(), "migration", link_gbit_s=10.0,
                               clear_chunk_mb=0)
    assert sorted({p for p, _ in steps(fast, "harvest")}) == [3]


def test_migration_clears_one_chunk_before_sending_it():
    # The same guest and stores, KVM_CLEAR_DIRTY_LOG in 1 MiB (256-page) chunks: slot pt
    # (16 pages) is one chunk, slot ram (984) four: [0,256) [256,512) [512,768) [768,984),
    # starting at 0, 16, 272, 528, 784 of the 1,000 pages.  Iteration 1 sends everything in
    # address order over 1,000 accesses, so each chunk is cleared at its offset: 0, 16, 272,
    # 528, 784.  Iteration 2 (1000 + 250) and 3 (1250 + 100) clear at the same shares of
    # their length: 1000, 1004, 1068, 1132, 1196 and 1250, 1251.6, 1277.2, 1302.8, 1328.4
    # rounded to the nearest access.
    n = 3000
    kind = np.zeros(n, np.uint8)
    page = np.zeros(n, np.int64)
    kind[:250], page[:250] = 1, np.arange(250)
    kind[1000:1100], page[1000:1100] = 1, np.arange(300, 400)
    w = registry.apply_host(migrating_guest(), "migration",
                            bandwidth_mb_s=4.096, downtime_limit_ms=0.0, clear_chunk_mb=1)
    got = [(p, st.slot, int(st.pages[0]), int(st.pages[-1]) + 1)
           for p, st in steps(w, "harvest") if st.pages is not None]
    chunks = [("pt", 0, 16), ("ram", 0, 256), ("ram", 256, 512), ("ram", 512, 768),
              ("ram", 768, 984)]
    want = [(p, *c) for ps in ([0, 16, 272, 528, 784], [1000, 1004, 1068, 1132, 1196],
                               [1250, 1252, 1277, 1303, 1328]) for p, c in zip(ps, chunks)]
    assert got == want
    assert w.meta["host"][-1]["iterations_in_window"] == 3
    # iteration 3 (100 pages, 1250..1350) wrote nothing: the rest (0 pages) fits the 0 ms
    # downtime, so the switch-over comes at 1350 with the last sync of every slot
    assert [(p, st.slot) for p, st in steps(w, "harvest") if st.pages is None] == [
        (1350, "pt"), (1350, "ram")]
    assert w.meta["host"][-1]["switchover_s"] == pytest.approx(1.350)     # 1 ms per access
    ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
    assert {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()} == ref
    # the chunks of the three iterations and the final syncs are the complete rounds
    assert ref["fix"]["dirty_rounds"] == 15 + 2


def test_seconds_sizes_the_trace_in_guest_time():
    w = guest(64, 1000, 250.0)
    assert guest_seconds(w) == pytest.approx(250e-6)
    longer = with_seconds(w, 0.001)                       # 1 ms / 250 ns = 4000 accesses
    assert len(longer.trace) == 4000
    assert np.array_equal(longer.trace.va[1000:2000], w.trace.va)
    assert len(with_seconds(w, 1e-4).trace) == 400
    with pytest.raises(WorkloadError):
        with_seconds(w, 0.0)
    assert access_time(w).ns == 250.0
    built = registry.build("zipf", 1, seconds=0.001, demand=False)
    assert len(built.trace) == 4000                        # zipf: 250 ns per access
    assert registry.build("zipf", 1, seconds=0.001, demand=False,
                          access_ns=500.0).meta["access_ns"] == 500.0


@pytest.mark.parametrize("host,knobs", [
    ("numa", dict(scan_size_mb=1, scan_period_s=0.0005, first_s=0.0)),
    ("ksm", dict(sleep_ms=0.2, merge_percent=30.0)),
    ("khugepaged", dict(pages_to_scan=1024, scan_sleep_ms=0.5)),
    ("migration", dict(link_gbit_s=100.0, downtime_limit_ms=0.0)),
    ("migration", dict(link_gbit_s=100.0, downtime_limit_ms=0.0, clear_chunk_mb=1)),
    ("reclaim", dict(reclaim_mb_s=1000.0, batch_period_ms=0.2)),
    ("far_memory", dict(cold_age_s=0.0005, scan_period_s=0.0003)),
])
def test_timed_hosts_engine_equals_reference(host, knobs):
    """High event density (a wake-up every few hundred accesses): both engines agree on
    every metric, host_unmapped_pages included."""
    w = registry.build("zipf", 3, keys=4096, operations=1500, demand=False,
                       mapping="anon", host_name=None)
    from dataclasses import replace
    w.scenario = replace(w.scenario, memslots=tuple(
        replace(s, backing="anon_thp") if s.pages >= 512 else s for s in w.scenario.memslots))
    w.meta["access_ns"] = 1000.0
    w = registry.apply_host(w, host, **knobs)
    assert len(w.trace.events) >= 4
    ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
    fast = {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()}
    assert fast == ref
    if host != "migration":
        assert ref["fix"]["host_unmapped_pages"] > 0


def test_warm_stage2_window_starts_with_the_working_set_mapped():
    """warm_stage2: the window starts in a VM that has run, so touching the working set
    takes no stage-2 fault; a cold one faults once per data page and per table page walked
    (4 table levels of one 2 MiB region here); under dirty logging from the start a warm
    VM's first store to each page is one permission fault."""
    def run(warm, host=None):
        w = registry.build("memstress", 1, demand=False, warm_stage2=warm, vcpus=1,
                           bytes_per_vcpu=64 * 4096, iterations=2, write_percent=0)
        if host:
            w = registry.apply_host(w, host, bandwidth_mb_s=1e-3)
        ref = run_reference_trace(w.scenario, w.trace)
        assert {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()} == \
            {p: r.metrics() for p, r in ref.items()}
        return ref["fix"].metrics()
    cold, warm = run(False), run(True)
    assert warm["s2_faults"] == 0
    assert cold["s2_faults"] == 64 + 4 and cold["s2_s1ptw_translation"] == 4
    logged = run(True, "migration")                 # reads only: RO stage 2 is enough
    assert logged["s2_faults"] == 0


def test_aging_period_in_guest_time():
    # sparse: 100 ns per access, so 0.5 ms between aging passes is every 5,000 trace
    # positions; 20,000 accesses and the 64 demand faults' attempts (one per region, all in
    # the first 5,000 accesses) are 20,064 positions: passes due at 5,000, 10,000, 15,000,
    # 20,000; the first runs at the end of the chunk of 5,000 accesses (position 5,064)
    w = registry.make("sparse", 1, regions=64, accesses=20_000, age_period_ms=0.5)
    assert w.meta["profile"]["age_period"] == 5000
    assert len(w.trace) == 20_064
    assert sorted({p for p, _ in steps(w, "guest_age")}) == [5064, 10000, 15000, 20000]
    assert w.meta["aging_passes"] == 4
    # the same period at 500 ns per access (knob access_ns): every 1,000 accesses
    z = registry.make("zipf", 1, keys=1024, operations=5000, age_period_ms=0.5,
                      access_ns=500.0)
    assert z.meta["profile"]["age_period"] == 1000


def swapped(w):
    return [(p, st.slot, st.pages.tolist()) for p, st in steps(w, "swap_out")]


def test_reclaim_takes_the_coldest_pages_first():
    # 16 table-slot pages (root, L1, L2, one leaf table: pages 0-3 in use) and 64 RAM pages,
    # all mapped and warm; the guest reads RAM pages 0-31 round robin, 1 ms per access.
    # 1/16 MiB/s in batches of 1 s = 16 pages a batch, at 0, 1, 2, 3 s (positions 0, 1000,
    # 2000, 3000).  Coldest first: never-touched pages (table-slot pages 4-15), then the
    # warm set untouched in the window by address (RAM 0-3 at 0 s; 32-47; 48-63), then by
    # last access (position p reads RAM p % 32: at 2968-2983 pages 24-31 then 0-7).  The tables are walked by every access:
    # never the coldest.
    n = 4000
    w = guest(64, n, 1e6, stores=(np.zeros(n, np.uint8), np.arange(n) % 32))
    r = registry.apply_host(w, "reclaim", reclaim_mb_s=1 / 16, batch_period_ms=1000.0,
                            sustained=False)
    assert swapped(r) == [(0, "pt", list(range(4, 16))), (0, "ram", [0, 1, 2, 3]),
                          (1000, "ram", list(range(32, 48))),
                          (2000, "ram", list(range(48, 64))),
                          (3000, "ram", list(range(8)) + list(range(24, 32)))]
    ref = {p: x.metrics() for p, x in run_reference_trace(r.scenario, r.trace).items()}
    assert {p: x.metrics() for p, x in run_trace(r.scenario, r.trace).items()} == ref
    # this guest's stage 2 starts empty: the first walk faults on the 4 tables, and never
    # again (tables are never reclaimed while in use); of the reclaimed pages only those
    # read in the window were mapped at stage 2: the 16 of the last batch
    assert ref["fix"]["s2_s1ptw_translation"] == 4
    assert ref["fix"]["host_unmapped_pages"] == 16
    # sustained pressure: the never-touched pages went before the window (at 0, unmapped
    # anyway), so the first batch already takes the warm set: RAM 0-15 by address
    s = registry.apply_host(w, "reclaim", reclaim_mb_s=1 / 16, batch_period_ms=1000.0)
    assert swapped(s)[:3] == [(0, "pt", list(range(4, 16))), (0, "ram", list(range(16))),
                              (1000, "ram", list(range(32, 48)))]


def test_far_memory_swaps_pages_idle_for_the_cold_age():
    # cold age 0.5 s, a scan every 1 s at 0, 1, 2 s: at 0 s only never-touched pages
    # (table-slot pages 4-15) are idle that long; at 1 s also the warm set's RAM 32-63 that
    # the window never touched (idle since its start); at 2 s nothing new.
    n = 3000
    w = guest(64, n, 1e6, stores=(np.zeros(n, np.uint8), np.arange(n) % 32))
    f = registry.apply_host(w, "far_memory", cold_age_s=0.5, scan_period_s=1.0)
    assert swapped(f) == [(0, "pt", list(range(4, 16))), (1000, "ram", list(range(32, 64)))]
    ref = {p: x.metrics() for p, x in run_reference_trace(f.scenario, f.trace).items()}
    assert {p: x.metrics() for p, x in run_trace(f.scenario, f.trace).items()} == ref


def test_seconds_repeats_lazily_and_runs_as_a_copied_trace():
    """--seconds serves the access stream again without copying it (TiledColumn); the
    engines give the same metrics as on the repeats written out in full (np.resize)."""
    from model.trace_stream import TiledTrace
    w = registry.build("zipf", 2, keys=2048, operations=1500, demand=False,
                       age_period=700, host_name=None)
    long = with_seconds(w, access_time(w).ns * 1e-9 * 7 * len(w.trace) + 1e-12)
    assert isinstance(long.trace, TiledTrace) and len(long.trace) == 7 * len(w.trace)
    assert long.trace.va.nbytes == w.trace.va.nbytes            # one period held
    tr = long.trace
    n = len(tr)
    full = Trace(np.resize(w.trace.vcpu, n), np.resize(w.trace.va, n),
                 np.resize(w.trace.kind, n), list(tr.events))
    for lo, hi in ((0, 10), (len(w.trace) - 5, len(w.trace) + 5), (3, n)):
        assert np.array_equal(tr.va[lo:hi], full.va[lo:hi])
    idx = np.array([0, n - 1, len(w.trace), 5 * len(w.trace) + 3])
    assert np.array_equal(tr.kind[idx], full.kind[idx]) and tr.va[n - 1] == full.va[n - 1]
    timed = registry.apply_host(long, "numa", scan_size_mb=1, scan_period_s=2e-5,
                                 first_s=0.0)
    ref = {p: r.metrics() for p, r in run_trace(timed.scenario, timed.trace).items()}
    copied = Trace(full.vcpu, full.va, full.kind, list(timed.trace.events))
    assert {p: r.metrics() for p, r in run_trace(timed.scenario, copied).items()} == ref
    small = registry.apply_host(with_seconds(w, access_time(w).ns * 1e-9 * 2 * len(w.trace)),
                                "ksm", sleep_ms=0.05, merge_percent=50.0)
    assert ({p: r.metrics() for p, r in run_reference_trace(small.scenario,
                                                              small.trace).items()}
            == {p: r.metrics() for p, r in run_trace(small.scenario, small.trace).items()})


def test_numa_schedule_of_a_4gib_guest_at_both_ends_of_the_kernels_range():
    """kernel/sched/fair.c task_nr_scan_windows / task_scan_min / task_scan_max: a 4 GiB RSS
    is 16 windows of 256 MB; task_scan_min = max(1000 / (2560 / 256), 1000 / 16) = 100 ms,
    task_scan_max = max(100, 60000 / 16) = 3750 ms; the first scan after the scan delay
    (sysctl_numa_balancing_scan_delay = 1000 ms).  Over 10 s of guest time (10 us per
    access: 10^6 accesses) scans at 1.0, 1.1, ... 9.9 s (90) fast, at 1.0, 4.75, 8.5 s slow,
    65,536 pages (256 MB) each."""
    from workloads.host_timed import numa_scan_period_ms
    assert numa_scan_period_ms(4096, 256, "fast") == 100
    assert numa_scan_period_ms(4096, 256, "slow") == 3750
    ram = 4 * GIB_PAGES - 16                       # with the 16-page table slot: 4 GiB
    for rate, want in (("fast", [1.0 + 0.1 * k for k in range(90)]), ("slow", [1.0, 4.75, 8.5])):
        w = registry.apply_host(guest(ram, 1_000_000, 1e4), "numa", scan_rate=rate)
        by_pos = {}
        for p, st in steps(w, "numa_hint"):
            by_pos[p] = by_pos.get(p, 0) + len(st.pages)
        assert sorted(by_pos) == [round(t * 1e5) for t in want]
        assert set(by_pos.values()) == {65536}
        assert w.meta["host"][-1]["scan_period_s"] == numa_scan_period_ms(4096, 256, rate) / 1e3
