"""The `linux` guest profile (docs/semantics.md §4) against the reference simulator.

Small hand-built programs (LinuxGuest) whose expected page-table state follows from Linux's
rules: demand paging, zero page and CoW, shmem clean-writable PTEs, fault-around old PTEs,
aging, munmap, fork; and the CPU table's TCR bits.
"""
import numpy as np
import pytest

from model.arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_SIZE, is_valid
from model.reference_trace import run_reference_trace
from model.scenario import ScenarioError
from model.scenario_io import parse_scenario
from model.trace import EXEC, READ64, WRITE64
from tests.wl_helpers import replay, walk
from workloads.base import WorkloadError
from workloads.linux import CPUS, LinuxGuest, make_profile
from workloads.registry import make

BASE = 0x10_0000_0000
PAGE = 4096


def guest(**knobs):
    return LinuxGuest("t", make_profile(knobs))


def leaf(vm, va):
    return walk(vm, va)[0]


@pytest.mark.parametrize("cpu,ha,hd,haft", [
    ("neoverse-n1", True, True, False),
    ("cortex-a72", False, False, False),         # no HAFDBS
    ("cortex-a55", True, False, False),          # erratum 1024718: no HD
    ("cortex-a510", True, False, False),         # erratum 2051678: no HD
    ("ampere1", False, False, False),            # AC03_CPU_38: KVM keeps HA/HD clear
    ("haft", True, True, True),
])
def test_cpu_profiles_set_tcr(cpu, ha, hd, haft):
    wl = make("sparse", cpu=cpu, regions=2, accesses=4)
    g = wl.scenario.guest
    assert (g.tcr_ha, g.tcr_hd, g.tcr2_haft) == (ha, hd, haft)
    assert wl.scenario.machine.hafdbs == CPUS[cpu].hafdbs


def test_internal_ops_are_not_scenario_ops():
    data = {"version": 1, "machine": {"granule": "4k", "va_bits": 48},
            "guest": {"pt_slot": "pt"}, "memslots": [{"name": "pt", "ipa": 0, "pages": 8}],
            "steps": [{"op": "guest_pte"}]}
    with pytest.raises(ScenarioError, match="unknown op 'guest_pte'"):
        parse_scenario(data, "x.json")


def test_demand_paging_zero_page_then_cow():
    g = guest()
    g.vma(BASE, 4 * PAGE, "anon")
    g.run(0, [BASE, BASE + PAGE, BASE + PAGE, BASE + 2 * PAGE], [READ64, READ64, WRITE64,
                                                                   WRITE64])
    wl = g.build()
    vm = replay(wl)
    # page 0: read only -> the zero page, read-only; page 1: read then write -> its own copy
    z, p1, p2 = leaf(vm, BASE), leaf(vm, BASE + PAGE), leaf(vm, BASE + 2 * PAGE)
    assert leaf(vm, BASE + 3 * PAGE) is None                  # never touched: not mapped
    assert z & DESC_AP2 and not z & DESC_DBM
    assert p1 & DESC_DBM and not p1 & DESC_AP2 and p2 & DESC_DBM and not p2 & DESC_AP2
    oa = lambda d: d & 0xFFFFFFFFF000
    assert len({oa(z), oa(p1), oa(p2)}) == 3
    # guest faults: first touch of 0, 1 (zero page), the write to 1 (CoW), first touch of 2
    assert wl.meta["guest_faults"] == 4
    for r in run_reference_trace(wl.scenario, wl.trace).values():
        assert r.stage1_faults == 4                           # every attempt faults, once
    # the first touch allocated the tables: kernel stores to new page-table pages
    assert len(vm.host.written["pt"]) == 4                    # root + 3 new tables (4K/48)


