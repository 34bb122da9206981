"""Vectorised stage-1 walker: every access of a batch walked with numpy gathers, no Python
loop per access or per page.  Same semantics as model.reference.Vm.s1_walk / s1_check /
s1_updates (AArch64.S1Walk, AArch64.S1CheckPermissions, AArch64.S1Translate; QEMU
target/arm/ptw.c `get_phys_addr_lpae`), checked by tests/test_walker.py.

Table storage (FlatTables)
--------------------------
Table t (0 <= t < n_tables) is the granule at IPA `table_ipa[t]`; `desc[t, i]` is its entry i
(uint64, E = granule / 8 entries).  Rows are stored ROW = E + ROW_PAD entries apart (one spare
cache line per table: the same entry of many tables then does not fall into one cache set —
without it a sparse walk that hits entry 0 of 32768 leaf tables runs ~2x slower); a flat
entry index is t * ROW + i.  One extra row, `sink` = n_tables, holds zeros and is where walks
that have already ended are parked.  The walk itself reads one int64 array, `chain`, laid out
like the descriptors, derived from them once at construction:

* entry of a table walked at level l < 3 holding a valid table descriptor to table c:
  ``chain = c * ROW - P * E`` where P = the child's VA prefix (va >> level_shift(l)), so that
  the next entry is simply ``e' = chain[e] + (va >> level_shift(l + 1))`` = c*ROW + index —
  one shift, one add and one gather per level, no masking;
* entry of a level-3 table holding a valid page descriptor: its output address
  (desc & oa_mask), so the last gather yields the OA directly;
* anything else (invalid, block, reserved, sink): ``DEAD = 2**62``; a walk that hits it keeps
  indices >= DEAD, which `np.take(..., mode="clip")` parks in the sink row, and its final
  value stays >= DEAD, so the fast path needs no per-level branch.  Walks ending on a block
  or a fault are then redone exactly by `walk_batch` (the rare path).

This relies on each table being reached by one VA prefix only (a tree, as the builder makes);
`from_*` raise TableSetError otherwise, and when a valid table descriptor points outside the
known table set (cannot happen with build_tables output).  `next_table` (int32, -1 where no
valid table descriptor) is offered for readers; the walk does not need it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import (DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_SIZE,
                   DESC_TABLE, DESC_VALID, Geometry, make_leaf_desc)
from .scenario import Scenario
from .stage1 import GuestTables, TableLayoutError
from .trace import AT, EXEC, KIND_CODE, STORE_MASK

DEAD = 1 << 62
ROW_PAD = 8                     # spare entries (one 64-byte line) after each table row
DEFAULT_CHUNK = 1 << 15         # 32768 VAs: ~4 live int64 chunk arrays = 1 MiB (L2-sized)

# Stage-1 fault classes (the messages of model.reference.Stage1Fault)
S1_NONE, S1_TRANSLATION, S1_ACCESS_FLAG, S1_PERMISSION = 0, 1, 2, 3
S1_FAULT_NAMES = ("none", "translation", "access flag", "permission")



class TableSetError(ValueError):
    """The descriptors do not form a tree of known tables (a table descriptor points to an IPA
    that is not a table page, or one table is reached by two VA prefixes)."""


def _u(x: int) -> np.uint64:
    return np.uint64(x)


@dataclass(eq=False)
class FlatTables:
    geo: Geometry
    table_ipa: np.ndarray        # int64 (n_tables,): IPA of table t
    root: int                    # table id of the root table
    _desc: np.ndarray            # uint64 (n_tables + 1, ROW); row n_tables = sink (zeros)
    level: np.ndarray            # int8 (n_tables,): level the table is walked at; -1 unreachable
    prefix: np.ndarray           # int64 (n_tables,): VA prefix of the table (va >> shift(level-1))
    chain: np.ndarray            # int64 (n_tables + 1, ROW): see the module docstring
    _next: np.ndarray | None = None

    # ---- shape ------------------------------------------------------------------------------
    @property
    def n_tables(self) -> int:
        return len(self.table_ipa)

    @property
    def entries(self) -> int:
        return self.geo.granule // DESC_SIZE

    @property
    def row(self) -> int:
        """Distance between two tables' rows in the flat arrays (entries + ROW_PAD)."""
        return self._desc.shape[1]

    @property
    def sink(self) -> int:
        return self.n_tables

    @property
    def desc(self) -> np.ndarray:
        """uint64 (n_tables, entries): desc[t, i] = descriptor i of the table at table_ipa[t].
        A view: write through `set_desc`, not directly (chain must follow)."""
        return self._desc[:-1, :self.entries]

    @property
    def next_table(self) -> np.ndarray:
        """int32 (n_tables, entries): table id a valid table descriptor of a level < 3 table
        points to, -1 elsewhere (computed on demand)."""
        if self._next is None:
            nt = np.full(self.desc.shape, -1, dtype=np.int32)
            rows = np.flatnonzero((self.level >= 0) & (self.level < 3))
            d = self.desc[rows]
            is_tbl = (d & _u(DESC_VALID | DESC_TABLE)) == _u(DESC_VALID | DESC_TABLE)
            tgt = self.table_id((d & _u(self.geo.oa_mask)).astype(np.int64))
            nt[rows] = np.where(is_tbl, tgt, -1)
            self._next = nt
        return self._next

    @property
    def nbytes(self) -> int:
        return self._desc.nbytes + self.chain.nbytes + self.table_ipa.nbytes

    def table_id(self, ipa) -> np.ndarray:
        """Table id of each granule-aligned IPA (int64 array), -1 if not a table."""
        ipa = np.asarray(ipa, dtype=np.int64)
        order = self._order
        pos = np.searchsorted(self._sorted_ipa, ipa)
        pos = np.minimum(pos, len(order) - 1)
        tid = order[pos]
        return np.where(self.table_ipa[tid] == ipa, tid, -1)

    def entry_of_ipa(self, ipa) -> np.ndarray:
        """Flat entry index (t * row + i) of each descriptor IPA; -1 outside the tables."""
        ipa = np.asarray(ipa, dtype=np.int64)
        g = self.geo.granule
        tid = self.table_id(ipa & ~(g - 1))
        return np.where(tid >= 0, tid * self.row + ((ipa & (g - 1)) >> 3), -1)

    def entry_ipa(self, entry) -> np.ndarray:
        """IPA of each flat entry index; -1 for -1, the sink and indices >= DEAD."""
        entry = np.asarray(entry, dtype=np.int64)
        R = self.row
        ok = (entry >= 0) & (entry < self.n_tables * R) & (entry % R < self.entries)
        t = np.where(ok, entry // R, 0)
        return np.where(ok, self.table_ipa[t] + ((entry % R) << 3), -1)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_memory(cls, geo: Geometry, root_ipa: int, descriptors: dict[int, int],
                    table_pages) -> "FlatTables":
        """Tables from a descriptor dict (IPA -> value, as GuestTables.descriptors).
        `table_pages`: the granule IPAs holding tables (e.g. a range); descriptors outside
        them are ignored.  Raises TableSetError if the tables do not form a tree."""
        n = len(descriptors)
        addr = np.fromiter(descriptors.keys(), dtype=np.int64, count=n)
        val = np.fromiter(descriptors.values(), dtype=np.uint64, count=n)
        return cls.from_arrays(geo, root_ipa, addr, val, table_pages)

    @classmethod
    def from_arrays(cls, geo: Geometry, root_ipa: int, addr: np.ndarray, value: np.ndarray,
                    table_pages) -> "FlatTables":
        g = geo.granule
        E = g // DESC_SIZE
        table_ipa = np.asarray(table_pages, dtype=np.int64).reshape(-1)
        if len(table_ipa) == 0 or np.any(table_ipa % g):
            raise ValueError("table_pages must be non-empty and granule-aligned")
        if len(np.unique(table_ipa)) != len(table_ipa):
            raise ValueError("table_pages has duplicates")
        desc = np.zeros((len(table_ipa) + 1, E + ROW_PAD), dtype=np.uint64)
        self = cls._blank(geo, table_ipa, desc)
        addr = np.asarray(addr, dtype=np.int64)
        value = np.asarray(value, dtype=np.uint64)
        ent = self.entry_of_ipa(addr)
        keep = ent >= 0
        desc.reshape(-1)[ent[keep]] = value[keep]
        root = int(self.table_id(root_ipa))
        if root < 0:
            raise TableSetError(f"root {root_ipa:#x} is not in table_pages")
        self.root = root
        self._derive()
        return self

    @classmethod
    def from_tables(cls, gt: GuestTables) -> "FlatTables":
        g = gt.geometry.granule
        return cls.from_memory(gt.geometry, gt.root, gt.descriptors,
                               range(gt.root, gt.root + gt.tables_used * g, g))

    @classmethod
    def from_leaves(cls, geo: Geometry, root_ipa: int, va_pages: np.ndarray,
                    leaf_desc: np.ndarray, capacity: int | None = None) -> "FlatTables":
        """Vectorised build_tables: level-3 descriptors `leaf_desc` for granule-aligned
        `va_pages` inserted in this order, tables allocated at the next free granule after
        `root_ipa` in order of first need (docs/scenario-format.md layout rule), table descriptors with
        AF = 1.  Gives the same memory as model.stage1.build_tables."""
        g = geo.granule
        E = g // DESC_SIZE
        va = np.asarray(va_pages, dtype=np.int64).reshape(-1)
        leaf_desc = np.asarray(leaf_desc, dtype=np.uint64).reshape(-1)
        if len(leaf_desc) != len(va):
            raise ValueError("va_pages and leaf_desc differ in length")
        if np.any(va % g) or np.any(va < 0) or np.any(va >> geo.va_bits):
            raise ValueError("va_pages must be granule-aligned and inside va_bits")
        if len(np.unique(va)) != len(va):
            raise TableLayoutError("mappings", "a VA is mapped twice")
        start = geo.start_level
        # per table level below the root: prefix of each VA, first need, inverse
        keys_first, keys_level, per_level = [], [], []
        for lvl in range(start + 1, 4):
            pfx = va >> geo.level_shift(lvl - 1)
            uniq, first, inv = np.unique(pfx, return_index=True, return_inverse=True)
            per_level.append((lvl, uniq, inv))
            keys_first.append(first)
            keys_level.append(np.full(len(uniq), lvl))
        first = np.concatenate(keys_first) if keys_first else np.zeros(0, np.int64)
        lvls = np.concatenate(keys_level) if keys_level else np.zeros(0, np.int64)
        order = np.lexsort((lvls, first))                 # by first need, then level
        n_tables = 1 + len(order)
        if capacity is not None and n_tables > capacity:
            raise TableLayoutError("guest.pt_slot", f"page-table slot ({capacity} granules) "
                                   f"is too small for {n_tables} tables")
        tid_of_key = np.empty(len(order), dtype=np.int64)
        tid_of_key[order] = np.arange(1, n_tables)
        table_ipa = root_ipa + np.arange(n_tables, dtype=np.int64) * g
        R = E + ROW_PAD
        desc = np.zeros((n_tables + 1, R), dtype=np.uint64)
        flat = desc.reshape(-1)
        parent = np.zeros(len(va), dtype=np.int64)        # root = table 0
        base = 0
        for lvl, uniq, inv in per_level:
            child = tid_of_key[base + inv]
            base += len(uniq)
            idx = (va >> geo.level_shift(lvl - 1)) & (E - 1)
            flat[parent * R + idx] = (table_ipa[child].astype(np.uint64)
                                      | _u(DESC_VALID | DESC_TABLE | DESC_AF))
            parent = child
        flat[parent * R + ((va >> geo.level_shift(3)) & (E - 1))] = leaf_desc
        self = cls._blank(geo, table_ipa, desc)
        self.root = 0
        self._derive()
        return self

    @classmethod
    def dense(cls, geo: Geometry, va_base: int, n_pages: int, oa_base: int,
              root_ipa: int = 0x4000_0000, *, af: bool = True, writable: bool = True,
              dirty: bool = True, executable: bool = False) -> "FlatTables":
        """One contiguous mapping of `n_pages` granules (the tables build_tables makes for a
        scenario with this single mapping and `pt_slot` at `root_ipa`)."""
        g = geo.granule
        va = va_base + np.arange(n_pages, dtype=np.int64) * g
        return cls.from_leaves(geo, root_ipa, va,
                               leaf_descs(geo, oa_base + np.arange(n_pages, dtype=np.int64) * g,
                                          af=af, writable=writable, dirty=dirty,
                                          executable=executable))

    @classmethod
    def build(cls, scn: Scenario) -> "FlatTables":
        """Vectorised build_tables(scn) (same layout; overlap and size errors as
        TableLayoutError, though not always naming the same mapping)."""
        geo = scn.machine.geometry
        g = geo.granule
        pt = scn.slot(scn.guest.pt_slot)
        capacity = (pt.pages * 4096) // g
        if capacity < 1:
            raise TableLayoutError("guest.pt_slot", f"slot '{pt.name}' is smaller than one "
                                   f"granule: no room for the root table")
        vas, descs = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
        for m in scn.mappings:
            off = np.arange(m.pages, dtype=np.int64) * g
            vas.append(m.va + off)
            descs.append(leaf_descs(geo, m.ipa + off, af=m.af, writable=m.writable,
                                    dirty=m.dirty, executable=m.executable))
        return cls.from_leaves(geo, pt.ipa, np.concatenate(vas), np.concatenate(descs),
                               capacity)

    @classmethod
    def _blank(cls, geo, table_ipa, desc) -> "FlatTables":
        n = len(table_ipa)
        self = cls(geo, table_ipa, 0, desc, np.full(n, -1, np.int8), np.zeros(n, np.int64),
                   np.full(desc.shape, DEAD, dtype=np.int64))
        return self

    def __post_init__(self) -> None:
        self._order = np.argsort(self.table_ipa, kind="stable")
        self._sorted_ipa = self.table_ipa[self._order]

    def _derive(self) -> None:
        """Levels and prefixes of the tables reachable from the root (breadth-first, one
        numpy pass per level), then `chain`."""
        geo, E, R = self.geo, self.entries, self.row
        self.level[:] = -1
        self.chain[:] = DEAD
        self._next = None
        frontier = np.array([self.root], dtype=np.int64)
        self.level[self.root] = geo.start_level
        self.prefix[self.root] = 0
        for lvl in range(geo.start_level, 3):
            if len(frontier) == 0:
                break
            rows = self._desc[frontier]                               # (k, E)
            is_tbl = (rows & _u(DESC_VALID | DESC_TABLE)) == _u(DESC_VALID | DESC_TABLE)
            pi, ei = np.nonzero(is_tbl)
            tgt_ipa = (rows[pi, ei] & _u(geo.oa_mask)).astype(np.int64)
            child = self.table_id(tgt_ipa)
            if np.any(child < 0):
                bad = int(tgt_ipa[np.argmax(child < 0)])
                raise TableSetError(f"a level-{lvl} table descriptor points to {bad:#x}, "
                                    f"which is not a table page")
            if len(np.unique(child)) != len(child) or np.any(self.level[child] >= 0):
                raise TableSetError("a table is reached by more than one table descriptor "
                                    "(the walker needs a tree)")
            cpfx = self.prefix[frontier[pi]] * E + ei
            self.level[child] = lvl + 1
            self.prefix[child] = cpfx
            self.chain[frontier[pi], ei] = child * R - cpfx * E
            frontier = child
        leaf_rows = np.flatnonzero(self.level == 3)
        self._leaf_chain(leaf_rows)

    def _leaf_chain(self, rows: np.ndarray) -> None:
        d = self._desc[rows, :self.entries]
        page = (d & _u(DESC_VALID | DESC_TABLE)) == _u(DESC_VALID | DESC_TABLE)
        self.chain[rows, :self.entries] = np.where(page, (d & _u(self.geo.oa_mask)).astype(np.int64), DEAD)

    def set_desc(self, ipa, value) -> None:
        """Write descriptors (vectorised; e.g. AF/AP[2]/DBM changes, invalidation, blocks).
        A valid table descriptor may only point to the table it pointed to when the tables
        were built (re-pointing needs a rebuild: TableSetError)."""
        ipa = np.atleast_1d(np.asarray(ipa, dtype=np.int64))
        value = np.broadcast_to(np.asarray(value, dtype=np.uint64), ipa.shape)
        ent = self.entry_of_ipa(ipa)
        if np.any(ent < 0):
            raise TableSetError("set_desc outside the table pages")
        E, R = self.entries, self.row
        t, i = ent // R, ent % R
        lvl = self.level[t]
        is_tbl = (value & _u(DESC_VALID | DESC_TABLE)) == _u(DESC_VALID | DESC_TABLE)
        ch = np.full(len(ent), DEAD, dtype=np.int64)
        up = (lvl >= 0) & (lvl < 3) & is_tbl
        if np.any(up):
            child = self.table_id((value[up] & _u(self.geo.oa_mask)).astype(np.int64))
            cpfx = self.prefix[t[up]] * E + i[up]
            if (np.any(child < 0) or np.any(self.level[child] != lvl[up] + 1)
                    or np.any(self.prefix[child] != cpfx)):
                raise TableSetError("set_desc re-points a table descriptor: rebuild instead")
            ch[up] = child * R - cpfx * E
        leaf = lvl == 3
        ch[leaf] = np.where(is_tbl[leaf], (value[leaf] & _u(self.geo.oa_mask)).astype(np.int64),
                            DEAD)
        flat_d = self._desc.reshape(-1)
        flat_c = self.chain.reshape(-1)
        flat_d[ent] = value
        flat_c[ent] = ch
        self._next = None

    def to_memory(self) -> dict[int, int]:
        """Non-zero descriptors as {IPA: value} (the GuestTables.descriptors form)."""
        t, i = np.nonzero(self.desc)
        return dict(zip((self.table_ipa[t] + i * DESC_SIZE).tolist(),
                        self.desc[t, i].tolist()))


def leaf_descs(geo: Geometry, oa: np.ndarray, *, af: bool = True, writable: bool = True,
               dirty: bool = True, executable: bool = False) -> np.ndarray:
    """Level-3 page descriptors for output addresses `oa` (make_leaf_desc, vectorised)."""
    bits = make_leaf_desc(0, geo, 3, af=af, writable=writable, dirty=dirty,
                          executable=executable)
    return (np.asarray(oa, dtype=np.int64).astype(np.uint64) & _u(geo.oa_mask)) | _u(bits)


# ---- walks --------------------------------------------------------------------------------------
@dataclass
class LeafBatch:
    """walk_leaf result: flat leaf entry index (t * row + i, FlatTables.entry_ipa gives its
    IPA) and output IPA of each access; -1 for both where the walk takes a stage-1
    translation fault."""
    entry: np.ndarray            # int64
    oa: np.ndarray               # int64
    row: int

    @property
    def table(self) -> np.ndarray:
        return np.where(self.entry >= 0, self.entry // self.row, -1)

    @property
    def index(self) -> np.ndarray:
        return np.where(self.entry >= 0, self.entry % self.row, -1)


@dataclass
class WalkBatch:
    """walk_batch result, one column per access.  Row r of the (levels, n) arrays is level
    start_level + r."""
    start_level: int
    level_desc_ipa: np.ndarray   # int64 (levels, n): IPA of the descriptor read; -1 not reached
    level_desc: np.ndarray       # uint64 (levels, n): descriptor read; 0 where not reached
    leaf_level: np.ndarray       # int8: level of the leaf (page/block); -1 on translation fault
    fault_level: np.ndarray      # int8: level of the translation fault; -1 if none
    leaf_desc: np.ndarray        # uint64: leaf descriptor (the faulting one on a fault)
    leaf_ipa: np.ndarray         # int64: its IPA
    leaf_entry: np.ndarray       # int64: its flat entry index in the FlatTables
    oa: np.ndarray               # int64: output IPA of the access; -1 on a fault

    def __len__(self) -> int:
        return len(self.oa)

    @property
    def levels(self) -> int:
        return self.level_desc.shape[0]


def _vmask(geo: Geometry) -> int:
    # The walk indexes VA[va_bits-1:0]; VAs with higher bits set are out of the TTBR0 range
    # and fault without a walk (AArch64.VAIsOutOfRange; Vm.s1_walk): _out_of_range.
    return (1 << geo.va_bits) - 1


def _out_of_range(geo: Geometry, va: np.ndarray) -> np.ndarray:
    """Indices of the VAs (int64 view) outside the TTBR0 range."""
    return np.flatnonzero((va >> geo.va_bits) != 0)


def walk_leaf(ft: FlatTables, va: np.ndarray, chunk: int = DEFAULT_CHUNK,
              out: LeafBatch | None = None) -> LeafBatch:
    """Throughput path: leaf entry and output address of each VA.  Walks that end on a
    level-3 page take the gather chain only; the others (blocks, faults) are redone by
    walk_batch.  `out`: a LeafBatch of at least len(va) whose arrays are reused (saves the
    page faults of fresh output arrays when walking batch after batch); the result is then
    a view of its first len(va) elements."""
    geo = ft.geo
    va = np.ascontiguousarray(va, dtype=np.uint64).view(np.int64)
    n = len(va)
    if out is not None:
        if len(out.entry) < n or len(out.oa) < n or out.row != ft.row:
            raise ValueError("out is too small or from other tables")
        entry, oa = out.entry[:n], out.oa[:n]
    else:
        entry = np.empty(n, dtype=np.int64)
        oa = np.empty(n, dtype=np.int64)
    chain = ft.chain.reshape(-1)
    vm = _vmask(geo)
    shifts = [geo.level_shift(lvl) for lvl in range(geo.start_level, 4)]
    root_base = ft.root * ft.row
    gmask = geo.granule - 1
    c = min(chunk, max(n, 1))
    V = np.empty(c, dtype=np.int64)
    T = np.empty(c, dtype=np.int64)
    for s in range(0, n, c):
        m = min(c, n - s)
        v, t = V[:m], T[:m]
        e = entry[s:s + m]
        np.bitwise_and(va[s:s + m], vm, out=v)
        np.right_shift(v, shifts[0], out=e)
        np.add(e, root_base, out=e)
        for sh in shifts[1:]:
            np.take(chain, e, out=e, mode="clip")
            np.right_shift(v, sh, out=t)
            np.add(e, t, out=e)
        o = oa[s:s + m]
        np.take(chain, e, out=o, mode="clip")     # level 3: the page OA, or >= DEAD
        np.bitwise_and(v, gmask, out=v)
        np.bitwise_or(o, v, out=o)
    slow = np.flatnonzero(oa >= DEAD)
    if len(slow):
        wb = walk_batch(ft, va[slow].view(np.uint64), chunk)
        ok = wb.leaf_level >= 0
        entry[slow] = np.where(ok, wb.leaf_entry, -1)
        oa[slow] = wb.oa
    bad = _out_of_range(geo, va)
    entry[bad] = -1
    oa[bad] = -1
    return LeafBatch(entry, oa, ft.row)


def _leaf_luts(geo: Geometry):
    """Lookup tables indexed by code = row << 2 | desc[1:0] of the descriptor that ends the
    walk (row = level - start_level), AArch64.S1Walk / Vm.s1_walk:
      invalid (bit 0 = 0)                         -> translation fault
      level 3, bit 1 = 0 (reserved encoding)      -> translation fault
      level < 3, bit 1 = 0, block not allowed     -> translation fault
      otherwise a page (level 3) or block leaf.
    (A valid table descriptor never ends a walk: it always leads to a known table.)
    OA = desc[47:size] | VA[size-1:0] = (desc & A) | (va & B) | C, C = -1 on a fault."""
    start = geo.start_level
    n = 4 * 4
    leaf = np.full(n, -1, np.int8)
    fault = np.full(n, -1, np.int8)
    A = np.zeros(n, np.int64)
    B = np.zeros(n, np.int64)
    C = np.full(n, -1, np.int64)
    for row in range(geo.levels):
        lvl = start + row
        size = (1 << geo.level_shift(lvl)) - 1
        for low in range(4):
            code = row << 2 | low
            valid, bit1 = low & 1, low >> 1
            if lvl == 3:
                ok = valid and bit1
            else:
                ok = valid and not bit1 and geo.block_size(lvl) is not None
            if ok:
                leaf[code], A[code], B[code], C[code] = lvl, geo.oa_mask & ~size, size, 0
            else:
                fault[code] = lvl
    return leaf, fault, A, B, C


def walk_batch(ft: FlatTables, va: np.ndarray, chunk: int = DEFAULT_CHUNK) -> WalkBatch:
    """Full walk of each VA: every descriptor read, the leaf, the translation-fault level and
    the output address (model.reference.Vm.s1_walk, vectorised)."""
    geo = ft.geo
    va = np.ascontiguousarray(va, dtype=np.uint64).view(np.int64)
    n = len(va)
    L = geo.levels
    start = geo.start_level
    R = ft.row
    nE = ft.n_tables * R
    chain = ft.chain.reshape(-1)
    dflat = ft._desc.reshape(-1).view(np.int64)
    # IPA of flat entry e of table t = row_ipa[t] + 8 * e; the sink row gives garbage that
    # is overwritten with -1
    row_ipa = np.append(ft.table_ipa, -1) - np.arange(ft.n_tables + 1, dtype=np.int64) * R * 8
    shifts = [geo.level_shift(lvl) for lvl in range(start, 4)]
    lut_leaf, lut_fault, lut_a, lut_b, lut_c = _leaf_luts(geo)
    vm = _vmask(geo)

    out_ipa = np.empty((L, n), dtype=np.int64)
    out_desc = np.empty((L, n), dtype=np.uint64)
    leaf_level = np.empty(n, dtype=np.int8)
    fault_level = np.empty(n, dtype=np.int8)
    leaf_desc = np.empty(n, dtype=np.uint64)
    leaf_ipa = np.empty(n, dtype=np.int64)
    leaf_entry = np.empty(n, dtype=np.int64)
    oa = np.empty(n, dtype=np.int64)
    c = min(chunk, max(n, 1))
    V = np.empty(c, dtype=np.int64)
    T = np.empty(c, dtype=np.int64)
    U = np.empty(c, dtype=np.int64)
    CODE = np.empty(c, dtype=np.int64)
    REACHED = np.empty(c, dtype=bool)
    ent = np.empty((L, c), dtype=np.int64)
    for s in range(0, n, c):
        m = min(c, n - s)
        sl = slice(s, s + m)
        v, t, u, code, reached = V[:m], T[:m], U[:m], CODE[:m], REACHED[:m]
        np.bitwise_and(va[sl], vm, out=v)
        e = ent[:, :m]
        np.right_shift(v, shifts[0], out=e[0])
        np.add(e[0], ft.root * R, out=e[0])
        for r in range(1, L):
            np.take(chain, e[r - 1], out=e[r], mode="clip")
            np.right_shift(v, shifts[r], out=t)
            np.add(e[r], t, out=e[r])
        # descriptors read at each level (rows past the end of the walk read the sink: 0);
        # the walk's last row wins: reached rows are a prefix
        ld = leaf_desc[sl].view(np.int64)
        le = leaf_entry[sl]
        li = leaf_ipa[sl]
        code[:] = 0
        for r in range(L):
            er, dr, ir = e[r], out_desc[r, sl].view(np.int64), out_ipa[r, sl]
            np.take(dflat, er, out=dr, mode="clip")
            np.less(er, nE, out=reached)
            np.floor_divide(er, R, out=t)
            np.take(row_ipa, t, out=ir, mode="clip")
            np.left_shift(er, 3, out=t)
            np.add(ir, t, out=ir)
            np.copyto(ir, -1, where=~reached)
            if r == 0:
                ld[:], le[:], li[:] = dr, er, ir
            else:
                np.add(code, reached, out=code)            # row of the last descriptor read
                np.copyto(ld, dr, where=reached)
                np.copyto(le, er, where=reached)
                np.copyto(li, ir, where=reached)
        np.left_shift(code, 2, out=code)
        np.bitwise_and(ld, 3, out=t)
        np.bitwise_or(code, t, out=code)
        np.take(lut_leaf, code, out=leaf_level[sl], mode="clip")
        np.take(lut_fault, code, out=fault_level[sl], mode="clip")
        o = oa[sl]
        np.take(lut_a, code, out=t, mode="clip")
        np.bitwise_and(ld, t, out=o)
        np.take(lut_b, code, out=t, mode="clip")
        np.bitwise_and(v, t, out=u)
        np.bitwise_or(o, u, out=o)
        np.take(lut_c, code, out=t, mode="clip")
        np.bitwise_or(o, t, out=o)
    bad = _out_of_range(geo, va)        # no descriptor read: a fault at the start level
    out_ipa[:, bad] = -1
    out_desc[:, bad] = 0
    leaf_level[bad], fault_level[bad], oa[bad] = -1, start, -1
    leaf_desc[bad], leaf_ipa[bad], leaf_entry[bad] = 0, -1, -1
    return WalkBatch(start, out_ipa, out_desc, leaf_level, fault_level, leaf_desc, leaf_ipa,
                     leaf_entry, oa)


# ---- stage-1 checks and hardware updates ---------------------------------------------------------
@dataclass
class HwNeeds:
    """hw_update_needs result.  `update[r]`: the descriptor at wb.level_desc_ipa[r] is written
    by the hardware (rows above the leaf: table AF with HAFT; leaf row: leaf update), in row
    order = the order of the writes (tables top-down, then the leaf)."""
    fault: np.ndarray            # uint8: S1_NONE / S1_TRANSLATION / S1_ACCESS_FLAG / S1_PERMISSION
    update: np.ndarray           # bool (levels, n)
    leaf_update: np.ndarray      # bool (n,)
    new_leaf: np.ndarray         # uint64 (n,): leaf value after the update (= leaf if none)

    def new_value(self, wb: WalkBatch) -> np.ndarray:
        """uint64 (levels, n): value each updated descriptor gets (table: | AF; leaf:
        new_leaf); unchanged descriptors elsewhere."""
        out = np.where(self.update, wb.level_desc | _u(DESC_AF), wb.level_desc)
        rows = np.clip(wb.leaf_level.astype(np.int64) - wb.start_level, 0, None)
        cols = np.arange(len(wb))
        sel = self.leaf_update
        out[rows[sel], cols[sel]] = self.new_leaf[sel]
        return out


def _kind_codes(kind, n: int) -> np.ndarray:
    if isinstance(kind, str):
        return np.full(n, KIND_CODE[kind], dtype=np.uint8)
    return np.broadcast_to(np.asarray(kind, dtype=np.uint8), (n,))


def hw_update_needs(wb: WalkBatch, kind, ha, hd, haft, hw_update="on-change",
                    at_sets_af=False) -> HwNeeds:
    """Stage-1 fault class and hardware updates of each walk (model.reference.Vm.s1_check then
    Vm.s1_updates, vectorised).  `kind`: a kind name or code, or a code per access;
    `ha`, `hd`, `haft`: the EFFECTIVE controls (docs/semantics.md §2: HA = TCR_EL1.HA ∧ HAFDBS ≥ 1,
    HD = HA ∧ TCR_EL1.HD ∧ HAFDBS ≥ 2, HAFT = HA ∧ FEAT_HAFT ∧ TCR2_EL1.HAFT; HD and HAFT are
    ANDed with HA again here), scalars or one per access; `hw_update`: "on-change" |
    "always" or a bool per access (True = always); `at_sets_af`: bool (R_XQSMX)."""
    n = len(wb)
    k = _kind_codes(kind, n)
    ha = np.broadcast_to(np.asarray(ha, dtype=bool), (n,))
    hd = ha & np.asarray(hd, dtype=bool)
    haft = ha & np.asarray(haft, dtype=bool)
    if isinstance(hw_update, str):
        if hw_update not in ("on-change", "always"):
            raise ValueError(f"hw_update {hw_update!r}")
        always = np.bool_(hw_update == "always")
    else:
        always = np.asarray(hw_update, dtype=bool)
    at_sets_af = np.asarray(at_sets_af, dtype=bool)
    store = STORE_MASK[k]
    leaf = wb.leaf_desc
    walked = wb.leaf_level >= 0
    af0 = (leaf & _u(DESC_AF)) == 0
    ap2 = (leaf & _u(DESC_AP2)) != 0
    dbm = (leaf & _u(DESC_DBM)) != 0
    # AArch64.S1CheckPermissions, AF first: AF faults outrank permission faults (I_DSHLJ)
    af_fault = af0 & ~ha
    perm = ((k == EXEC) & ((leaf & _u(DESC_PXN)) != 0)) | (store & ap2 & ~(dbm & hd))
    fault = np.full(n, S1_NONE, dtype=np.uint8)       # R_PQJJR: a store to AP[2] = 1 is
    fault[perm] = S1_PERMISSION                       # allowed only with DBM and HD
    fault[af_fault] = S1_ACCESS_FLAG
    fault[~walked] = S1_TRANSLATION
    # Updates only on a walk with no stage-1 fault (QEMU checks before writing), with HA;
    # AT only if it sets AF (IMPLEMENTATION DEFINED, R_XQSMX)
    can = (fault == S1_NONE) & ha & ~((k == AT) & ~at_sets_af)
    new = leaf | _u(DESC_AF)
    clean = store & hd & dbm & ap2                    # dirty state: clear AP[2] (R_PQJJR)
    new = np.where(clean & can, new & ~_u(DESC_AP2), new)
    # AArch64.S1Translate: write only `if new_desc != descriptor` (R_LFTXR), or every walk
    # with hw_update = "always"
    leaf_update = can & ((new != leaf) | always)
    new_leaf = np.where(leaf_update, new, leaf)
    L = wb.levels
    rows = np.arange(L)[:, None]
    leaf_row = wb.leaf_level.astype(np.int64)[None, :] - wb.start_level
    # FEAT_HAFT: table descriptors on the path with AF = 0 are set too (R_CGKWB, I_VPNMG)
    table_up = ((rows < leaf_row) & (can & haft)[None, :]
                & ((wb.level_desc & _u(DESC_AF)) == 0))
    update = table_up | ((rows == leaf_row) & leaf_update[None, :])
    return HwNeeds(fault, update, leaf_update, new_leaf)
