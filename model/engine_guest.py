"""Guest kernel work in bulk: aging passes, munmap's and writeback's PTE stores, free_pgtables
and fork's table copies (model.reference.Vm.guest_age / guest_pte / guest_free / guest_fork) as
array operations on the descriptor arrays.

Each op's kernel loads and stores (Vm._kernel_walk, _kernel_load, _kernel_store, _kernel_fill)
are listed in the reference's order, as IPA pages and store flags, and:

* *stage-2 faults* — a kernel access faults only at the first load of a page (translation
  fault) or its first store (permission fault, when mapped read-only): while the op runs,
  nothing unmaps a page again, provided no page it touches lies in a block-backed slot (a
  write fault on a block under logging unmaps the rest of the block).  So only those first
  accesses go through the reference's own fault handling (Vm._kernel_access), in order, per
  policy;
* *memory and TLBs* — what the op stores and invalidates does not depend on the faults
  (every kernel access completes: each touched page lies in a writable slot and is present,
  so no fault ends in an MMIO exit, an injected abort or a page fill), so it is applied once
  for the group, on arrays (Shared.write_descs, zero_pages).

Each op is vectorised only where the values its loads read cannot depend on its own earlier
stores in a way the arrays miss: two VAs on one descriptor, a walk reading a descriptor the
op clears, fork tables overlapping the parent's, fall back.  Anything else — x86 machines, a
journal recording, FEAT_HAFT non-leaf aging, a block in the tables, a load outside the
page-table slot, a missing, read-only or block-backed page, a page fault's guest_pte (tables to
allocate, pages to fill), a fork whose `tables` do not match its copy — runs the reference
code (Group.scalar): each bulk function returns False having changed nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_TABLE, DESC_VALID, HOST_PAGE
from .engine_state import H_MISSING, PAGE_MASK, U64
from .reference import aged_desc
from .semantics import S2_RW, S2_UNMAPPED, desc_address, kernel_table_step

if TYPE_CHECKING:
    from .arch import Geometry
    from .engine import Group
    from .engine_state import Base
    from .scenario import Step

VALID = U64(DESC_VALID)
# guest_pte and guest_free events with fewer VAs go through the reference code: a bulk op
# costs ~150 small numpy calls (~0.5 ms), the reference ~0.2-0.3 ms for the first VA and
# ~0.15 ms per further VA with the four default policies (measured on zipf with writeback and
# mmap_churn: a present-PTE fault and a munmap's free_pgtables often have one VA).  Forks and
# aging passes always go in bulk (rare, and many VAs).
BULK_MIN_VAS = 4


@dataclass
class KernelWalk:
    """Vm._kernel_walk(root, va, stop, None) of n VAs: the IPA of each load above level `stop`
    (n x levels) and whether it happens, whether the walk reaches `stop`, and the IPA and
    page-table-slot offset of the descriptor there."""
    loads: np.ndarray
    live: np.ndarray
    reached: np.ndarray
    addr: np.ndarray
    off: np.ndarray

    def columns(self) -> list[tuple[np.ndarray, bool, np.ndarray]]:
        """The walk's loads as access columns (_order)."""
        return [(self.loads[:, k], False, self.live[:, k]) for k in range(self.loads.shape[1])]

    def read_addrs(self) -> np.ndarray:
        """IPAs of the descriptors the walk loads (above `stop`)."""
        return self.loads[self.live]

    def values(self, sh) -> np.ndarray:
        """The descriptor at `stop` of each VA whose walk reaches it (0 for the others)."""
        return np.where(self.reached, sh.read_v(np.where(self.reached, self.off, 0)), U64(0))


