"""The engine's stage-1 walker (model.engine_walk.walk_vas) against the reference walk
(model.reference.Vm.s1_walk) on built and randomly mutated tables, and hand-computed values;
the shared leaf rules (model.semantics) against hand-computed cases."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from model.arch import (DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_SIZE, DESC_TABLE, DESC_UXN,
                        DESC_VALID, Geometry, GeometryError, desc_oa, is_table)
from model.engine_state import DescMemory, SlotIndex
from model.engine_walk import FastWalks, VaWalks, walk_vas
from model.reference import Stage1Fault, Vm
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario
from model.semantics import (S1_ACCESS_FLAG, S1_NONE, S1_PERMISSION, hw_updates_apply,
                             leaf_hw_update, s1_leaf_fault, table_hw_update)
from model.stage1 import TableLayoutError, build_tables

PT_IPA = 0x4000_0000
PT_TABLES = 128
GRANULES = (4096, 16384, 65536)


def valid_va_bits(granule: int) -> list[int]:
    out = []
    for vb in range(granule.bit_length(), 49):
        try:
            Geometry(granule, vb)
        except GeometryError:
            continue
        out.append(vb)
    return out


def scenario(granule, va_bits, mappings, *, pt_tables=PT_TABLES) -> Scenario:
    # a data slot at IPA 0 under the page-table slot: output pages there get slot indices
    return Scenario(
        "walk-test", Machine(granule, va_bits, 2, False, "on-change", False),
        Guest(False, False, False, "pt"),
        (Memslot("data", 0, PT_IPA // 4096), Memslot("pt", PT_IPA, pt_tables * granule // 4096)),
        mappings=tuple(mappings))


def table_levels(gt) -> dict[int, int]:
    """Level of each table page of the built tables (walked from the root)."""
    geo = gt.geometry
    levels = {gt.root: geo.start_level}
    frontier = [gt.root]
    for lvl in range(geo.start_level, 3):
        nxt = []
        for t in frontier:
            for i in range(geo.granule // DESC_SIZE):
                d = gt.descriptors.get(t + i * DESC_SIZE, 0)
                if d & DESC_VALID and is_table(d, lvl):
                    levels[desc_oa(d, geo)] = lvl + 1
                    nxt.append(desc_oa(d, geo))
        frontier = nxt
    return levels


def engine_walks(scn: Scenario, root: int, mem: dict[int, int], vas: list[int]):
    """walk_vas over page-table memory `mem` (descriptor IPA -> value)."""
    pt = scn.slot("pt")
    offs = np.array(sorted((a - pt.ipa) >> 3 for a in mem if pt.ipa <= a < pt.end),
                    dtype=np.int64)
    vals = np.array([mem[pt.ipa + 8 * int(o)] for o in offs], dtype=np.uint64)

    def read_v(o):
        if not len(offs):
            return np.zeros(len(o), dtype=np.uint64)
        i = np.minimum(np.searchsorted(offs, o), len(offs) - 1)
        return np.where(offs[i] == o, vals[i], np.uint64(0))
    idx = SlotIndex(scn.memslots)
    geo = scn.machine.geometry
    va = np.array(vas, dtype=np.int64)
    w = walk_vas(geo, idx, pt.ipa, pt.pages * 512, read_v, root, va)
    if geo.granule == 4096 and pt.ipa <= root < pt.end:
        # the fast path (engine_walk.FastWalks) on the same memory: every field equal
        dm = DescMemory(pt.pages, offs, vals, pt.ipa, geo.oa_mask)
        fw = FastWalks(geo, idx, pt.ipa, pt.pages * 512, read_v, root, va, dm)
        for f in VaWalks.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(fw, f), getattr(w, f), err_msg=f)
    return w, idx


def reference_walk(vm: Vm, mem: dict[int, int], va: int):
    """(descriptor IPAs read, Walk or None)."""
    reads: list[int] = []

    def read(addr):
        reads.append(addr)
        return mem.get(addr, 0)
    try:
        walk, faulted = vm.s1_walk(va, read)
    except Stage1Fault:
        return reads, None
    assert faulted is None
    return reads, walk


def check_against_reference(scn: Scenario, root: int, mem: dict[int, int], vas: list[int],
                            note=lambda _s: None):
    vm = Vm(scn, "fix")
    vm.tables.root = root
    geo = scn.machine.geometry
    pt = scn.slot("pt")
    w, idx = engine_walks(scn, root, mem, vas)
    for j, va in enumerate(vas):
        reads, walk = reference_walk(vm, mem, va)
        ctx = f"va {va:#x} geo {geo}"
        n = len(reads)
        assert w.nlev[j] == n, ctx
        assert w.doff[:n, j].tolist() == [(a - pt.ipa) >> 3 if pt.ipa <= a < pt.end else -1
                                          for a in reads], ctx
        assert (w.doff[n:, j] == -1).all(), ctx
        assert w.pg[:n, j].tolist() == idx.index_v(np.array(reads, np.int64) & ~4095).tolist()
        assert (w.pg[n:, j] == idx.total).all(), ctx
        assert bool(w.found[j]) == (walk is not None), ctx
        if walk is None:
            assert w.level[j] == -1 and w.dp[j] == idx.total, ctx
            note(f"translation fault after {n} reads")
            continue
        assert w.level[j] == walk.level and int(w.leaf[j]) == walk.leaf, ctx
        assert w.leaf_off[j] == (walk.leaf_addr - pt.ipa) >> 3, ctx
        tables = [(a - pt.ipa) >> 3 for _l, a, _d in walk.path[:-1]]
        got = [o for o in w.tab_off[:, j].tolist() if o >= 0]
        assert got == tables, ctx
        size = 1 << geo.level_shift(walk.level)
        oa = desc_oa(walk.leaf, geo) & ~(size - 1) | (va & (size - 1))
        assert w.dp[j] == idx.index_v(np.array([oa & ~4095], np.int64))[0], ctx
        note(f"walk ends at level {walk.level}")


# ---- strategies --------------------------------------------------------------------------------
@st.composite
def geometries(draw):
    g = draw(st.sampled_from(GRANULES))
    return Geometry(g, draw(st.sampled_from(valid_va_bits(g))))


@st.composite
def mapping_lists(draw, geo: Geometry):
    g = geo.granule
    top = 1 << geo.va_bits
    regions = draw(st.lists(st.integers(0, top // g - 1), min_size=1, max_size=3))
    out = []
    for _ in range(draw(st.integers(1, 5))):
        base = draw(st.sampled_from(regions)) * g
        # nearby: same leaf table, or a neighbouring leaf/L2 table
        step = draw(st.sampled_from([g, 1 << geo.level_shift(2), 1 << geo.level_shift(1)]))
        va = base + draw(st.integers(0, 40)) * (g if step == g else step)
        va %= top
        pages = draw(st.integers(1, 6))
        if va + pages * g > top:
            va = top - pages * g
        ipa = draw(st.integers(0, (1 << 40) // g - 1)) * g
        out.append(Mapping(va, ipa, pages, af=draw(st.booleans()),
                           writable=draw(st.booleans()), dirty=draw(st.booleans()),
                           executable=draw(st.booleans())))
    return out


def draw_mutations(data, gt, geo):
    """Apply random descriptor mutations to a copy of the built memory: returns (mem, list of
    (ipa, value) writes in order)."""
    mem = dict(gt.descriptors)
    levels = table_levels(gt)
    tables = sorted(levels)
    writes = []
    E = geo.granule // DESC_SIZE
    for _ in range(data.draw(st.integers(0, 6), label="n_mutations")):
        op = data.draw(st.sampled_from(["clear_af", "clear_valid", "set_ap2", "clear_dbm",
                                        "set_pxn", "clear_table", "new_entry", "block",
                                        "clear_table_af"]))
        addrs = sorted(mem)
        if op == "clear_table_af":                   # a table descriptor (levels < 3)
            addrs = [a for a in addrs if levels.get(a & ~(geo.granule - 1), 3) < 3]
            op = "clear_af"
        if op == "new_entry" or not addrs:
            t = data.draw(st.sampled_from(tables))
            addr = t + data.draw(st.integers(0, E - 1)) * DESC_SIZE
            lvl = levels[t]
            v = data.draw(st.integers(0, (1 << 48) - 1)) | DESC_VALID
            if lvl == 3 and data.draw(st.booleans()):
                v |= DESC_TABLE                      # a page; else reserved encoding
            for bit in (DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN):
                v = v | bit if data.draw(st.booleans()) else v & ~bit
            if lvl < 3:
                v &= ~DESC_TABLE                     # a block at levels < 3
        else:
            addr = data.draw(st.sampled_from(addrs))
            old = mem[addr]
            if op == "block":
                lvl = levels.get(addr & ~(geo.granule - 1), 3)
                if lvl == 3:
                    continue
                v = (old & geo.oa_mask) | DESC_VALID | DESC_AF | \
                    (DESC_DBM if data.draw(st.booleans()) else 0)
            else:
                v = {"clear_af": old & ~DESC_AF, "clear_valid": old & ~DESC_VALID,
                     "set_ap2": old | DESC_AP2, "clear_dbm": old & ~DESC_DBM,
                     "set_pxn": old | DESC_PXN, "clear_table": old & ~DESC_TABLE}[op]
        mem[addr] = v
        writes.append((addr, v))
    return mem, writes


def draw_vas(data, geo, mappings, n):
    top = 1 << geo.va_bits
    vas = []
    for _ in range(n):
        how = data.draw(st.sampled_from(["mapped", "near", "random"]))
        if how == "random" or not mappings:
            vas.append(data.draw(st.integers(0, top - 1)))
            continue
        m = data.draw(st.sampled_from(mappings))
        va = m.va + data.draw(st.integers(0, m.pages - 1)) * geo.granule
        if how == "mapped":
            va += data.draw(st.integers(0, geo.granule - 1))
        else:
            sh = data.draw(st.integers(geo.granule_shift, geo.va_bits))
            va = (va & ~((1 << sh) - 1)) | data.draw(st.integers(0, (1 << sh) - 1))
        vas.append(va)
    return vas


# ---- differential test --------------------------------------------------------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engine_walk_matches_reference(data):
    geo = data.draw(geometries(), label="geo")
    mappings = data.draw(mapping_lists(geo), label="mappings")
    scn = scenario(geo.granule, geo.va_bits, mappings)
    try:
        gt = build_tables(scn)
    except TableLayoutError:
        assume(False)
    mem, _writes = draw_mutations(data, gt, geo)
    vas = draw_vas(data, geo, mappings, data.draw(st.integers(1, 40)))
    check_against_reference(scn, gt.root, mem, vas, event)


# ---- hand-computed values ----------------------------------------------------------------------
def walked(granule, va_bits, mappings, vas, mem_changes=()):
    scn = scenario(granule, va_bits, mappings)
    gt = build_tables(scn)
    mem = dict(gt.descriptors)
    mem.update(mem_changes)
    w, idx = engine_walks(scn, gt.root, mem, vas)
    check_against_reference(scn, gt.root, mem, vas)
    return w, gt, idx


def test_4k_48_hand_computed():
    # VA 0xc0000000: L0 index 0, L1 index 3, L2 index 0, L3 index 0.  Tables: root at PT_IPA,
    # then L1, L2, L3 at the next granules in order of need.
    w, gt, idx = walked(4096, 48, [Mapping(0xc000_0000, 0x3000_0000, 2)],
                        [0xc000_0123, 0xc000_1ff8, 0xc000_2000])
    offs = [(a - PT_IPA) >> 3 for a in (0x4000_0000, 0x4000_1018, 0x4000_2000, 0x4000_3000)]
    assert w.doff[:, 0].tolist() == offs
    assert w.doff[:, 1].tolist() == offs[:3] + [offs[3] + 1]
    assert w.level.tolist() == [3, 3, -1] and w.found.tolist() == [True, True, False]
    assert w.nlev.tolist() == [4, 4, 4]
    data_pages = 0x4000_0000 // 4096
    assert w.dp.tolist() == [0x3000_0000 // 4096, 0x3000_1000 // 4096, idx.total]
    assert idx.total == data_pages + PT_TABLES
    assert w.tab_off[:, 0].tolist() == offs[:3]
    assert int(w.leaf[0]) == (0x3000_0000 | DESC_VALID | DESC_TABLE | DESC_AF | DESC_DBM
                              | DESC_PXN | DESC_UXN)          # Mapping: not executable


def test_64k_42_two_levels_hand_computed():
    # 64K/42: levels 2 (start level 2): L2 index = VA[41:29], L3 index = VA[28:16].
    # VA 0x1_2345_abcd: L2 index 9 (desc at root + 0x48), L3 index 0x345 = 837 (desc at the
    # second 64K granule + 837 * 8 = 0x4001_1a28), page offset 0xabcd.
    w, gt, idx = walked(65536, 42, [Mapping(0x1_2345_0000, 0x3000_0000, 1)], [0x1_2345_abcd])
    assert w.doff[:, 0].tolist() == [0x48 >> 3, (0x4001_1a28 - PT_IPA) >> 3]
    assert w.level.tolist() == [3] and w.dp.tolist() == [0x3000_a000 // 4096]


def test_blocks_allowed_and_disallowed():
    m = [Mapping(0xc000_0000, 0x3000_0000, 1)]
    # 2 MiB block at L2 in place of the L2 -> L3 table descriptor (at 0x4000_2000), a 1 GiB
    # block at L1 for VA 0x4000_0000 (L1 index 1, at 0x4000_1008)
    blocks = {0x4000_2000: 0x3020_0000 | DESC_VALID | DESC_AF,
              0x4000_1008: 0x1_0000_0000 | DESC_VALID | DESC_AF}
    w, gt, idx = walked(4096, 48, m, [0xc001_2345, 0x4123_4567], blocks)
    assert w.level.tolist() == [2, 1]
    assert w.dp.tolist() == [0x3021_2000 // 4096, idx.total]       # 1 GiB block: no slot
    # a block at L0 is not allowed with 4K (no FEAT_LPA2): translation fault at level 0
    w, gt, idx = walked(4096, 48, m, [0xc001_2345],
                        {0x4000_0000: 0x3000_0000 | DESC_VALID | DESC_AF})
    assert w.level.tolist() == [-1] and w.nlev.tolist() == [1]
    # 16K/47 (start level 1): no L1 block; 32 MiB L2 block allowed
    m16 = [Mapping(0x4000_0000, 0x3000_0000, 1)]
    w, gt, idx = walked(16384, 47, m16, [0x4000_0000])
    l1, l2 = (PT_IPA + 8 * int(o) for o in w.doff[:2, 0])
    w, gt, idx = walked(16384, 47, m16, [0x4123_4567],
                        {l2: 0x3000_0000 | DESC_VALID | DESC_AF})
    assert w.level.tolist() == [2]
    w, gt, idx = walked(16384, 47, m16, [0x4123_4567],
                        {l1: 0x1_0000_0000 | DESC_VALID | DESC_AF})
    assert w.level.tolist() == [-1] and w.nlev.tolist() == [1]
    # reserved encoding at level 3 (valid, bit 1 clear)
    scn = scenario(4096, 39, [Mapping(0x1000, 0x3000_0000, 1)])
    leaf = build_tables(scn).leaf_addr[0x1000]
    w, gt, idx = walked(4096, 39, [Mapping(0x1000, 0x3000_0000, 1)], [0x1000],
                        {leaf: 0x3000_0000 | DESC_VALID | DESC_AF})
    assert w.level.tolist() == [-1] and w.nlev.tolist() == [3]


def test_va_outside_ttbr0_range_faults_like_reference():
    # A VA with bits set above va_bits is out of the TTBR0 range (AArch64.VAIsOutOfRange):
    # a translation fault without any descriptor read, in both walkers.
    vas = [0x1000, (1 << 39) | 0x1000, 0x7FFF_FF80_0000_1000]
    w, gt, idx = walked(4096, 39, [Mapping(0x1000, 0x3000_0000, 1)], vas)
    assert w.found.tolist() == [True, False, False] and w.nlev.tolist() == [3, 0, 0]
    assert (w.doff[:, 1:] == -1).all()


def test_empty_batch():
    w, gt, idx = walked(4096, 48, [Mapping(0xc000_0000, 0x3000_0000, 1)], [])
    assert len(w.found) == 0 and w.pg.shape == (4, 0)


def test_leaf_rules_hand_computed():
    T, F = True, False
    # (AF, AP[2], DBM, PXN, fetch, store, HA, HD) -> fault
    assert s1_leaf_fault(T, T, T, F, F, T, T, T) == S1_NONE          # clean-writable, HD
    assert s1_leaf_fault(T, T, T, F, F, T, T, F) == S1_PERMISSION    # ... without HD
    assert s1_leaf_fault(F, T, F, F, F, T, F, F) == S1_ACCESS_FLAG   # AF outranks (I_DSHLJ)
    assert s1_leaf_fault(F, F, F, F, F, F, T, F) == S1_NONE          # HA sets AF instead
    assert s1_leaf_fault(T, F, F, T, T, F, T, T) == S1_PERMISSION    # fetch of a PXN page
    assert s1_leaf_fault(T, F, F, T, F, F, T, T) == S1_NONE          # load of a PXN page
    assert s1_leaf_fault(T, T, F, F, F, F, F, F) == S1_NONE          # load of read-only
    # (AF, AP[2], DBM, store, HD) -> (set AF, clear AP[2]) (R_PQJJR)
    assert leaf_hw_update(T, T, T, T, T) == (F, T)
    assert leaf_hw_update(F, T, T, F, T) == (T, F)
    assert leaf_hw_update(T, T, F, T, T) == (F, F)                   # no DBM: no dirty state
    assert leaf_hw_update(T, T, T, T, F) == (F, F)                   # no HD
    # AT: no update unless at_sets_af (R_XQSMX); nothing without HA
    assert hw_updates_apply(T, F, F) and not hw_updates_apply(T, T, F)
    assert hw_updates_apply(T, T, T) and not hw_updates_apply(F, F, T)
    assert table_hw_update(F, T) and not table_hw_update(T, T) and not table_hw_update(F, F)


def test_leaf_rules_broadcast_like_scalars():
    # every input combination: the array form gives the scalar form elementwise
    combos = np.array(np.meshgrid(*[[False, True]] * 8)).reshape(8, -1)
    arrays = s1_leaf_fault(*combos)
    assert arrays.tolist() == [s1_leaf_fault(*map(bool, c)) for c in combos.T]
    a1, a2 = leaf_hw_update(*combos[:5])
    assert list(zip(a1.tolist(), a2.tolist())) == [leaf_hw_update(*map(bool, c))
                                                   for c in combos[:5].T]
    assert hw_updates_apply(*combos[:3]).tolist() == [hw_updates_apply(*map(bool, c))
                                                      for c in combos[:3].T]
