"""The numpy engine: quiet stretches of the trace in bulk, the rest by the reference's own code.

DOMAIN.md §6: between two events that protect or unmap stage 2, flush TLBs or change guest
descriptors, every page's state only moves one way.  So an access whose needs — a stage-2
mapping of every descriptor page its walk reads, write permission on every page its hardware
update writes, and the data page with the permission it needs — are all met by the current
stage 2 takes no stage-2 fault, and neither does any access before it that is also met: the
engine finds the longest such *quiet* prefix of the trace with one vectorised walk and
handles it in bulk with first-occurrence reductions (TLB fills, hardware updates, written
pages, walk and descriptor-read counts).  The first access that is not quiet takes a fault:
it runs through `model.reference.Vm.access` on the same state, so fault handling, policies,
userfaultfd and dirty marking are the executable spec itself, never re-implemented.

State is held in numpy arrays (stage 2, host pages, page-table memory, TLBs, dirty and
written bitmaps) behind the small dict-like interface model.host.Host uses.
"""
from __future__ import annotations

import bisect

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE, HOST_PAGE, DESC_SIZE
from .host import HOST_MISSING, HOST_RW, HOST_WP, HOST_ZERO, S2_RO, S2_RW, S2_UNMAPPED, Host
from .policies import DEFAULT_ORDER
from .reference import STORES, TlbEntry, Vm
from .results import PolicyResult
from .scenario import Memslot, Scenario
from .trace import AT, EXEC, STORE_MASK, Trace, trace_from_scenario

PAGE_MASK = ~(HOST_PAGE - 1)
HOST_CODES = {HOST_MISSING: 0, HOST_RW: 1, HOST_ZERO: 2, HOST_WP: 3}
HOST_NAMES = {v: k for k, v in HOST_CODES.items()}
U64 = np.uint64
BIG = np.int64(1 << 62)


# ---- array-backed state ---------------------------------------------------------------
class SlotIndex:
    """Maps page IPAs of every memslot to one concatenated array index (or -1)."""

    def __init__(self, slots: tuple[Memslot, ...]):
        order = sorted(slots, key=lambda s: s.ipa)
        self.bases = [s.ipa for s in order]
        self.npages = [s.pages for s in order]
        self.starts = list(np.cumsum([0] + self.npages[:-1]))
        self.total = int(sum(self.npages))
        self.start_of = {s.name: self.starts[i] for i, s in enumerate(order)}
        self._bases = np.array(self.bases, dtype=np.int64)
        self._npages = np.array(self.npages, dtype=np.int64)
        self._starts = np.array(self.starts, dtype=np.int64)
        # A dense page -> index table over the slots' IPA span when it is small (the usual
        # case); index -1 between slots.  Lookups are then one gather.
        self.lo = self.bases[0]
        span = (max(s.end for s in order) - self.lo) >> 12
        self.table = None
        if span <= (1 << 24):
            t = np.full(span + 1, -1, dtype=np.int64)
            for b, n, st in zip(self.bases, self.npages, self.starts):
                o = (b - self.lo) >> 12
                t[o:o + n] = np.arange(st, st + n)
            self.table = t

    def index(self, page: int) -> int:
        i = bisect.bisect_right(self.bases, page) - 1
        if i < 0:
            return -1
        off = (page - self.bases[i]) >> 12
        return self.starts[i] + off if off < self.npages[i] else -1

    def index_v(self, pages: np.ndarray) -> np.ndarray:
        """Vectorised `index` for an int64 array of page IPAs."""
        if self.table is not None:
            o = (pages - self.lo) >> 12
            ok = (o >= 0) & (o < len(self.table))
            return np.where(ok, self.table[np.where(ok, o, len(self.table) - 1)], -1)
        i = np.searchsorted(self._bases, pages, side="right") - 1
        ic = np.maximum(i, 0)
        off = (pages - self._bases[ic]) >> 12
        ok = (i >= 0) & (off >= 0) & (off < self._npages[ic])
        return np.where(ok, self._starts[ic] + off, -1)