def test_no_zero_page_anon_read_allocates_dirty_page():
    g = guest(zero_page=False)
    g.vma(BASE, PAGE, "anon")
    g.run(0, [BASE], READ64)
    vm = replay(g.build())
    d = leaf(vm, BASE)
    assert d & DESC_DBM and not d & DESC_AP2 and d & DESC_AF   # anon pages are created dirty
    data = vm.scn.slot("ram")
    assert (d & 0xFFFFFFFFF000) - data.ipa == 0
    assert 0 in vm.host.written["ram"]                         # the kernel zeroed it


@pytest.mark.parametrize("cpu,faults", [("neoverse-n1", 1), ("cortex-a55", 2)])
def test_shmem_read_maps_clean_writable_then_dirty(cpu, faults):
    g = guest(cpu=cpu, fault_around_bytes=0)
    g.vma(BASE, PAGE, "shmem")
    g.run(0, [BASE], READ64)
    g.run(0, [BASE], WRITE64)
    wl = g.build()
    # with HD the store dirties the PTE in hardware; without HD (A55) the kernel must
    assert wl.meta["guest_faults"] == faults
    d = leaf(replay(wl), BASE)
    assert d & DESC_DBM and not d & DESC_AP2 and d & DESC_AF


def test_shmem_read_then_nothing_is_clean_writable():
    g = guest(fault_around_bytes=0)
    g.vma(BASE, PAGE, "shmem")
    g.run(0, [BASE], READ64)
    d = leaf(replay(g.build()), BASE)
    assert d & DESC_DBM and d & DESC_AP2                       # PAGE_SHARED: DBM + AP[2]


@pytest.mark.parametrize("cpu", ["neoverse-n1", "cortex-a72"])
def test_fault_around_maps_the_window_old_with_hardware_af(cpu):
    g = guest(cpu=cpu)
    g.vma(BASE, 64 * PAGE, "text")
    fault_at = BASE + 21 * PAGE                   # window of 16 pages: 16..31
    g.run(0, [fault_at], EXEC)
    wl = g.build()
    vm = replay(wl)
    ha = wl.scenario.guest.tcr_ha
    for p in range(64):
        d = leaf(vm, BASE + p * PAGE)
        if not 16 <= p < 32:
            assert d is None
            continue
        assert d is not None and d & DESC_AP2 and not d & DESC_DBM and not d & DESC_PXN
        young = bool(d & DESC_AF)
        assert young == (p == 21 or not ha)        # arch_wants_old_prefaulted_pte
    assert wl.meta["fault_around_ptes"] == 15


def test_old_ptes_without_hardware_af_fault_into_the_guest():
    # cortex-a72: no HA; aging clears AF, the next access takes an AF fault the kernel fixes
    g = guest(cpu="cortex-a72", age_period=4, age_fraction=1.0)
    g.vma(BASE, 4 * PAGE, "anon")
    va = BASE + np.arange(4) * PAGE
    g.run(0, np.concatenate([va, va]), WRITE64)
    wl = g.build()
    assert wl.meta["guest_faults"] == 8           # 4 first touches + 4 AF faults after aging
    for r in run_reference_trace(wl.scenario, wl.trace).values():
        assert r.stage1_faults == 8


