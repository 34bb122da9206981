"""Guest kernel work in bulk: an aging pass (model.reference.Vm.guest_age) as array operations.

An aging pass reads the leaf descriptor of every listed VA through the kernel's software walk
and test-and-clears the AF of the young ones (docs/semantics.md §5; MGLRU walk_pte_range,
__ptep_test_and_clear_young), invalidating each cleared VA (ptep_clear_flush_young).  The
reference does it one kernel load and store at a time; here the loads and stores of the whole
pass are listed in the reference's order, and:

* *stage-2 faults* — a kernel access faults only at the first load of a page (translation
  fault) or its first store (permission fault, when mapped read-only): while the pass runs,
  nothing unmaps a page again, provided no page it touches lies in a block-backed slot (a
  write fault on a block under logging unmaps the rest of the block).  So only those first
  accesses go through the reference's own fault handling (Vm._kernel_access), in order, per
  policy;
* *memory and TLBs* — what the pass stores and invalidates does not depend on the faults
  (every kernel access completes: each touched page lies in a writable slot and is present,
  so no fault ends in an MMIO exit, an injected abort or a page fill), so it is applied once
  for the group, on arrays.

Anything else (x86 machines, FEAT_HAFT non-leaf aging, a block in the tables, a missing or
block-backed page) runs the reference code (Group.scalar)."""
from __future__ import annotations

import numpy as np

from .arch import DESC_TABLE, DESC_VALID
from .engine_state import H_MISSING, PAGE_MASK, U64
from .reference import aged_desc
from .semantics import desc_address


def _kernel_walk(g, root: int, va: np.ndarray):
    """The kernel's software walk of every VA down to its leaf (Vm._kernel_walk without
    allocation), on arrays: per access in the reference's order (VA by VA, top level first,
    then the leaf load and, when young, the leaf store) its IPA page, whether it stores and
    whether it happens; the leaf offsets and values.  None where the reference would raise
    (a block in the tables) or a descriptor lies outside the page-table slot."""
    base, sh = g.base, g.shared
    geo = base.geo
    n = len(va)
    steps = geo.walk_steps
    nacc = len(steps) + 1                       # loads of every level, then the leaf store
    page = np.zeros((n, nacc), dtype=np.int64)
    store = np.zeros((n, nacc), dtype=bool)
    live = np.zeros((n, nacc), dtype=bool)
    alive = np.ones(n, dtype=bool)
    table = np.full(n, root, dtype=np.int64)
    d = np.zeros(n, dtype=U64)
    off = np.zeros(n, dtype=np.int64)
    for k, (level, shift, mask) in enumerate(steps):
        addr = desc_address(table, va, shift, mask)
        if np.any(alive & ((addr < base.pt_base) | (addr >= base.pt_end))):
            return None
        page[:, k] = addr & PAGE_MASK
        live[:, k] = alive
        off = (addr - base.pt_base) >> 3
        d = np.where(alive, sh.read_v(np.where(alive, off, 0)), U64(0))
        valid = (d & U64(DESC_VALID)) != 0
        if level < 3:
            if np.any(alive & valid & ((d & U64(DESC_TABLE)) == 0)):
                return None                     # a block: Vm._kernel_walk raises
            alive &= valid
            table = (d & U64(geo.oa_mask)).astype(np.int64)
    young, new = aged_desc(d)
    young &= alive
    page[:, -1] = page[:, -2]
    store[:, -1] = young
    live[:, -1] = young
    return page.ravel()[live.ravel()], store.ravel()[live.ravel()], young, off, new


def _first_touches(pages: np.ndarray, stores: np.ndarray) -> list[tuple[int, bool]]:
    """(page, store) of each page's first access and first store, in access order."""
    _u, first = np.unique(pages, return_index=True)
    ws = np.flatnonzero(stores)
    _u, wfirst = np.unique(pages[ws], return_index=True)
    pos = np.concatenate([first, ws[wfirst]])
    pos.sort()
    return [(int(pages[p]), bool(stores[p])) for p in pos]


def bulk_age(g, si: int, st) -> bool:
    """Vm.guest_age for every policy of group `g` in bulk; False (nothing done) when the
    pass needs the reference code."""
    vms = g.vms
    vm0 = vms[0]
    if st.nonleaf or vm0.host.x86 or g.shared.journal is not None or not st.vas:
        return False
    va = np.asarray(st.vas, dtype=np.int64)
    walked = _kernel_walk(g, vm0.as_roots[st.asid], va)
    if walked is None:
        return False
    pages, stores, young, off, new = walked
    base = g.base
    gi = base.idx.index_v(pages)
    if np.any(gi >= base.idx.total):
        return False
    gi = gi.astype(np.int64)
    if np.any(base.ro[gi] | base.block_backing[gi]):
        return False
    if any(np.any(vm.host.host.a[gi] == H_MISSING) for vm in vms):
        return False
    if len(np.unique(off[young])) != int(np.count_nonzero(young)):
        return False
    touches = _first_touches(pages, stores)
    g.invalidate()
    for vm in vms:                             # the faults, per policy, in order
        vm.begin_step(si)
        vm.host.vcpu = st.vcpu
        for page, store in touches:
            if not vm._kernel_access(page, store):
                raise AssertionError(f"guest_age: kernel access to {page:#x} did not "
                                     f"complete although its page is present and writable")
    sh = g.shared                              # the stores and invalidations, once
    yo = off[young]
    sh.vals[sh.positions(yo)] = new[young]
    sh.changed.extend(yo.tolist())
    if st.asid == vm0.cur_as:
        _tlb_invalidate(g, va[young] & ~(base.geo.granule - 1))
    wpages = np.unique(pages[stores])
    wg = base.idx.index_v(wpages)
    for vm in vms:                             # Host.guest_write of each stored page
        vm.host.written_all[wg] = True
        vm.host.step_written.update(wpages.tolist())
        vm.end_step()
    return True


def _tlb_invalidate(g, va_pages: np.ndarray) -> None:
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

