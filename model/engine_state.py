"""State of the numpy engine: array-backed host, shared guest state, trace preparation.

The engine runs every policy of a run together ("lockstep", docs/semantics.md §6).  What does not
depend on the policy while the policies agree — guest page-table memory, the vCPUs' TLBs —
lives once in a `Shared` object used by a *group* of policies; what does (stage 2, host pages,
dirty log, userfaultfd, counts) lives in each policy's `ArrayHost`.  The reference's own code
(model.reference.Vm, model.host.Host) runs on this state through the small interfaces it
already uses (dict-like page maps, `read_desc`/`write_desc`, the per-vCPU TLB mapping), so the
scalar path is the executable spec itself.

When a group runs reference code (an event, or an access the vectorised path leaves alone) it
runs it once per policy on a journal of the shared state; policies whose journals differ stop
sharing (the group splits and each part gets a copy).
"""
from __future__ import annotations

import bisect
import copy

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_SIZE, HOST_PAGE
from .host import BLOCK_2M, S2_RO, S2_RW, S2_UNMAPPED, Host
from .host_ops import (HOST_KSM, HOST_MISSING, HOST_OPS, HOST_RW, HOST_SWAPPED, HOST_WP,
                       HOST_ZERO, maps_writable)
from .policies import POLICIES
from .reference import TlbEntry, Vm
from .results import PolicyResult
from .scenario import Memslot, Scenario
from .stage1 import build_tables
from .trace import KINDS, Trace
from .trace_stream import repeat_period

PAGE_MASK = ~(HOST_PAGE - 1)
DESCS_PER_PAGE = HOST_PAGE // DESC_SIZE
# host page-state codes (model/host_ops.py), short names for the vectorised code
H_MISSING, H_RW, H_ZERO, H_WP, H_SWAPPED, H_KSM = (HOST_MISSING, HOST_RW, HOST_ZERO, HOST_WP,
                                                   HOST_SWAPPED, HOST_KSM)
BLOCK_PAGES = BLOCK_2M // HOST_PAGE
MUTABLE_BITS = DESC_AF | DESC_AP2      # bits hardware updates change; not the walk's shape
# userfaultfd mode of a slot, as a code (Base.pattr's top bits, engine events)
UFFD_NONE, UFFD_MISSING, UFFD_MINOR, UFFD_WP = 0, 1, 2, 3
UFFD_CODES = {"none": UFFD_NONE, "missing": UFFD_MISSING, "minor": UFFD_MINOR, "wp": UFFD_WP}
# page attributes, packed per page index (Base.pattr): a fault there leaves the vectorised
# path (outside every slot, read-only slot), read-only slot, uffd resolves the
# whole slot, page-table slot, and the slot's uffd mode code in the top bits
PA_HARD, PA_RO, PA_RSLOT, PA_PT, PA_UFFD_SHIFT = 1, 2, 4, 8, 4
U64 = np.uint64
# access classes of the vectorised path: load-like, store, instruction fetch, AT
CLS_L, CLS_S, CLS_X, CLS_A = 0, 1, 2, 3
_CLASS = {"read64": CLS_L, "ld_preidx": CLS_L, "write64": CLS_S, "st_preidx": CLS_S,
          "cas": CLS_S, "dc_zva": CLS_S, "exec": CLS_X, "at": CLS_A}
CLASS_OF_KIND = np.array([_CLASS[k] for k in KINDS], dtype=np.int8)


# ---- page index ------------------------------------------------------------------------
class SlotIndex:
    """Maps page IPAs of every memslot to one concatenated array index; pages outside every
    slot map to the sentinel index `total` (vectorised) or -1 (scalar)."""

    def __init__(self, slots: tuple[Memslot, ...]):
        order = sorted(slots, key=lambda s: s.ipa)
        self.order = order
        self.bases = [s.ipa for s in order]
        self.npages = [s.pages for s in order]
        self.starts = [int(x) for x in np.cumsum([0] + self.npages[:-1])]
        self.total = int(sum(self.npages))
        self.start_of = {s.name: self.starts[i] for i, s in enumerate(order)}
        self._bases = np.array(self.bases, dtype=np.int64)
        self._npages = np.array(self.npages, dtype=np.int64)
        self._starts = np.array(self.starts, dtype=np.int64)
        self.lo = self.bases[0]
        span = (max(s.end for s in order) - self.lo) >> 12
        self.table = None
        if span <= (1 << 24):
            # one cell per page from the lowest slot's first page, with a `total` cell on
            # each side: index_v clips page numbers into it
            t = np.full(span + 2, self.total, dtype=np.int32)
            for b, n, st in zip(self.bases, self.npages, self.starts):
                o = ((b - self.lo) >> 12) + 1
                t[o:o + n] = np.arange(st, st + n)
            self.table = t

    def index(self, page: int) -> int:
        i = bisect.bisect_right(self.bases, page) - 1
        if i < 0:
            return -1
        off = (page - self.bases[i]) >> 12
        return self.starts[i] + off if off < self.npages[i] else -1

    def index_v(self, pages: np.ndarray) -> np.ndarray:
        """int32 index of every page IPA (int64 array); `total` outside every slot."""
        if self.table is not None:
            o = pages - np.int64(self.lo - HOST_PAGE)
            o >>= 12
            return np.take(self.table, o, mode="clip")
        i = np.searchsorted(self._bases, pages, side="right") - 1
        ic = np.maximum(i, 0)
        off = (pages - self._bases[ic]) >> 12
        ok = (i >= 0) & (off >= 0) & (off < self._npages[ic])
        return np.where(ok, self._starts[ic] + off, self.total).astype(np.int32)

    def ipa_of(self, g: int) -> int:
        i = bisect.bisect_right(self.starts, g) - 1
        return self.bases[i] + (g - self.starts[i]) * HOST_PAGE


class ArrayMap:
    """dict-like view (get, [], []=, pop, in) of one value per slot page; `empty` = absent."""

    def __init__(self, idx: SlotIndex, dtype, empty, encode=None, decode=None):
        self.idx = idx
        self.a = np.full(idx.total + 1, empty, dtype=dtype)   # last cell: outside slots
        self.empty = empty
        self.enc = encode or (lambda v: v)
        self.dec = decode

    def get(self, page, default=None):
        i = self.idx.index(page)
        if i < 0:
            return default
        v = self.a.item(i)
        if v == self.empty:
            return default
        return v if self.dec is None else self.dec(v)

    def __getitem__(self, page):
        v = self.get(page)
        if v is None:
            raise KeyError(page)
        return v

    def __setitem__(self, page, value):
        i = self.idx.index(page)
        if i < 0:
            raise KeyError(f"page {page:#x} is in no memslot")
        self.a[i] = self.enc(value)

    def pop(self, page, default=None):
        v = self.get(page)
        if v is None:
            return default
        self.a[self.idx.index(page)] = self.empty
        return v

    def __contains__(self, page) -> bool:
        i = self.idx.index(page)
        return i >= 0 and self.a.item(i) != self.empty


