"""`layout = shared` (issue 20 item 8): tables and data from one pool in allocation order,
spread over the VM's memory as a warm guest's page allocator hands pages out
(model/stage1.py allocation_order; docs/scenario-format.md's layout rule)."""
import numpy as np
import pytest

from model.engine import run_trace
from model.reference_trace import run_reference_trace
from model.stage1 import allocation_order, build_tables, spread_stride
from workloads import registry

PAGE = 4096


def test_tables_and_data_interleave_in_allocation_order():
    # sparse, 4 regions of 2 MiB: the first touch of each region needs its own leaf table
    # (the first also the level-1 and level-2 tables), then its data page; address order
    # (no ram_mb): root 0, L1 1, L2 2, leaf 3, data 4, then leaf, data per region
    w = registry.make("sparse", 1, regions=4, accesses=64, order="sequential",
                      layout="shared", demand=False)
    ram = w.scenario.slot("ram")
    t = build_tables(w.scenario)
    tables = ((t.table_ipas - ram.ipa) // PAGE).tolist()
    data = sorted((m.ipa - ram.ipa) // PAGE for m in w.scenario.mappings)
    assert tables == [0, 1, 2, 3, 5, 7, 9] and data == [4, 6, 8, 10]


def test_spread_order_visits_every_granule_once():
    for cap in (1, 2, 10, 512, 65536, 1 << 20):
        o = allocation_order(cap, "spread")
        assert sorted(o.tolist()) == list(range(1, cap))
    assert spread_stride(65536) == 40503          # round(65536 x 0.618034) = 40503, odd


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_numa_scan_of_x_percent_of_ram_unmaps_about_x_percent_of_tables(share):
    """A warm guest's tables spread over its memory: a NUMA scan of `share` of RAM (one
    contiguous range, as task_numa_work walks it) takes about that share of the table
    pages, which the walks then fault on (S1PTW translation); with layout = split it takes
    every table page (the table slot comes first)."""
    ram_mb = 64
    hk = {"first_s": 0.0, "scan_size_mb": int(ram_mb * share), "scan_period_s": 10.0}
    knobs = dict(regions=400, accesses=4000, demand=False, ram_mb=ram_mb, warm_stage2=True)
    got = {}
    for layout in ("shared", "split"):
        w = registry.build("sparse", 1, layout=layout, host_name="numa", host_knobs=hk,
                           **knobs)
        ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
        assert {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()} == ref
        got[layout] = ref["fix"]["s2_s1ptw_translation"] / w.meta["pt_pages"]
    assert got["shared"] == pytest.approx(share, abs=0.03)
    assert got["split"] == 1.0


def test_interleaved_database_under_aging_and_repeats_both_engines():
    w = registry.build("shared_db", 2, processes=4, buffer_mb=16, pages_per_process=64,
                       accesses=600, layout="shared", demand=False, warm_stage2=True,
                       ram_mb=32, aging="damon", damon_regions=16, age_period_ms=0.1,
                       access_ns=1000.0, seconds=0.003, host_name="numa",
                       host_knobs={"first_s": 0.0, "scan_size_mb": 8, "scan_period_s": 0.001})
    # 3,000 accesses of 1 us, a DAMON sample every 100: passes at 100, ..., 2,900
    assert w.scenario.guest.pt_order == "spread" and w.meta["aging_passes"] == 29
    ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
    assert {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()} == ref
    assert np.isfinite(ref["fix"]["s2_s1ptw_translation"])