class ArrayMap:
    """dict-like view (get, [], []=, pop, in) of one value per slot page; `empty` = absent."""

    def __init__(self, idx: SlotIndex, dtype, empty, encode=None, decode=None):
        self.idx = idx
        self.a = np.full(idx.total + 1, empty, dtype=dtype)   # last cell: outside slots
        self.empty = empty
        self.enc = encode or (lambda v: v)
        self.dec = decode or (lambda v: v)

    def _i(self, page: int) -> int:
        return self.idx.index(page)

    def get(self, page, default=None):
        i = self._i(page)
        if i < 0 or self.a[i] == self.empty:
            return default
        return self.dec(self.a[i].item())

    def __getitem__(self, page):
        v = self.get(page)
        if v is None:
            raise KeyError(page)
        return v

    def __setitem__(self, page, value):
        i = self._i(page)
        if i < 0:
            raise KeyError(f"page {page:#x} is in no memslot")
        self.a[i] = self.enc(value)

    def pop(self, page, default=None):
        i = self._i(page)
        if i < 0 or self.a[i] == self.empty:
            return default
        v = self.dec(self.a[i].item())
        self.a[i] = self.empty
        return v

    def __contains__(self, page) -> bool:
        i = self._i(page)
        return i >= 0 and self.a[i] != self.empty


class BitSet:
    """A set of page indices of one slot as a bool array (add, in, iteration, len)."""

    def __init__(self, n: int, full: bool = False):
        self.a = np.full(n, full, dtype=bool)

    def add(self, i: int) -> None:
        self.a[i] = True

    def __contains__(self, i) -> bool:
        return bool(self.a[i])

    def __iter__(self):
        return iter(np.flatnonzero(self.a).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.a))


