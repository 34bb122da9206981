"""Each workload generator against the defining property of the program it stands for.

Expected values come from the knobs' meaning, never from a generator's output: the checks
read the program's accesses (the trace minus the guest's fault attempts) or the guest's page
tables after a reference replay.
"""
import math

import numpy as np
import pytest

from model.trace import DC_ZVA, READ64, STORE_MASK, WRITE64
from tests.wl_helpers import program, replay, walk
from workloads.registry import GENERATORS, make


def test_every_issue_generator_is_registered():
    assert {"stream", "memstress", "zipf", "sparse", "pointer_chase", "mmap_churn", "fork",
            "gc"} <= set(GENERATORS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_seeded_and_deterministic(name):
    small = {"memstress": dict(bytes_per_vcpu=64 << 10, write_percent=50), "gc": dict(heap_bytes=1 << 20),
             "pointer_chase": dict(nodes=256, hops=512), "fork": dict(accesses=512),
             "mmap_churn": dict(rounds=8), "sparse": dict(regions=16, accesses=256),
             "zipf": dict(operations=256, keys=1024), "stream": dict(bytes_per_vcpu=16 << 10)}
    a, b = make(name, 3, **small.get(name, {})), make(name, 3, **small.get(name, {}))
    assert np.array_equal(a.trace.va, b.trace.va) and np.array_equal(a.trace.kind, b.trace.kind)
    assert [e[2] for e in a.trace.events] == [e[2] for e in b.trace.events]
    if name != "stream":                       # stream has no randomness
        c = make(name, 4, **small.get(name, {}))
        assert not (np.array_equal(a.trace.va, c.trace.va)
                    and np.array_equal(a.trace.kind, c.trace.kind))


# ---- data-heavy ------------------------------------------------------------------------
@pytest.mark.parametrize("op,kind", [("memset", WRITE64), ("memset_zva", DC_ZVA)])
def test_stream_memset_is_sequential_by_stride(op, kind):
    vcpus, nbytes, stride, passes = 3, 40 << 10, 128, 2
    wl = make("stream", vcpus=vcpus, bytes_per_vcpu=nbytes, op=op, stride=stride,
              passes=passes, burst=7)
    vc, va, kd = program(wl)
    assert np.all(kd == kind)
    per_pass = nbytes // stride
    for v in range(vcpus):
        mine = va[vc == v].astype(np.int64)
        assert len(mine) == per_pass * passes
        for p in range(passes):
            run = mine[p * per_pass:(p + 1) * per_pass]
            assert np.all(np.diff(run) == stride)     # strictly increasing by the stride
            assert run[-1] - run[0] == nbytes - stride
        assert np.array_equal(mine[:per_pass], mine[per_pass:2 * per_pass])
    starts = sorted(int(va[vc == v][0]) for v in range(vcpus))
    assert len(set(np.diff(starts))) == 1          # consecutive per-vCPU regions (memstress)


def test_stream_memcpy_loads_source_stores_destination():
    wl = make("stream", vcpus=1, bytes_per_vcpu=32 << 10, op="memcpy", stride=64, passes=1)
    _, va, kd = program(wl)
    loads, stores = va[kd == READ64].astype(np.int64), va[kd == WRITE64].astype(np.int64)
    assert len(loads) == len(stores) == (16 << 10) // 64
    assert np.all(stores - loads == 16 << 10)       # destination = source + half the buffer
    assert np.all(np.diff(loads) == 64)


@pytest.mark.parametrize("write_percent", [0, 30, 100])
def test_memstress_write_fraction_within_3_sigma(write_percent):
    wl = make("memstress", 11, vcpus=2, bytes_per_vcpu=1 << 20, write_percent=write_percent,
              iterations=4)
    _, _, kd = program(wl)
    n = len(kd)
    assert n == 2 * 256 * 4                         # one access per page per iteration
    p = write_percent / 100
    frac = np.count_nonzero(STORE_MASK[kd]) / n
    assert abs(frac - p) <= 3 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_memstress_sequential_touches_every_page_once_per_iteration():
    pages, its = 128, 3
    wl = make("memstress", vcpus=2, bytes_per_vcpu=pages * 4096, iterations=its)
    vc, va, _ = program(wl)
    for v in range(2):
        mine = va[vc == v].astype(np.int64)
        assert np.all(mine % 4096 == 0)
        for i in range(its):
            it = mine[i * pages:(i + 1) * pages]
            assert np.all(np.diff(it) == 4096)
    assert len(np.unique(va)) == 2 * pages


def test_memstress_random_access_is_uniform_over_the_region():
    pages = 64
    wl = make("memstress", 5, vcpus=1, bytes_per_vcpu=pages * 4096, iterations=200,
              random_access=True)
    _, va, _ = program(wl)
    counts = np.bincount((va - va.min()).astype(np.int64) // 4096, minlength=pages)
    n, e = counts.sum(), counts.sum() / pages
    chi2 = float(((counts - e) ** 2 / e).sum())
    assert n == pages * 200 and chi2 < 63 + 4 * math.sqrt(2 * 63)   # df = 63, ~4 sigma


@pytest.mark.parametrize("s", [0.6, 0.99, 1.3])
def test_zipf_rank_frequency_slope(s):
    keys, ops = 5000, 200_000
    wl = make("zipf", 2, keys=keys, s=s, operations=ops, value_bytes=64)
    _, va, _ = program(wl)
    heap = wl.meta["heap_base"]
    values = va[va >= heap]
    assert len(values) == ops                      # one value access per operation
    freq = np.sort(np.unique(values, return_counts=True)[1])[::-1]
    r = np.arange(1, 201)
    slope = np.polyfit(np.log(r), np.log(freq[:200]), 1)[0]
    assert abs(slope + s) < 0.1, slope


def test_zipf_read_percent():
    wl = make("zipf", 2, operations=20_000, read_percent=50)
    _, va, kd = program(wl)
    v = kd[va >= wl.meta["heap_base"]]
    assert abs(np.count_nonzero(v == READ64) / len(v) - 0.5) < 3 * math.sqrt(0.25 / len(v))


# ---- page-table-heavy --------------------------------------------------------------------
@pytest.mark.parametrize("region,shift", [("2m", 21), ("1g", 30)])
def test_sparse_every_region_has_its_own_leaf_table(region, shift):
    wl = make("sparse", 7, region=region, regions=48, accesses=600)
    _, va, _ = program(wl)
    vm = replay(wl)
    regions = {int(v) >> shift for v in va}
    leaf_tables, l2_tables = set(), set()
    for v in {int(x) & ~0xFFF for x in va}:
        leaf, tables = walk(vm, v)
        assert leaf is not None
        leaf_tables.add(tables[-1])
        l2_tables.add(tables[-2])
    assert len(leaf_tables) == len(regions)        # distinct leaf tables = regions touched
    if region == "1g":
        assert len(l2_tables) == len(regions)
    assert len(regions) <= 48


def test_pointer_chase_follows_one_cycle_over_all_nodes():
    nodes, hops = 300, 1000
    wl = make("pointer_chase", 9, vcpus=2, nodes=nodes, hops=hops)
    vc, va, kd = program(wl)
    assert np.all(kd == READ64)
    succ = {}
    for v in range(2):
        seq = va[vc == v].tolist()
        assert len(seq) == hops
        for a, b in zip(seq, seq[1:]):
            assert succ.setdefault(a, b) == b      # the next pointer of a node never changes
    assert len(succ) == nodes
    start, cur = next(iter(succ)), None
    cur, steps = succ[start], 1
    while cur != start:                            # a single cycle through every node
        cur, steps = succ[cur], steps + 1
    assert steps == nodes
    assert len({a >> 12 for a in succ}) == nodes   # one node per page


def test_mmap_churn_leaves_only_the_live_regions_mapped():
    live, rounds = 3, 12
    wl = make("mmap_churn", 2, rounds=rounds, live=live, touches=16)
    _, va, _ = program(wl)
    vm = replay(wl)
    regions = wl.meta["regions"]
    assert len(regions) == rounds
    size = -(-wl.meta["region_bytes"] // 4096) * 4096
    touched = {int(v) & ~0xFFF for v in va}
    alive = set(regions[-live:])
    for page in touched:
        owner = [r for r in regions if r <= page < r + size]
        # a page of a region still alive is mapped, a page of an unmapped region is not
        # (a later region may reuse the place: the newest owner decides)
        leaf, _ = walk(vm, page)
        assert (leaf is not None) == (owner[-1] in alive and page in touched)
    ops = [e[2].op for e in wl.trace.events]
    assert ops.count("guest_free") >= 1                       # tables were freed...
    assert wl.meta["munmaps"] == rounds - live
    assert len(vm.host.written["pt"]) > 0                    # ...and PTEs stored


def test_fork_one_root_per_process_and_copy_on_write():
    children = 2
    wl = make("fork", 4, children=children, heap_bytes=64 << 12, accesses=3000,
              write_percent=20, slice=100)
    vm = replay(wl)
    assert len(set(vm.as_roots.values())) == children + 1      # several roots
    # which process wrote which heap page after the forks (switch events give the process)
    base, pages = wl.meta["base"], wl.meta["heap_pages"]
    att = set(wl.meta["attempts"].tolist())
    cur, written = 0, {a: set() for a in range(children + 1)}
    ev = iter(wl.trace.events)
    nxt = next(ev, None)
    forked = False
    for i in range(len(wl.trace)):
        while nxt is not None and nxt[0] == i:
            if nxt[2].op == "guest_switch":
                cur = nxt[2].asid
            if nxt[2].op == "guest_fork":
                forked = True
            nxt = next(ev, None)
        if forked and i not in att and STORE_MASK[wl.trace.kind[i]]:
            written[cur].add(int(wl.trace.va[i]) & ~0xFFF)
    ipa = {a: {} for a in vm.as_roots}
    for a, root in vm.as_roots.items():
        for p in range(pages):
            leaf, _ = walk(vm, base + p * 4096, root)
            ipa[a][base + p * 4096] = leaf & 0xFFFFFFFFF000 if leaf else None
    for p in range(pages):
        va = base + p * 4096
        writers = [a for a in written if va in written[a]]
        for a in writers:                          # a writer has its own copy...
            others = [ipa[b][va] for b in ipa if b != a]
            assert ipa[a][va] not in others
        if not writers:                            # ...untouched pages stay shared
            assert len({ipa[a][va] for a in ipa}) == 1


def test_gc_mark_and_sweep():
    nobj_live = None
    wl = make("gc", 6, vcpus=2, heap_bytes=2 << 20, object_bytes=1024, live_percent=25)
    nobj = (2 << 20) // 1024
    nobj_live = round(nobj * 0.25)
    vc, va, kd = program(wl)
    base, bitmap = wl.meta["base"], wl.meta["bitmap"]
    alloc, rest = slice(0, nobj), slice(nobj, None)
    assert np.all(kd[alloc] == WRITE64)            # the mutator allocated every object
    va, kd, vc = va[rest], kd[rest], vc[rest]
    in_heap = va < bitmap
    assert np.count_nonzero(~in_heap & (kd == WRITE64)) == nobj_live     # one mark each
    assert np.count_nonzero(in_heap & (kd == WRITE64)) == nobj - nobj_live  # free-list links
    assert np.count_nonzero(in_heap & (kd == READ64)) == nobj + nobj_live   # mark + sweep
    # the sweep: each GC thread loads the headers of its share in address order
    sweep = np.arange(len(va)) >= len(va) - (2 * nobj - nobj_live)
    for v in range(2):
        hdr = va[sweep & (vc == v) & (kd == READ64)].astype(np.int64)
        assert np.all(np.diff(hdr) == 1024)
        assert np.all((hdr - base) % 1024 == 0)


# ---- shared-buffer database (issue 20 item 10) ------------------------------------------
def test_shared_db_backends_share_data_pages_but_not_tables():
    """Every backend maps the one shmem object at its own VA window: the same buffer page
    is one IPA in every backend, reached through that backend's own leaf table."""
    w = make("shared_db", 5, processes=3, buffer_mb=4, pages_per_process=1024, accesses=64,
             private_kb=0, demand=False)
    win = w.meta["window_bytes"]
    ipa_of = {}
    for m in w.scenario.mappings:
        for i in range(m.pages):
            va = m.va + i * 4096
            ipa_of[((va - w.meta["base"]) // win, (va - w.meta["base"]) % win)] = m.ipa + i * 4096
    # 1024 pages of a 1024-page buffer: each backend maps all of it
    assert len(ipa_of) == 3 * 1024
    for off in range(0, 4 << 20, 4096):
        assert ipa_of[(0, off)] == ipa_of[(1, off)] == ipa_of[(2, off)]
    # data: 1024 pages once; tables: the root, one level-1 table (the windows are 1 GiB
    # apart, inside one 512 GiB range), per backend one level-2 table and 2 leaf tables
    assert w.meta["data_pages"] == 1024
    assert w.meta["pt_pages"] == 1 + 1 + 3 * (1 + 2)


def test_shared_db_realistic_size_has_page_tables_5_to_20_percent_of_ram():
    """The realistic map's guest (processes 100, 2 GiB buffer, 2048 pages each, 4 GiB VM):
    ~100 x 1,800 leaf tables (2048 random pages over 1024 2 MiB regions touch 1024 x
    (1 - e^-2) = 885 of them) = 88,500 pages of 1,048,576: 8.4 %."""
    w = make("shared_db", 1, processes=100, buffer_mb=2048, pages_per_process=2048,
             accesses=2000, demand=False, warm_stage2=True, ram_mb=4096)
    assert 0.05 <= w.meta["pt_share"] <= 0.20
    assert w.meta["pt_share"] == pytest.approx(0.084, abs=0.003)
