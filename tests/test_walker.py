"""The vectorised walker (model.walker) and the trace type (model.trace) against the reference
walker (model.reference.Vm.s1_walk / s1_check / s1_updates) and hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from model.arch import (DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_SIZE, DESC_TABLE,
                        DESC_VALID, Geometry, GeometryError, desc_oa, is_table)
from model.reference import Stage1Fault, Vm
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step
from model.stage1 import TableLayoutError, build_tables
from model.trace import (ISV_KINDS, KIND_CODE, KINDS, STORE_KINDS, STORE_MASK, Trace,
                         trace_from_scenario)
from model.walker import (S1_ACCESS_FLAG, S1_FAULT_NAMES, S1_NONE, S1_PERMISSION,
                          S1_TRANSLATION, FlatTables, TableSetError, hw_update_needs,
                          walk_batch, walk_leaf)

PT_IPA = 0x4000_0000
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


def scenario(granule, va_bits, mappings, *, pt_tables=128, hafdbs=2, haft=False,
             hw_update="on-change", at_sets_af=False, tcr_ha=False, tcr_hd=False,
             tcr2_haft=False, steps=()) -> Scenario:
    return Scenario(
        "walker-test", Machine(granule, va_bits, hafdbs, haft, hw_update, at_sets_af),
        Guest(tcr_ha, tcr_hd, tcr2_haft, "pt"),
        (Memslot("pt", PT_IPA, pt_tables * granule // 4096),),
        mappings=tuple(mappings), steps=tuple(steps))


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


def reference(vm: Vm, mem: dict[int, int], va: int, kind: str):
    """(descriptor IPAs read, Walk or None, fault name or None, updates)."""
    reads: list[int] = []

    def read(addr):
        reads.append(addr)
        return mem.get(addr, 0)
    try:
        walk, faulted = vm.s1_walk(va, read)
    except Stage1Fault:
        return reads, None, "translation", []
    assert faulted is None
    try:
        vm.s1_check(walk, kind)
    except Stage1Fault as f:
        return reads, walk, str(f), []
    return reads, walk, None, vm.s1_updates(walk, kind)


def check_against_reference(scn: Scenario, mem: dict[int, int], ft: FlatTables,
                            vas: list[int], kinds: list[int], chunk: int) -> None:
    vm = Vm(scn, "fix")
    geo = scn.machine.geometry
    va_arr = np.array(vas, dtype=np.uint64)
    kind_arr = np.array(kinds, dtype=np.uint8)
    wb = walk_batch(ft, va_arr, chunk=chunk)
    lb = walk_leaf(ft, va_arr, chunk=chunk)
    m = scn.machine
    needs = hw_update_needs(wb, kind_arr, vm.ha, vm.hd, vm.haft, m.hw_update, m.at_sets_af)
    # the same with per-access control arrays
    n = len(vas)
    needs2 = hw_update_needs(wb, kind_arr, np.full(n, vm.ha), np.full(n, vm.hd),
                             np.full(n, vm.haft), np.full(n, m.hw_update == "always"),
                             np.full(n, m.at_sets_af))
    for a, b in ((needs.fault, needs2.fault), (needs.update, needs2.update),
                 (needs.new_leaf, needs2.new_leaf)):
        np.testing.assert_array_equal(a, b)
    newv = needs.new_value(wb)
    L = geo.levels
    for j, (va, k) in enumerate(zip(vas, kinds)):
        kind = KINDS[k]
        reads, walk, fault, ups = reference(vm, mem, va, kind)
        ctx = f"va {va:#x} kind {kind} geo {geo}"
        assert wb.level_desc_ipa[:, j].tolist() == reads + [-1] * (L - len(reads)), ctx
        assert wb.level_desc[:, j].tolist() == [mem.get(a, 0) for a in reads] + \
            [0] * (L - len(reads)), ctx
        assert int(wb.leaf_ipa[j]) == reads[-1], ctx
        assert int(wb.leaf_desc[j]) == mem.get(reads[-1], 0), ctx
        assert ft.entry_ipa(wb.leaf_entry[j]) == reads[-1], ctx
        if walk is None:
            assert wb.leaf_level[j] == -1, ctx
            assert wb.fault_level[j] == geo.start_level + len(reads) - 1, ctx
            assert wb.oa[j] == -1 and lb.oa[j] == -1 and lb.entry[j] == -1, ctx
        else:
            assert wb.leaf_level[j] == walk.level and wb.fault_level[j] == -1, ctx
            assert int(wb.leaf_desc[j]) == walk.leaf and wb.leaf_ipa[j] == walk.leaf_addr
            size = 1 << geo.level_shift(walk.level)
            oa = desc_oa(walk.leaf, geo) & ~(size - 1) | (va & (size - 1))
            assert wb.oa[j] == oa and lb.oa[j] == oa, ctx
            assert ft.entry_ipa(lb.entry[j]) == walk.leaf_addr, ctx
        assert S1_FAULT_NAMES[needs.fault[j]] == (fault or "none"), ctx
        mine = [(int(wb.level_desc_ipa[r, j]), int(newv[r, j]))
                for r in range(L) if needs.update[r, j]]
        assert mine == ups, ctx
        event(f"walk ends at level {int(wb.leaf_level[j])}, fault {fault}")
        if ups:
            event(f"updates: {'table+' if len(ups) > 1 else ''}leaf"
                  f"{'' if ups[-1][0] == walk.leaf_addr else '(none)'}")
        assert bool(needs.leaf_update[j]) == any(a == wb.leaf_ipa[j] for a, _ in ups), ctx
        if needs.leaf_update[j]:
            assert int(needs.new_leaf[j]) == ups[-1][1]


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


# ---- differential tests -------------------------------------------------------------------------
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_walker_matches_reference(data):
    geo = data.draw(geometries(), label="geo")
    mappings = data.draw(mapping_lists(geo), label="mappings")
    likely = st.sampled_from([True, True, True, False])
    flags = dict(hafdbs=data.draw(st.sampled_from([0, 1, 2, 2])), haft=data.draw(likely),
                 hw_update=data.draw(st.sampled_from(["on-change", "always"])),
                 at_sets_af=data.draw(st.booleans()), tcr_ha=data.draw(likely),
                 tcr_hd=data.draw(likely), tcr2_haft=data.draw(likely))
    scn = scenario(geo.granule, geo.va_bits, mappings, **flags)
    try:
        gt = build_tables(scn)
    except TableLayoutError:
        assume(False)
    mem, writes = draw_mutations(data, gt, geo)
    g = geo.granule
    ft = FlatTables.from_memory(geo, gt.root, mem, range(gt.root, gt.root + gt.tables_used * g, g))
    vas = draw_vas(data, geo, mappings, data.draw(st.integers(1, 40)))
    kinds = [data.draw(st.integers(0, len(KINDS) - 1)) for _ in vas]
    chunk = data.draw(st.sampled_from([1, 3, 8, 4096]))
    check_against_reference(scn, mem, ft, vas, kinds, chunk)
    # the same memory reached by in-place writes on the unmutated tables
    ft2 = FlatTables.from_tables(gt)
    for addr, v in writes:
        ft2.set_desc(addr, v)
    check_against_reference(scn, mem, ft2, vas, kinds, chunk)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_vectorised_builder_matches_build_tables(data):
    geo = data.draw(geometries(), label="geo")
    mappings = data.draw(mapping_lists(geo), label="mappings")
    pt_tables = data.draw(st.integers(1, 24))
    scn = scenario(geo.granule, geo.va_bits, mappings, pt_tables=pt_tables)
    try:
        gt = build_tables(scn)
    except TableLayoutError:
        with pytest.raises(TableLayoutError):
            FlatTables.build(scn)
        return
    ft = FlatTables.build(scn)
    assert ft.to_memory() == gt.descriptors
    assert ft.n_tables == gt.tables_used
    assert ft.table_ipa.tolist() == [gt.root + i * geo.granule for i in range(gt.tables_used)]
    ref = FlatTables.from_tables(gt)
    np.testing.assert_array_equal(ft.chain, ref.chain)
    np.testing.assert_array_equal(ft.next_table, ref.next_table)


# ---- hand-computed values ----------------------------------------------------------------------
def built(granule, va_bits, *mappings, **kw):
    scn = scenario(granule, va_bits, mappings, **kw)
    gt = build_tables(scn)
    return scn, gt, FlatTables.from_tables(gt)


def test_4k_48_hand_computed():
    # VA 0xc0000000: L0 index 0, L1 index 3, L2 index 0, L3 index 0.  Tables: root at PT_IPA,
    # then L1, L2, L3 at the next granules in order of need.
    scn, gt, ft = built(4096, 48, Mapping(0xc000_0000, 0x8000_0000, 2))
    wb = walk_batch(ft, np.array([0xc000_0123, 0xc000_1ff8], dtype=np.uint64))
    assert wb.level_desc_ipa[:, 0].tolist() == [0x4000_0000, 0x4000_1018, 0x4000_2000,
                                                0x4000_3000]
    assert wb.level_desc_ipa[:, 1].tolist() == [0x4000_0000, 0x4000_1018, 0x4000_2000,
                                                0x4000_3008]
    assert wb.leaf_level.tolist() == [3, 3] and wb.fault_level.tolist() == [-1, -1]
    assert wb.oa.tolist() == [0x8000_0123, 0x8000_1ff8]
    assert wb.leaf_ipa.tolist() == [0x4000_3000, 0x4000_3008]
    assert wb.level_desc[0, 0] == 0x4000_1000 | DESC_VALID | DESC_TABLE | DESC_AF
    lb = walk_leaf(ft, np.array([0xc000_0123, 0xc000_1ff8, 0xc000_2000], dtype=np.uint64))
    assert lb.table.tolist() == [3, 3, -1] and lb.index.tolist() == [0, 1, -1]
    assert lb.oa.tolist() == [0x8000_0123, 0x8000_1ff8, -1]
    assert ft.next_table[0, 0] == 1 and ft.next_table[1, 3] == 2 and ft.next_table[2, 0] == 3
    assert ft.next_table[3, 0] == -1 and ft.next_table[0, 1] == -1
    assert ft.desc.shape == (4, 512) and ft.level.tolist() == [0, 1, 2, 3]


def test_64k_42_two_levels_hand_computed():
    # 64K/42: levels 2 (start level 2): L2 index = VA[41:29], L3 index = VA[28:16].
    # VA 0x1_2345_abcd: L2 index 9 (desc at root + 0x48), L3 index 0x345 = 837 (desc at the
    # second 64K granule + 837 * 8 = 0x4001_1a28), page offset 0xabcd.
    scn, gt, ft = built(65536, 42, Mapping(0x1_2345_0000, 0x8000_0000, 1))
    wb = walk_batch(ft, np.array([0x1_2345_abcd], dtype=np.uint64))
    assert wb.start_level == 2
    assert wb.level_desc_ipa[:, 0].tolist() == [0x4000_0048, 0x4001_1a28]
    assert wb.oa.tolist() == [0x8000_abcd] and wb.leaf_level.tolist() == [3]


def test_blocks_allowed_and_disallowed():
    scn, gt, ft = built(4096, 48, Mapping(0xc000_0000, 0x8000_0000, 1))
    # 2 MiB block at L2 in place of the L2 -> L3 table descriptor (at 0x4000_2000)
    ft.set_desc(0x4000_2000, 0x8020_0000 | DESC_VALID | DESC_AF)
    # 1 GiB block at L1 for VA 0x4000_0000 (L1 index 1, at 0x4000_1008)
    ft.set_desc(0x4000_1008, 0x1_0000_0000 | DESC_VALID | DESC_AF)
    va = np.array([0xc001_2345, 0x4123_4567], dtype=np.uint64)
    wb = walk_batch(ft, va)
    assert wb.leaf_level.tolist() == [2, 1]
    assert wb.oa.tolist() == [0x8021_2345, 0x1_0123_4567]
    assert walk_leaf(ft, va).oa.tolist() == [0x8021_2345, 0x1_0123_4567]
    # a block at L0 is not allowed with 4K (no FEAT_LPA2): translation fault at level 0
    ft.set_desc(0x4000_0000, 0x8000_0000 | DESC_VALID | DESC_AF)
    wb = walk_batch(ft, va[:1])
    assert wb.leaf_level.tolist() == [-1] and wb.fault_level.tolist() == [0]
    assert wb.level_desc_ipa[:, 0].tolist() == [0x4000_0000, -1, -1, -1]
    # 16K/47 (start level 1): no L1 block; 32 MiB L2 block allowed
    scn, gt, ft = built(16384, 47, Mapping(0x4000_0000, 0x8000_0000, 1))
    l1 = int(walk_batch(ft, np.array([0x4000_0000], np.uint64)).level_desc_ipa[0, 0])
    l2 = int(walk_batch(ft, np.array([0x4000_0000], np.uint64)).level_desc_ipa[1, 0])
    ft.set_desc(l2, 0x1_0000_0000 | DESC_VALID | DESC_AF)
    wb = walk_batch(ft, np.array([0x4123_4567], np.uint64))
    assert wb.leaf_level.tolist() == [2] and wb.oa.tolist() == [0x1_0123_4567]
    ft.set_desc(l1, 0x1_0000_0000 | DESC_VALID | DESC_AF)
    wb = walk_batch(ft, np.array([0x4123_4567], np.uint64))
    assert wb.leaf_level.tolist() == [-1] and wb.fault_level.tolist() == [1]
    # reserved encoding at level 3 (valid, bit 1 clear)
    scn, gt, ft = built(4096, 39, Mapping(0x1000, 0x8000_0000, 1))
    ft.set_desc(gt.leaf_addr[0x1000], 0x8000_0000 | DESC_VALID | DESC_AF)
    wb = walk_batch(ft, np.array([0x1000], np.uint64))
    assert wb.fault_level.tolist() == [3] and walk_leaf(ft, np.array([0x1000], np.uint64)).oa[0] == -1


def _needs(leaf_flags, kind, ha=True, hd=True, haft=False, hw_update="on-change",
           at_sets_af=False, table_af=True):
    m = Mapping(0xc000_0000, 0x8000_0000, 1)
    scn, gt, ft = built(4096, 48, m)
    leaf = 0x8000_0000 | DESC_VALID | DESC_TABLE | leaf_flags
    ft.set_desc(gt.leaf_addr[0xc000_0000], leaf)
    if not table_af:
        ft.set_desc(0x4000_1018, int(ft.desc[1, 3]) & ~DESC_AF)
    wb = walk_batch(ft, np.array([0xc000_0000], np.uint64))
    return hw_update_needs(wb, kind, ha, hd, haft, hw_update, at_sets_af), leaf


def test_hw_update_rules_hand_computed():
    # clean-writable page, store, HD: AP[2] cleared (R_PQJJR), AF already set
    n, leaf = _needs(DESC_AF | DESC_DBM | DESC_AP2, "write64")
    assert n.fault[0] == S1_NONE and n.update[:, 0].tolist() == [False] * 3 + [True]
    assert n.new_leaf[0] == leaf & ~DESC_AP2
    # without HD: stage-1 permission fault, no update
    n, _ = _needs(DESC_AF | DESC_DBM | DESC_AP2, "st_preidx", hd=False)
    assert n.fault[0] == S1_PERMISSION and not n.update.any()
    # AF = 0 and no HA: access-flag fault outranks the permission fault (I_DSHLJ)
    n, _ = _needs(DESC_AP2, "cas", ha=False)
    assert n.fault[0] == S1_ACCESS_FLAG and not n.update.any()
    # AF = 0 with HA: load sets AF
    n, leaf = _needs(0, "read64")
    assert n.fault[0] == S1_NONE and n.leaf_update[0] and n.new_leaf[0] == leaf | DESC_AF
    # nothing to change: no write on-change, a write with "always"
    n, _ = _needs(DESC_AF, "read64")
    assert not n.update.any()
    n, leaf = _needs(DESC_AF, "read64", hw_update="always")
    assert n.leaf_update[0] and n.new_leaf[0] == leaf
    # "always" needs HA
    n, _ = _needs(DESC_AF, "read64", ha=False, hw_update="always")
    assert not n.update.any()
    # AT: no update unless at_sets_af (R_XQSMX)
    n, _ = _needs(0, "at")
    assert n.fault[0] == S1_NONE and not n.update.any()
    n, _ = _needs(0, "at", at_sets_af=True)
    assert n.leaf_update[0]
    # exec of a PXN page: permission fault
    n, _ = _needs(DESC_AF | DESC_PXN, "exec")
    assert n.fault[0] == S1_PERMISSION
    # HAFT: the L1 -> L2 table descriptor (row 1, at 0x4000_1018) with AF = 0 is set first
    n, _ = _needs(0, "read64", haft=True, table_af=False)
    assert n.update[:, 0].tolist() == [False, True, False, True]
    # ... and alone when the leaf needs nothing
    n, _ = _needs(DESC_AF, "read64", haft=True, table_af=False)
    assert n.update[:, 0].tolist() == [False, True, False, False] and not n.leaf_update[0]
    # HAFT without HA does nothing
    n, _ = _needs(DESC_AF, "read64", ha=False, haft=True, table_af=False)
    assert not n.update.any()
    # translation fault
    m = Mapping(0xc000_0000, 0x8000_0000, 1)
    scn, gt, ft = built(4096, 48, m)
    wb = walk_batch(ft, np.array([0xd000_0000], np.uint64))
    n = hw_update_needs(wb, "write64", True, True, True, "always", True)
    assert n.fault[0] == S1_TRANSLATION and not n.update.any()


def test_dense_constructor_matches_build_tables():
    for granule, va_bits, va, pages in ((4096, 48, 0x7f_ffe0_0000 - 0x3000, 1500),
                                        (4096, 39, 0x3fe000, 700), (16384, 47, 0x1ffc000, 70),
                                        (65536, 42, 0x1fff0000, 9000)):
        geo = Geometry(granule, va_bits)
        scn = scenario(granule, va_bits, [Mapping(va, 0x1_0000_0000, pages, dirty=False)],
                       pt_tables=64)
        gt = build_tables(scn)
        ft = FlatTables.dense(geo, va, pages, 0x1_0000_0000, PT_IPA, dirty=False)
        assert ft.to_memory() == gt.descriptors
        vas = np.arange(pages, dtype=np.uint64) * np.uint64(granule) + np.uint64(va + 8)
        lb = walk_leaf(ft, vas)
        assert (lb.oa == 0x1_0000_0008 + np.arange(pages) * granule).all()


def test_table_set_errors():
    scn, gt, ft = built(4096, 48, Mapping(0xc000_0000, 0x8000_0000, 1))
    geo = gt.geometry
    mem = dict(gt.descriptors)
    mem[0x4000_1018] = 0x9000_0000 | DESC_VALID | DESC_TABLE | DESC_AF   # not a table page
    with pytest.raises(TableSetError):
        FlatTables.from_memory(geo, gt.root, mem, range(PT_IPA, PT_IPA + 4 * 4096, 4096))
    mem = dict(gt.descriptors)
    mem[0x4000_1020] = mem[0x4000_1018]                                   # two parents
    with pytest.raises(TableSetError):
        FlatTables.from_memory(geo, gt.root, mem, range(PT_IPA, PT_IPA + 4 * 4096, 4096))
    with pytest.raises(TableSetError):
        ft.set_desc(0x4000_1020, mem[0x4000_1018])                        # re-pointing
    # invalidating and restoring a table descriptor in place is fine
    old = int(ft.desc[1, 3])
    ft.set_desc(0x4000_1018, old & ~DESC_VALID)
    assert walk_leaf(ft, np.array([0xc000_0000], np.uint64)).oa[0] == -1
    ft.set_desc(0x4000_1018, old)
    assert walk_leaf(ft, np.array([0xc000_0000], np.uint64)).oa[0] == 0x8000_0000


def test_va_outside_ttbr0_range_faults_like_reference():
    # A VA with bits set above va_bits is out of the TTBR0 range (AArch64.VAIsOutOfRange):
    # a translation fault without any descriptor read, in both walkers.
    from model.reference import Stage1Fault, Vm
    scn, gt, ft = built(4096, 39, Mapping(0x1000, 0x8000_0000, 1))
    vas = [0x1000, (1 << 39) | 0x1000, 0xFFFF_FF80_0000_1000]
    lb = walk_leaf(ft, np.array(vas, np.uint64))
    assert lb.oa.tolist() == [0x8000_0000, -1, -1] and lb.entry.tolist()[1:] == [-1, -1]
    wb = walk_batch(ft, np.array(vas, np.uint64))
    assert wb.leaf_level.tolist() == [3, -1, -1] and wb.fault_level.tolist()[1:] == [1, 1]
    assert (wb.level_desc_ipa[:, 1:] == -1).all()
    vm = Vm(scn, "fix")
    reads = []
    for va in vas[1:]:
        with pytest.raises(Stage1Fault):
            vm.s1_walk(va, lambda a: reads.append(a) or 0)
    assert reads == []


def test_empty_batches():
    scn, gt, ft = built(4096, 48, Mapping(0xc000_0000, 0x8000_0000, 1))
    assert len(walk_batch(ft, np.zeros(0, np.uint64))) == 0
    assert len(walk_leaf(ft, np.zeros(0, np.uint64)).oa) == 0


# ---- trace -------------------------------------------------------------------------------------
def test_kind_codes():
    assert KINDS[0] == "read64" and KIND_CODE["at"] == 7
    assert STORE_KINDS == {1, 3, 4, 5} and ISV_KINDS == {0, 1}
    assert STORE_MASK.tolist() == [False, True, False, True, True, True, False, False]


def test_trace_from_scenario():
    steps = (Step("flush_tlb"),
             Step("access", vcpu=1, va=0xc000_0000, kind="read64"),
             Step("clear_af", vcpu=0, va=0xc000_0000),
             Step("set_tcr", ha=True),
             Step("access", vcpu=0, va=0xc000_0008, kind="dc_zva"),
             Step("access", vcpu=2, va=0xc000_0010, kind="at"),
             Step("harvest", slot="pt"))
    scn = scenario(4096, 48, [Mapping(0xc000_0000, 0x8000_0000, 1)], steps=steps)
    tr = trace_from_scenario(scn)
    assert len(tr) == 3
    assert tr.vcpu.dtype == np.uint16 and tr.va.dtype == np.uint64 and tr.kind.dtype == np.uint8
    assert tr.vcpu.tolist() == [1, 0, 2]
    assert tr.va.tolist() == [0xc000_0000, 0xc000_0008, 0xc000_0010]
    assert tr.kind.tolist() == [0, 5, 7]
    assert tr.step_of_access.tolist() == [1, 4, 5]
    assert [(p, i, s.op) for p, i, s in tr.events] == [
        (0, 0, "flush_tlb"), (1, 2, "clear_af"), (1, 3, "set_tcr"), (3, 6, "harvest")]
    assert tr.nbytes == 3 * (11 + 4)
    assert [(a, b, [e[1] for e in ev]) for a, b, ev in tr.intervals()] == [
        (0, 1, [0]), (1, 3, [2, 3]), (3, 3, [6])]
    bare = Trace(tr.vcpu, tr.va, tr.kind)
    assert bare.nbytes == 33 and list(bare.intervals()) == [(0, 3, [])]


def test_trace_validation():
    with pytest.raises(ValueError):
        Trace(np.zeros(2), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.array([8]))
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.zeros(1),
              [(1, 0, Step("flush_tlb")), (0, 1, Step("flush_tlb"))])
    with pytest.raises(ValueError):
        Trace(np.zeros(1), np.zeros(1), np.zeros(1), [(2, 0, Step("flush_tlb"))])
    assert list(Trace(np.zeros(0), np.zeros(0), np.zeros(0)).intervals()) == []