class ArrayHost(Host):
    """model.host.Host with array-backed state; the logic is inherited unchanged."""

    def _init_state(self) -> None:
        scn = self.scn
        self.idx = SlotIndex(scn.memslots)
        self.s2 = ArrayMap(self.idx, np.int8, S2_UNMAPPED)
        self.s2_block = ArrayMap(self.idx, np.int64, -1)
        self.host = ArrayMap(self.idx, np.int8, -1, HOST_CODES.__getitem__,
                             HOST_NAMES.__getitem__)
        pt = scn.slot(scn.guest.pt_slot)
        self.content_version = 0                   # page-table pages replaced (zero/restore)
        self.desc_writes = 0                       # descriptors rewritten
        self.pt_base, self.pt_end = pt.ipa, pt.end
        self.ptmem = np.zeros(pt.pages * (HOST_PAGE // DESC_SIZE), dtype=U64)
        self.ptinit = np.zeros_like(self.ptmem)
        for page, descs in self.initial.items():
            for addr, v in descs.items():
                self.ptinit[(addr - self.pt_base) >> 3] = v

    def pageset(self, s: Memslot, full: bool = False):
        return BitSet(s.pages, full)

    # guest memory: only the page-table slot holds descriptors (SCENARIO.md layout rule)
    def _pt_off(self, addr: int) -> int:
        return (addr - self.pt_base) >> 3 if self.pt_base <= addr < self.pt_end else -1

    def read_desc(self, addr: int) -> int:
        o = self._pt_off(addr)
        return int(self.ptmem[o]) if o >= 0 else 0

    def write_desc(self, page: int, addr: int, value: int) -> None:
        o = self._pt_off(addr)
        if o < 0:
            raise AssertionError(f"descriptor write outside the page-table slot: {addr:#x}")
        self.ptmem[o] = value
        self.desc_writes += 1

    def _page_slice(self, page: int) -> slice | None:
        o = self._pt_off(page)
        return slice(o, o + HOST_PAGE // DESC_SIZE) if o >= 0 else None

    def zero_page(self, page: int) -> None:
        sl = self._page_slice(page)
        if sl is not None:
            self.ptmem[sl] = 0
            self.content_version += 1

    def restore_page(self, page: int) -> None:
        sl = self._page_slice(page)
        if sl is not None:
            self.ptmem[sl] = self.ptinit[sl]
            self.content_version += 1

    def desc_after_resolution(self, addr: int) -> int:
        page = addr & PAGE_MASK
        if self.host.get(page) == HOST_MISSING:
            s = self.scn.slot_of(page)
            if s is not None and s.uffd in ("missing", "minor"):
                o = self._pt_off(addr)
                return int(self.ptinit[o]) if o >= 0 else 0
            return 0
        return self.read_desc(addr)


class TlbView:
    """The reference's per-vCPU TLB interface (get, []=, pop) over the engine's arrays."""

    def __init__(self, vm: "FastVm", vcpu: int):
        self.vm, self.vcpu = vm, vcpu

    def get(self, va_page: int, default=None):
        vm = self.vm
        k = vm.va_page_id(va_page)
        if k < 0 or vm.tlb_state(self.vcpu, k) == 0:
            return default
        leaf, level = vm.mem_walk(va_page)
        if vm.tlb_state(self.vcpu, k) == 2:
            leaf &= ~DESC_AP2
        else:
            leaf |= DESC_AP2
        return TlbEntry(leaf, level)

    def __setitem__(self, va_page: int, e: TlbEntry) -> None:
        vm = self.vm
        k = vm.va_page_id(va_page)
        vm.tlb[self.vcpu * len(vm.va_pages) + k] = (vm.tlb_gen << 2) | (
            1 if e.leaf & DESC_AP2 else 2)

    def pop(self, va_page: int, default=None):
        vm = self.vm
        k = vm.va_page_id(va_page)
        if k >= 0:
            vm.tlb[self.vcpu * len(vm.va_pages) + k] = 0
        return default


# ---- the engine's VM ------------------------------------------------------------------
class FastVm(Vm):
    """Vm whose state lives in arrays, with a bulk path for quiet stretches."""

    def __init__(self, scn: Scenario, policy: str, trace: Trace, prep: "TracePrep"):
        self._trace = trace
        super().__init__(scn, policy)
        self.prep = prep
        self.va_pages = prep.va_pages              # sorted unique VA pages of the trace
        nv = prep.n_vcpu
        nu = max(1, len(self.va_pages))
        # TLB: (generation << 2) | state, state 1 = clean entry (AP[2] set), 2 = dirty entry;
        # an entry is valid only in the current generation (a flush bumps it: O(1)).
        self.tlb = np.zeros(nv * nu, dtype=np.int32)
        self.tlb_gen = 1
        self.stopped_mask = np.zeros(nv, dtype=bool)
        # scratch for first-occurrence reductions, kept at BIG between uses
        self.scratch_tlb = np.full(nv * nu, BIG, dtype=np.int64)
        self.scratch_leaf = np.full(len(self.host.ptmem) + 1, BIG, dtype=np.int64)
        self.scratch_page_r = np.full(self.host.idx.total + 1, BIG, dtype=np.int64)
        self.scratch_page_w = np.full(self.host.idx.total + 1, BIG, dtype=np.int64)

    def _make_host(self, scn, initial, policy, result):
        return ArrayHost(scn, initial, policy, result)

    # TLB --------------------------------------------------------------------------------
    def va_page_id(self, va_page: int) -> int:
        k = int(np.searchsorted(self.va_pages, va_page))
        return k if k < len(self.va_pages) and int(self.va_pages[k]) == va_page else -1

    def tlb_state(self, vcpu: int, k: int) -> int:
        v = int(self.tlb[vcpu * len(self.va_pages) + k])
        return v & 3 if v >> 2 == self.tlb_gen else 0

    def _sync_flush(self) -> None:
        if self.host.tlb_flushes != self._flushes_seen:
            self._flushes_seen = self.host.tlb_flushes
            self.tlb_gen += 1

    def vcpu_tlb(self, vcpu: int):
        self._sync_flush()
        return TlbView(self, vcpu)

    def flush_all(self) -> None:
        self.tlb_gen += 1

    def tlb_invalidate_va(self, va_page: int) -> None:
        self._sync_flush()
        k = self.va_page_id(va_page)
        if k >= 0:
            self.tlb[k::len(self.va_pages)] = 0

    def mem_walk(self, va: int) -> tuple[int, int]:
        """Leaf descriptor and level of `va` in memory (no stage-2 checks)."""
        walk, _ = self.s1_walk(va, self.host.read_desc)
        return walk.leaf, walk.level

    # the vectorised walk ----------------------------------------------------------------
    def walk_window(self, va: np.ndarray):
        """Walk every VA over the page-table memory.  Returns, per access: the descriptor
        IPA read at each level (-1 where not read), the leaf level (-1: stage-1 translation
        fault), the leaf descriptor and its IPA.  Same rules as Vm.s1_walk."""
        geo, host = self.geo, self.host
        n = len(va)
        va = va.astype(np.int64)
        table = np.full(n, self.tables.root, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        leaf_level = np.full(n, -1, dtype=np.int8)
        leaf = np.zeros(n, dtype=U64)
        leaf_addr = np.full(n, -1, dtype=np.int64)
        addrs = []
        oa_mask = np.int64(geo.oa_mask)
        nptd = len(host.ptmem)
        for level in range(geo.start_level, 4):
            shift = geo.level_shift(level)
            idx = (va >> shift) & ((1 << geo.index_bits(level)) - 1)
            addr = np.where(alive, table + idx * DESC_SIZE, -1)
            addrs.append(addr)
            off = (addr - host.pt_base) >> 3
            inpt = alive & (off >= 0) & (off < nptd)
            desc = np.where(inpt, host.ptmem[np.clip(off, 0, nptd - 1)], U64(0))
            valid = (desc & U64(1)).astype(bool)
            bit1 = (desc & U64(DESC_TABLE)).astype(bool)
            if level < 3:
                is_tab = alive & valid & bit1
                blk_ok = geo.block_size(level) is not None
                is_leaf = alive & valid & ~bit1 & blk_ok
            else:
                is_tab = np.zeros(n, dtype=bool)
                is_leaf = alive & valid & bit1
            leaf_level[is_leaf] = level
            leaf[is_leaf] = desc[is_leaf]
            leaf_addr[is_leaf] = addr[is_leaf]
            table = np.where(is_tab, desc.astype(np.int64) & oa_mask, table)
            alive = is_tab
        return addrs, leaf_level, leaf, leaf_addr

    # quiet test + bulk ------------------------------------------------------------------
    def window(self, lo: int, hi: int):
        """Walk and classify accesses [lo, hi); returns (quiet prefix length, facts)."""
        tr, geo, host = self._trace, self.geo, self.host
        va = tr.va[lo:hi]
        kind = tr.kind[lo:hi]
        vcpu = tr.vcpu[lo:hi]
        live = ~self.stopped_mask[vcpu]
        addrs, leaf_level, leaf, leaf_addr = self.walk_window(va)
        s2 = host.s2.a
        idx = host.idx
        # every descriptor page read must be mapped (a TLB hit implies it is: KVM flushes
        # TLBs whenever it unmaps, so a valid entry's walk pages are still mapped)
        # unsatisfied needs as (position, page index, write): each is a stage-2 fault
        # unless an earlier access's fault on the same page satisfied it
        n_pages = len(s2) - 1
        pos = np.arange(len(va), dtype=np.int64)
        needs: list[tuple[np.ndarray, np.ndarray, bool]] = []
        path_pages = []

        def need(mask, pages, write):
            if np.any(mask):
                needs.append((pos[mask], pages[mask], write))
        ok = np.ones(len(va), dtype=bool)
        for a in addrs:
            rd = a >= 0
            gp = idx.index_v(np.where(rd, a & PAGE_MASK, 0))
            path_pages.append(np.where(rd, gp, -2))
            un = rd & (s2[gp] == S2_UNMAPPED) & live
            need(un, gp, False)
            ok &= ~un
        store = STORE_MASK[kind]
        walked = leaf_level >= 0
        ha, hd = self.ha, self.hd
        # stage-1 checks (Vm.s1_check): AF fault first (I_DSHLJ), then permission
        af = (leaf & U64(DESC_AF)).astype(bool)
        ap2 = (leaf & U64(DESC_AP2)).astype(bool)
        dbm = (leaf & U64(DESC_DBM)).astype(bool)
        pxn = (leaf & U64(DESC_PXN)).astype(bool)
        s1f = ~walked.copy()
        if not ha:
            s1f |= walked & ~af
        s1f |= walked & (kind == EXEC) & pxn
        s1f |= walked & store & ap2 & ~(dbm & hd)
        complete = ~s1f
        # hardware updates a walk may make (Vm.s1_updates), conservatively: write needs
        updating = complete & ha & ((kind != AT) | self.scn.machine.at_sets_af)
        upd_leaf = updating & (~af | (store & hd & dbm & ap2)
                               | (self.scn.machine.hw_update == "always"))
        lp = idx.index_v(np.where(upd_leaf, leaf_addr & PAGE_MASK, 0))
        un = upd_leaf & (s2[lp] != S2_RW) & live
        need(un, lp, True)
        ok &= ~un
        upd_pages = [np.where(upd_leaf, lp, -2)]
        haft_tables = []
        if self.haft:
            for a in addrs[:-1]:
                o = (a - host.pt_base) >> 3
                ina = updating & (a >= 0) & (o >= 0) & (o < len(host.ptmem))
                d = np.where(ina, host.ptmem[np.clip(o, 0, len(host.ptmem) - 1)], U64(0))
                is_tab_read = ina & (d & U64(DESC_TABLE)).astype(bool) & (a != leaf_addr)
                tab_af = is_tab_read & ~(d & U64(DESC_AF)).astype(bool)
                tp = idx.index_v(np.where(tab_af, a & PAGE_MASK, 0))
                un = tab_af & (s2[tp] != S2_RW) & live
                need(un, tp, True)
                ok &= ~un
                upd_pages.append(np.where(tab_af, tp, -2))
                haft_tables.append((a, tab_af))
        # the data access (AArch64.S2Translate of the output address)
        data = complete & (kind != AT)
        size = np.left_shift(np.int64(1), np.array(
            [geo.level_shift(lv) if lv >= 0 else 0 for lv in range(4)], dtype=np.int64))
        lsz = size[np.maximum(leaf_level, 0)]
        oa = (leaf.astype(np.int64) & np.int64(geo.oa_mask) & ~(lsz - 1)) | (
            va.astype(np.int64) & (lsz - 1))
        dp = idx.index_v(np.where(data, oa & PAGE_MASK, 0))
        dst = s2[dp]
        un = data & live & ((dp < 0) | np.where(store, dst != S2_RW, dst == S2_UNMAPPED))
        need(un & ~store, dp, False)
        need(un & store, dp, True)
        ok &= ~un
        cands = self.candidates(needs, n_pages, len(va))
        facts = dict(va=va, vid=self.prep.vid[lo:hi], kind=kind, vcpu=vcpu, live=live,
                     addrs=addrs,
                     leaf_level=leaf_level, leaf_addr=leaf_addr, leaf=leaf, store=store,
                     s1f=s1f, complete=complete, updating=updating, af=af, ap2=ap2, dbm=dbm,
                     oa=oa, data=data, haft_tables=haft_tables, path_pages=path_pages,
                     upd_pages=upd_pages, dp=dp)
        return cands, facts

    def candidates(self, needs, n_pages: int, n: int) -> np.ndarray:
        """Positions of the accesses that may take a stage-2 fault: the first unsatisfied
        need of each (page, any) and each (page, write), and every need outside all slots."""
        if not needs:
            return np.zeros(0, dtype=np.int64)
        pos = np.concatenate([x[0] for x in needs])
        page = np.concatenate([x[1] for x in needs])
        write = np.concatenate([np.full(len(x[0]), x[2]) for x in needs])
        mark = np.zeros(n, dtype=bool)
        out = page < 0
        mark[pos[out]] = True
        inn = ~out
        for sel, scratch in ((inn, self.scratch_page_r), (inn & write, self.scratch_page_w)):
            if np.any(sel):
                pg, ps = page[sel], pos[sel]
                np.minimum.at(scratch, pg, ps)
                mark[scratch[pg]] = True
                scratch[pg] = BIG
        return np.flatnonzero(mark)

    def needs_met(self, f: dict, c: int) -> bool:
        """After the scalar run of access c: are all its needs met by stage 2 now?"""
        s2 = self.host.s2.a
        for gp in f["path_pages"]:
            p = int(gp[c])
            if p != -2 and (p < 0 or s2[p] == S2_UNMAPPED):
                return False
        for gp in f["upd_pages"]:
            p = int(gp[c])
            if p != -2 and (p < 0 or s2[p] != S2_RW):
                return False
        if f["data"][c]:
            p = int(f["dp"][c])
            if p < 0 or s2[p] == S2_UNMAPPED or (f["store"][c] and s2[p] != S2_RW):
                return False
        return True

    def disruption_mark(self) -> tuple:
        """What invalidates a window's facts: TLB flushes, page-table content replaced or
        rewritten, vCPUs stopped."""
        h = self.host
        return (h.tlb_flushes, h.content_version, h.desc_writes, len(self.stopped))

    def bulk(self, f: dict, a: int, q: int) -> None:
        """Apply the quiet accesses [a, q) of a window in bulk: no stage-2 fault happens."""
        if q <= a:
            return
        self._sync_flush()
        host, r, geo = self.host, self.r, self.geo
        live = f["live"][a:q]
        all_live = bool(live.all())
        sl = slice(None) if all_live else np.flatnonzero(live)
        if not all_live and len(sl) == 0:
            return

        def cut(v):
            if isinstance(v, np.ndarray):
                return v[a:q][sl]
            if isinstance(v, tuple):
                return tuple(cut(x) for x in v)
            return [cut(x) for x in v]
        g = {k: cut(v) for k, v in f.items()}
        kind, store, complete = g["kind"], g["store"], g["complete"]
        n = len(kind)
        pos = np.arange(n, dtype=np.int64)
        r.accesses += n
        r.stage1_faults += int(np.count_nonzero(g["s1f"]))
        # --- TLB: which accesses walk (Vm._attempt's hit rule) -------------------------
        key = g["vcpu"].astype(np.int64) * len(self.va_pages) + g["vid"]
        flat = self.tlb
        raw = flat[key]
        s0 = np.where(raw >> 2 == self.tlb_gen, raw & 3, 0)
        fills = complete & (kind != AT)
        first_fill = _first_by_key(self.scratch_tlb, key, pos, fills)
        # leaf dirtied in memory: AP[2] clear at start, or the first completing store on it
        leaf_key = np.where(g["leaf_addr"] >= 0, (g["leaf_addr"] - host.pt_base) >> 3,
                            len(host.ptmem))
        leaf_key = np.where((leaf_key >= 0) & (leaf_key < len(host.ptmem)), leaf_key,
                            len(host.ptmem))
        t_dirty = _first_by_key(self.scratch_leaf, leaf_key, pos, complete & store)
        t_dirty = np.where(~g["ap2"], -1, t_dirty)
        # D: first point from which the key's entry is dirty
        ff_is_load = np.zeros(n, dtype=bool)
        has_ff = first_fill < BIG
        ff_idx = np.minimum(first_fill, n - 1)
        ff_is_load[has_ff] = ~store[ff_idx[has_ff]]
        ff_dirty = has_ff & ff_is_load & (t_dirty[ff_idx] < first_fill)
        first_store = _first_by_key(self.scratch_tlb, key, pos, complete & store)
        D = np.minimum(np.where((s0 == 0) & ff_dirty, first_fill, BIG), first_store)
        D = np.where(s0 == 2, -1, D)
        walk = np.where(store, pos <= D,
                        np.where(kind == AT, True, (s0 == 0) & (pos <= first_fill)))
        r.walks += int(np.count_nonzero(walk))
        levels_read = np.zeros(n, dtype=np.int64)
        for a in g["addrs"]:
            levels_read += a >= 0
        r.descriptor_reads += int(levels_read[walk].sum())
        # final TLB state per touched key (the same for every element of a key, so a plain
        # scatter with repeated keys is exact)
        fin = np.where(D < BIG, 2, np.where(has_ff & (s0 == 0), 1, s0))
        upd = fin > 0
        flat[key[upd]] = (self.tlb_gen << 2) | fin[upd]
        # --- hardware updates made by walks that complete ------------------------------
        wu = walk & g["updating"]
        hw_always = self.scn.machine.hw_update == "always"
        leaf_w = wu & (~g["af"] | hw_always)
        dirtying = wu & store & self.hd & g["dbm"] & g["ap2"] & (pos == t_dirty)
        written_pt = [g["leaf_addr"][leaf_w | dirtying]]
        la = g["leaf_addr"]
        o = (la[wu & ~g["af"]] - host.pt_base) >> 3
        host.ptmem[o] |= U64(DESC_AF)
        o = (la[dirtying] - host.pt_base) >> 3
        host.ptmem[o] &= ~U64(DESC_AP2)
        for a, need in g["haft_tables"]:
            m = need & walk
            written_pt.append(a[m])
            host.ptmem[(a[m] - host.pt_base) >> 3] |= U64(DESC_AF)
        pt_addr = np.concatenate(written_pt)
        if len(pt_addr):
            self._mark_written(pt_addr & PAGE_MASK)
        # --- data stores -----------------------------------------------------------------
        ds = g["data"] & store
        if np.any(ds):
            self._mark_written(g["oa"][ds] & PAGE_MASK)

    def _mark_written(self, pages: np.ndarray) -> None:
        host = self.host
        gi = host.idx.index_v(pages)
        for s in self.scn.memslots:
            st = host.idx.start_of[s.name]
            m = (gi >= st) & (gi < st + s.pages)
            if np.any(m):
                host.written[s.name].a[gi[m] - st] = True

    # scalar path --------------------------------------------------------------------------
    def scalar(self, i: int) -> None:
        tr = self._trace
        step = int(tr.step_of_access[i]) if tr.step_of_access is not None else i
        self.begin_step(step)
        v = int(tr.vcpu[i])
        if v not in self.stopped:
            from .trace import KINDS
            self.access(v, int(tr.va[i]), KINDS[int(tr.kind[i])])
            if v in self.stopped:
                self.stopped_mask[v] = True
        self.end_step()


def _first_by_key(scratch: np.ndarray, key: np.ndarray, pos: np.ndarray,
                  mask: np.ndarray) -> np.ndarray:
    """For every element, the first position among elements of the same key where `mask`
    holds; BIG where none does.  `scratch` (dense over keys) is BIG on entry and on exit."""
    if not np.any(mask):
        return np.full(len(key), BIG, dtype=np.int64)
    km = key[mask]
    np.minimum.at(scratch, km, pos[mask])
    out = scratch[key]
    scratch[km] = BIG
    return out


class TracePrep:
    """Per-trace facts shared by every policy's run: the unique VA pages and each access's
    index among them (the TLB key), and the number of vCPUs."""

    def __init__(self, scn: Scenario, trace: Trace):
        geo = scn.machine.geometry
        shift = geo.granule_shift
        n = len(trace)
        vpn = (trace.va >> U64(shift)).astype(np.int64) if n else np.zeros(0, np.int64)
        lo = int(vpn.min()) if n else 0
        span = int(vpn.max()) - lo + 1 if n else 0
        if n and span <= max(1 << 22, 4 * n):
            # dense: mark the pages present, number them in order (O(n + span))
            present = np.zeros(span, dtype=bool)
            present[vpn - lo] = True
            order = np.cumsum(present) - 1
            self.vid = order[vpn - lo]
            self.va_pages = ((np.flatnonzero(present) + lo).astype(U64) << U64(shift))
        else:
            uniq, vid = np.unique(vpn, return_inverse=True)
            self.vid = vid.astype(np.int64)
            self.va_pages = uniq.astype(U64) << U64(shift)
        self.n_vcpu = int(trace.vcpu.max()) + 1 if len(trace) else 1


MIN_WINDOW, MAX_WINDOW = 64, 1 << 16


def run_trace(scn: Scenario, trace: Trace, policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    """Run a trace under every policy with the numpy engine."""
    prep = TracePrep(scn, trace)
    out = {}
    for p in policies:
        vm = FastVm(scn, p, trace, prep)
        for start, end, events in trace.intervals():
            for _pos, si, st in events:
                vm.run_step(si, st)
                if st.op == "clear_af" and st.vcpu in vm.stopped:
                    vm.stopped_mask[st.vcpu] = True
            _run_accesses(vm, start, end)
        out[p] = vm.finish()
    return out


def _run_accesses(vm: FastVm, lo: int, hi: int) -> None:
    """Accesses [lo, hi) of one interval: per window, the quiet runs in bulk and each
    candidate through the reference code; a candidate that leaves its needs unmet or
    disturbs the window's facts ends the window there."""
    w = MIN_WINDOW
    i = lo
    while i < hi:
        j = min(hi, i + w)
        cands, facts = vm.window(i, j)
        a = 0
        cut_short = False
        for c in cands.tolist():
            vm.bulk(facts, a, c)
            mark = vm.disruption_mark()
            vm.scalar(i + c)
            a = c + 1
            if vm.disruption_mark() != mark or not vm.needs_met(facts, c):
                cut_short = True
                break
        if cut_short:
            i += a
            w = max(MIN_WINDOW, w // 2)
        else:
            vm.bulk(facts, a, j - i)
            i = j
            w = min(MAX_WINDOW, w * 2)


def run_engine(scn: Scenario, policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    return run_trace(scn, trace_from_scenario(scn), policies)
