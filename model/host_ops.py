"""The host-operation interface: what the host does to guest memory, written once, on arrays.

A host operation acts on a set of 4 KiB pages of one memslot (docs/semantics.md §3.4): it may
change the host page state of each page (a *transition*, a pure function on an array of host
state codes) and it removes the stage-2 mappings of the pages through the MMU notifier
(kvm_mmu_notifier_invalidate_range_start -> kvm_unmap_gfn_range; a block mapping any of them
goes whole), then flushes TLBs.  model.host.Host (the reference, a page at a time) and the
engine's ArrayHost (a slice of arrays at once) both call `HOST_OPS[op].transition` on the
same codes, so each rule exists once.  Every op applies to a whole page set in one call: the
engine applies an op once per policy as one array operation, with no per-page work.

Ops and their page sets: the public scenario ops `zap`, `swap_out`, `uffd_wp` take
`first`/`count` (docs/scenario-format.md); generators may give any page set instead
(`Step.pages`, page indices in the slot), and use the internal ops `numa_hint`, `ksm_merge`,
`thp_collapse` and `uffd_unprotect`, which scenario files do not accept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# host page state codes (the VMM's view of a slot's backing), shared by every engine
HOST_MISSING = 0        # no page (never populated, punched)
HOST_RW = 1             # present and writable
HOST_ZERO = 2           # shared zero page: present, host read-only, reads as zeros
HOST_WP = 3             # present, write-protected by uffd-wp
HOST_SWAPPED = 4        # swapped out: not present, content kept on swap
HOST_KSM = 5            # merged by KSM: present, host read-only, content kept
HOST_STATE_NAMES = ("missing", "rw", "zero", "wp", "swapped", "ksm")


def _same(h: np.ndarray, backing: str) -> np.ndarray:
    return h


def _swap_out(h: np.ndarray, backing: str) -> np.ndarray:
    # shrink_folio_list -> try_to_unmap -> add_to_swap: present writable pages go to swap;
    # hugetlb pages are not on the LRU and are never swapped (mm/hugetlb.c)
    if backing == "hugetlb":
        return h
    return np.where(h == HOST_RW, HOST_SWAPPED, h).astype(h.dtype)


def _uffd_wp(h: np.ndarray, backing: str) -> np.ndarray:
    # UFFDIO_WRITEPROTECT(mode=WP) -> mwriteprotect_range: present pages lose write
    return np.where(h == HOST_RW, HOST_WP, h).astype(h.dtype)


def _uffd_unprotect(h: np.ndarray, backing: str) -> np.ndarray:
    # UFFDIO_WRITEPROTECT(mode=0) -> mwriteprotect_range: write-protected pages are writable
    # again (change_protection; its MMU notifier, MMU_NOTIFY_PROTECTION_VMA, makes KVM unmap
    # stage 2 like any invalidation: kvm_mmu_notifier_invalidate_range_start)
    return np.where(h == HOST_WP, HOST_RW, h).astype(h.dtype)


def _ksm_merge(h: np.ndarray, backing: str) -> np.ndarray:
    # mm/ksm.c try_to_merge_one_page -> write_protect_page + replace_page: the PTE points to
    # the shared KSM page, read-only; a write takes a CoW (do_wp_page).  Only anonymous
    # memory is merged (MADV_MERGEABLE): hugetlb and shmem pages are left alone.
    if backing not in ("anon", "anon_thp"):
        return h
    return np.where(h == HOST_RW, HOST_KSM, h).astype(h.dtype)


def _thp_collapse(h: np.ndarray, backing: str) -> np.ndarray:
    # mm/khugepaged.c hpage_collapse_scan_pmd -> collapse_huge_page: a 2 MiB range becomes one
    # THP; empty and zero-page PTEs (up to max_ptes_none, 511 by default) are filled with
    # zeroed subpages, swapped ones (max_ptes_swap, 64) swapped in first
    # (__collapse_huge_page_swapin).  The model collapses only anon_thp ranges with no KSM or
    # uffd-wp page (ASSUMPTION: the generator checks max_ptes_* and picks such ranges).
    if backing != "anon_thp" or np.any((h == HOST_KSM) | (h == HOST_WP)):
        return h
    fill = (h == HOST_MISSING) | (h == HOST_ZERO) | (h == HOST_SWAPPED)
    return np.where(fill, HOST_RW, h).astype(h.dtype)


@dataclass(frozen=True)
class HostOp:
    name: str
    transition: Callable[[np.ndarray, str], np.ndarray]   # (codes, slot backing) -> codes
    source: str                                          # the kernel path it stands for


HOST_OPS = {op.name: op for op in (
    HostOp("zap", _same, "MMU-notifier invalidation (kvm_unmap_gfn_range): THP split, "
                         "migration, madvise(DONTNEED) of a still-present page"),
    HostOp("numa_hint", _same, "NUMA balancing (task_numa_work -> change_prot_numa): PTEs made "
                               "PROT_NONE, the MMU notifier unmaps stage 2; the next fault "
                               "restores the PTE (do_numa_page)"),
    HostOp("swap_out", _swap_out, "reclaim (shrink_folio_list -> try_to_unmap)"),
    HostOp("uffd_wp", _uffd_wp, "UFFDIO_WRITEPROTECT (mwriteprotect_range)"),
    HostOp("uffd_unprotect", _uffd_unprotect, "UFFDIO_WRITEPROTECT mode=0: a background "
                                              "snapshot releases a saved page (QEMU "
                                              "ram_save_release_protection)"),
    HostOp("ksm_merge", _ksm_merge, "KSM (ksmd: try_to_merge_one_page)"),
    HostOp("thp_collapse", _thp_collapse, "khugepaged (collapse_huge_page)"),
)}
# ops a scenario file may use (docs/scenario-format.md): first/count only
PUBLIC_HOST_OPS = ("zap", "swap_out", "uffd_wp")
INTERNAL_HOST_OPS = tuple(op for op in HOST_OPS if op not in PUBLIC_HOST_OPS)


def gup_transition(h, write, uffd_missing):
    """__gfn_to_pfn_memslot() on host state codes (an int, or arrays): (new state, a uffd
    MISSING/MINOR event, a uffd WP event).  A missing page: with a missing/minor uffd
    registration, handle_userfault, resolved present and writable (UFFDIO_COPY/CONTINUE);
    else a new zeroed page on a write (do_anonymous_page), the shared zero page on a read.
    Swapped: swapped in, writable, no uffd (do_swap_page).  On a write: the zero page and a
    KSM page are copied (do_wp_page), a uffd-wp page raises a WP event and is unprotected
    (UFFDIO_WRITEPROTECT mode=0).  The caller applies an event's slot-wide resolution."""
    miss = h == HOST_MISSING
    ev_missing = miss & uffd_missing
    ev_wp = (h == HOST_WP) & write
    cow = (h == HOST_ZERO) | (h == HOST_KSM) | (h == HOST_WP)
    to_rw = (miss & (ev_missing | write)) | (h == HOST_SWAPPED) | (cow & write)
    return np.where(to_rw, HOST_RW, np.where(miss, HOST_ZERO, h)), ev_missing, ev_wp