class BitSet:
    """A set of page indices of one slot as a bool array (add, in, iteration, len); may be a
    view into a larger array."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def add(self, i: int) -> None:
        self.a[i] = True

    def __contains__(self, i) -> bool:
        return bool(self.a[i])

    def __iter__(self):
        return iter(np.flatnonzero(self.a).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.a))


# ---- trace preparation ----------------------------------------------------------------------
class TracePrep:
    """Per-trace facts shared by every policy: the 4 KiB VA pages of the trace (`vpages`), the
    *sub-keys* (dense ids of the (vCPU, 4 KiB VA page) pairs of the trace) with their VA page
    id, vCPU and TLB key, and the TLB keys: dense ids of the (vCPU, granule VA page) pairs
    (`tkey_codes` = vcpu * n_gpages + granule page id, sorted).

    `ci(a, b)` gives accesses [a, b)'s index 4 * sub-key + access class (CLASS_OF_KIND).  When
    the trace's VA span is small enough for a table of page ids (the usual case) it is
    computed from the trace on demand (nothing stored per access); otherwise it is computed
    once and stored (4 bytes per access)."""

    CHUNK = 1 << 16
    TABLE_SPAN = 1 << 22              # a page-id table over the VA span up to max(this, 2n)
    TABLE_SPAN_MAX = 1 << 27          # ... and never more
    PAIR_TABLE_MAX = 1 << 26          # (vCPU, page) pairs numbered through a table up to this

    def __init__(self, scn: Scenario, trace: Trace):
        n = len(trace)
        self.period = repeat_period(trace)
        if self.period is not None and self.period < n:
            # a window served again (model.trace_stream.TiledTrace): its repeats hold no page
            # or (vCPU, page) pair the first pass does not; only that pass is scanned
            trace = Trace(trace.vcpu.base, trace.va.base, trace.kind.base)
            n = len(trace)
        else:
            self.period = None
        self.n = n
        self.trace = trace
        self.n_vcpu = int(trace.vcpu.max()) + 1 if n else 1
        self.table = None                 # VA page (- lo) -> page id
        self.pair_rank = None             # vcpu * nsub + page id -> sub-key (several vCPUs)
        self._ci = None                   # stored ci (no table)
        if n == 0:
            lo = hi = 0
        else:
            lo, hi = int(trace.va.min()) >> 12, int(trace.va.max()) >> 12
        self.lo = lo
        if (n and hi - lo + 1 <= max(self.TABLE_SPAN, 2 * n)
                and hi - lo + 1 <= self.TABLE_SPAN_MAX):
            vpages, skey = self._table_pages(lo, hi), None
        elif n:
            vpages, skey = self._sorted_pages()
        else:
            vpages, skey = np.zeros(0, dtype=U64), np.zeros(0, dtype=np.int32)
        self.vpages = vpages
        self.nsub = len(vpages)
        skey = self._sub_keys(skey)
        self.nskeys = len(self.sk_vp)
        if skey is not None:
            self._store_ci(skey)
        self._tlb_keys(scn.machine.geometry)

    def _table_pages(self, lo: int, hi: int) -> np.ndarray:
        """Number the trace's 4 KiB VA pages in order of first appearance through a table
        over the span (int16 while the ids fit: half the cache footprint); their VAs."""
        n, ch = self.n, self.CHUNK
        table = np.full(hi - lo + 1, -1, dtype=np.int16)
        found = []
        nxt = 0
        for a in range(0, n, ch):
            v = self._vpn(a, a + ch)
            new = np.take(table, v) < 0
            if new.any():
                nv = np.unique(np.compress(new, v))
                if nxt + len(nv) > 32000 and table.dtype == np.int16:
                    table = table.astype(np.int32)
                table[nv] = np.arange(nxt, nxt + len(nv))
                nxt += len(nv)
                found.append(nv)
        self.table = table
        return (np.concatenate(found).astype(U64) + U64(lo)) << U64(12)

    def _sorted_pages(self) -> tuple[np.ndarray, np.ndarray]:
        """The trace's 4 KiB VA pages sorted (a span too wide for a table), and each
        access's page id (stored)."""
        n, ch = self.n, self.CHUNK
        parts = [np.unique(self._vpn(a, a + ch)) for a in range(0, n, ch)]
        uniq = np.unique(np.concatenate(parts))
        skey = np.zeros(n, dtype=np.int32)
        for a in range(0, n, ch):
            skey[a:a + ch] = np.searchsorted(uniq, self._vpn(a, a + ch))
        return (uniq.astype(U64) + U64(self.lo)) << U64(12), skey

    def _vp_ids(self, a: int, skey) -> np.ndarray:
        """Page ids of accesses [a, a + CHUNK)."""
        if skey is not None:
            return skey[a:a + self.CHUNK].astype(np.int64)
        return np.take(self.table, self._vpn(a, a + self.CHUNK)).astype(np.int64)

    def _sub_keys(self, skey):
        """The sub-keys: (vCPU, page) pairs (`sk_vp`, `sk_vcpu`); with several vCPUs, each
        access's sub-key through `pair_rank` (table) or stored in skey.  Returns skey (None:
        computed on demand)."""
        n, ch, nsub = self.n, self.CHUNK, self.nsub
        trace = self.trace
        if self.n_vcpu == 1 or n == 0:
            self.sk_vp = np.arange(nsub, dtype=np.int32)
            self.sk_vcpu = np.zeros(nsub, dtype=np.int32)
            return skey
        nv = self.n_vcpu
        if nv * nsub <= self.PAIR_TABLE_MAX:
            present = np.zeros(nv * nsub, dtype=bool)
            for a in range(0, n, ch):
                pair = trace.vcpu[a:a + ch].astype(np.int64) * nsub + self._vp_ids(a, skey)
                present[pair] = True
            rank = np.cumsum(present, dtype=np.int32)
            rank -= 1
            codes = np.flatnonzero(present)
            del present
            if skey is None:
                self.pair_rank = rank
            else:
                for a in range(0, n, ch):
                    skey[a:a + ch] = rank[trace.vcpu[a:a + ch].astype(np.int64) * nsub
                                          + self._vp_ids(a, skey)]
                del rank
        else:
            parts = [np.unique(trace.vcpu[a:a + ch].astype(np.int64) * nsub
                               + self._vp_ids(a, skey)) for a in range(0, n, ch)]
            codes = np.unique(np.concatenate(parts))
            if skey is None:
                skey = np.zeros(n, dtype=np.int32)
                for a in range(0, n, ch):
                    skey[a:a + ch] = np.take(self.table, self._vpn(a, a + ch))
            for a in range(0, n, ch):
                skey[a:a + ch] = np.searchsorted(
                    codes, trace.vcpu[a:a + ch].astype(np.int64) * nsub + skey[a:a + ch])
            self.table = None
        self.sk_vp = (codes % nsub).astype(np.int32)
        self.sk_vcpu = (codes // nsub).astype(np.int32)
        return skey

    def _store_ci(self, skey: np.ndarray) -> None:
        """Store 4 * sub-key + class per access (in skey's memory)."""
        if 4 * self.nskeys >= (1 << 31):
            skey = skey.astype(np.int64)
        for a in range(0, self.n, self.CHUNK):
            sk = skey[a:a + self.CHUNK]
            sk <<= 2
            sk += CLASS_OF_KIND[self.trace.kind[a:a + self.CHUNK]]
        self._ci = skey

    def _tlb_keys(self, geo) -> None:
        """Granule pages (the TLB's unit) and TLB keys."""
        gsh = U64(geo.granule_shift)
        gp = (self.vpages >> gsh) << gsh
        self.gpages, self.vp_gid = np.unique(gp, return_inverse=True)
        self.vp_gid = self.vp_gid.astype(np.int32).reshape(-1)
        ngp = max(1, len(self.gpages))
        self.n_gpages = ngp
        tcode = self.sk_vcpu.astype(np.int64) * ngp + self.vp_gid[self.sk_vp]
        self.tkey_codes, inv = np.unique(tcode, return_inverse=True)
        self.sk_tkey = inv.astype(np.int32).reshape(-1)
        self.ntkeys = max(1, len(self.tkey_codes))
        self._tkeys: dict[tuple[int, int], int] = {}

    def _vpn(self, a: int, b: int) -> np.ndarray:
        """4 KiB VA page number - lo of accesses [a, b), as int64."""
        v = self.trace.va[a:b] - U64(self.lo << 12)
        v >>= U64(12)
        return v.view(np.int64)

    def ci(self, a: int, b: int) -> np.ndarray:
        """4 * sub-key + access class of accesses [a, b) (intp)."""
        P = self.period
        if P is None or b <= P:
            return self._ci_rows(a, b)
        a0 = a % P                     # a repeated window: the same rows of the first pass
        if a0 + (b - a) <= P:
            return self._ci_rows(a0, a0 + b - a)
        parts, left = [self._ci_rows(a0, P)], b - a - (P - a0)
        while left > 0:
            parts.append(self._ci_rows(0, min(P, left)))
            left -= P
        return np.concatenate(parts)

    def present_ci(self) -> np.ndarray:
        """Every ci value of the scanned trace (a repeated window's first pass), ascending:
        what one repetition asks of the state."""
        if getattr(self, "_present", None) is None:
            mark = np.zeros(4 * max(1, self.nskeys), dtype=bool)
            for a in range(0, self.n, self.CHUNK):
                mark[self._ci_rows(a, min(self.n, a + self.CHUNK))] = True
            self._present = np.flatnonzero(mark)
        return self._present

    def first_after(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """A repeated window from access x on: the offset (from x, in [0, period)) of the
        first occurrence of each present ci, sorted by offset, and those ci.  From an index
        built once: every access's position sorted by (ci, position)."""
        P = self.period
        if getattr(self, "_occ", None) is None:
            ci = np.concatenate([self._ci_rows(a, min(self.n, a + self.CHUNK))
                                 for a in range(0, self.n, self.CHUNK)]).astype(np.int64)
            order = np.argsort(ci, kind="stable")
            self._occ = ci[order] * P + order                  # ascending
            pres = self.present_ci()
            self._seg = np.searchsorted(self._occ, pres * P)    # each ci's first entry
        pres, occ = self.present_ci(), self._occ
        x0 = x % P
        k = np.searchsorted(occ, pres * P + x0)
        nxt = np.append(self._seg[1:], len(occ))
        inside = k < nxt                                        # an occurrence at >= x0
        at = np.where(inside, occ[np.minimum(k, len(occ) - 1)], occ[self._seg] + P) - pres * P
        off = at - x0
        order = np.argsort(off, kind="stable")
        return off[order], pres[order]

    def _ci_rows(self, a: int, b: int) -> np.ndarray:
        """ci of rows [a, b) of the scanned trace (the first pass of a repeated one)."""
        if self._ci is not None:
            return self._ci[a:b].astype(np.intp)
        ids = np.take(self.table, self._vpn(a, b)).astype(np.intp)
        if self.pair_rank is not None:
            ids = np.take(self.pair_rank,
                          self.trace.vcpu[a:b].astype(np.intp) * self.nsub + ids).astype(np.intp)
        ids <<= 2
        ids += CLASS_OF_KIND[self.trace.kind[a:b]]
        return ids

    def tkey(self, vcpu: int, va_page: int) -> int:
        """TLB key of (vcpu, granule VA page), or -1 when the trace never uses it."""
        k = self._tkeys.get((vcpu, va_page))
        if k is None:
            k = self._tkeys[(vcpu, va_page)] = self._tkey(vcpu, va_page)
        return k

    def _tkey(self, vcpu: int, va_page: int) -> int:
        g = int(np.searchsorted(self.gpages, va_page))
        if g >= len(self.gpages) or int(self.gpages[g]) != va_page:
            return -1
        c = vcpu * self.n_gpages + g
        k = int(np.searchsorted(self.tkey_codes, c))
        return k if k < len(self.tkey_codes) and int(self.tkey_codes[k]) == c else -1

    def tkeys_of_page(self, va_page: int) -> list[int]:
        g = int(np.searchsorted(self.gpages, va_page))
        if g >= len(self.gpages) or int(self.gpages[g]) != va_page:
            return []
        out = []
        for v in range(self.n_vcpu):
            c = v * self.n_gpages + g
            k = int(np.searchsorted(self.tkey_codes, c))
            if k < len(self.tkey_codes) and int(self.tkey_codes[k]) == c:
                out.append(k)
        return out


# ---- per-run data shared by every policy ------------------------------------------------------
class Base:
    """Everything of a run that no policy changes: scenario, trace, geometry, the initial
    tables, slot attributes per page, the trace preparation, pools of page-number ints."""

    def __init__(self, scn: Scenario, trace: Trace):
        self.scn, self.trace = scn, trace
        self.geo = scn.machine.geometry
        self.tables = build_tables(scn)
        self._initial = None
        self.idx = idx = SlotIndex(scn.memslots)
        pt = scn.slot(scn.guest.pt_slot)
        self.pt = pt
        self.pt_base, self.pt_end = pt.ipa, pt.end
        self.nptd = pt.pages * DESCS_PER_PAGE
        d = self.tables.descriptors
        addr = np.fromiter(d.keys(), dtype=np.int64, count=len(d))
        val = np.fromiter(d.values(), dtype=U64, count=len(d))
        inpt = (addr >= pt.ipa) & (addr < pt.end)
        offs = (addr[inpt] - pt.ipa) >> 3
        order = np.argsort(offs, kind="stable")
        self.init_off = offs[order]
        self.init_val = val[inpt][order]
        # slot attributes per page index (the sentinel `total` belongs to no slot)
        T = idx.total + 1
        self.slot_no = np.full(T, -1, dtype=np.int16)
        self.slots = list(idx.order)
        for k, s in enumerate(self.slots):
            st = idx.start_of[s.name]
            self.slot_no[st:st + s.pages] = k
        nos = len(self.slots)

        def per_slot(f, dtype=bool):
            return np.array([f(s) for s in self.slots] + [0], dtype=dtype)[self.slot_no]
        self.ro = per_slot(lambda s: s.readonly)
        self.block_backing = per_slot(lambda s: s.backing in ("anon_thp", "hugetlb"))
        self.uffd_code = per_slot(lambda s: UFFD_CODES[s.uffd], np.int8)
        self.resolve_slot = per_slot(lambda s: s.uffd_resolve == "slot")
        self.is_pt = per_slot(lambda s: s.name == pt.name)
        self.outside = self.slot_no < 0
        # block-backed slots: hard only while a fault there may involve a block (not
        # logging, or the page mapped by a block): engine_chunk._faults decides per policy
        self.pattr = ((self.outside | self.ro) * PA_HARD | self.ro * PA_RO
                      | self.resolve_slot * PA_RSLOT | self.is_pt * PA_PT
                      | self.uffd_code.astype(np.int64) << PA_UFFD_SHIFT).astype(np.uint8)
        self.slot_start = np.array([idx.start_of[s.name] for s in self.slots] + [0],
                                   dtype=np.int64)
        self.slot_ipa = np.array([s.ipa for s in self.slots] + [0], dtype=np.int64)
        self.slot_end = np.array([s.end for s in self.slots] + [0], dtype=np.int64)
        self.nslots = nos
        self.prep = TracePrep(scn, trace)
        self._pool = np.zeros(0, dtype=object)
        self._recent: list[tuple[np.ndarray, list]] = []

    def block_of(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The 2 MiB block of each page index `g` (in a slot): its first page index, its IPA,
        and whether it lies inside the slot (Host.map_translation's check)."""
        k = self.slot_no[g].astype(np.int64)
        start, sipa = self.slot_start[k], self.slot_ipa[k]
        ipa = (sipa + (g - start) * HOST_PAGE) & ~np.int64(BLOCK_2M - 1)
        return (start + (ipa - sipa) // HOST_PAGE, ipa,
                (ipa >= sipa) & (ipa + BLOCK_2M <= self.slot_end[k]))

    @property
    def initial(self) -> dict[int, dict[int, int]]:
        """Initial content by page, as model.reference.Vm builds it (Host.initial)."""
        if self._initial is None:
            initial: dict[int, dict[int, int]] = {}
            for addr, v in self.tables.descriptors.items():
                initial.setdefault(addr & PAGE_MASK, {})[addr] = v
            self._initial = initial
        return self._initial

    def int_list(self, a: np.ndarray) -> list[int]:
        """`a.tolist()` whose ints are shared objects (page lists of many harvests and
        policies hold references to one int per page, not an int each); equal lists made
        recently are returned as the same list object."""
        for arr, lst in self._recent:
            if len(arr) == len(a) and np.array_equal(arr, a):
                return lst
        n = int(a.max()) + 1 if len(a) else 0
        if n > len(self._pool):
            self._pool = np.array(range(max(n, 2 * len(self._pool))), dtype=object)
        lst = self._pool[a].tolist()
        self._recent.insert(0, (a, lst))
        del self._recent[8:]
        return lst

    def initial_page(self, o0: int) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and values of the initial descriptors of the page at offset o0."""
        lo, hi = np.searchsorted(self.init_off, [o0, o0 + DESCS_PER_PAGE])
        return self.init_off[lo:hi], self.init_val[lo:hi]


# ---- page-table memory ------------------------------------------------------------------
class DescMemory:
    """The page-table slot's descriptors by 8-byte offset, with O(1) reads: a row of 512
    descriptors for each slot page that ever held a non-zero one (`row` of a page: 0, a
    row of zeros that is never written, for the others).  Memory is that of the tables
    the guest uses (4 KiB each), whatever the slot's size."""

    def __init__(self, npages: int, offs: np.ndarray, vals: np.ndarray, base_ipa: int = 0,
                 oa_mask: int = 0):
        self.npages = int(npages)
        self.base_ipa, self.oa_mask = int(base_ipa), int(oa_mask)
        self._next = None                 # next_rows(), while valid
        self.row = np.zeros(self.npages + 1, dtype=np.int32)   # last cell: outside the slot
        pages = np.unique(offs >> 9)
        self.nrows = 1 + len(pages)
        self.row[pages] = np.arange(1, self.nrows, dtype=np.int32)
        self.mem = np.zeros(max(2, self.nrows) * DESCS_PER_PAGE, dtype=U64)
        if len(offs):
            self.mem[self.index_v(offs)] = vals

    def copy(self) -> "DescMemory":
        c = copy.copy(self)
        c.row, c.mem = self.row.copy(), self.mem.copy()
        c._next = None
        return c

    # the walker's index (engine_walk's fast path) -----------------------------------------
    def fast_worthwhile(self, n_walks: int) -> bool:
        """Is building next_rows() for n walks cheaper than walking them level by level?"""
        return self.oa_mask != 0 and (self._next is not None
                                      or 16 * n_walks >= self.nrows * DESCS_PER_PAGE)

    def next_rows(self) -> np.ndarray:
        """Per position in `mem`: for a descriptor with bits[1:0] = 0b11 (a table at levels
        0-2: AArch64.S1Walk follows its output address) whose output address is a page of
        the slot with a row, that row's first position (row << 9); else 0 (the zero row:
        a walk that goes on from there reads zeros).  Built on demand, dropped by writes
        that can change it (not by AF/AP[2] updates)."""
        if self._next is None:
            m = self.mem[:self.nrows * DESCS_PER_PAGE].view(np.int64)
            tgt = (m & np.int64(self.oa_mask)) - np.int64(self.base_ipa)
            tgt >>= 12
            ok = (m & 3) == 3
            ok &= (tgt >= 0) & (tgt < self.npages)
            nxt = np.take(self.row, np.where(ok, tgt, self.npages)).astype(np.int64)
            nxt <<= 9
            self._next = nxt
        return self._next

    def page_of_row(self) -> np.ndarray:
        """Slot page of each row (0 for the zero row)."""
        pr = np.zeros(self.nrows, dtype=np.int64)
        pages = np.flatnonzero(self.row[:-1])
        pr[self.row[pages]] = pages
        return pr

    def index_v(self, offs: np.ndarray) -> np.ndarray:
        """Position in `mem` of each offset (int64 array inside the slot)."""
        i = np.take(self.row, offs >> 9).astype(np.int64)
        i <<= 9
        i |= offs & (DESCS_PER_PAGE - 1)
        return i

    def read(self, off: int) -> int:
        if not 0 <= off < self.npages * DESCS_PER_PAGE:
            return 0
        return self.mem.item((self.row.item(off >> 9) << 9) | (off & 511))

    def read_v(self, offs: np.ndarray) -> np.ndarray:
        """Descriptors at int64 offsets (0 where none, and outside the slot)."""
        p = offs >> 9
        out = (p < 0) | (p >= self.npages)
        if out.any():
            p = np.where(out, self.npages, p)
        i = np.take(self.row, p).astype(np.int64)
        i <<= 9
        i |= offs & (DESCS_PER_PAGE - 1)
        return np.take(self.mem, i)

    def rows_for(self, pages: np.ndarray) -> None:
        """Give these slot pages a row (ascending unique page numbers)."""
        new = pages[self.row[pages] == 0]
        if not len(new):
            return
        need = (self.nrows + len(new)) * DESCS_PER_PAGE
        if need > len(self.mem):
            grown = np.zeros(max(need, 2 * len(self.mem)), dtype=U64)
            grown[:len(self.mem)] = self.mem
            self.mem = grown
        self.row[new] = np.arange(self.nrows, self.nrows + len(new), dtype=np.int32)
        self.nrows += len(new)
        self._next = None

    def write(self, off: int, new: int) -> None:
        if new and not self.row.item(off >> 9):
            self.rows_for(np.array([off >> 9]))
        r = self.row.item(off >> 9)
        if r:
            self.mem[(r << 9) | (off & 511)] = new
            self._next = None

    def write_v(self, offs: np.ndarray, new: np.ndarray) -> None:
        """Distinct offsets `offs` get `new` (uint64)."""
        nz = new != 0
        if nz.any():
            self.rows_for(np.unique(offs[nz] >> 9))
        i = self.index_v(offs)
        keep = i >= DESCS_PER_PAGE                # not the zero row (there new is 0)
        self.mem[i[keep]] = new[keep]
        self._next = None

    def update_bits(self, offs: np.ndarray, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Set and clear bits of descriptors that exist (non-zero ones)."""
        i = self.index_v(offs)
        i = i[i >= DESCS_PER_PAGE]                # (a zero descriptor has no bits to keep)
        if set_bits:
            self.mem[i] |= U64(set_bits)
        if clear_bits:
            self.mem[i] &= ~U64(clear_bits)

    def page(self, o0: int) -> np.ndarray:
        """The 512 descriptors of the page at offset o0 (a view; the zero row, also for a page
        outside the slot: read only)."""
        r = self.row.item(o0 >> 9) if 0 <= o0 >> 9 < self.npages else 0
        return self.mem[r << 9:(r + 1) << 9]

    def set_page(self, o0: int, vals: np.ndarray) -> None:
        if not 0 <= o0 >> 9 < self.npages:
            return
        if vals.any() and not self.row.item(o0 >> 9):
            self.rows_for(np.array([o0 >> 9]))
        r = self.row.item(o0 >> 9)
        if r:
            self.mem[r << 9:(r + 1) << 9] = vals
            self._next = None

    def clear_page(self, o0: int) -> bool:
        """Zero the page at offset o0; whether it held a non-zero descriptor."""
        row = self.page(o0)
        if not row.any():
            return False
        row[:] = 0
        self._next = None
        return True

    def nonzero(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets (ascending) and values of every non-zero descriptor."""
        pages = np.flatnonzero(self.row[:-1])
        if not len(pages):
            return np.zeros(0, np.int64), np.zeros(0, U64)
        offs = (pages[:, None] * DESCS_PER_PAGE + np.arange(DESCS_PER_PAGE)).reshape(-1)
        v = self.read_v(offs)
        return offs[v != 0], v[v != 0]


# ---- state shared by a group of policies ---------------------------------------------------
class Shared:
    """Guest page-table memory and TLBs of a group of policies that agree on them.

    Page-table memory: the page-table slot's descriptors by 8-byte offset in the slot
    (`pt`, a DescMemory: O(1) reads).

    TLB: per TLB key (vCPU, granule VA page) a state (0 invalid, 1 clean entry: AP[2] set,
    2 dirty entry), the cached leaf descriptor without its AF and AP[2] bits, and its level
    (what Vm._attempt uses on a hit: PXN, output address, level).

    `version` changes whenever the shape of the tables changes (any descriptor bit other than
    AF and AP[2], page content replaced), so walk caches know when to recompute; `changed`
    collects the offsets of descriptors reference code wrote (`take_changes`).  `journal`,
    when a list, records every change with its undo information."""

    def __init__(self, base: Base, populated_pt: bool):
        self.base = base
        vals = base.init_val if populated_pt else np.zeros(len(base.init_off), U64)
        self.pt = DescMemory(base.pt.pages, base.init_off, vals, base.pt_base,
                             base.geo.oa_mask)
        nk = base.prep.ntkeys
        self.tst = np.zeros(nk, dtype=np.int8)
        self.tleaf = np.zeros(nk, dtype=U64)
        self.tlvl = np.zeros(nk, dtype=np.int8)
        self.fills: list[np.ndarray] = []        # TLB keys the vectorised path filled since
                                                 # the last sync_tlb (their cached leaf)
        self.version = 0                         # table shape
        self.changed: list[int] = []             # descriptor offsets written
        self.changed_pages: list[int] = []       # page offsets zeroed or restored
        self.journal: list | None = None
        self.walk = None                         # engine_chunk.WalkCache of this content

    def take_changes(self) -> np.ndarray | None:
        """Offsets of the descriptors reference code may have changed since the last call
        (None: none)."""
        if not self.changed and not self.changed_pages:
            return None
        parts = [np.array(self.changed, dtype=np.int64)]
        for o0 in set(self.changed_pages):
            parts.append(np.arange(o0, o0 + DESCS_PER_PAGE, dtype=np.int64))
        self.changed, self.changed_pages = [], []
        return np.unique(np.concatenate(parts))

    def sync_tlb(self) -> None:
        """Store the cached leaf and level of the entries the vectorised path filled (they
        are the current walk cache's)."""
        if self.fills:
            k = np.concatenate(self.fills) if len(self.fills) > 1 else self.fills[0]
            wc = self.walk
            v = wc.tkey_vp[k]
            self.tleaf[k] = wc.leafm[v]
            self.tlvl[k] = wc.level[v]
            self.fills = []

    def copy(self) -> "Shared":
        self.sync_tlb()
        c = copy.copy(self)
        c.pt = self.pt.copy()
        c.tst, c.tleaf, c.tlvl = self.tst.copy(), self.tleaf.copy(), self.tlvl.copy()
        c.fills = []
        c.journal = None
        c.walk = None
        c.changed, c.changed_pages = [], []
        return c

    # descriptors ------------------------------------------------------------------------
    def read(self, off: int) -> int:
        return self.pt.read(off)

    def read_v(self, offs: np.ndarray) -> np.ndarray:
        """Descriptors at int64 offsets (0 where none)."""
        return self.pt.read_v(offs)

    def update_bits(self, offs: np.ndarray, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Hardware updates (AF, AP[2]) of existing descriptors (the vectorised path)."""
        self.pt.update_bits(offs, set_bits, clear_bits)

    def write_desc(self, off: int, new: int) -> None:
        old = self.read(off)
        if self.journal is not None:
            self.journal.append(("d", off, new, old))
        if new or old:
            self.pt.write(off, new)
        self.changed.append(off)
        if (old ^ new) & ~MUTABLE_BITS:
            self.version += 1

    def write_descs(self, offs: np.ndarray, new: np.ndarray) -> None:
        """write_desc of many distinct offsets at once (bulk guest-kernel work: no journal)."""
        if self.journal is not None:
            raise AssertionError("write_descs while a journal records")
        if not len(offs):
            return
        new = new.astype(U64)
        old = self.read_v(offs)
        self.pt.write_v(offs, new)
        self.changed.extend(offs.tolist())
        if np.any((old ^ new) & U64(~MUTABLE_BITS & (2**64 - 1))):
            self.version += 1

    def zero_pages(self, o0s: np.ndarray) -> None:
        """zero_page of many page offsets at once (no journal)."""
        if self.journal is not None:
            raise AssertionError("zero_pages while a journal records")
        for o0 in o0s.tolist():
            if self.pt.clear_page(o0):
                self.version += 1
            self.changed_pages.append(o0)

    def zero_page(self, o0: int) -> None:
        if self.journal is not None:
            self.journal.append(("z", o0, None, self.pt.page(o0).copy()))
        if self.pt.clear_page(o0):
            self.version += 1
        self.changed_pages.append(o0)

    def restore_page(self, o0: int) -> None:
        old = self.pt.page(o0).copy()
        if self.journal is not None:
            self.journal.append(("r", o0, None, old))
        new = np.zeros(DESCS_PER_PAGE, dtype=U64)
        off, val = self.base.initial_page(o0)
        new[off - o0] = val
        self.pt.set_page(o0, new)
        self.changed_pages.append(o0)
        if not np.array_equal(old, new):
            self.version += 1

    # TLB ------------------------------------------------------------------------------------
    def tlb_set(self, k: int, st: int, leafm: int, lvl: int) -> None:
        if self.journal is not None:
            self.journal.append(("t", k, (st, leafm, lvl),
                                 (int(self.tst[k]), int(self.tleaf[k]), int(self.tlvl[k]))))
        self.tst[k] = st
        self.tleaf[k] = leafm
        self.tlvl[k] = lvl

    def tlb_flush(self) -> None:
        if self.journal is not None:
            self.journal.append(("f", None, None, self.tst.copy()))
        self.tst[:] = 0

    # journal --------------------------------------------------------------------------------
    def begin(self) -> None:
        self.journal = []
        self._version0 = self.version

    def end(self) -> list:
        j, self.journal = self.journal, None
        return j

    def undo(self, j: list) -> None:
        for op, a, _new, old in reversed(j):
            if op == "d":
                self.pt.write(a, old)
            elif op in ("z", "r"):
                self.pt.set_page(a, old)
            elif op == "t":
                self.tst[a], self.tleaf[a], self.tlvl[a] = old
            else:
                self.tst[:] = old
        self.version = self._version0
        for op, a, _new, _old in j:
            if op == "d":
                self.changed.append(a)
            elif op in ("z", "r"):
                self.changed_pages.append(a)

    def replay(self, j: list) -> None:
        for op, a, new, _old in j:
            if op == "d":
                self.write_desc(a, new)
            elif op == "z":
                self.zero_page(a)
            elif op == "r":
                self.restore_page(a)
            elif op == "t":
                self.tlb_set(a, *new)
            else:
                self.tlb_flush()

    @staticmethod
    def signature(j: list) -> tuple:
        return tuple((op, a, new) for op, a, new, _old in j)


# ---- the host of one policy -----------------------------------------------------------------
class ArrayHost(Host):
    """model.host.Host with array-backed state; KVM's logic is inherited unchanged, the bulk
    host operations (harvest, write-protect, unmap, punch_hole) are vectorised versions of
    the same rules."""

    def __init__(self, base: Base, policy, result: PolicyResult, vm: "FastVm"):
        # Host.__init__ with arrays: the state every host has (Host._init_host), then the
        # page-indexed state as slices of arrays
        self._init_host(base.scn, policy, result)
        self.base = base
        self.vm = vm
        self.content: dict = {}                 # unused: content lives in Shared
        self.idx = idx = base.idx
        self.s2 = ArrayMap(idx, np.int8, S2_UNMAPPED)
        self.s2_block = ArrayMap(idx, np.int64, -1)
        self.host = ArrayMap(idx, np.int8, -1)
        self.pt_base, self.pt_end = base.pt_base, base.pt_end
        T = idx.total + 1
        self.dirty_all = np.zeros(T, dtype=bool)
        self.written_all = np.zeros(T, dtype=bool)
        self.s1ptw_tf_all = np.zeros(T, dtype=bool)
        self.s1ptw_tf_written_all = np.zeros(T, dtype=bool)
        self.dirty: dict[str, BitSet] = {}
        self.written: dict[str, BitSet] = {}
        self.s1ptw_tf: dict[str, BitSet] = {}
        self.s1ptw_tf_written: dict[str, BitSet] = {}
        for s in base.scn.memslots:
            sl = self._sl(s)
            self.dirty[s.name] = BitSet(self.dirty_all[sl])
            self.written[s.name] = BitSet(self.written_all[sl])
            self.s1ptw_tf[s.name] = BitSet(self.s1ptw_tf_all[sl])
            self.s1ptw_tf_written[s.name] = BitSet(self.s1ptw_tf_written_all[sl])
            self.host.a[sl] = H_RW if s.populated else H_MISSING

    @property
    def initial(self):
        return self.base.initial

    def mark_written(self, g: np.ndarray) -> None:
        """Host.guest_write of the pages at global indices `g` (any order, repeats): written
        in the round, and after its walk fault for a page that took one in the round."""
        self.written_all[g] = True
        self.s1ptw_tf_written_all[g] |= self.s1ptw_tf_all[g]

    def _sl(self, s: Memslot) -> slice:
        st = self.idx.start_of[s.name]
        return slice(st, st + s.pages)

    def pageset(self, s: Memslot, full: bool = False):
        return BitSet(np.full(s.pages, full, dtype=bool))

    def logging_active_v(self) -> np.ndarray:
        """logging_active per slot number (+ False for the sentinel)."""
        return np.array([self.logging_active(s) for s in self.base.slots] + [False])

    # guest memory: only the page-table slot holds descriptors (docs/scenario-format.md layout rule)
    def _pt_off(self, addr: int) -> int:
        return (addr - self.pt_base) >> 3 if self.pt_base <= addr < self.pt_end else -1

    def read_desc(self, addr: int) -> int:
        o = self._pt_off(addr)
        return self.vm.shared.read(o) if o >= 0 else 0

    def write_desc(self, page: int, addr: int, value: int) -> None:
        o = self._pt_off(addr)
        if o < 0:
            raise AssertionError(f"descriptor write outside the page-table slot: {addr:#x}")
        self.vm.shared.write_desc(o, value)

    def zero_page(self, page: int) -> None:
        o = self._pt_off(page)
        if o >= 0:
            self.vm.shared.zero_page(o)

    def restore_page(self, page: int) -> None:
        o = self._pt_off(page)
        if o >= 0:
            self.vm.shared.restore_page(o)

    def desc_after_resolution(self, addr: int) -> int:
        page = addr & PAGE_MASK
        if self.host.get(page) == HOST_MISSING:
            s = self.scn.slot_of(page)
            if s is not None and s.uffd in ("missing", "minor"):
                o = self._pt_off(addr)
                if o < 0:
                    return 0
                i = int(np.searchsorted(self.base.init_off, o))
                if i < len(self.base.init_off) and int(self.base.init_off[i]) == o:
                    return int(self.base.init_val[i])
                return 0
            return 0
        return self.read_desc(addr)

    def flush_tlbs(self) -> None:
        self.tlb_flushes += 1
        self.pml.kick_all()
        self.vm.shared.tlb_flush()

    # vectorised bulk operations ------------------------------------------------------------
    def _gidx(self, pages) -> np.ndarray:
        p = np.fromiter(pages, dtype=np.int64) if not isinstance(pages, np.ndarray) else pages
        return self.idx.index_v(p)

    def _block_pages(self, g: np.ndarray) -> np.ndarray:
        """Indices of every page of the stage-2 blocks that map any of the pages `g`."""
        b = self.s2_block.a[g]
        inb = b >= 0
        if not inb.any():
            return np.zeros(0, dtype=np.int64)
        b = np.unique(b[inb])
        first = self.idx.index_v(b).astype(np.int64)     # a block lies inside one slot
        return (first[:, None] + np.arange(BLOCK_PAGES)).ravel()

    def unmap(self, pages) -> None:
        """Host.unmap on arrays: a block mapping any page goes whole."""
        pages = list(pages) if not isinstance(pages, (range, np.ndarray)) else pages
        g = self._gidx(pages)
        self._unmap_idx(g[g < self.idx.total])

    def _unmap_idx(self, g: np.ndarray) -> None:
        blk = self._block_pages(g)
        s2 = self.s2.a
        if len(blk):
            self.s2_block.a[blk] = -1
            g = np.union1d(g, blk)
        self.r.host_unmapped_pages += int(np.count_nonzero(s2[g] != S2_UNMAPPED))
        s2[g] = S2_UNMAPPED

    def _block_slice(self, base: int) -> slice:
        g = self.idx.index(base)               # map_translation checked: inside one slot
        return slice(g, g + BLOCK_PAGES)

    def all_host_rw(self, base: int) -> bool:
        return bool((self.host.a[self._block_slice(base)] == H_RW).all())

    def map_block(self, base: int, perm: int) -> None:
        sl = self._block_slice(base)
        self.s2.a[sl] = perm
        self.s2_block.a[sl] = base

    def unmap_block(self, base: int) -> None:
        sl = self._block_slice(base)
        self.s2.a[sl] = S2_UNMAPPED
        self.s2_block.a[sl] = -1

    def host_op(self, op: str, slot: Memslot, pages: np.ndarray) -> None:
        """Host.host_op on a slice of the arrays: the same transition (model/host_ops.py)."""
        g = np.asarray(pages, dtype=np.int64) + self.idx.start_of[slot.name]
        h = self.host.a
        h[g] = HOST_OPS[op].transition(h[g], slot.backing)
        self._unmap_idx(g)
        self.flush_tlbs()

    def warm_stage2(self, slot: Memslot, pages: np.ndarray) -> None:
        """Host.warm_stage2 on arrays: the same mappings, blocks where every page of a 2 MiB
        range inside the slot is present and writable (Host.map_translation)."""
        sl = self._sl(slot)
        g = np.asarray(pages, dtype=np.int64) + sl.start
        h, s2 = self.host.a, self.s2.a
        g = g[(h[g] != H_MISSING) & (h[g] != H_SWAPPED) & (s2[g] == S2_UNMAPPED)]
        logging = self.logging_active(slot)
        if slot.backing in ("anon_thp", "hugetlb") and not logging and len(g):
            first, ipa, inside = self.base.block_of(g)
            ok = np.zeros(len(g), dtype=bool)
            for b in np.unique(first[inside]).tolist():
                if (h[b:b + BLOCK_PAGES] == H_RW).all():
                    ok |= first == b
            perm = S2_RO if slot.readonly else S2_RW
            for b in np.unique(first[ok]).tolist():
                s2[b:b + BLOCK_PAGES] = perm
                self.s2_block.a[b:b + BLOCK_PAGES] = ipa[np.argmax(first == b)]
            g = g[~ok]
        s2[g] = np.where(maps_writable(False, h[g], logging, slot.readonly), S2_RW, S2_RO)

    def write_protect(self, pages, split: bool) -> None:
        pages = list(pages) if not isinstance(pages, (range, np.ndarray)) else pages
        g = self._gidx(pages)
        self._wp_idx(g[g < self.idx.total], split)

    def _wp_idx(self, g: np.ndarray, split: bool, blocks: bool = True) -> None:
        """Host.write_protect of the pages with these indices, on arrays (`blocks`: some
        may be mapped by a block): a block stays a whole read-only block, or with `split`
        becomes 4K mappings of the same permission, the listed pages read-only."""
        s2 = self.s2.a
        g = g[s2[g] != S2_UNMAPPED]
        if blocks:
            inblk = self.s2_block.a[g] >= 0
            if self.pml_on:                      # PML: 4K pages keep write, D cleared
                g = g[inblk]
                if split:                        # the block's later pages are 4K by then
                    g = g[np.unique(self.s2_block.a[g], return_index=True)[1]]
                inblk = np.ones(len(g), dtype=bool)
            if inblk.any():
                bp = self._block_pages(g[inblk])
                if split:                        # kvm_mmu_split_huge_pages()
                    self.s2_block.a[bp] = -1
                else:
                    s2[bp] = S2_RO
        elif self.pml_on:
            return
        s2[g] = np.minimum(s2[g], S2_RO)        # read-write -> read-only

    def enable_dirty_log(self, slot: Memslot, initially_set: bool, eager_split: bool) -> None:
        sl = self._sl(slot)
        self.logging[slot.name] = True
        self.eager_split[slot.name] = eager_split
        self.written_all[sl] = False
        self.s1ptw_tf_all[sl] = False
        self.s1ptw_tf_written_all[sl] = False
        if initially_set:
            self.dirty_all[sl] = True
            return
        self.dirty_all[sl] = False
        self._wp_idx(np.arange(sl.start, sl.stop), split=eager_split)
        self.flush_tlbs()

    def harvest(self, slot: Memslot, pages=None) -> tuple[list[int], ...]:
        sl = self._sl(slot)
        arrays = (self.dirty_all, self.written_all, self.s1ptw_tf_all,
                  self.s1ptw_tf_written_all)
        if pages is None:
            marked, written, tf, tfw = (np.flatnonzero(a[sl]) for a in arrays)
            for a in arrays:
                a[sl] = False
        else:                                     # KVM_CLEAR_DIRTY_LOG of a range
            pages = np.asarray(pages, dtype=np.int64)
            g = pages + sl.start
            marked, written, tf, tfw = (pages[a[g]] for a in arrays)
            for a in arrays:
                a[g] = False
        self._wp_idx(marked + sl.start, split=self.eager_split[slot.name],
                     blocks=slot.backing in ("anon_thp", "hugetlb"))
        self.flush_tlbs()
        return tuple(self.base.int_list(x) for x in (marked, written, tf, tfw))

    def punch_hole(self, slot: Memslot) -> None:
        sl = self._sl(slot)
        self.host.a[sl] = H_MISSING
        if slot.name == self.base.pt.name:
            for p in range(slot.ipa, slot.end, HOST_PAGE):
                self.zero_page(p)
        else:
            lo, hi = max(slot.ipa, self.pt_base), min(slot.end, self.pt_end)
            for p in range(lo, hi, HOST_PAGE):           # slots never overlap: empty
                self.zero_page(p)
        self.unmap(range(slot.ipa, slot.end, HOST_PAGE))
        self.flush_tlbs()


class TlbView:
    """The reference's per-vCPU TLB mapping (get, []=, pop) over the shared TLB arrays."""

    def __init__(self, vm: "FastVm", vcpu: int):
        self.vm, self.vcpu = vm, vcpu

    def get(self, va_page: int, default=None):
        k = self.vm.base.prep.tkey(self.vcpu, va_page)
        sh = self.vm.shared
        if k < 0 or sh.tst[k] == 0:
            return default
        leaf = int(sh.tleaf[k]) | DESC_AF | (DESC_AP2 if sh.tst[k] == 1 else 0)
        return TlbEntry(leaf, int(sh.tlvl[k]))

    def __setitem__(self, va_page: int, e: TlbEntry) -> None:
        k = self.vm.base.prep.tkey(self.vcpu, va_page)
        if k < 0:
            raise AssertionError(f"TLB fill for a VA page outside the trace: {va_page:#x}")
        self.vm.shared.tlb_set(k, 1 if e.leaf & DESC_AP2 else 2, e.leaf & ~MUTABLE_BITS,
                               e.level)

    def pop(self, va_page: int, default=None):
        k = self.vm.base.prep.tkey(self.vcpu, va_page)
        if k >= 0 and self.vm.shared.tst[k]:
            self.vm.shared.tlb_set(k, 0, 0, 0)
        return default


class FastVm(Vm):
    """model.reference.Vm on the engine's state (own host, the group's Shared)."""

    def __init__(self, base: Base, policy: str, shared: Shared):
        # Vm's own state (Vm._init_vm) with the run's tables built once; the TLB lives in
        # Shared (self.tlb stays unused), the host is array-backed
        self.base = base
        self.shared = shared
        self._init_vm(base.scn, copy.copy(base.tables), policy)   # `root` changes with
        self.host = ArrayHost(base, POLICIES[policy], self.r, self)  # guest_switch

    def vcpu_tlb(self, vcpu: int):
        return TlbView(self, vcpu)

    def flush_all(self) -> None:
        self.shared.tlb_flush()

    def tlb_invalidate_va(self, va_page: int) -> None:
        sh = self.shared
        for k in self.base.prep.tkeys_of_page(va_page):
            if sh.tst[k]:
                sh.tlb_set(k, 0, 0, 0)

    def scalar(self, i: int) -> None:
        """Access i of the trace through the reference code (Vm.access)."""
        tr = self.base.trace
        step = int(tr.step_of_access[i]) if tr.step_of_access is not None else i
        self.begin_step(step)
        v = int(tr.vcpu[i])
        if v not in self.stopped:
            from .trace import KINDS
            self.access(v, int(tr.va[i]), KINDS[int(tr.kind[i])])
        self.end_step()
