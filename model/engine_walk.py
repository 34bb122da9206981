"""The numpy engine's stage-1 walker: AArch64.S1Walk of many VAs at once over the page-table
memory of a group (model.engine_state.Shared), one level at a time for every VA together.

It vectorises model.reference.Vm.s1_walk: the same per-level rule (model.semantics.
s1_descriptor), the same TTBR0 range check, and no stage-2 checks (the caller, the walk cache
of model/engine_chunk.py, checks the pages it reports).  Descriptors outside the page-table
slot read as zero (docs/scenario-format.md "Stage-1 table layout": only that slot holds
descriptors).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import Geometry
from .semantics import desc_address, output_address, s1_descriptor

U64 = np.uint64
PAGE_MASK = ~(4096 - 1)


@dataclass
class VaWalks:
    """The walks of n VAs (L = the geometry's levels; level rows top-down)."""
    nlev: np.ndarray        # int8 (n,): descriptors read (0: outside the TTBR0 range)
    pg: np.ndarray          # int32 (L, n): slot index of the page of each level's descriptor
                            # (`total` where the walk did not read that level)
    doff: np.ndarray        # int64 (L, n): its 8-byte offset in the page-table slot, or -1
    tab_off: np.ndarray     # int64 (max(L-1, 1), n): offset of each table descriptor followed
    found: np.ndarray       # bool (n,): the walk reached a leaf (page or block)
    level: np.ndarray       # int8 (n,): the leaf's level, or -1
    leaf: np.ndarray        # uint64 (n,): the leaf descriptor (0 when not found)
    leaf_off: np.ndarray    # int64 (n,): the leaf's offset (0 when not found)
    dp: np.ndarray          # int32 (n,): slot index of the output page, `total` if none


def walk_vas(geo: Geometry, idx, pt_base: int, nptd: int, read_v, root: int,
             va: np.ndarray) -> VaWalks:
    """Walk every VA of `va` (int64) from the root table at IPA `root`.  `idx` maps page IPAs
    to slot indices (engine_state.SlotIndex), `read_v(offsets)` reads descriptors by offset
    in the page-table slot of `nptd` descriptors at `pt_base`."""
    n = len(va)
    L = geo.levels
    total = idx.total
    table = np.full(n, root, dtype=np.int64)
    alive = (va >> geo.va_bits) == 0      # outside the TTBR0 range: no walk (Vm.s1_walk)
    nlev = np.zeros(n, dtype=np.int8)
    pg = np.full((L, n), total, dtype=np.int32)
    doff = np.full((L, n), -1, dtype=np.int64)
    tab_off = np.full((max(L - 1, 1), n), -1, dtype=np.int64)
    found = np.zeros(n, dtype=bool)
    level = np.full(n, -1, dtype=np.int8)
    leaf = np.zeros(n, dtype=U64)
    leaf_off = np.zeros(n, dtype=np.int64)
    oa_mask = np.int64(geo.oa_mask)
    for l, (lev, shift, mask) in enumerate(geo.walk_steps):
        addr = desc_address(table, va, shift, mask)
        nlev += alive
        pg[l] = np.where(alive, idx.index_v(addr & PAGE_MASK), total)
        off = (addr - pt_base) >> 3
        inpt = alive & (off >= 0) & (off < nptd)
        doff[l] = np.where(inpt, off, -1)
        desc = np.where(inpt, read_v(off), U64(0))
        is_tab, is_leaf = s1_descriptor(desc, lev, geo)
        is_tab &= alive
        is_leaf &= alive
        if lev < 3 and l < L - 1:
            tab_off[l] = np.where(is_tab, off, -1)
        found |= is_leaf
        level[is_leaf] = lev
        leaf[is_leaf] = desc[is_leaf]
        leaf_off[is_leaf] = off[is_leaf]
        table = np.where(is_tab, desc.astype(np.int64) & oa_mask, table)
        alive = is_tab
    lsh = np.array([geo.level_shift(lv) for lv in range(4)], dtype=np.int64)
    size = np.left_shift(np.int64(1), lsh[np.maximum(level, 0)])
    oa = output_address(leaf.astype(np.int64), size, va, oa_mask)
    dp = np.where(found, idx.index_v(oa & PAGE_MASK), total).astype(np.int32)
    return VaWalks(nlev, pg, doff, tab_off, found, level, leaf, leaf_off, dp)