def maps_writable(write, h, logging, readonly):
    """Does the fault map the page read-write at stage 2 (ints/bools or arrays)?  A write
    fault, or hva_to_pfn_fast() with FOLL_WRITE succeeding on a present writable host page
    (`h`: the state after gup_transition) — unless the slot is logging (then only write
    faults map read-write, and they mark the page dirty) or read-only (user_mem_abort)."""
    return write | ((h == HOST_RW) & (logging ^ True) & (readonly ^ True))


def step_pages(st, slot_pages: int) -> np.ndarray:
    """The page indices (in the slot, int64, ascending, unique) a host-op step covers."""
    if st.pages is None:                 # a range: ascending and unique by construction
        if st.count and (st.first < 0 or st.first + st.count > slot_pages):
            raise ValueError(f"{st.op} on slot {st.slot!r}: pages must be within "
                             f"0..{slot_pages - 1}")
        return np.arange(st.first, st.first + st.count, dtype=np.int64)
    p = np.asarray(st.pages, dtype=np.int64)
    if len(p) and (p[0] < 0 or p[-1] >= slot_pages or np.any(p[1:] <= p[:-1])):
        raise ValueError(f"{st.op} on slot {st.slot!r}: pages must be ascending, unique and "
                         f"within 0..{slot_pages - 1}")
    return p
