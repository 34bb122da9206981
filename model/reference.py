"""The reference simulator: one access at a time, plain Python state — the executable spec.

The walk follows AArch64.S1Translate / AArch64.S1Walk (DDI0487) and QEMU target/arm/ptw.c
`get_phys_addr_lpae`: one function per architectural step.  Every stage-2 fault is handed to
model.host.Host (KVM), and a fixed fault restarts the access from the beginning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import (DESC_AF, DESC_AP2, DESC_DBM, DESC_VALID,
                   HOST_PAGE, desc_oa, is_table, is_valid, make_table_desc)
from .host import S2_UNMAPPED, Abort, Host, Outcome
from .host_ops import HOST_OPS, step_pages
from .policies import DEFAULT_ORDER, POLICIES, needs_lookahead
from .results import Harvest, PolicyResult
from .scenario import Scenario, Step
from .semantics import (S1_FAULT_NAMES, S2_OK, S2_PERMISSION, apply_leaf_update, desc_address,
                        hw_updates_apply, kernel_table_step, leaf_bits, leaf_hw_update,
                        output_address, s1_descriptor, s1_leaf_fault, s2_check,
                        table_hw_update)
from .stage1 import build_tables
from .x86 import is_x86, one_machine, walk_access_is_write

STORES = frozenset({"write64", "st_preidx", "cas", "dc_zva"})
ISV_KINDS = frozenset({"read64", "write64"})   # plain single-register LDR/STR: ISV = 1
MAX_RESTARTS = 64


def aged_desc(d):
    """__ptep_test_and_clear_young on a leaf descriptor (an int, or a uint64 array):
    (young: valid with AF set, the descriptor with AF cleared)."""
    if isinstance(d, np.ndarray):
        young = ((d & np.uint64(DESC_VALID)) != 0) & ((d & np.uint64(DESC_AF)) != 0)
        return young, d & ~np.uint64(DESC_AF)
    return bool(d & DESC_VALID) and bool(d & DESC_AF), d & ~DESC_AF


class SimulationError(RuntimeError):
    """A model bug (e.g. an access that never completes)."""


@dataclass
class TlbEntry:
    leaf: int                    # leaf descriptor as it was when the access completed
    level: int


@dataclass
class Walk:
    """A completed stage-1 walk (AArch64.S1Walk result)."""
    path: list[tuple[int, int, int]]   # (level, descriptor IPA, descriptor) top-down
    leaf: int
    level: int
    leaf_addr: int


class Stage1Fault(Exception):
    """Guest-visible stage-1 fault (translation, access flag, permission)."""


class Vm:
    """One VM under one policy: vCPU TLBs, TCR state, the walker, and the host."""

    def __init__(self, scn: Scenario, policy: str):
        tables = build_tables(scn)
        self._init_vm(scn, tables, policy)
        initial: dict[int, dict[int, int]] = {}
        for addr, v in tables.descriptors.items():
            initial.setdefault(addr & ~(HOST_PAGE - 1), {})[addr] = v
        self.host = self._make_host(scn, initial, POLICIES[policy], self.r)

    def _init_vm(self, scn: Scenario, tables, policy: str) -> None:
        """The VM's own state at scenario start (every engine's Vm): tables, result, TCR
        controls, TLBs, address spaces.  The host comes after (its kind is the engine's)."""
        self.scn = scn
        self.geo = scn.machine.geometry
        self.tables = tables
        self.r = PolicyResult(policy)
        self.tcr_ha = scn.guest.tcr_ha
        self.tcr_hd = scn.guest.tcr_hd
        self.tcr2_haft = scn.guest.tcr2_haft
        self.tlb: dict[int, dict[int, TlbEntry]] = {}
        self.stopped: set[int] = set()
        self._flushes_seen = 0
        # guest address spaces (internal guest_* ops): root table IPA per address space; the
        # walker uses self.tables.root, the current one.  Tables allocated by the guest
        # kernel at run time (granule IPAs) are page-table pages for the §5 pt/data split.
        self.as_roots: dict[int, int] = {0: tables.root}
        self.cur_as = 0
        self.runtime_tables: set[int] = set()

    def _make_host(self, scn, initial, policy, result) -> Host:
        return Host(scn, initial, policy, result)

    # ---- effective hardware-update controls (docs/semantics.md §2; AArch64.GetS1TTWParams) -----
    # x86 (model/x86.py): the walker always sets A in every paging-structure entry it uses
    # and D in the leaf on a write (SDM Vol. 3A §4.8): HA = HD = HAFT = 1, on-change.
    @property
    def ha(self) -> bool:
        return (self.tcr_ha and self.scn.machine.hafdbs >= 1) or is_x86(self.scn.machine)

    @property
    def hd(self) -> bool:
        return ((self.ha and self.tcr_hd and self.scn.machine.hafdbs >= 2)
                or is_x86(self.scn.machine))

    @property
    def haft(self) -> bool:        # FEAT_HAFT needs HA (I_VPNMG)
        return (self.ha and self.scn.machine.haft and self.tcr2_haft) or is_x86(self.scn.machine)

    # ---- TLB ------------------------------------------------------------------------
    def vcpu_tlb(self, vcpu: int) -> dict[int, TlbEntry]:
        if self.host.tlb_flushes != self._flushes_seen:   # KVM flushed the VM's TLBs
            self._flushes_seen = self.host.tlb_flushes
            self.tlb.clear()
        return self.tlb.setdefault(vcpu, {})

    def flush_all(self) -> None:
        self.tlb.clear()

    # ---- the walk ------------------------------------------------------------------
    def s1_walk(self, va: int, read_desc) -> tuple[Walk | None, tuple[int, int] | None]:
        """AArch64.S1Walk: one descriptor read per level.  `read_desc(addr)` returns the
        descriptor or None when its stage-2 read faults; returns (walk, None), or
        (None, (level, addr)) for the descriptor whose read faulted.  Raises Stage1Fault."""
        geo = self.geo
        if va >> geo.va_bits:
            # Only TTBR0 is modelled: a VA with bits set above va_bits is outside its range
            # (AArch64.VAIsOutOfRange) and faults at the start level without a walk.
            raise Stage1Fault("translation")
        table = self.tables.root
        path = []
        for level, shift, mask in geo.walk_steps:
            addr = desc_address(table, va, shift, mask)
            desc = read_desc(addr)
            if desc is None:
                return None, (level, addr)
            path.append((level, addr, desc))
            table_desc, leaf = s1_descriptor(desc, level, geo)
            if table_desc:
                table = desc_oa(desc, geo)
                continue
            if not leaf:      # invalid, reserved encoding at level 3, or a block not allowed
                raise Stage1Fault("translation")
            return Walk(path, desc, level, addr), None
        raise AssertionError("unreachable")

    def s1_check(self, walk: Walk, kind: str) -> None:
        """AArch64.S1CheckPermissions of the leaf (model.semantics.s1_leaf_fault: the AF
        check first, I_DSHLJ)."""
        af, ap2, dbm, pxn = leaf_bits(walk.leaf)
        fault = s1_leaf_fault(af, ap2, dbm, pxn, kind == "exec", kind in STORES, self.ha,
                              self.hd)
        if fault:
            raise Stage1Fault(S1_FAULT_NAMES[fault])

    def s1_updates(self, walk: Walk, kind: str) -> list[tuple[int, int]]:
        """Hardware updates of a completed walk, tables top-down then the leaf, as
        (descriptor IPA, new value): AArch64.S1Translate `if new_desc != descriptor`
        (R_LFTXR), or every walk with hw_update = "always" (model.semantics: hw_updates_apply,
        table_hw_update, leaf_hw_update)."""
        m = self.scn.machine
        if not hw_updates_apply(self.ha, kind == "at", bool(m.at_sets_af)):
            return []
        ups = [(addr, desc | DESC_AF) for _level, addr, desc in walk.path[:-1]
               if table_hw_update(bool(desc & DESC_AF), self.haft)]
        af, ap2, dbm, _pxn = leaf_bits(walk.leaf)
        set_af, clear_ap2 = leaf_hw_update(af, ap2, dbm, kind in STORES, self.hd)
        if set_af or clear_ap2 or m.hw_update == "always":
            ups.append((walk.leaf_addr, apply_leaf_update(walk.leaf, set_af, clear_ap2)))
        return ups

    # ---- stage 2 ---------------------------------------------------------------------
    def s2_fault(self, page: int, write: bool) -> bool | None:
        """None: access allowed; False: translation fault; True: permission fault."""
        f = s2_check(self.host.s2.get(page, S2_UNMAPPED), write)
        return None if f == S2_OK else f == S2_PERMISSION

    def oracle_walk_writes(self, va: int, kind: str, page: int) -> bool:
        """Oracle lookahead: run this access's walk on the tables as they will read once the
        faults are resolved; does it update a descriptor stored in `page`?"""
        host = self.host

        def read(addr):
            p = addr & ~(HOST_PAGE - 1)
            if host.s2.get(p, S2_UNMAPPED) == S2_UNMAPPED:
                return host.desc_after_resolution(addr)
            return host.read_desc(addr)
        try:
            walk, _ = self.s1_walk(va, read)
            self.s1_check(walk, kind)
        except Stage1Fault:
            return False
        for addr, _new in self.s1_updates(walk, kind):
            p = addr & ~(HOST_PAGE - 1)
            s = self.scn.slot_of(p)
            if p == page:
                return True
            if s is None or s.readonly:                 # that update aborts the access
                return False
        return False

    # ---- one access ----------------------------------------------------------------------
    def access(self, vcpu: int, va: int, kind: str) -> None:
        r = self.r
        self.host.vcpu = vcpu
        r.accesses += 1
        translated: set[int] = set()                    # pages with a S1PTW translation fault
        for _ in range(MAX_RESTARTS):
            out = self._attempt(vcpu, va, kind, translated)
            if out is None or out in (Outcome.ABANDON, Outcome.MMIO, Outcome.SKIP):
                return
            if out is Outcome.STOP:
                self.stopped.add(vcpu)
                return
        raise SimulationError(f"access to {va:#x} did not complete in {MAX_RESTARTS} tries")

    def _attempt(self, vcpu: int, va: int, kind: str, translated: set[int]) -> Outcome | None:
        """One try of an access (AArch64.TranslateAddress, then the data access): a TLB hit,
        or a walk with its checks and hardware updates (_walk); then stage 2 of the data
        access (_data_access).  None when the access ends without a stage-2 fault."""
        tlb = self.vcpu_tlb(vcpu)
        va_page = va & ~(self.geo.granule - 1)
        entry = tlb.get(va_page)
        if (entry is not None and kind != "at"
                and (kind not in STORES or not entry.leaf & DESC_AP2)):
            # a hit: the cached leaf's permissions still apply (PXN on a fetch)
            if s1_leaf_fault(*leaf_bits(entry.leaf), kind == "exec", kind in STORES, self.ha,
                             self.hd):
                self.r.stage1_faults += 1
                return None
            leaf, level = entry.leaf, entry.level
        else:
            walk = self._walk(va, kind, translated)
            if not isinstance(walk, Walk):
                return walk                             # the walk faulted
            leaf, level = walk.leaf, walk.level
        if kind == "at":
            return None                                 # AT: the walk only
        return self._data_access(tlb, va_page, va, kind, leaf, level)

    def _walk(self, va: int, kind: str, translated: set[int]) -> Walk | Outcome | None:
        """A walk (s1_walk, its descriptor reads checked at stage 2), the leaf's checks
        (s1_check) and the hardware updates (s1_updates, each a stage-2 write): the completed
        Walk, or how a fault ended the attempt (None: a stage-1 fault)."""
        r, host = self.r, self.host
        r.walks += 1
        fault: list = []
        # x86-ept-ad: the walk's descriptor accesses are writes at stage 2 (model/x86.py)
        walk_write = walk_access_is_write(self.scn.machine)

        def read(addr):
            page = addr & ~(HOST_PAGE - 1)
            f = self.s2_fault(page, walk_write)
            if f is not None:
                fault.append(f)
                return None
            r.descriptor_reads += 1
            if walk_write and host.pml_on:
                host.pml_write(page)                    # EPT dirty flag set, PML entry
            return host.read_desc(addr)
        try:
            walk, faulted = self.s1_walk(va, read)
            if walk is not None:
                self.s1_check(walk, kind)
        except Stage1Fault:
            r.stage1_faults += 1
            return None
        if walk is None:                                # S1PTW stage-2 fault
            _level, addr = faulted
            return self.s1ptw_fault(addr & ~(HOST_PAGE - 1), fault[-1], va, kind, translated)
        for addr, new in self.s1_updates(walk, kind):
            page = addr & ~(HOST_PAGE - 1)
            f = self.s2_fault(page, True)               # the update needs stage-2 write
            if f is not None:
                return self.s1ptw_fault(page, f, va, kind, translated)
            host.guest_write(page, addr, new)           # AArch64.MemSwapTableDesc
            if addr == walk.leaf_addr:
                walk.leaf = new
        return walk

    def _data_access(self, tlb, va_page: int, va: int, kind: str, leaf: int,
                     level: int) -> Outcome | None:
        """Stage 2 of the data access (AArch64.S2Translate of the output address): a fault
        goes to KVM; else a store writes the page and the TLB caches the leaf."""
        geo, host = self.geo, self.host
        store = kind in STORES
        oa = output_address(leaf, 1 << geo.level_shift(level), va, geo.oa_mask)
        page = oa & ~(HOST_PAGE - 1)
        f = self.s2_fault(page, store)
        if f is not None:
            cls = "data_permission" if f else "data_translation"
            self.r.s2_faults[cls] += 1
            # WnR: stores 1; CAS reports 0 on a translation fault (a read would fault too)
            wnr = store and not (kind == "cas" and not f)
            return host.handle_abort(
                Abort(ipa=oa, s1ptw=False, permission=f, instruction=kind == "exec",
                      wnr=wnr, isv=kind in ISV_KINDS, store=store),
                walk_writes_page=False, ha=self.ha)
        if store:
            host.guest_write(page)
        tlb[va_page] = TlbEntry(leaf, level)
        return None

    def s1ptw_fault(self, page: int, permission: bool, va: int, kind: str,
                    translated: set[int]) -> Outcome:
        r = self.r
        if permission:
            r.s2_faults["s1ptw_permission"] += 1
            if page in translated:                      # translation then permission
                r.double_faults += 1
                translated.discard(page)
        else:
            r.s2_faults["s1ptw_translation"] += 1
            translated.add(page)
        writes = (not permission and needs_lookahead(self.r.policy)
                  and self.oracle_walk_writes(va, kind, page))
        # x86-ept-ad: the EPT violation reports a write for every walk access (model/x86.py)
        return self.host.handle_abort(
            Abort(ipa=page, s1ptw=True, permission=permission, instruction=kind == "exec",
                  wnr=permission or walk_access_is_write(self.scn.machine), isv=False),
            walk_writes_page=writes, ha=self.ha)

    # ---- guest operations --------------------------------------------------------------
    def clear_af(self, vcpu: int, va: int) -> None:
        """The guest kernel clears the leaf's AF with a store through its own (unwalked)
        mapping of the table page, then invalidates the VA in every TLB."""
        geo = self.geo
        addr = self.tables.leaf_addr[va & ~(geo.granule - 1)]
        page = addr & ~(HOST_PAGE - 1)
        host = self.host
        for _ in range(MAX_RESTARTS):
            f = self.s2_fault(page, True)
            if f is None:
                host.guest_write(page, addr, host.read_desc(addr) & ~DESC_AF)
                break
            self.r.s2_faults["data_permission" if f else "data_translation"] += 1
            out = host.handle_abort(Abort(ipa=addr, s1ptw=False, permission=f,
                                          instruction=False, wnr=True, isv=True, store=True),
                                    walk_writes_page=False, ha=self.ha)
            if out is Outcome.RESTART:
                continue
            if out is Outcome.MMIO and self.scn.vmm.mmio_store == "write_backing":
                # io_mem_abort() -> KVM_EXIT_MMIO: the VMM's handler stores the data, the
                # descriptor with AF cleared, into the slot's memory (after Host.vmm_write
                # made the page present): a host write, not a guest write
                # (docs/scenario-format.md, "An MMIO exit completes the access")
                host.write_desc(page, addr, host.read_desc(addr) & ~DESC_AF)
            if out is Outcome.STOP:
                self.stopped.add(vcpu)
            break
        else:
            raise SimulationError("clear_af did not complete")
        self.tlb_invalidate_va(va & ~(geo.granule - 1))   # TLBI VAE1IS

    def tlb_invalidate_va(self, va_page: int) -> None:
        for t in self.tlb.values():
            t.pop(va_page, None)


    # ---- the guest kernel's page-table work (internal ops; workloads/linux.py) -------------
    # Trace events made by the Linux guest profile, never scenario steps.  The kernel reaches
    # page-table and data pages through its linear map, which is not walked here (like
    # clear_af): each access is a plain LDR/STR data access (ISV = 1) checked against stage 2
    # only.  Stores go through Host.guest_write, TLB maintenance through tlb_invalidate_va /
    # flush_all, so every engine handles these ops through this code unchanged.
    def _kernel_access(self, addr: int, write: bool) -> bool:
        """Make a kernel load/store of `addr` possible: handle its stage-2 faults (data
        aborts, WnR = write, ISV = 1).  False when KVM did not let it happen (MMIO exit,
        injected abort): the kernel's access then has no effect on guest memory."""
        page = addr & ~(HOST_PAGE - 1)
        for _ in range(MAX_RESTARTS):
            f = self.s2_fault(page, write)
            if f is None:
                return True
            self.r.s2_faults["data_permission" if f else "data_translation"] += 1
            out = self.host.handle_abort(
                Abort(ipa=addr, s1ptw=False, permission=f, instruction=False, wnr=write,
                      isv=True, store=write), walk_writes_page=False, ha=self.ha)
            if out is not Outcome.RESTART:
                return False
        raise SimulationError(f"kernel access to {addr:#x} did not complete")

    def _kernel_load(self, addr: int) -> int | None:
        if not self._kernel_access(addr, False):
            return None
        return self.host.read_desc(addr)

    def _kernel_store(self, addr: int, update) -> bool:
        """Store `update(old)` to the descriptor at `addr` (old = its value once the page is
        accessible: a CAS/xchg reads the current value)."""
        if not self._kernel_access(addr, True):
            return False
        page = addr & ~(HOST_PAGE - 1)
        self.host.guest_write(page, addr, update(self.host.read_desc(addr)))
        return True

    def _kernel_fill(self, granule_ipa: int, zero: bool) -> None:
        """The kernel writes a whole granule (clear_page / copy_page: one store per 4 KiB
        host page); `zero` also clears the descriptor content (a page becoming a table)."""
        for page in range(granule_ipa, granule_ipa + self.geo.granule, HOST_PAGE):
            if self._kernel_access(page, True):
                self.host.guest_write(page)
                if zero:
                    self.host.zero_page(page)

    def _kernel_walk(self, root: int, va: int, stop_level: int, alloc: list | None):
        """The kernel's software walk (pgd_offset .. pte_offset_map) of `va` from `root` down
        to the descriptor at `stop_level`; returns its IPA, or None.  A missing table is
        allocated from `alloc` (pte_alloc / pmd_alloc: a zeroed page, then the table
        descriptor stored into its parent, pmd_populate), or ends the walk when alloc is None."""
        geo = self.geo
        table = root
        steps = geo.walk_steps[:stop_level - geo.start_level + 1]
        for level, shift, mask in steps[:-1]:
            addr = desc_address(table, va, shift, mask)
            d = self._kernel_load(addr)
            if d is None:
                return None
            follow, bad = kernel_table_step(d, level)
            if bad:
                raise SimulationError(f"guest kernel walk of {va:#x}: block at level {level}")
            if follow:
                table = desc_oa(d, geo)
                continue
            if alloc is None:
                return None
            if not alloc:
                raise SimulationError(f"guest kernel walk of {va:#x}: no table page left")
            new = alloc.pop(0)
            self._kernel_fill(new, zero=True)
            self.runtime_tables.add(new)
            if not self._kernel_store(addr, lambda _old, new=new: make_table_desc(new, geo)):
                return None
            table = new
        _level, shift, mask = steps[-1]
        return desc_address(table, va, shift, mask)

    def _tlbi(self, asid: int, va: int) -> None:
        # TLBI VAE1IS: the model's TLB is not tagged by ASID and holds only the current
        # address space's entries (guest_switch flushes), so other spaces need nothing.
        if asid == self.cur_as:
            self.tlb_invalidate_va(va & ~(self.geo.granule - 1))

    def guest_pte(self, st: Step) -> None:
        """Page fault handling / munmap: set the leaf descriptor of each VA of address space
        `asid` to descs[i] (0 clears it), allocating missing tables from `tables` in order;
        then the `fill` granules are written (new anonymous pages are zeroed, CoW copies
        written: mm/memory.c do_anonymous_page, wp_page_copy), then the PTEs.  Linux: handle_pte_fault ->
        do_anonymous_page / do_fault (do_fault_around: filemap_map_pages maps several PTEs
        under one lock) / do_wp_page, set_pte_at; zap_pte_range for munmap; a valid entry
        being replaced is invalidated (ptep_clear_flush, flush_tlb_page)."""
        alloc = list(st.tables)
        root = self.as_roots[st.asid]
        # tables first (__handle_mm_fault: pud/pmd_alloc, then __pte_alloc), then the new
        # page (zeroed or copied), then the PTE stores under the table lock
        addrs = [self._kernel_walk(root, va, 3, alloc if is_valid(desc) else None)
                 for va, desc in zip(st.vas, st.descs)]
        for g in st.fill:
            self._kernel_fill(g, zero=False)
        for va, desc, addr in zip(st.vas, st.descs, addrs):
            if addr is None:
                continue
            old = self._kernel_load(addr)
            if old is None or not self._kernel_store(addr, lambda _old, d=desc: d):
                continue
            if is_valid(old):
                self._tlbi(st.asid, va)
        if alloc:
            raise SimulationError(f"guest_pte: {len(alloc)} table page(s) not used")

    def guest_free(self, st: Step) -> None:
        """free_pgtables -> free_pte_range: the last-level table covering each VA is unlinked
        (pmd_clear: a store of 0 into the level-2 descriptor) and freed.  The walk cache is
        not modelled, and its leaf entries were invalidated when they were cleared."""
        root = self.as_roots[st.asid]
        for va in st.vas:
            addr = self._kernel_walk(root, va, 2, None)
            if addr is None:
                continue
            d = self._kernel_load(addr)
            if d is not None and is_valid(d):
                self._kernel_store(addr, lambda _old: 0)

    def guest_age(self, st: Step) -> None:
        """Aging (MGLRU walk_pte_range / folio_referenced): test-and-clear the AF of each
        VA's leaf with a CAS (__ptep_test_and_clear_young: only young entries are stored),
        then invalidate the VA (ptep_clear_flush_young).  With `nonleaf` (FEAT_HAFT,
        arch_has_hw_nonleaf_pmd_young), per last-level table: a level-2 table descriptor whose
        AF is clear means no walk went through it since the last scan, so its leaves are
        skipped (walk_pmd_range); otherwise its AF is cleared first (pmdp_test_and_clear_young).
        VAs must be sorted so that each table's VAs are consecutive."""
        geo = self.geo
        root = self.as_roots[st.asid]
        cur_pmd, pmd_young = None, True
        for va in st.vas:
            if st.nonleaf:
                pmd = va >> geo.level_shift(2)
                if pmd != cur_pmd:
                    cur_pmd, pmd_young = pmd, False
                    addr = self._kernel_walk(root, va, 2, None)
                    d = self._kernel_load(addr) if addr is not None else None
                    if d is not None and is_valid(d) and is_table(d, 2) and d & DESC_AF:
                        pmd_young = self._kernel_store(addr, lambda old: old & ~DESC_AF)
                if not pmd_young:
                    continue
            addr = self._kernel_walk(root, va, 3, None)
            if addr is None:
                continue
            d = self._kernel_load(addr)
            if d is None or not aged_desc(d)[0]:
                continue
            if self._kernel_store(addr, lambda old: aged_desc(old)[1]):
                self._tlbi(st.asid, va)

    def guest_fork(self, st: Step) -> None:
        """fork(): dup_mmap -> copy_page_range of address space `asid` into a new one,
        `child`, for the listed VAs (ascending).  `tables` gives the child's root first, then
        its tables in allocation order.  Per present leaf (__copy_present_ptes): a writable
        one (private memory: is_cow_mapping) is write-protected in the parent
        (ptep_set_wrprotect: DBM cleared, AP[2] set) and in the child; the child's copy is
        old (pte_mkold).  Then flush_tlb_mm(parent)."""
        alloc = list(st.tables)
        root = alloc.pop(0)
        self._kernel_fill(root, zero=True)
        self.runtime_tables.add(root)
        self.as_roots[st.child] = root
        proot = self.as_roots[st.asid]
        for va in st.vas:
            paddr = self._kernel_walk(proot, va, 3, None)
            d = self._kernel_load(paddr) if paddr is not None else None
            if d is None or not is_valid(d):
                continue
            if d & DESC_DBM:
                def wrprotect(old):
                    return (old & ~DESC_DBM) | DESC_AP2 if old & DESC_DBM else old
                self._kernel_store(paddr, wrprotect)
                d = wrprotect(d)
            caddr = self._kernel_walk(root, va, 3, alloc)
            if caddr is not None:
                self._kernel_store(caddr, lambda _old, c=d & ~DESC_AF: c)
        if alloc:
            raise SimulationError(f"guest_fork: {len(alloc)} table page(s) not used")
        if st.asid == self.cur_as:
            self.flush_all()

    def guest_switch(self, st: Step) -> None:
        """Context switch to address space `asid` (switch_mm -> cpu_switch_mm writes TTBR0_EL1)
        for the whole VM: the model has one TTBR0 for all vCPUs and a TLB without ASIDs, so
        the TLBs are flushed (a CPU without ASIDs, or an ASID rollover)."""
        self.tables.root = self.as_roots[st.asid]
        self.cur_as = st.asid
        self.flush_all()

    # ---- steps ----------------------------------------------------------------------------
    def begin_step(self, i: int) -> None:
        self.host.step = i
        self.host.step_written = set()
        self._n_events = len(self.r.uffd_events)

    def end_step(self) -> None:
        """Flag the step's uffd events whose page the step wrote (guest or VMM)."""
        for e in self.r.uffd_events[self._n_events:]:
            s = self.scn.slot(e.slot)
            e.written = (s.ipa + e.page * HOST_PAGE) in self.host.step_written

    def run_step(self, i: int, st: Step) -> None:
        host = self.host
        self.begin_step(i)
        host.vcpu = st.vcpu                             # PML buffer of the step's vCPU
        op = st.op
        if op in ("access", "clear_af"):
            if st.vcpu in self.stopped:
                return                                  # KVM_RUN failed: vCPU stopped
            if op == "access":
                self.access(st.vcpu, st.va, st.kind)
            else:
                self.clear_af(st.vcpu, st.va)
        elif op == "set_tcr":
            if st.ha is not None:
                self.tcr_ha = st.ha
            if st.hd is not None:
                self.tcr_hd = st.hd
            if st.haft is not None:
                self.tcr2_haft = st.haft
            self.flush_all()
        elif op == "flush_tlb":
            self.flush_all()
        elif op == "punch_hole":
            host.punch_hole(self.scn.slot(st.slot))
        elif op in HOST_OPS:                            # model/host_ops.py
            slot = self.scn.slot(st.slot)
            host.host_op(op, slot, step_pages(st, slot.pages))
        elif op == "enable_dirty_log":
            host.enable_dirty_log(self.scn.slot(st.slot), st.initially_set, st.eager_split)
        elif op == "warm_stage2":
            slot = self.scn.slot(st.slot)
            host.warm_stage2(slot, step_pages(st, slot.pages))
        elif op == "harvest":
            slot = self.scn.slot(st.slot)
            rng = step_pages(st, slot.pages) if st.pages is not None else None
            marked, written, tf, tfw = host.harvest(slot, rng)
            self.r.harvests.append(Harvest(i, st.slot, marked, written, tf, tfw))
        elif op in GUEST_OPS:
            getattr(self, GUEST_OPS[op])(st)
        else:
            raise SimulationError(f"unknown op {op!r}")
        self.end_step()

    def finish(self) -> PolicyResult:
        r, host = self.r, self.host
        for s in self.scn.memslots:
            r.dirty_pages[s.name] = sorted(host.dirty[s.name]) if host.logging[s.name] else []
            r.written_pages[s.name] = sorted(host.written[s.name])
            if host.logging_active(s):
                r.logging_slots.add(s.name)
                r.s1ptw_tf_pending[s.name] = sorted(host.s1ptw_tf[s.name])
        pt = self.scn.slot(self.scn.guest.pt_slot)
        per = self.geo.granule // HOST_PAGE
        pt_pages = {int(i) for t in (self.tables.table_ipas - pt.ipa) // HOST_PAGE
                    for i in range(t, t + per)}
        for t in self.runtime_tables:
            first = (t - pt.ipa) // HOST_PAGE
            pt_pages.update(range(first, first + per))
        r.pt_pages = {pt.name: pt_pages}
        return r


GUEST_OPS = {"guest_pte": "guest_pte", "guest_free": "guest_free", "guest_age": "guest_age",
             "guest_fork": "guest_fork", "guest_switch": "guest_switch"}


def run_reference(scn: Scenario, policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    """Run the scenario once per policy with the reference simulator."""
    return one_machine(scn, policies, lambda ps: _run_reference(scn, ps))


def _run_reference(scn: Scenario, policies) -> dict[str, PolicyResult]:
    out = {}
    for p in policies:
        vm = Vm(scn, p)
        for i, st in enumerate(scn.steps):
            vm.run_step(i, st)
        out[p] = vm.finish()
    return out
