"""The host side, one page at a time: memslots, host pages, stage 2, dirty log, userfaultfd,
and KVM's abort handling (docs/semantics.md §3; arch/arm64/kvm/mmu.c, virt/kvm/kvm_main.c).

This is the executable specification shared by the reference simulator; it holds plain
Python state and is written for clarity, not speed.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .arch import HOST_PAGE
from .host_ops import (HOST_MISSING, HOST_OPS, HOST_RW, HOST_SWAPPED, HOST_WP,
                       gup_transition, maps_writable)
from .policies import FaultInfo, Policy
from .results import PolicyResult, UffdEvent
from .scenario import Memslot, Scenario
from .semantics import S2_RO, S2_RW, S2_UNMAPPED  # noqa: F401 (re-exported)
from .x86 import PmlBuffers, hardware_write, is_x86, pml_logs

BLOCK_2M = 2 << 20              # stage-2 block for THP/hugetlb-backed slots (4K host pages)

# stage-2 state of a 4 KiB IPA page: codes of model/semantics.py

# host page state (the VMM's view of the slot's backing): codes of model/host_ops.py


class Outcome(Enum):
    """How KVM's handling of one abort ends for the access that took it."""
    RESTART = "restart"          # fault fixed: the access restarts from the beginning
    ABANDON = "abandon"          # exception injected into the guest: the access is dropped
    MMIO = "mmio"                # KVM_EXIT_MMIO: the access completes in the VMM
    SKIP = "skip"                # cache maintenance outside every slot: instruction skipped
    STOP = "stop"                # KVM_RUN failed (ENOSYS/EFAULT): the vCPU stops


@dataclass(frozen=True)
class Abort:
    """A stage-2 abort as KVM sees it (ESR_ELx fields that matter here)."""
    ipa: int
    s1ptw: bool
    permission: bool
    instruction: bool
    wnr: bool
    isv: bool                    # syndrome valid: plain single-register LDR/STR only
    cache_maintenance: bool = False
    store: bool = False          # the access itself is a store (for the VMM's MMIO handler)


