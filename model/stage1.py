"""Guest stage-1 tables: the builder with docs/scenario-format.md's layout rule.

Layout rule (docs/scenario-format.md "Stage-1 table layout"): the root table is the first granule of
`pt_slot`; mappings are inserted in file order, each from its lowest VA upward; a missing
table is allocated at the next free granule of `pt_slot` in the slot's allocation order
(`guest.pt_order`: address order, or "spread" over the slot), free meaning that it holds no
table and no mapping maps it (a guest whose page allocator hands out tables and data from
one pool); table descriptors are created with AF = 1 (Linux PMD_TABLE_AF).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .arch import DESC_SIZE, Geometry, make_leaf_desc, make_table_desc
from .scenario import Scenario


class TableLayoutError(ValueError):
    """The tables cannot be laid out; `key` names the offending scenario key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class GuestTables:
    """Initial guest memory content: descriptors by 8-byte-aligned IPA (non-zero only)."""
    geometry: Geometry
    root: int                        # IPA of the root table
    descriptors: dict[int, int]      # IPA of descriptor -> value
    tables_used: int                 # granules of pt_slot holding tables
    leaf_addr: dict[int, int]        # VA of each mapped granule -> IPA of its leaf descriptor
    table_ipas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted


PT_ORDERS = ("address", "spread")
GOLDEN = (math.sqrt(5) - 1) / 2


def spread_stride(capacity: int) -> int:
    """The stride of the "spread" order: the integer nearest capacity x (sqrt(5) - 1) / 2
    that is coprime with capacity (a golden-ratio sequence: every prefix of the order is
    spread evenly over the slot, and the order visits every granule once)."""
    s = max(1, round(capacity * GOLDEN))
    while math.gcd(s, capacity) != 1:
        s += 1
    return s


def allocation_order(capacity: int, pt_order: str) -> np.ndarray:
    """Granule indices of pt_slot after the root (index 0), in the order the guest's page
    allocator hands them out: address order, or "spread": the k-th is k x stride mod
    capacity (ASSUMPTION: a guest that has run a while has free pages all over its memory,
    so what it allocates is spread over it; docs/scenario-format.md)."""
    k = np.arange(1, max(1, capacity), dtype=np.int64)
    if pt_order == "spread" and capacity > 1:
        return (k * spread_stride(capacity)) % capacity
    return k


def build_tables(scn: Scenario) -> GuestTables:
    """The layout rule on arrays: every mapped granule in insertion order; every (level, VA
    prefix) needs a table for the next level, allocated at the first granule that needs it,
    top-down within a granule.  Raises TableLayoutError for the first granule, in insertion
    order, that finds the page-table slot full or its VA already mapped."""
    geo = scn.machine.geometry
    g = geo.granule
    pt = scn.slot(scn.guest.pt_slot)
    capacity = (pt.pages * 4096) // g
    if capacity < 1:
        raise TableLayoutError("guest.pt_slot", f"slot '{pt.name}' is smaller than one "
                               f"{g // 1024}K granule: no room for the root table")
    cnt = np.array([m.pages for m in scn.mappings], dtype=np.int64)
    rep = np.repeat(np.arange(len(cnt)), cnt)              # mapping of each granule
    step = (np.arange(len(rep), dtype=np.int64) - (np.cumsum(cnt) - cnt)[rep]) * g
    va = np.array([m.va for m in scn.mappings], dtype=np.int64)[rep] + step
    ipa = np.array([m.ipa for m in scn.mappings], dtype=np.int64)[rep] + step
    keys, inv_of, order, first_page = _table_keys(geo, va)
    free = allocation_order(capacity, scn.guest.pt_order)
    mapped = ipa[(ipa >= pt.ipa) & (ipa < pt.ipa + capacity * g)]
    if len(mapped):                                       # pages a mapping maps are not free
        free = free[~np.isin(free, (mapped - pt.ipa) // g)]
    _check_layout(scn, pt, 1 + len(free), va, rep, first_page, len(order), capacity)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    addr_of = pt.ipa + free[rank] * g                     # table address per (level, prefix)
    offs = np.cumsum([0] + [len(u) for u in keys])
    descriptors: dict[int, int] = {}
    parent = np.full(len(va), pt.ipa, dtype=np.int64)     # table holding this level's entry
    for k, lev in enumerate(range(geo.start_level, 3)):
        child = addr_of[offs[k]:offs[k + 1]][inv_of[k]]
        daddr = parent + geo.index(va, lev) * DESC_SIZE
        u, i = np.unique(daddr, return_index=True)
        dval = make_table_desc(child[i], geo)
        descriptors.update(zip(u.tolist(), dval.tolist()))
        parent = child
    laddr = parent + geo.index(va, 3) * DESC_SIZE
    flags = np.array([make_leaf_desc(0, geo, 3, af=m.af, writable=m.writable, dirty=m.dirty,
                                     executable=m.executable) for m in scn.mappings],
                     dtype=np.uint64)[rep]
    lval = (ipa.astype(np.uint64) & np.uint64(geo.oa_mask)) | flags
    descriptors.update(zip(laddr.tolist(), lval.tolist()))
    return GuestTables(geo, pt.ipa, descriptors, 1 + len(order),
                       dict(zip(va.tolist(), laddr.tolist())),
                       np.sort(np.concatenate(([pt.ipa], addr_of))).astype(np.int64))


def _table_keys(geo: Geometry, va: np.ndarray):
    """The tables the granules need: per level below the leaf level, the distinct VA
    prefixes (a table each) and each granule's; the allocation order of all of them (by
    first granule needing it, then level) and the first granule of each in that order."""
    keys, firsts, lv_of, inv_of = [], [], [], []
    for k, lev in enumerate(range(geo.start_level, 3)):
        u, idx, inv = np.unique(va >> geo.level_shift(lev), return_index=True,
                                return_inverse=True)
        keys.append(u)
        firsts.append(idx)
        lv_of.append(np.full(len(u), k))
        inv_of.append(inv.reshape(-1))
    allf = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64)
    alll = np.concatenate(lv_of) if lv_of else np.zeros(0, dtype=np.int64)
    order = np.lexsort((alll, allf))                      # by first granule, then level
    return keys, inv_of, order, allf[order]


def _check_layout(scn: Scenario, pt, capacity: int, va: np.ndarray, rep: np.ndarray,
                  first_page: np.ndarray, n_tables: int, granules: int) -> None:
    """The first error the granule-by-granule layout meets: a table that does not fit (the
    (capacity)-th allocation, capacity counting the root and the free granules), or a VA
    mapped twice, whichever granule comes first."""
    full_at = int(first_page[capacity - 1]) if 1 + n_tables > capacity else len(va)
    u, first = np.unique(va, return_index=True)
    dup_at = len(va)
    if len(u) != len(va):
        seen = np.zeros(len(va), dtype=bool)
        seen[first] = True
        dup_at = int(np.argmin(seen))
    if full_at < dup_at:
        raise TableLayoutError(
            f"mappings[{int(rep[full_at])}]",
            f"page-table slot '{pt.name}' ({granules} granules) is too small "
            f"for the tables of this mapping")
    if dup_at < len(va):
        raise TableLayoutError(f"mappings[{int(rep[dup_at])}]",
                               f"VA {int(va[dup_at]):#x} overlaps an earlier mapping")
