"""The numpy engine's stage-1 walker: AArch64.S1Walk of many VAs at once over the page-table
memory of a group (model.engine_state.Shared), one level at a time for every VA together.

It vectorises model.reference.Vm.s1_walk: the same per-level rule (model.semantics.
s1_descriptor), the same TTBR0 range check, and no stage-2 checks (the caller, the walk cache
of model/engine_chunk.py, checks the pages it reports).  Descriptors outside the page-table
slot read as zero (docs/scenario-format.md "Stage-1 table layout": only that slot holds
descriptors).

Two paths, equal on every walk they both take:

* `walk_vas_exact`: every level's rule on every VA (any granule, any descriptor);
* the fast path (4 KiB granule, page-table memory given as an engine_state.DescMemory):
  per level one gather through DescMemory.next_rows (the row of the table a descriptor
  with bits[1:0] = 0b11 points to) and the VA's index bits — the shape of a C scalar walk,
  with no per-level branch.  A walk that does not end on a level-3 page descriptor through
  table descriptors only (an invalid descriptor, a block, a table outside the slot, a VA
  outside the TTBR0 range) is walked again by walk_vas_exact.  What the caller reads beyond
  the output page and the leaf (descriptor offsets and pages per level, table descriptors)
  is derived from the per-level positions on first use (`FastWalks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .arch import Geometry
from .semantics import desc_address, output_address, s1_descriptor

U64 = np.uint64
PAGE_MASK = ~(4096 - 1)
FAST_CHUNK = 1 << 15          # VAs per block of the fast path (its arrays stay in cache)


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
             va: np.ndarray, mem=None):
    """Walk every VA of `va` (int64) from the root table at IPA `root`.  `idx` maps page IPAs
    to slot indices (engine_state.SlotIndex), `read_v(offsets)` reads descriptors by offset
    in the page-table slot of `nptd` descriptors at `pt_base`; `mem`, the same memory as an
    engine_state.DescMemory, allows the fast path (module doc).  Returns a VaWalks (or a
    FastWalks: the same fields)."""
    if (mem is not None and geo.granule == 4096 and geo.levels >= 2
            and mem.fast_worthwhile(len(va))):
        ro = root - pt_base
        if 0 <= ro < nptd * 8 and ro % 4096 == 0:
            return FastWalks(geo, idx, pt_base, nptd, read_v, root, va, mem)
    return walk_vas_exact(geo, idx, pt_base, nptd, read_v, root, va)


def walk_vas_exact(geo: Geometry, idx, pt_base: int, nptd: int, read_v, root: int,
                   va: np.ndarray) -> VaWalks:
    """walk_vas, every level's rule on every VA."""
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


class FastWalks:
    """The fast path's walks (module doc): `leaf` and `dp` at once; the other VaWalks fields
    on first use, from each level's descriptor position in DescMemory.mem (`pos`, the same
    walk again, stored); the walks the fast path could not take (`redo`) from
    walk_vas_exact.  The memory must not change while the fields are read."""

    def __init__(self, geo: Geometry, idx, pt_base: int, nptd: int, read_v, root: int,
                 va: np.ndarray, mem):
        self.geo, self.idx, self.mem, self.total = geo, idx, mem, idx.total
        self.L, n = geo.levels, len(va)
        self.pt_start = idx.index(pt_base)            # slot index of the slot's first page
        self.root_pos = np.int64(int(mem.row[(root - pt_base) >> 12]) << 9)
        outside = (va >> geo.va_bits) != 0
        self.va = np.where(outside, 0, va) if outside.any() else va
        leaf = np.empty(n, dtype=U64)
        for a in range(0, n, FAST_CHUNK):
            leaf[a:a + FAST_CHUNK] = np.take(mem.mem, self._chain(a, None))
        ok = (leaf & U64(3)) == U64(3)
        ok &= ~outside
        self.redo = np.flatnonzero(~ok)
        self.leaf = leaf
        self.dp = idx.index_v(leaf.view(np.int64) & np.int64(geo.oa_mask))
        self.ex = None
        if len(self.redo):
            self.ex = walk_vas_exact(geo, idx, pt_base, nptd, read_v, root, va[self.redo])
            self.leaf[self.redo] = self.ex.leaf
            self.dp[self.redo] = self.ex.dp

    def _chain(self, a: int, pos) -> np.ndarray:
        """The walks of VAs [a, a + FAST_CHUNK): each level's position (stored in `pos` when
        given), the last level's returned."""
        v = self.va[a:a + FAST_CHUNK]
        nxt, steps = self.mem.next_rows(), self.geo.walk_steps
        e = (v >> steps[0][1]) & steps[0][2]
        e += self.root_pos
        for l in range(1, self.L):
            if pos is not None:
                pos[l - 1, a:a + len(v)] = e
            e = np.take(nxt, e)
            e |= (v >> steps[l][1]) & 511              # 4 KiB granule: 9 index bits
        if pos is not None:
            pos[self.L - 1, a:a + len(v)] = e
        return e

    @cached_property
    def pos(self) -> np.ndarray:
        """(L, n): each level's descriptor position in DescMemory.mem."""
        n = len(self.va)
        pos = np.empty((self.L, n), dtype=np.int64)
        for a in range(0, n, FAST_CHUNK):
            self._chain(a, pos)
        return pos

    def _fix(self, a: np.ndarray, name: str) -> np.ndarray:
        if self.ex is not None:
            a[..., self.redo] = getattr(self.ex, name)
        return a

    @cached_property
    def level(self) -> np.ndarray:
        return self._fix(np.full(self.pos.shape[1], 3, dtype=np.int8), "level")

    @cached_property
    def found(self) -> np.ndarray:
        return self._fix(np.ones(self.pos.shape[1], dtype=bool), "found")

    @cached_property
    def nlev(self) -> np.ndarray:
        return self._fix(np.full(self.pos.shape[1], self.L, dtype=np.int8), "nlev")

    @cached_property
    def doff(self) -> np.ndarray:
        m = self.mem
        p = self.pos
        return self._fix((np.take(m.page_of_row(), p >> 9) << 9) | (p & 511), "doff")

    @cached_property
    def pg(self) -> np.ndarray:
        return self._fix((self.doff >> 9).astype(np.int32) + np.int32(self.pt_start), "pg")

    @cached_property
    def tab_off(self) -> np.ndarray:
        t = self.doff[:max(self.L - 1, 1)].copy()
        return self._fix(t, "tab_off")

    @cached_property
    def leaf_off(self) -> np.ndarray:
        return self._fix(self.doff[self.L - 1].copy(), "leaf_off")