def kernel_walk(g: Group, root: int, va: np.ndarray, stop: int) -> KernelWalk | None:
    """The kernel's software walk of every VA (Vm._kernel_walk without allocation; Linux
    pgd_offset .. pte_offset_map) on the group's descriptor arrays, with the same per-level
    rule (semantics.desc_address, kernel_table_step).  None where the reference raises (a
    block above `stop`) or a descriptor lies outside the page-table slot."""
    base, sh = g.base, g.shared
    geo = base.geo
    steps = geo.walk_steps[:stop - geo.start_level + 1]
    n = len(va)
    table = np.full(n, root, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    loads, live = [], []
    for level, shift, mask in steps[:-1]:
        addr = desc_address(table, va, shift, mask)
        addr[~alive] = base.pt_base             # (no load)
        if not _in_pt(base, addr):
            return None
        d = np.where(alive, sh.read_v((addr - base.pt_base) >> 3), U64(0))
        follow, bad = kernel_table_step(d, level)
        if np.any(bad):
            return None                         # a block: Vm._kernel_walk raises
        loads.append(addr)
        live.append(alive.copy())
        alive &= follow
        table = (d & U64(geo.oa_mask)).astype(np.int64)
    _level, shift, mask = steps[-1]
    addr = desc_address(table, va, shift, mask)
    if not _in_pt(base, addr[alive]):
        return None
    shape = (n, len(loads))
    return KernelWalk(np.stack(loads, 1) if loads else np.zeros(shape, dtype=np.int64),
                      np.stack(live, 1) if live else np.zeros(shape, dtype=bool),
                      alive, addr, (addr - base.pt_base) >> 3)


def _walk_vas(g: Group, st: Step, stop: int) -> tuple[np.ndarray, KernelWalk | None]:
    """The step's VAs and the kernel walk of each from its address space's root."""
    va = np.asarray(st.vas, dtype=np.int64)
    return va, kernel_walk(g, g.vms[0].as_roots[st.asid], va, stop)


def _in_pt(base: Base, addr: np.ndarray) -> bool:
    return not np.any((addr < base.pt_base) | (addr >= base.pt_end))


def _order(*blocks: list) -> tuple[np.ndarray, np.ndarray]:
    """IPA pages and store flags of the accesses in `blocks`, in the reference's order: block
    by block, within a block VA by VA, column by column.  A column: (IPAs per VA, is a store,
    happens per VA)."""
    pages, stores = [], []
    for cols in blocks:
        if not cols:
            continue
        p = np.stack([c[0] for c in cols], 1) & PAGE_MASK
        s = np.broadcast_to(np.array([c[1] for c in cols]), p.shape)
        live = np.stack([c[2] for c in cols], 1)
        pages.append(p[live])
        stores.append(s[live])
    if not pages:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(pages), np.concatenate(stores)


def _first_touches(pages: np.ndarray, stores: np.ndarray) -> np.ndarray:
    """Positions of each page's first access and first store, in access order."""
    _u, first = np.unique(pages, return_index=True)
    ws = np.flatnonzero(stores)
    _u, wfirst = np.unique(pages[ws], return_index=True)
    return np.unique(np.concatenate([first, ws[wfirst]]))


def _plain(g: Group) -> bool:
    """Bulk work is possible at all: an Arm machine (x86 has PML logging on guest writes) and
    no journal recording."""
    return not g.vms[0].host.x86 and g.shared.journal is None


def _touchable(g: Group, pages: np.ndarray) -> bool:
    """Every kernel access to `pages` completes without changing guest memory or TLBs, for
    every policy: each page lies in a memslot, writable, not block-backed, present."""
    base = g.base
    gi = base.idx.index_v(pages)
    if np.any(gi >= base.idx.total):
        return False
    if np.any(base.ro[gi] | base.block_backing[gi]):
        return False
    return not any(np.any(vm.host.host.a[gi] == H_MISSING) for vm in g.vms)


def _dups(a: np.ndarray) -> bool:
    return len(np.unique(a)) != len(a)


def _fault_in(g: Group, si: int, st: Step, pages: np.ndarray, stores: np.ndarray) -> None:
    """Begin step `si` and take the op's stage-2 faults, per policy, in the reference's order
    (each page's first access and first store through Vm._kernel_access; those that cannot
    fault — the page mapped, writable for a store — are left out: a fault maps only its own
    page, so an access that does not fault now does not fault later in the op)."""
    pos = _first_touches(pages, stores)
    tp, ts = pages[pos], stores[pos]
    gi = g.base.idx.index_v(tp)
    g.invalidate()
    for vm in g.vms:
        vm.begin_step(si)
        vm.host.vcpu = st.vcpu
        s2 = vm.host.s2.a[gi]
        may = (s2 == S2_UNMAPPED) | (ts & (s2 != S2_RW))
        for page, store in zip(tp[may].tolist(), ts[may].tolist()):
            if not vm._kernel_access(page, store):
                raise AssertionError(f"{st.op}: kernel access to {page:#x} did not complete "
                                     f"although its page is present and writable")


def _written(g: Group, pages: np.ndarray) -> None:
    """Host.guest_write of each page the op stored to, then end the step, per policy."""
    wpages = np.unique(pages)
    wg = g.base.idx.index_v(wpages)
    for vm in g.vms:
        vm.host.mark_written(wg)
        vm.host.step_written.update(wpages.tolist())
        vm.end_step()


def _tlbi(g: Group, st: Step, va: np.ndarray) -> None:
    """Vm._tlbi of many VAs (TLBI VAE1IS): only the current address space's entries."""
    if len(va) and st.asid == g.vms[0].cur_as:
        _tlb_invalidate(g, va & ~(g.base.geo.granule - 1))


def bulk_age(g: Group, si: int, st: Step) -> bool:
    """Vm.guest_age for every policy of group `g` (MGLRU walk_pte_range ->
    __ptep_test_and_clear_young, ptep_clear_flush_young); False (nothing done) when the pass
    needs the reference code."""
    if st.nonleaf or not _plain(g) or not st.vas:
        return False
    va, w = _walk_vas(g, st, 3)
    if w is None:
        return False
    sh, r = g.shared, w.reached
    young, new = aged_desc(w.values(sh))
    young &= r
    pages, stores = _order(w.columns() + [(w.addr, False, r), (w.addr, True, young)])
    if _dups(w.off[young]) or not _touchable(g, pages):
        return False
    _fault_in(g, si, st, pages, stores)
    sh.write_descs(w.off[young], new[young])
    _tlbi(g, st, va[young])
    _written(g, pages[stores])
    return True


def bulk_pte(g: Group, si: int, st: Step) -> bool:
    """Vm.guest_pte with no table to allocate and no page to fill: munmap's zap_pte_range
    (ptep_get_and_clear_full, descs 0), writeback's folio_mkclean -> page_mkclean_one
    (pte_wrprotect + pte_mkclean) and a fault on a present PTE that needs no new page
    (do_wp_page -> wp_page_reuse / wp_page_shared, pte_mkyoung): every VA walked first, then
    per VA the leaf load, the store of its new descriptor, and a TLBI when the old one was valid
    (ptep_clear_flush, flush_tlb_page)."""
    if (st.tables or st.fill or not _plain(g) or len(st.vas) < max(BULK_MIN_VAS, 1)
            or len(st.descs) != len(st.vas)):
        return False
    desc = np.array(st.descs, dtype=U64)
    va, w = _walk_vas(g, st, 3)
    if w is None:
        return False
    r = w.reached
    if np.any(~r & ((desc & VALID) != 0)):
        return False                            # a missing table: the reference raises
    off = w.off[r]
    pages, stores = _order(w.columns(), [(w.addr, False, r), (w.addr, True, r)])
    if _dups(off) or not _touchable(g, pages):
        return False
    sh = g.shared
    old = sh.read_v(off)
    _fault_in(g, si, st, pages, stores)
    sh.write_descs(off, desc[r])
    _tlbi(g, st, va[r][(old & VALID) != 0])
    _written(g, pages[stores])
    return True


def bulk_free(g: Group, si: int, st: Step) -> bool:
    """Vm.guest_free (free_pgtables -> free_pgd_range .. free_pte_range: pmd_clear of the
    level-2 descriptor above each VA's last-level table, then pte_free): per VA the walk to
    level 2, the load, and the store of 0 when the descriptor is valid."""
    if not _plain(g) or len(st.vas) < max(BULK_MIN_VAS, 1):
        return False
    va, w = _walk_vas(g, st, 2)
    if w is None:
        return False
    sh, r = g.shared, w.reached
    clear = r & ((w.values(sh) & VALID) != 0)
    pages, stores = _order(w.columns() + [(w.addr, False, r), (w.addr, True, clear)])
    if (_dups(w.off[r]) or np.isin(w.addr[clear], w.read_addrs()).any()
            or not _touchable(g, pages)):
        return False                            # a later walk would read a cleared entry
    _fault_in(g, si, st, pages, stores)
    sh.write_descs(w.off[clear], np.zeros(int(clear.sum()), dtype=U64))
    _written(g, pages[stores])
    return True


def _child_tables(geo: Geometry, va: np.ndarray, root: int, alloc: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """copy_page_range's p?d_alloc / pte_alloc in the child (Vm._kernel_walk with `alloc`,
    on tables zeroed when allocated), for the copied VAs in order: per VA and level above the
    leaf whether its descriptor is new (a table allocated: VA by VA, top level first) and the
    table it points to; per VA and level the IPA of the descriptor the walk reads (the leaf
    last).  None when `alloc` does not hold exactly the tables needed (the reference raises)."""
    steps = geo.walk_steps
    m, nl = len(va), len(steps) - 1
    vam = va & ((1 << geo.va_bits) - 1)
    new = np.zeros((m, nl), dtype=bool)
    maker = []                                  # per level: the VA whose walk made the entry
    for j, (_level, shift, _mask) in enumerate(steps[:-1]):
        _u, first, inv = np.unique(vam >> shift, return_index=True, return_inverse=True)
        new[first, j] = True
        maker.append(first[inv.ravel()])
    if int(new.sum()) != len(alloc):
        return None
    nxt = np.zeros((m, nl), dtype=np.int64)
    nxt[new] = alloc                            # row-major: the allocation order
    tab = np.full((m, nl + 1), root, dtype=np.int64)
    for j in range(nl):
        tab[:, j + 1] = nxt[maker[j], j]
    addr = np.stack([desc_address(tab[:, j], va, shift, mask)
                     for j, (_level, shift, mask) in enumerate(steps)], 1)
    return new, nxt, addr


def _granule_pages(tables: np.ndarray, gran: int) -> np.ndarray:
    """Host pages of each table granule (a last axis of granule / 4 KiB)."""
    return tables[..., None] + np.arange(0, gran, HOST_PAGE, dtype=np.int64)


def _fork_tables_ok(base: Base, tables: np.ndarray, reads: np.ndarray) -> bool:
    """The child's tables are distinct granules in the page-table slot that hold nothing the
    parent's walks read."""
    gran = base.geo.granule
    ts = np.sort(tables)
    if (np.any(ts % gran) or _dups(ts) or ts[0] < base.pt_base
            or ts[-1] + gran > base.pt_end):
        return False
    k = np.searchsorted(ts, reads, side="right") - 1
    return not np.any((k >= 0) & (reads < ts[np.maximum(k, 0)] + gran))


def bulk_fork(g: Group, si: int, st: Step) -> bool:
    """Vm.guest_fork (dup_mmap -> copy_page_range -> copy_pte_range -> __copy_present_ptes):
    the child's root zeroed; per VA the parent's walk and leaf load, ptep_set_wrprotect of a
    writable (DBM) leaf, the child's walk allocating its tables (a zeroed granule, then
    pmd_populate), the child's leaf stored old (pte_mkold); then flush_tlb_mm when the parent
    is current."""
    if not _plain(g) or not st.tables or st.child == st.asid:
        return False                            # (a fork into itself copies the new root)
    base, sh, vm0 = g.base, g.shared, g.vms[0]
    geo = base.geo
    tables = np.array(st.tables, dtype=np.int64)
    va, w = _walk_vas(g, st, 3)
    if w is None:
        return False
    r = w.reached
    d = w.values(sh)
    copied = (d & VALID) != 0
    dbm = copied & ((d & U64(DESC_DBM)) != 0)
    d = np.where(dbm, (d & ~U64(DESC_DBM)) | U64(DESC_AP2), d)
    ch = _child_tables(geo, va[copied], int(tables[0]), tables[1:])
    reads = np.concatenate([w.read_addrs(), w.addr[r]])
    if ch is None or _dups(w.off[r]) or not _fork_tables_ok(base, tables, reads):
        return False
    new, nxt, caddr = _scatter(copied, *ch)
    cols = w.columns() + [(w.addr, False, r), (w.addr, True, dbm)]
    fills = _granule_pages(nxt, geo.granule)
    for j in range(new.shape[1]):
        cols += [(caddr[:, j], False, copied)]
        cols += [(fills[:, j, k], True, new[:, j]) for k in range(fills.shape[2])]
        cols += [(caddr[:, j], True, new[:, j])]
    cols += [(caddr[:, -1], True, copied)]
    one = np.ones(1, dtype=bool)
    root_fill = [(p, True, one) for p in _granule_pages(tables[:1], geo.granule).T]
    pages, stores = _order(root_fill, cols)
    if not _touchable(g, pages):
        return False
    _fault_in(g, si, st, pages, stores)
    sh.zero_pages((_granule_pages(tables, geo.granule).ravel() - base.pt_base) >> 3)
    tdesc = (nxt[new].astype(U64) & U64(geo.oa_mask)) | U64(DESC_VALID | DESC_TABLE | DESC_AF)
    sh.write_descs(*_offsets(base, (w.addr[dbm], d[dbm]), (caddr[:, :-1][new], tdesc),
                             (caddr[copied, -1], d[copied] & ~U64(DESC_AF))))
    for vm in g.vms:
        vm.runtime_tables.update(st.tables)
        vm.as_roots[st.child] = st.tables[0]
    if st.asid == vm0.cur_as:
        sh.tlb_flush()                          # FastVm.flush_all
    _written(g, pages[stores])
    return True


def _scatter(rows: np.ndarray, *parts: np.ndarray) -> list[np.ndarray]:
    """Arrays over the rows where `rows` holds, widened to every row (zeros elsewhere)."""
    out = []
    for a in parts:
        full = np.zeros((len(rows),) + a.shape[1:], dtype=a.dtype)
        full[rows] = a
        out.append(full)
    return out


def _offsets(base: Base, *stores: tuple[np.ndarray, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Slot offsets and values of (IPAs, values) stores, concatenated."""
    addr = np.concatenate([a for a, _v in stores])
    return (addr - base.pt_base) >> 3, np.concatenate([v.astype(U64) for _a, v in stores])


# op -> its bulk function (model.engine._run_trace; Group.scalar when it returns False)
GUEST_BULK = {"guest_age": bulk_age, "guest_pte": bulk_pte, "guest_free": bulk_free,
              "guest_fork": bulk_fork}


def _tlb_invalidate(g: Group, va_pages: np.ndarray) -> None:
    """FastVm.tlb_invalidate_va of many granule VA pages: every vCPU's entry goes."""
    prep, sh = g.base.prep, g.shared
    gp = np.searchsorted(prep.gpages, va_pages)
    ok = gp < len(prep.gpages)
    ok[ok] = prep.gpages[gp[ok]] == va_pages[ok]
    gp = gp[ok]
    if not len(gp) or not len(prep.tkey_codes):
        return
    codes = (np.arange(prep.n_vcpu, dtype=np.int64)[:, None] * prep.n_gpages + gp).ravel()
    k = np.minimum(np.searchsorted(prep.tkey_codes, codes), len(prep.tkey_codes) - 1)
    k = k[prep.tkey_codes[k] == codes]
    sh.tst[k] = 0
    sh.tleaf[k] = 0
    sh.tlvl[k] = 0