def test_aging_clears_af_and_hardware_sets_it_again():
    g = guest(age_period=8, age_fraction=0.5)
    g.vma(BASE, 8 * PAGE, "anon")
    va = BASE + np.arange(8) * PAGE
    g.run(0, np.concatenate([va, va[:4]]), WRITE64)
    wl = g.build()
    vm = replay(wl)
    af = [bool(leaf(vm, int(v)) & DESC_AF) for v in va]
    # passes are due every 8 trace positions (the clock); the 8 first writes are 16
    # positions (each demand fault's attempt, then the access), so the passes due at 8 and
    # 16 both run at 16: pages 0..3, then 4..7; the next, due at 24, would come 24 - 16 =
    # 8 accesses later, after the trace's end: pages 0..3 written again (HA sets AF), 4..7
    # stay old
    assert [e[0] for e in wl.trace.events if e[2].op == "guest_age"] == [16, 16]
    assert af == [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize("nonleaf", [True, False])
def test_haft_nonleaf_aging_skips_tables_no_walk_went_through(nonleaf):
    from model.host import S2_UNMAPPED
    from model.scenario import Step
    from workloads.host import with_events
    # passes due every 4 trace positions; the 4 first writes are 8 positions (attempt,
    # access): the passes due at 4 and 8 run after them, at 8; the next (due at 12) after
    # 12 - 8 = 4 more accesses: the 4 reads
    g = guest(cpu="haft", age_period=4, age_fraction=1.0, age_nonleaf=nonleaf)
    g.vma(BASE, 1024 * PAGE, "anon")              # two last-level tables, A and B
    va = BASE + np.array([0, 1, 512, 513]) * PAGE
    g.run(0, va, WRITE64)                          # then aging passes at 8: AF all cleared
    g.run(0, [va[0]] * 4, READ64)                  # walks through A only (HAFT sets A's AF)
    g.run(0, [va[0] + 2 * PAGE], WRITE64)          # the last pass (at 12) comes before this
    wl = g.build()
    ages = [e for e in wl.trace.events if e[2].op == "guest_age"]
    assert [e[0] for e in ages if e[2].vas] == [8, 8, 12]
    assert all(e[2].nonleaf == nonleaf for e in ages)
    # zap the page-table slot just before the last pass: what it loads gets mapped again
    pt = wl.scenario.slot("pt")
    wl = with_events(wl, [(ages[-1][0], Step("zap", slot="pt", first=0, count=pt.pages))],
                     "zap", {})
    vm = replay(wl)
    l2 = walk(vm, int(va[0]))[1][-2]
    dA, dB = (vm.host.read_desc(l2 + vm.geo.index(int(v), 2) * DESC_SIZE) for v in va[::2])
    tA, tB = walk(vm, int(va[0]))[1][-1], walk(vm, int(va[2]))[1][-1]
    assert tA != tB
    # table B saw no walk since the passes at 8: with non-leaf aging its AF stays clear and
    # the last pass skips its leaves (never loaded: B's table page stays unmapped in stage 2)
    assert bool(dB & DESC_AF) == (not nonleaf)
    assert dA & DESC_AF                            # the last access walked through A
    assert (vm.host.s2.get(tB, S2_UNMAPPED) == S2_UNMAPPED) == nonleaf
    assert vm.host.s2.get(tA, S2_UNMAPPED) != S2_UNMAPPED


def test_munmap_clears_ptes_and_frees_tables():
    g = guest()
    g.vma(BASE, 2 * PAGE, "anon")
    g.vma(BASE + (4 << 20), PAGE, "anon")         # another last-level table
    g.run(0, [BASE, BASE + PAGE, BASE + (4 << 20)], WRITE64)
    g.munmap(BASE, 2 * PAGE)
    wl = g.build()
    vm = replay(wl)
    assert leaf(vm, BASE) is None and leaf(vm, BASE + PAGE) is None
    assert leaf(vm, BASE + (4 << 20)) is not None
    l2 = walk(vm, BASE)[1][-1]                     # the walk now stops at the level-2 table
    assert not is_valid(vm.host.read_desc(l2 + vm.geo.index(BASE, 2) * DESC_SIZE))
    assert [e[2].op for e in wl.trace.events][-2:] == ["guest_pte", "guest_free"]


def test_freed_pages_are_reused():
    g = guest()
    g.vma(BASE, PAGE, "anon")
    g.run(0, [BASE], WRITE64)
    g.munmap(BASE, PAGE)
    g.vma(BASE + (1 << 30), PAGE, "anon")
    g.run(0, [BASE + (1 << 30)], WRITE64)
    wl = g.build()
    vm = replay(wl)
    # the data page and the freed last-level table come back (LIFO): no new granules
    assert wl.meta["data_granules"] == 1
    d = leaf(vm, BASE + (1 << 30))
    assert d & 0xFFFFFFFFF000 == vm.scn.slot("ram").ipa


def test_demand_false_premaps_with_build_tables():
    wl = make("memstress", vcpus=1, bytes_per_vcpu=32 * PAGE, demand=False)
    assert wl.meta["guest_faults"] == 0 and not wl.trace.events
    assert sum(m.pages for m in wl.scenario.mappings) == 32
    for r in run_reference_trace(wl.scenario, wl.trace).values():
        assert r.stage1_faults == 0


@pytest.mark.parametrize("knobs", [dict(granule="16k", va_bits=47),
                                   dict(granule="64k", va_bits=42),
                                   dict(layout="shared", backing="anon_thp"),
                                   dict(cpu="cortex-a72", age_period=100, zero_page=False)])
def test_attempts_fault_exactly_once_across_profiles(knobs):
    # the generator's model of the guest and the simulator agree: every traced attempt
    # takes a stage-1 fault and no other access does
    for name, extra in (("zipf", dict(operations=400, keys=4096, mapping="shmem")),
                        ("mmap_churn", dict(rounds=10)),
                        ("fork", dict(accesses=600, heap_bytes=32 << 12))):
        wl = make(name, 1, **extra, **knobs)
        r = run_reference_trace(wl.scenario, wl.trace, ("fix",))["fix"]
        assert r.stage1_faults == wl.meta["guest_faults"] == len(wl.meta["attempts"])


def test_profile_knob_errors():
    with pytest.raises(WorkloadError, match="cpu"):
        make("sparse", cpu="pentium")
    with pytest.raises(WorkloadError, match="va_bits"):
        make("sparse", granule="64k", va_bits=48 + 1)
    with pytest.raises(WorkloadError, match="unknown knob 'bogus'"):
        make("sparse", bogus=1)
    with pytest.raises(WorkloadError, match="not fit"):
        make("pointer_chase", va_bits=36, granule="16k", span_bytes=1 << 40, nodes=4)


def test_writeback_cleans_file_ptes_and_the_next_write_faults():
    g = guest(writeback_period=3, fault_around_bytes=0)
    g.vma(BASE, 2 * PAGE, "file")
    g.vma(BASE + (1 << 30), PAGE, "anon")
    g.run(0, [BASE, BASE + PAGE, BASE + (1 << 30)], WRITE64)    # then writeback
    g.run(0, [BASE, BASE + (1 << 30)], WRITE64)                 # page 0 dirtied again
    wl = g.build()
    # 3 first touches, then the write to the cleaned file page faults (page_mkwrite)
    assert wl.meta["guest_faults"] == 4
    vm = replay(wl)
    d0, d1, da = leaf(vm, BASE), leaf(vm, BASE + PAGE), leaf(vm, BASE + (1 << 30))
    assert d1 & DESC_AP2 and not d1 & DESC_DBM            # cleaned: read-only
    assert d0 & DESC_DBM and not d0 & DESC_AP2            # written again: dirty
    assert da & DESC_DBM and not da & DESC_AP2            # anon memory: no writeback
    for r in run_reference_trace(wl.scenario, wl.trace).values():
        assert r.stage1_faults == 4


def test_footprint_counts_tables_and_data_pages():
    for fork in (False, True):
        g = guest()
        g.vma(BASE, 3 * PAGE, "anon")
        g.vma(BASE + (1 << 30), PAGE, "anon")
        g.run(0, [BASE, BASE + PAGE, BASE + 2 * PAGE, BASE + (1 << 30)],
              [WRITE64, WRITE64, READ64, WRITE64])
        if fork:
            g.fork(1)
        wl = g.build()
        # root + L1 + (L2, L3) for each of the two 1 GiB regions, per address space (the
        # child's copy has the same shape); 3 written pages + the zero page, shared
        assert (wl.meta["pt_pages"], wl.meta["data_pages"]) == (6 * (1 + fork), 4)