class Host:
    """KVM + host memory for one VM under one policy."""

    def __init__(self, scn: Scenario, initial_content: dict[int, dict[int, int]],
                 policy: Policy, result: PolicyResult):
        self._init_host(scn, policy, result)
        self.initial = initial_content          # page IPA -> {descriptor IPA: value}
        # Page-indexed state; an engine replaces these with array-backed mappings that offer
        # the same dict interface (get, [], []=, pop, in): engine_state.ArrayHost.
        self.content: dict[int, dict[int, int]] = {}
        self.host: dict[int, str] = {}
        self.s2: dict[int, int] = {}
        self.s2_block: dict[int, int] = {}      # page IPA -> base of the block mapping it
        self.dirty: dict[str, set[int]] = {}
        self.written: dict[str, set[int]] = {}
        self.s1ptw_tf: dict[str, set[int]] = {}
        self.s1ptw_tf_written: dict[str, set[int]] = {}
        for s in scn.memslots:
            self.dirty[s.name] = self.pageset(s)
            self.written[s.name] = self.pageset(s)
            self.s1ptw_tf[s.name] = self.pageset(s)
            self.s1ptw_tf_written[s.name] = self.pageset(s)
            for p in self.slot_pages(s):
                self.host[p] = HOST_RW if s.populated else HOST_MISSING
                if s.populated:
                    self.restore_page(p)

    def _init_host(self, scn: Scenario, policy: Policy, result: PolicyResult) -> None:
        """KVM's state at scenario start that does not depend on how pages are stored
        (every engine's host): the policy, no dirty logging but the slots' log_dirty, no
        eager split, the step counters, the x86 machines' state.  docs/scenario-format.md
        "Start": populated slots are present and writable, the others missing."""
        self.scn = scn
        self.policy = policy
        self.r = result
        self.logging: dict[str, bool] = {s.name: s.log_dirty for s in scn.memslots}
        self.eager_split: dict[str, bool] = {s.name: False for s in scn.memslots}
        self.tlb_flushes = 0
        self.step = 0
        self.step_written: set[int] = set()     # pages written during the current step
        self.init_x86()

    # ---- helpers --------------------------------------------------------------------
    @staticmethod
    def slot_pages(s: Memslot) -> range:
        return range(s.ipa, s.end, HOST_PAGE)

    def page_index(self, s: Memslot, page: int) -> int:
        return (page - s.ipa) // HOST_PAGE

    def logging_active(self, s: Memslot) -> bool:
        # memslot_is_logging(): a dirty bitmap and not KVM_MEM_READONLY (kvm/mmu.c)
        return self.logging[s.name] and not s.readonly

    def init_x86(self) -> None:
        """The x86 comparison machines' state (model/x86.py; docs/x86.md)."""
        self.x86 = is_x86(self.scn.machine)
        self.pml_on = pml_logs(self.scn.machine)
        self.pml = PmlBuffers(self.r)
        self.vcpu = 0                           # the vCPU whose access is being handled

    def pml_write(self, page: int) -> None:
        """x86-ept-ad: a write access (walk or store) allowed by a writable EPT entry sets its
        dirty flag; under PML logging a 0 -> 1 transition appends the GPA to the vCPU's PML
        buffer (SDM Vol. 3C §29.3.6), which KVM moves to the dirty bitmap
        (vmx_flush_pml_buffer -> kvm_vcpu_mark_page_dirty).  "D set" is modelled as "in the
        round's dirty bitmap": enabling the log and a harvest clear both."""
        s = self.scn.slot_of(page)
        if s is None or not self.logging_active(s):
            return
        i = self.page_index(s, page)
        if i not in self.dirty[s.name]:
            self.dirty[s.name].add(i)
            self.pml.log(self.vcpu)

    def pageset(self, s: Memslot, full: bool = False):
        """A set of page indices of slot `s` (dirty bitmap, written pages)."""
        return set(range(s.pages)) if full else set()

    # ---- guest memory content (only descriptors matter) ---------------------------------
    def read_desc(self, addr: int) -> int:
        return self.content.get(addr & ~(HOST_PAGE - 1), {}).get(addr, 0)

    def write_desc(self, page: int, addr: int, value: int) -> None:
        self.content.setdefault(page, {})[addr] = value

    def zero_page(self, page: int) -> None:
        self.content.pop(page, None)

    def restore_page(self, page: int) -> None:
        """Content as at scenario start (the uffd handler's snapshot)."""
        if page in self.initial:
            self.content[page] = dict(self.initial[page])
        else:
            self.content.pop(page, None)

    def desc_after_resolution(self, addr: int) -> int:
        """The descriptor a walker will read at `addr` once a fault on its page is resolved
        (the oracle's lookahead)."""
        page = addr & ~(HOST_PAGE - 1)
        if self.host.get(page) == HOST_MISSING:
            s = self.scn.slot_of(page)
            if s is not None and s.uffd in ("missing", "minor"):
                return self.initial.get(page, {}).get(addr, 0)   # UFFDIO_COPY/CONTINUE
            return 0                                # zero page, or a fresh zeroed page
        return self.read_desc(addr)

    def guest_write(self, page: int, addr: int | None = None, value: int | None = None) -> None:
        """A write by the guest (store or walker update): the ground truth of dirtiness."""
        if addr is not None:
            self.write_desc(page, addr, value)
        s = self.scn.slot_of(page)
        if s is not None:
            i = self.page_index(s, page)
            self.written[s.name].add(i)
            if i in self.s1ptw_tf[s.name]:       # written after its walk fault in the round
                self.s1ptw_tf_written[s.name].add(i)
        self.step_written.add(page)
        if self.pml_on:
            self.pml_write(page)

    def flush_tlbs(self) -> None:
        self.tlb_flushes += 1
        self.pml.kick_all()                   # every vCPU exits: PML buffers emptied

    # ---- stage-2 mapping changes ------------------------------------------------------
    def unmap(self, pages) -> None:
        """Unmap stage 2; unmapping part of a block unmaps the whole block (docs/scenario-format.md)."""
        for p in list(pages):
            base = self.s2_block.get(p)
            targets = range(base, base + BLOCK_2M, HOST_PAGE) if base is not None else (p,)
            for q in targets:
                if self.s2.pop(q, None) is not None:
                    self.r.host_unmapped_pages += 1
                self.s2_block.pop(q, None)

    def write_protect(self, pages, split: bool) -> None:
        """stage2_wp_range(): blocks stay whole read-only blocks unless eagerly split."""
        for p in list(pages):
            if p not in self.s2:
                continue
            base = self.s2_block.get(p)
            if base is None and self.pml_on:
                continue                      # PML: 4K pages keep write, D cleared instead
            if base is not None:
                blk = range(base, base + BLOCK_2M, HOST_PAGE)
                if split:    # kvm_mmu_split_huge_pages(): same permission, 4K mappings
                    for q in blk:
                        self.s2_block.pop(q, None)
                    self.s2[p] = S2_RO
                else:
                    for q in blk:
                        self.s2[q] = S2_RO
            else:
                self.s2[p] = S2_RO

    # ---- KVM abort handling (kvm_handle_guest_abort, user_mem_abort) --------------------
    def handle_abort(self, a: Abort, walk_writes_page: bool, ha: bool) -> Outcome:
        r = self.r
        if self.x86:                          # EPT violation: vmx_flush_pml_buffer on exit
            self.pml.exit(self.vcpu)
            write = hardware_write(a.s1ptw, a.permission, a.instruction, a.wnr)
        else:
            write = self.policy(FaultInfo(s1ptw=a.s1ptw, permission=a.permission,
                                          instruction=a.instruction, wnr=a.wnr, ha=ha,
                                          vm_protected=self.scn.guest.vm_protected,
                                          walk_writes_page=walk_writes_page))
        page = a.ipa & ~(HOST_PAGE - 1)
        slot = self.scn.slot_of(page)
        # kvm_handle_guest_abort(): no memslot, or a write to a read-only memslot
        if slot is None or (write and slot.readonly):
            if a.instruction:                 # kvm_inject_pabt(), checked first
                r.guest_aborts += 1
                return Outcome.ABANDON
            if a.s1ptw:                       # kvm_inject_dabt(): walker write to RO slot
                r.guest_aborts += 1
                return Outcome.ABANDON
            if slot is None and a.cache_maintenance:
                return Outcome.SKIP           # kvm_incr_pc(): CM outside any slot
            if a.isv:                         # io_mem_abort(): KVM_EXIT_MMIO
                r.mmio_exits += 1
                if a.store and slot is not None and self.scn.vmm.mmio_store == "write_backing":
                    self.vmm_write(slot, page)
                return Outcome.MMIO
            r.vcpu_run_failures += 1          # io_mem_abort(): !kvm_vcpu_dabt_isvalid -> ENOSYS
            return Outcome.STOP
        # user_mem_abort(): "Unexpected L2 read permission error" -> -EFAULT
        if a.permission and not write and not a.instruction:
            r.efaults += 1
            return Outcome.STOP
        logging = self.logging_active(slot)
        self.gup(slot, page, write)
        writable = maps_writable(write, self.host[page], logging, slot.readonly)
        if not a.permission:
            self.map_translation(slot, page, writable, logging)
            if a.s1ptw and logging:           # the page's dirty round saw a walk fault
                self.s1ptw_tf[slot.name].add(self.page_index(slot, page))
        else:
            self.relax_permission(page, logging)
        if writable and logging:              # mark_page_dirty_in_slot()
            self.dirty[slot.name].add(self.page_index(slot, page))
        return Outcome.RESTART

    def gup(self, slot: Memslot, page: int, write: bool) -> None:
        """__gfn_to_pfn_memslot(): resolve the host page (host_ops.gup_transition), raising
        userfaultfd events."""
        state = self.host[page]
        new, ev_missing, ev_wp = gup_transition(state, write, slot.uffd in ("missing", "minor"))
        if ev_missing:
            # handle_userfault(): MISSING (anon) or MINOR (shmem/hugetlb) event
            self.uffd_event(slot, page, slot.uffd, write)
            self.uffd_resolve_missing(slot, page)
        elif ev_wp:
            self.uffd_event(slot, page, "wp", True)   # handle_userfault(VM_UFFD_WP)
            pages = self.slot_pages(slot) if slot.uffd_resolve == "slot" else (page,)
            for p in pages:                   # UFFDIO_WRITEPROTECT(mode=0)
                if self.host[p] == HOST_WP:
                    self.host[p] = HOST_RW
        elif new != state:
            self.host[page] = int(new)
            if state == HOST_MISSING:         # a new zeroed page, or the shared zero page
                self.zero_page(page)

    def uffd_event(self, slot: Memslot, page: int, mode: str, write: bool) -> None:
        self.r.uffd_events.append(UffdEvent(self.step, slot.name, self.page_index(slot, page),
                                            mode, write))

    def uffd_resolve_missing(self, slot: Memslot, page: int) -> None:
        """UFFDIO_COPY / UFFDIO_CONTINUE: content as at scenario start, present, writable."""
        pages = self.slot_pages(slot) if slot.uffd_resolve == "slot" else (page,)
        for p in pages:
            if self.host[p] == HOST_MISSING:
                self.host[p] = HOST_RW
                self.restore_page(p)

    def vmm_write(self, slot: Memslot, page: int) -> None:
        """The VMM's MMIO handler writes the data into the slot's host memory (memcpy):
        a host write, which can raise a uffd event of its own; not a guest write."""
        self.gup(slot, page, True)
        self.step_written.add(page)

    def map_translation(self, slot: Memslot, page: int, writable: bool, logging: bool) -> None:
        perm = S2_RW if writable else S2_RO
        if slot.backing in ("anon_thp", "hugetlb") and not logging:
            # transparent_hugepage_adjust()/hugetlb: a 2 MiB block if it lies in the slot and
            # every host page of it is present and writable.
            base = page & ~(BLOCK_2M - 1)
            if (slot.contains(base) and slot.contains(base + BLOCK_2M - 1)
                    and self.all_host_rw(base)):
                self.map_block(base, perm)
                return
        self.s2[page] = perm                  # force_pte under logging, or a 4K page

    def relax_permission(self, page: int, logging: bool) -> None:
        base = self.s2_block.get(page)
        if base is None:
            self.s2[page] = S2_RW
            return
        if not logging:
            self.map_block(base, S2_RW)       # relax the whole block in place
            return
        # Under logging a write fault on a read-only block maps only the 4K page read-write
        # and leaves the rest of the block unmapped (docs/scenario-format.md "Blocks";
        # docs/semantics.md §3.3).
        self.unmap_block(base)
        self.s2[page] = S2_RW
        self.flush_tlbs()                     # unmapping part of the block: TLBI

    # stage-2 block storage (an engine replaces these three with array slices)
    def all_host_rw(self, base: int) -> bool:
        return all(self.host[q] == HOST_RW for q in range(base, base + BLOCK_2M, HOST_PAGE))

    def map_block(self, base: int, perm: int) -> None:
        for q in range(base, base + BLOCK_2M, HOST_PAGE):
            self.s2[q] = perm
            self.s2_block[q] = base

    def unmap_block(self, base: int) -> None:
        for q in range(base, base + BLOCK_2M, HOST_PAGE):
            self.s2.pop(q, None)
            self.s2_block.pop(q, None)

    # ---- host operations (scenario steps) --------------------------------------------
    def punch_hole(self, slot: Memslot) -> None:
        pages = self.slot_pages(slot)
        for p in pages:
            self.host[p] = HOST_MISSING
            self.zero_page(p)
        self.unmap(pages)
        self.flush_tlbs()

    def host_op(self, op: str, slot: Memslot, pages: np.ndarray) -> None:
        """A host operation (model/host_ops.py) on page indices `pages` of `slot`: each page's
        host state goes through the op's transition, then stage 2 is unmapped (MMU notifier)
        and TLBs are flushed."""
        ipas = [slot.ipa + int(i) * HOST_PAGE for i in pages]
        old = np.array([self.host[p] for p in ipas], dtype=np.int8)
        new = HOST_OPS[op].transition(old, slot.backing)
        for p, a, b in zip(ipas, old.tolist(), new.tolist()):
            if a != b:
                self.host[p] = b
        self.unmap(ipas)
        self.flush_tlbs()

    def warm_stage2(self, slot: Memslot, pages: np.ndarray) -> None:
        """The window starts in a VM that has run: stage 2 maps the pages (indices) the guest
        touched before, as the faults that first touched them did (user_mem_abort ->
        map_translation, writable as for a read fault on that host page; blocks where
        transparent_hugepage_adjust would make one).  Missing and swapped pages stay
        unmapped.  A modelling device (the window's start), not a KVM operation."""
        logging = self.logging_active(slot)
        for i in np.asarray(pages).tolist():
            p = slot.ipa + i * HOST_PAGE
            h = self.host[p]
            if h in (HOST_MISSING, HOST_SWAPPED) or p in self.s2:
                continue
            writable = bool(maps_writable(False, h, logging, slot.readonly))
            self.map_translation(slot, p, writable, logging)

    def zap(self, slot: Memslot, first: int, count: int) -> None:
        self.host_op("zap", slot, np.arange(first, first + count))

    def swap_out(self, slot: Memslot, first: int, count: int) -> None:
        """Reclaim (shrink_folio_list -> try_to_unmap -> MMU notifier): stage 2 unmapped as by
        a zap; present writable pages are swapped out and stay not present until a fault
        swaps them in, so a block with a swapped page cannot be mapped as a block
        (transparent_hugepage_adjust needs every page).  Hugetlb pages are never swapped
        (not on the LRU): on a hugetlb slot this only zaps."""
        self.host_op("swap_out", slot, np.arange(first, first + count))

    def uffd_wp(self, slot: Memslot, first: int, count: int) -> None:
        self.host_op("uffd_wp", slot, np.arange(first, first + count))

    def enable_dirty_log(self, slot: Memslot, initially_set: bool, eager_split: bool) -> None:
        self.logging[slot.name] = True
        self.eager_split[slot.name] = eager_split
        self.written[slot.name] = self.pageset(slot)   # the round starts now (README)
        self.s1ptw_tf[slot.name] = self.pageset(slot)
        self.s1ptw_tf_written[slot.name] = self.pageset(slot)
        if initially_set:
            # KVM_DIRTY_LOG_INITIALLY_SET: every bit set, nothing protected until a harvest.
            self.dirty[slot.name] = self.pageset(slot, full=True)
            return
        self.dirty[slot.name] = self.pageset(slot)
        self.write_protect(self.slot_pages(slot), split=eager_split)  # kvm_mmu_wp_memory_region
        self.flush_tlbs()

    def harvest(self, slot: Memslot, pages=None) -> tuple[list[int], ...]:
        """GET_DIRTY_LOG (+ CLEAR_DIRTY_LOG): returns and clears the bits, write-protects those
        pages (kvm_arch_mmu_enable_log_dirty_pt_masked), flushes TLBs.  `pages` (page
        indices): KVM_CLEAR_DIRTY_LOG of that range only (kvm_clear_dirty_log_protect; QEMU
        clears one clear-bitmap chunk just before sending it: migration_clear_memory_region_
        dirty_bitmap); None: the whole slot.  Returns the round's marked pages, the pages the
        guest wrote in it (ground truth), those that took an S1PTW translation fault in it and
        those of them written after that fault (docs/time-and-hosts.md: rounds); the round of
        those pages ends here."""
        sets = (self.dirty, self.written, self.s1ptw_tf, self.s1ptw_tf_written)
        if pages is None:
            out = [sorted(d[slot.name]) for d in sets]
            for d in sets:
                d[slot.name] = self.pageset(slot)
        else:
            rng = set(np.asarray(pages).tolist())
            out = [sorted(d[slot.name] & rng) for d in sets]
            for d in sets:
                d[slot.name] -= rng
        self.write_protect((slot.ipa + i * HOST_PAGE for i in out[0]),
                           split=self.eager_split[slot.name])
        self.flush_tlbs()
        return tuple(out)
