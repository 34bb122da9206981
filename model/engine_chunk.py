"""The vectorised path of the numpy engine: one chunk of an interval, every policy of a group.

Within an interval (no event) and as long as no access leaves the "simple" class, every
access completes, so the TLB's history, the walks, the hardware updates and the guest's writes
do not depend on the policy; only the stage-2 faults' outcomes do, and those are per page
(docs/semantics.md §6): a page's fate in the interval is fixed by its first need (an access that reads
a descriptor from it, or touches it as data) and its first write need (a hardware update of a
descriptor in it, or a store to it):

* unmapped: a translation fault at the first need, whose class (S1PTW or data) and write flag
  (the policy's: model.policies.VECTOR_POLICIES) decide the new mapping (read-only or
  read-write), host page state, userfaultfd event and dirty mark (Host.handle_abort);
* read-only (then, or from the start): a permission fault at the first write need.

A fault restarts its access (Vm.access), so each fault of an access that missed the TLB adds
a walk and the descriptor reads made before it.  Everything else is first-occurrence
reductions.  An access whose fault would leave the simple class (outside every memslot,
read-only slot, THP/hugetlb blocks, userfaultfd resolving a whole slot, page-table content
replaced), or whose TLB entry or walk is unusual, ends the vectorised part: the caller runs it
through the reference code and starts a new chunk after it.

Tiers per chunk [i, j):
1. every access's (sub-key, class) index `ci` (TracePrep) gets a code from the state at chunk
   start: settled (a TLB hit whose data page already allows the access: nothing happens but
   the count and, for a store, the written page), first-only (only the first occurrence in
   the chunk can do anything: the others hit and find their needs met), every (AT, stage-1
   faults, odd walks: every occurrence goes to tier 2);
2. the accesses that matter get the exact TLB history (which walk), their needs, and the
   per-page fault resolution for every policy: a pipeline of typed stages (_tier2), each
   naming the reference function it vectorises; the rules themselves are model/semantics.py's,
   model/host_ops.py's and model/policies.py's, shared with the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN
from .engine_walk import VaWalks, walk_vas
from .engine_state import (BLOCK_PAGES, CLS_A, CLS_S, CLS_X, H_MISSING, H_RW, MUTABLE_BITS,
                           PA_HARD, PA_PT, PA_RO, PA_RSLOT, PA_UFFD_SHIFT, U64, UFFD_MINOR,
                           UFFD_MISSING, UFFD_NONE, UFFD_WP)
from .host_ops import gup_transition, maps_writable
from .policies import VECTOR_POLICIES, needs_lookahead
from .semantics import (S1_NONE, S2_OK, S2_RO, S2_RW, S2_UNMAPPED, hw_updates_apply,
                        leaf_hw_update, s1_leaf_fault, s2_check, table_hw_update)
from .trace import CAS

BIG = np.int32(1 << 30)
NO_SEQ = np.int64(1) << 62                # no need (Needs order keys are smaller)
# kinds of stage-2 need: a descriptor read of a walk, a hardware update, the data access
T_PATH, T_UPD, T_DATA = 0, 1, 2
ORD = 16                                  # needs per access < ORD (<= 4 + 3 + 1 + 1)
AF64, AP2_64, DBM64, PXN64 = U64(DESC_AF), U64(DESC_AP2), U64(DESC_DBM), U64(DESC_PXN)
# static walk facts per VA page, packed (WalkCache.sfx)
F_FOUND, F_DBM, F_PXN, F_WEIRD, F_OUT = 1, 2, 4, 8, 16
# tier-1 codes, encoded so that "goes to tier 2" is code + first_occurrence > 1
K_SETTLED, K_FIRST, K_EVERY = 0, 1, 2


class WalkCache:
    """The stage-1 walk of every 4 KiB VA page of the trace over the current page-table
    memory (Vm.s1_walk's rules), without stage-2 checks, for a root table.  When reference
    code changes the tables' shape (Shared.version), only the VA pages whose walk read a
    changed descriptor are walked again (`update`).  The AF and AP[2] bits of leaves
    (`lbits`, per leaf id) and the AF of table descriptors (`tabaf`, per table-descriptor id)
    are mirrors of page-table memory: the vectorised path updates both, reference code's
    changes are read back (`refresh`)."""

    def __init__(self, base, sh, root: int):
        self.version, self.root = sh.version, root
        self.base = base
        geo, prep = base.geo, base.prep
        va = prep.vpages.astype(np.int64)
        n = len(va)
        L = geo.levels
        self.L = L
        total = base.idx.total
        w = self._walk(sh, va)
        self.nlev, self.pg, self.doff, self.tab_off = w.nlev, w.pg, w.doff, w.tab_off
        self.level, self.dp = w.level, w.dp
        found, leaf, leaf_off = w.found, w.leaf, w.leaf_off
        self.leafm = leaf & ~U64(MUTABLE_BITS)
        self.leaf_pg = np.where(found, self.pg[np.maximum(self.nlev.astype(np.int64) - 1, 0),
                                               np.arange(n)], total).astype(np.int32)
        uo, inv = np.unique(np.where(found, leaf_off, -1), return_inverse=True)
        self.leaf_id = inv.astype(np.int32).reshape(-1)
        self.leaf_off_u = uo                    # -1: the id of "no leaf"
        # table descriptors (FEAT_HAFT updates): a dense id per descriptor offset
        tflat = self.tab_off.reshape(-1)
        ut, tinv = np.unique(tflat, return_inverse=True)
        self.tab_id = tinv.astype(np.int32).reshape(self.tab_off.shape)
        self.tab_off_u = ut                     # -1: the id of "no table"
        self._index = None                      # offset -> id dicts, for updates
        self._mark = None                       # scratch over descriptor offsets
        # a descriptor that is a table at two levels, or a table and a leaf (recursive
        # tables): leave such walks to the reference code
        weird = False
        m = tflat >= 0
        if m.any():
            lv_of = np.repeat(np.arange(self.tab_off.shape[0], dtype=np.int64), n)[m]
            offs = tflat[m]
            if len(np.unique(offs * 8 + lv_of)) != len(np.unique(offs)):
                weird = True
            if np.intersect1d(offs, leaf_off[found]).size:
                weird = True
        self.any_weird = weird
        self.sfx = self._sfx(found, leaf, self.dp)
        self.refresh(sh)
        gid = prep.tkey_codes % prep.n_gpages
        vp_of_gid = np.zeros(prep.n_gpages, dtype=np.int64)
        vp_of_gid[prep.vp_gid[::-1]] = np.arange(n - 1, -1, -1)
        self.tkey_vp = vp_of_gid[gid] if n else np.zeros(len(gid), dtype=np.int64)
        # the pages walks read (once all are mapped, no path need can be unmet)
        rd = np.arange(L)[:, None] < self.nlev[None, :]
        self.path_pages = np.unique(self.pg[rd]) if n else np.zeros(0, dtype=np.int32)
        # TLB entries that do not match the tables (cached leaf or level differ): every access
        # through them goes to the reference code
        self.stale_cand = np.zeros(len(sh.tst), dtype=bool)
        self._stale(sh, np.arange(len(self.tkey_vp)))

    @property
    def nleaves(self) -> int:
        return len(self.leaf_off_u)

    @property
    def ntabs(self) -> int:
        return len(self.tab_off_u)

    def _sfx(self, found, leaf, dp) -> np.ndarray:
        dbm = (leaf & DBM64).astype(bool)
        pxn = (leaf & PXN64).astype(bool)
        return (found * F_FOUND | dbm * F_DBM | pxn * F_PXN | self.any_weird * F_WEIRD
                | (dp == self.base.idx.total) * F_OUT).astype(np.uint8)

    def _stale(self, sh, tk: np.ndarray) -> None:
        v = self.tkey_vp[tk]
        self.stale_cand[tk] = (sh.tst[tk] > 0) & (
            ((self.sfx[v] & F_FOUND) == 0) | (sh.tleaf[tk] != self.leafm[v])
            | (sh.tlvl[tk] != self.level[v]))

    def _walk(self, sh, va: np.ndarray) -> VaWalks:
        base = self.base
        return walk_vas(base.geo, base.idx, base.pt_base, base.nptd, sh.read_v, self.root, va,
                        sh.pt)

    # ---- after reference code changed page-table memory -----------------------------------
    def _indexes(self):
        if self._index is None:
            tl = {}
            for l in range(self.tab_off.shape[0]):
                for o in np.unique(self.tab_off[l]).tolist():
                    if o >= 0:
                        tl[o] = l
            self._index = ({o: i for i, o in enumerate(self.leaf_off_u.tolist())},
                           {o: i for i, o in enumerate(self.tab_off_u.tolist())}, tl)
        return self._index

    def update(self, sh, offs: np.ndarray) -> bool:
        """The tables' shape changed at these descriptor offsets: walk again the VA pages
        whose walk read one.  False when a full rebuild is needed."""
        self.version = sh.version
        A = self._affected(offs)
        if A is None:
            return True
        w = self._walk(sh, self.base.prep.vpages[A].astype(np.int64))
        ids = self._ids(w)
        if ids is None:
            return False
        lid, tid, new_l, new_t = ids
        if new_l:
            nl = np.array(new_l, dtype=np.int64)
            self.leaf_off_u = np.concatenate([self.leaf_off_u, nl])
            self.lbits = np.concatenate([self.lbits, self._lbits(sh, nl)])
        if new_t:
            nt = np.array(new_t, dtype=np.int64)
            self.tab_off_u = np.concatenate([self.tab_off_u, nt])
            self.tabaf = np.concatenate([self.tabaf, (sh.read_v(nt) & AF64) != 0])
        self._store(sh, A, w, lid, tid)
        return True

    def _affected(self, offs: np.ndarray) -> np.ndarray | None:
        """The VA pages whose walk read a descriptor at one of `offs` (None: none)."""
        if not len(offs):
            return None
        if self._mark is None:
            self._mark = np.zeros(self.base.nptd + 1, dtype=bool)
        mark = self._mark
        mark[offs] = True
        hit = np.take(mark, self.doff).any(axis=0)       # doff -1 reads the last cell
        mark[offs] = False
        A = np.flatnonzero(hit)
        return A if len(A) else None

    def _ids(self, w: VaWalks):
        """Ids of the walks' leaves and table descriptors, new ones numbered after the known
        ones: (leaf ids, table ids, new leaf offsets, new table offsets); None when a
        descriptor aliases (a table at two levels, or a table and a leaf: rebuild)."""
        lidx, tidx, tlev = self._indexes()
        new_l, new_t = [], []
        lid = np.zeros(len(w.found), dtype=np.int32)
        for k, (o, fd) in enumerate(zip(w.leaf_off.tolist(), w.found.tolist())):
            if not fd:
                o = -1
            elif o in tlev:
                return None
            i = lidx.get(o)
            if i is None:
                i = lidx[o] = len(self.leaf_off_u) + len(new_l)
                new_l.append(o)
            lid[k] = i
        tid = np.zeros(w.tab_off.shape, dtype=np.int32)
        for l in range(w.tab_off.shape[0]):
            for k, o in enumerate(w.tab_off[l].tolist()):
                if o >= 0 and (o in lidx or tlev.get(o, l) != l):
                    return None
                i = tidx.get(o)
                if i is None:
                    i = tidx[o] = len(self.tab_off_u) + len(new_t)
                    new_t.append(o)
                    tlev[o] = l
                tid[l, k] = i
        return lid, tid, new_l, new_t

    def _store(self, sh, A: np.ndarray, w: VaWalks, lid: np.ndarray, tid: np.ndarray) -> None:
        """Store the new walks of VA pages A and what follows from them."""
        self.nlev[A], self.pg[:, A], self.doff[:, A] = w.nlev, w.pg, w.doff
        self.tab_off[:, A], self.tab_id[:, A] = w.tab_off, tid
        self.level[A], self.dp[A], self.leaf_id[A] = w.level, w.dp, lid
        self.leafm[A] = w.leaf & ~U64(MUTABLE_BITS)
        self.leaf_pg[A] = np.where(w.found, w.pg[np.maximum(w.nlev.astype(np.int64) - 1, 0),
                                                 np.arange(len(A))], self.base.idx.total)
        self.sfx[A] = self._sfx(w.found, w.leaf, w.dp)
        rd = np.arange(self.L)[:, None] < w.nlev[None, :]
        self.path_pages = np.union1d(self.path_pages, w.pg[rd])
        vmark = np.zeros(len(self.nlev), dtype=bool)
        vmark[A] = True
        self._stale(sh, np.flatnonzero(vmark[self.tkey_vp]))

    @staticmethod
    def _lbits(sh, offs: np.ndarray) -> np.ndarray:
        lv = sh.read_v(offs)
        return (((lv & AF64) != 0) * 1 | ((lv & AP2_64) != 0) * 2).astype(np.uint8)

    def refresh(self, sh, offs: np.ndarray | None = None) -> None:
        """Re-read the AF/AP[2] mirrors from page-table memory: all, or those of the
        descriptors at `offs`."""
        if offs is None or len(offs) > 64:
            self.lbits = self._lbits(sh, self.leaf_off_u)
            self.tabaf = (sh.read_v(self.tab_off_u) & AF64) != 0
            return
        lidx, tidx, _ = self._indexes()
        for o in offs.tolist():
            i = lidx.get(o)
            if i is not None:
                self.lbits[i] = self._lbits(sh, np.array([o]))[0]
            i = tidx.get(o)
            if i is not None:
                self.tabaf[i] = (sh.read(o) & DESC_AF) != 0


@lru_cache(maxsize=None)
def _code_lut(ha: bool, hd: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tier-1 code and stage-1-fault flag for every combination of the packed inputs:
    bits 0-4 sfx, 5 AF, 6 AP[2], 7-8 TLB state, 9-10 min stage-2 state, 11-12 class, 13 stale.
    (model.semantics.s1_leaf_fault, as Vm.s1_check, for the fault flag; Vm._attempt's hit
    rule for "settled".)"""
    x = np.arange(1 << 14)
    found = (x & F_FOUND) != 0
    dbm = (x & F_DBM) != 0
    pxn = (x & F_PXN) != 0
    weird = (x & F_WEIRD) != 0
    out = (x & F_OUT) != 0
    af = (x >> 5) & 1 == 1
    ap2 = (x >> 6) & 1 == 1
    st = (x >> 7) & 3
    mn = (x >> 9) & 3
    cls = (x >> 11) & 3
    stale = (x >> 13) & 1 == 1
    isS, isX, isA = cls == CLS_S, cls == CLS_X, cls == CLS_A
    s1f = ~found | (s1_leaf_fault(af, ap2, dbm, pxn, isX, isS, ha, hd) != S1_NONE)
    settled = np.where(isS, (st == 2) & (mn == S2_RW), (st >= 1) & (mn >= S2_RO) & ~(isX & pxn))
    settled &= ~isA & ~stale & ~out
    code = np.where(settled, K_SETTLED, np.where(s1f | isA | stale | weird, K_EVERY, K_FIRST))
    return code.astype(np.int8), s1f.astype(bool)


def _pack(sfx, lb, st, mn, cls, stale):
    x = sfx.astype(np.int32)
    x |= lb.astype(np.int32) << 5
    x |= st.astype(np.int32) << 7
    x |= mn.astype(np.int32) << 9
    x |= cls.astype(np.int32) << 11
    if stale is not None:
        x |= stale.astype(np.int32) << 13
    return x


def first_by(scratch: np.ndarray, keys: np.ndarray, q: np.ndarray, mask) -> np.ndarray:
    """Per element: the smallest q among elements with the same key where mask holds; BIG
    where none.  `scratch` (dense over keys) holds BIG on entry and on exit."""
    if mask is None:
        km, qm = keys, q
    else:
        if not mask.any():
            return np.full(len(keys), BIG, dtype=np.int32)
        km, qm = np.compress(mask, keys), np.compress(mask, q)
    np.minimum.at(scratch, km, qm)
    out = np.take(scratch, keys)
    scratch[km] = BIG
    return out


class Scratch:
    """BIG-filled scratch arrays by name, grown on demand."""

    def __init__(self):
        self.a: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, fill=BIG, dtype=np.int32) -> np.ndarray:
        a = self.a.get(name)
        if a is None or len(a) < n:
            a = np.full(n, fill, dtype=dtype)
            self.a[name] = a
        return a


SUB = 1 << 16                            # tier-1 block (cache-sized)


# ---- the chunk: tier 1, tier 2, the accesses that need nothing ---------------------------------
@dataclass
class Tier1:
    """Tier 1 of a chunk (module doc): per block of SUB accesses, the positions (in the
    chunk) of the first occurrences of each (sub-key, class) index, their indices and codes;
    the positions and indices of the accesses tier 2 takes (None: none)."""
    firsts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    I: np.ndarray | None
    ciI: np.ndarray | None


def chunk(g, i: int, j: int) -> int:
    """Run accesses [i, j) of one interval for group g as far as the vectorised path goes;
    returns the position of the first access it leaves to the reference code, or j.
    Stages: tier 1 (_tier1), tier 2 (_tier2), then the accesses that needed nothing
    (_count_settled)."""
    wc = g.walkcache()
    C = j - i
    t1 = _tier1(g, wc, i, C)
    g.last_settled = t1.I is None               # every access settled: nothing changed
    cut = C if t1.I is None else _tier2(g, wc, i, C, t1.I, t1.ciI)
    _count_settled(g, wc, i, C, cut, t1)
    return i + cut


def _tier1(g, wc, i: int, C: int) -> Tier1:
    """First occurrence in [i, i + C) of each (sub-key, class), and its code (_codes).
    Stamps fo_base + C - p (p: position in the chunk) are larger than any earlier chunk's,
    and the first occurrence has the largest: after the blocks up to p are stamped, an
    access is the first of its (sub-key, class) iff it holds the stamp."""
    prep = g.base.prep
    lut, _ = _code_lut(g.flags.ha, g.flags.hd)
    r0 = len(g.rev) - C
    fb = np.int32(g.fo_base)
    g.fo_base += C + 1
    firsts, Is, CIs = [], [], []
    for b0 in range(0, C, SUB):
        b1 = min(C, b0 + SUB)
        ci = prep.ci(i + b0, i + b1)
        val = g.rev[r0 + b0:r0 + b1] + fb
        np.maximum.at(g.fo, ci, val)
        isf = np.take(g.fo, ci) == val
        U = np.flatnonzero(isf)
        if len(U):
            ciU = np.take(ci, U)
            codeU = _codes(g, wc, lut, ciU)
            g.codeT[ciU] = codeU
            firsts.append((U + b0, ciU, codeU))
        inter = np.add(np.take(g.codeT, ci), isf, dtype=np.int8) > 1
        I = np.flatnonzero(inter)
        if len(I):
            Is.append(I + b0)
            CIs.append(np.take(ci, I))
    if not Is:
        return Tier1(firsts, None, None)
    if len(Is) == 1:
        return Tier1(firsts, Is[0], CIs[0])
    return Tier1(firsts, np.concatenate(Is), np.concatenate(CIs))


def _count_settled(g, wc, i: int, C: int, cut: int, t1: Tier1) -> None:
    """The accesses before the cut: each counts (Vm.access), and a settled store writes its
    data page (Host.guest_write); the others' effects are tier 2's."""
    prep = g.base.prep
    n_acc = cut
    if g.any_stopped:
        n_acc = int(np.count_nonzero(~g.stopped[g.base.trace.vcpu[i:i + cut]]))
    wps = []
    for U, ciU, codeU in t1.firsts:
        sel = (codeU == K_SETTLED) & ((ciU & 3) == CLS_S)
        if cut < C:
            sel &= U < cut
        if g.any_stopped:
            sel &= ~g.stopped[np.take(prep.sk_vcpu, ciU >> 2)]
        if sel.any():
            wps.append(np.take(wc.dp, np.take(prep.sk_vp, np.compress(sel, ciU) >> 2)))
    wpages = np.concatenate(wps) if wps else None
    for vm in g.vms:
        vm.r.accesses += n_acc
        if wpages is not None:
            vm.host.mark_written(wpages)


def first_touches(g, i: int) -> int | None:
    """A repeated window's next whole repetition [i, i + P) as one chunk, without tier 1's
    pass over its accesses: the first occurrence of each (sub-key, class) comes from the
    window's index (TracePrep.first_after), its code from the state at i (_codes).  Equal
    to chunk(g, i, i + P) when no code is K_EVERY (then only first occurrences can do
    anything: they are tier 2's accesses, in trace order); None (nothing run) otherwise.
    Returns the cut, as chunk does."""
    wc = g.walkcache()
    P = g.period
    U, ciU = g.base.prep.first_after(i)
    lut, _ = _code_lut(g.flags.ha, g.flags.hd)
    codeU = _codes(g, wc, lut, ciU)
    if np.any(codeU == K_EVERY):
        return None
    g.last_settled = False
    sel = codeU == K_FIRST
    t1 = Tier1([(U, ciU, codeU)], U[sel], ciU[sel]) if sel.any() else Tier1(
        [(U, ciU, codeU)], None, None)
    cut = P if t1.I is None else _tier2(g, wc, i, P, t1.I, t1.ciI)
    _count_settled(g, wc, i, P, cut, t1)
    return i + cut


def chunk_codes_settled(g, wc, ci: np.ndarray) -> bool:
    """Would every (sub-key, class) index of `ci` be K_SETTLED in a chunk starting now (the
    codes _tier1 gives from the state at chunk start)?"""
    lut, _ = _code_lut(g.flags.ha, g.flags.hd)
    return not len(ci) or not np.any(_codes(g, wc, lut, ci) != K_SETTLED)


def _codes(g, wc, lut, ciU: np.ndarray) -> np.ndarray:
    """Tier-1 codes of (sub-key, class) indices from the state at chunk start."""
    prep, sh = g.base.prep, g.shared
    skU = ciU >> 2
    vp = np.take(prep.sk_vp, skU)
    tk = np.take(prep.sk_tkey, skU)
    st = np.take(sh.tst, tk)
    stale = np.take(wc.stale_cand, tk)
    lb = np.take(wc.lbits, np.take(wc.leaf_id, vp))
    mn = np.take(g.s2min, np.take(wc.dp, vp))
    cls = ciU & 3
    x = _pack(np.take(wc.sfx, vp), lb, st, mn, cls, stale)
    codeU = np.take(lut, x)
    _, s1lut = _code_lut(g.flags.ha, g.flags.hd)
    g.s1T[ciU] = np.take(s1lut, x)
    # the data access's need unmet by some policy at chunk start (store: not read-write;
    # load, fetch: unmapped)
    g.dunT[ciU] = s2_check(mn, cls == CLS_S) != S2_OK
    if g.any_stopped:
        codeU[g.stopped[np.take(prep.sk_vcpu, skU)]] = K_SETTLED
    return codeU


# ---- tier 2: the pipeline ------------------------------------------------------------------------
@dataclass
class Accesses:
    """Tier 2's accesses, numbered q = 0 .. m-1 in trace order, with what the state at chunk
    start says about each (the inputs of Vm._attempt)."""
    m: int
    q: np.ndarray             # int32 arange(m)
    vp: np.ndarray            # VA page id (WalkCache row)
    tk: np.ndarray            # TLB key
    lid: np.ndarray           # leaf id (WalkCache.lbits)
    isS: np.ndarray           # store
    isX: np.ndarray           # instruction fetch
    isA: np.ndarray           # AT
    s0: np.ndarray            # TLB state at chunk start (0 invalid, 1 clean, 2 dirty)
    sfx: np.ndarray           # static walk facts (F_*)
    ap20: np.ndarray          # leaf AP[2] at chunk start
    s1fc: np.ndarray          # a walk now takes a stage-1 fault (Vm.s1_check)
    any_s1: bool
    any_A: bool
    any_ap2: bool
    dp: np.ndarray            # data page index
    leaf_pg: np.ndarray       # page index of the page holding the leaf
    dun: np.ndarray           # its data need is unmet by some policy at chunk start

    @property
    def simple(self) -> bool:
        """Every access would complete a walk."""
        return not self.any_s1 and not self.any_A


@dataclass
class TlbHistory:
    """Which accesses walk, and the TLB states they leave (Vm._attempt's hit rule)."""
    ff: np.ndarray            # per access: the first access of its TLB key that fills it
    D: np.ndarray             # ... from which on the key's entry is dirty (BIG: never, -1:
                              # dirty from the start)
    s00: np.ndarray           # the key's entry is invalid at chunk start
    td: np.ndarray | None     # per leaf with AP[2]: the first store through it (else -1)
    walk: np.ndarray          # the access walks
    s1fault: np.ndarray | None   # the access takes a stage-1 fault (None: none does)
    complete: np.ndarray | None  # its walk completes (None: every one)
    data: np.ndarray | None      # it reaches its data access (None: every one)


@dataclass
class HaftNeed:
    """FEAT_HAFT: the accesses that set the AF of the table descriptor at one walk level."""
    level: int                # row of the walk (0: the start level)
    need: np.ndarray          # bool per access
    page: np.ndarray          # page index of the page holding the descriptor
    tab: np.ndarray           # table-descriptor id (WalkCache.tabaf)


@dataclass
class HwNeeds:
    """Hardware updates (Vm.s1_updates): which accesses write which descriptors."""
    need_af: np.ndarray | None    # sets its leaf's AF (first walk through an old leaf)
    need_dbm: np.ndarray | None   # clears its leaf's AP[2] (first store through it, DBM)
    need_leaf: np.ndarray         # writes its leaf (either, or hw_update = always)
    any_leaf: bool
    haft: list[HaftNeed]


@dataclass
class Needs:
    """Stage-2 needs not met by every policy at chunk start (one row per need)."""
    q: np.ndarray             # the access
    order: np.ndarray         # its place within the access (NEED_ORDER)
    page: np.ndarray          # page index
    write: np.ndarray         # a write need (hardware update, store)
    type: np.ndarray          # T_PATH (descriptor read), T_UPD (hardware update), T_DATA

    @staticmethod
    def concat(parts: list["Needs"]) -> "Needs":
        if len(parts) == 1:
            return parts[0]
        return Needs(*(np.concatenate([getattr(p, k) for p in parts])
                       for k in ("q", "order", "page", "write", "type")))


def _tier2(g, wc, i: int, C: int, I: np.ndarray, ciI: np.ndarray) -> int:
    """Vm._attempt for the accesses tier 1 left (positions I in the chunk, indices ciI), as
    a pipeline: inputs (_accesses) -> TLB history (_tlb_history) -> hardware-update needs
    (_hw_needs) -> unmet stage-2 needs (_unmet_needs) -> the first access the vectorised
    path must not take (_first_odd) -> per-page fault resolution for every policy (_faults)
    -> apply the shared effects (_apply_shared), then each policy's (_apply_faults).
    Returns the cut (chunk position of the first access left to the reference code, or C)."""
    a = _accesses(g, wc, ciI)
    tlb = _tlb_history(g, wc, a)
    hw = _hw_needs(g, wc, a, tlb)
    needs = _unmet_needs(g, wc, a, tlb, hw)
    rq = _first_odd(wc, a, tlb)
    plan = None
    if needs:
        gpos = i + I
        plan = _faults(g, wc, a, tlb, hw, Needs.concat(needs), rq,
                       g.base.trace.kind[gpos], gpos)
        rq = plan.cut
    _apply_shared(g, wc, a, tlb, hw, rq)
    if plan is not None:
        _apply_faults(g, plan)
    return int(I[rq]) if rq < a.m else C


def _accesses(g, wc, ciI: np.ndarray) -> Accesses:
    """Gather tier 2's inputs from the walk cache, the TLB and tier 1's tables."""
    prep, sh = g.base.prep, g.shared
    m = len(ciI)
    sk = ciI >> 2
    cls = (ciI & 3).astype(np.int8)
    vp = np.take(prep.sk_vp, sk)
    tk = np.take(prep.sk_tkey, sk)
    lid = np.take(wc.leaf_id, vp)
    isA = cls == CLS_A
    ap20 = (np.take(wc.lbits, lid) & 2) != 0
    s1fc = np.take(g.s1T, ciI)
    return Accesses(m=m, q=np.arange(m, dtype=np.int32), vp=vp, tk=tk, lid=lid,
                    isS=cls == CLS_S, isX=cls == CLS_X, isA=isA, s0=np.take(sh.tst, tk),
                    sfx=np.take(wc.sfx, vp), ap20=ap20, s1fc=s1fc, any_s1=bool(s1fc.any()),
                    any_A=bool(isA.any()), any_ap2=bool(ap20.any()),
                    dp=np.take(wc.dp, vp), leaf_pg=np.take(wc.leaf_pg, vp),
                    dun=np.take(g.dunT, ciI))


def _tlb_history(g, wc, a: Accesses) -> TlbHistory:
    """Vm._attempt's hit rule over the chunk: an access walks unless its TLB key holds an
    entry (a store: a dirty one); an access whose walk completes (not AT) fills the entry,
    dirty when its leaf is (a store through a DBM leaf makes it dirty).  Stage-1 faults
    (Vm.s1_check, precomputed per (sub-key, class) in _code_lut) stop a walk."""
    sc = g.scratch
    q, s0, isS, isA = a.q, a.s0, a.isS, a.isA
    simple = a.simple
    sc_tk = sc.get("tk", g.base.prep.ntkeys)
    ff = first_by(sc_tk, a.tk, q, None if simple else ~isA & ~a.s1fc)
    s00 = s0 == 0
    td = None
    if simple and not a.any_ap2 and not (s0 == 1).any():
        # every access completes and every leaf is dirty: an invalid entry is filled dirty by
        # the key's first access (the only one that walks), a dirty one stays
        walk = s00 & (q == ff)
        D = np.where(s00, ff, -1)
    else:
        stc = isS if not a.any_s1 else isS & ~a.s1fc
        fs = first_by(sc_tk, a.tk, q, stc)
        ffc = np.minimum(ff, a.m - 1)
        ff_dirty = (ff < BIG) & ~np.take(isS, ffc)
        if a.any_ap2:
            sc_leaf = sc.get("leaf", wc.nleaves)
            td = np.where(a.ap20, first_by(sc_leaf, a.lid, q, stc & a.ap20), -1)
            ff_dirty &= np.take(td, ffc) < ff
        D = np.where(s0 == 2, -1, np.minimum(np.where(s00 & ff_dirty, ff, BIG), fs))
        walk = np.where(isS, q <= D, s00 & (q <= ff))
        if a.any_A:
            walk |= isA
    s1fault = complete = None               # no stage-1 fault (PXN implies one)
    if a.any_s1:
        pxn = (a.sfx & F_PXN) != 0
        s1fault = np.where(walk, a.s1fc, a.isX & pxn)
        complete = ~s1fault
    if not a.any_A:
        data = complete
    else:
        data = ~isA if complete is None else complete & ~isA
    return TlbHistory(ff, D, s00, td, walk, s1fault, complete, data)


def _hw_needs(g, wc, a: Accesses, tlb: TlbHistory) -> HwNeeds:
    """Vm.s1_updates over the chunk: a descriptor is written by the first completed walk
    that changes it (model.semantics.leaf_hw_update, table_hw_update), every completed walk
    with hw_update = always; none without HA or, for AT, unless at_sets_af
    (hw_updates_apply)."""
    f = g.flags
    need_af = need_dbm = need_leaf = upd = None
    if f.ha:
        upd = tlb.walk if tlb.complete is None else tlb.walk & tlb.complete
        if a.any_A and not hw_updates_apply(True, True, f.at_sets_af):
            upd = upd & ~a.isA
        need_af, need_dbm = _leaf_needs(g, wc, a, tlb, upd)
        for n in (need_af, need_dbm):
            if n is not None:
                need_leaf = n if need_leaf is None else need_leaf | n
        if f.always:
            need_leaf = upd if need_leaf is None else need_leaf | upd
    haft = _haft_needs(g, wc, a, upd) if f.haft and wc.L > 1 and upd is not None else []
    if need_leaf is None:
        return HwNeeds(need_af, need_dbm, np.zeros(a.m, dtype=bool), False, haft)
    return HwNeeds(need_af, need_dbm, need_leaf, bool(need_leaf.any()), haft)


def _leaf_needs(g, wc, a: Accesses, tlb: TlbHistory, upd: np.ndarray):
    """(sets AF, clears AP[2]) per access (None: no access does): leaf_hw_update on the
    leaf's bits as the chunk's earlier updates left them (the first update of a leaf is the
    only one that changes it)."""
    lb = np.take(wc.lbits, a.lid)
    af0 = (lb & 1) != 0
    need_af = need_dbm = None
    if not af0.all():
        set_af, _ = leaf_hw_update(af0, a.ap20, False, False, False)
        taf = first_by(g.scratch.get("leaf", wc.nleaves), a.lid, a.q, upd & set_af)
        need_af = upd & set_af & (a.q == taf)
    if g.flags.hd and a.any_ap2:
        dbm = (a.sfx & F_DBM) != 0
        _, clear_ap2 = leaf_hw_update(af0, a.ap20, dbm, a.isS, g.flags.hd)
        need_dbm = upd & clear_ap2 & (a.q == tlb.td)
    return need_af, need_dbm


def _haft_needs(g, wc, a: Accesses, upd: np.ndarray) -> list[HaftNeed]:
    """FEAT_HAFT (table_hw_update): per walk level, the first completed walk through each
    table descriptor whose AF is clear sets it; within an access top-down."""
    m, q, vp = a.m, a.q, a.vp
    if not upd.any():
        return []
    cands = []
    for l in range(wc.L - 1):
        tid = np.take(wc.tab_id[l], vp)
        cand = upd & (np.take(wc.tab_off[l], vp) >= 0)
        cand &= table_hw_update(np.take(wc.tabaf, tid), True)
        if cand.any():
            cands.append((l, cand, tid))
    if not cands:
        return []
    tids = np.concatenate([np.compress(c, t) for _l, c, t in cands])
    keys = np.concatenate([np.compress(c, q) * 8 + l for l, c, _t in cands])
    sc_tab = g.scratch.get("tab", wc.ntabs)
    np.minimum.at(sc_tab, tids, keys)
    firstk = np.take(sc_tab, tids)
    sc_tab[tids] = BIG
    out, o = [], 0
    for l, cand, tid in cands:
        idx = np.flatnonzero(cand)
        need = np.zeros(m, dtype=bool)
        need[idx[keys[o:o + len(idx)] == firstk[o:o + len(idx)]]] = True
        o += len(idx)
        out.append(HaftNeed(l, need, np.take(wc.pg[l], vp), tid))
    return out


def _unmet_needs(g, wc, a: Accesses, tlb: TlbHistory, hw: HwNeeds) -> list[Needs]:
    """Vm._attempt's stage-2 checks (Vm.s2_fault) whose need some policy's stage 2 does not
    meet at chunk start: descriptor reads of walks (T_PATH), hardware updates (T_UPD, write),
    data accesses (T_DATA; write for a store).  Within an access, NEED_ORDER: level l's read
    is l, its table update L + l, the leaf update 2L, the data access 2L + 1."""
    s2min, L = g.s2min, wc.L
    out: list[Needs] = []
    wI = np.flatnonzero(tlb.walk)
    if len(wI) and not g.paths_mapped(wc):
        vpW = np.take(a.vp, wI)
        pgW = np.take(wc.pg, vpW, axis=1)
        un = np.take(s2min, pgW) == S2_UNMAPPED
        if un.any():
            un &= np.arange(L)[:, None] < np.take(wc.nlev, vpW)
            ll, kk = np.nonzero(un)
            out.append(Needs(wI[kk], ll, pgW[ll, kk], np.zeros(len(kk), bool),
                             np.full(len(kk), T_PATH, np.int8)))

    def add(idx, pages, order, write, typ):
        if not len(idx):
            return
        pp = np.take(pages, idx)
        mnp = np.take(s2min, pp)
        keep = s2_check(mnp, write) != S2_OK
        if keep.any():
            nk = int(np.count_nonzero(keep))
            out.append(Needs(np.compress(keep, idx), np.full(nk, order),
                             np.compress(keep, pp), np.full(nk, write),
                             np.full(nk, typ, np.int8)))
    for h in hw.haft:
        add(np.flatnonzero(h.need), h.page, L + h.level, True, T_UPD)
    if hw.any_leaf:
        add(np.flatnonzero(hw.need_leaf), a.leaf_pg, 2 * L, True, T_UPD)
    # the data needs: unmet at chunk start by tier 1's reckoning (g.dunT)
    idx = np.flatnonzero(a.dun if tlb.data is None else a.dun & tlb.data)
    if len(idx):
        nk = len(idx)
        out.append(Needs(idx, np.full(nk, 2 * L + 1), np.take(a.dp, idx),
                         np.take(a.isS, idx), np.full(nk, T_DATA, np.int8)))
    return out


def _first_odd(wc, a: Accesses, tlb: TlbHistory) -> int:
    """The first access the vectorised path must not take (a TLB entry that does not match
    the tables, an odd walk: engine_chunk.WalkCache), or m."""
    odd = (a.s0 > 0) & np.take(wc.stale_cand, a.tk)
    if wc.any_weird:
        odd |= ((a.sfx & F_WEIRD) != 0) & tlb.walk
    return int(np.argmax(odd)) if odd.any() else a.m


def _apply_shared(g, wc, a: Accesses, tlb: TlbHistory, hw: HwNeeds, rq: int) -> None:
    """What accesses [0, rq) do to the state every policy shares: TLB states and fills,
    the hardware updates' descriptor writes (Host.guest_write), the written pages, walks,
    descriptor reads and stage-1 faults (their counts before the faults' own walks)."""
    sh = g.shared
    full = rq == a.m
    wI = np.flatnonzero(tlb.walk)
    ff, D = tlb.ff, tlb.D
    if not full:
        wI = wI[:int(np.searchsorted(wI, rq))]
        ff = np.where(ff < rq, ff, BIG)
        D = np.where(D < rq, D, BIG)
    fin = np.where(D < BIG, 2, np.where(tlb.s00 & (ff < BIG), 1, a.s0)).astype(np.int8)
    if full:
        sh.tst[a.tk] = fin
    else:
        sh.tst[a.tk[:rq]] = fin[:rq]
    # TLB fills: every walk that completes (not AT); the cached leaf: Shared.sync_tlb
    if a.simple:
        fI = wI
    else:
        done = ~a.isA if tlb.complete is None else tlb.complete & ~a.isA
        fI = np.compress(np.take(tlb.walk & done, wI), wI)
    if len(fI):
        sh.fills.append(np.take(a.tk, fI))

    def upto(x):
        return x if full else x[:rq]
    ds = a.isS if tlb.data is None else a.isS & tlb.data
    w_pages = [np.compress(upto(ds), upto(a.dp))]
    if hw.need_af is not None:
        ls = np.compress(upto(hw.need_af), upto(a.lid))
        sh.update_bits(np.take(wc.leaf_off_u, ls), set_bits=DESC_AF)
        wc.lbits[ls] |= np.uint8(1)
    if hw.need_dbm is not None:
        ls = np.compress(upto(hw.need_dbm), upto(a.lid))
        sh.update_bits(np.take(wc.leaf_off_u, ls), clear_bits=DESC_AP2)
        wc.lbits[ls] &= np.uint8(0xFD)
    if hw.any_leaf:
        w_pages.append(np.compress(upto(hw.need_leaf), upto(a.leaf_pg)))
    for h in hw.haft:
        sel = upto(h.need)
        ts = np.compress(sel, upto(h.tab))
        sh.update_bits(np.take(wc.tab_off_u, ts), set_bits=DESC_AF)
        wc.tabaf[ts] = True
        w_pages.append(np.compress(sel, upto(h.page)))
    wp = np.concatenate(w_pages) if len(w_pages) > 1 else w_pages[0]
    n_walk = len(wI)
    n_reads = int(np.take(wc.nlev, np.take(a.vp, wI)).sum())
    n_s1 = 0 if tlb.s1fault is None else int(np.count_nonzero(upto(tlb.s1fault)))
    for vm in g.vms:
        r = vm.r
        r.walks += n_walk
        r.descriptor_reads += n_reads
        r.stage1_faults += n_s1
        if len(wp):
            vm.host.mark_written(wp)


# ---- tier 2: per-page faults ------------------------------------------------------------------
@dataclass
class PageNeeds:
    """The pages with an unmet need (P), each with its first need and first write need: a
    page's fate in the chunk (module doc).  Per page: q/type of the first need (q1, t1), of
    the first write need (qW, tW; hasW), their order keys (seq1, seqW: access * ORD +
    NEED_ORDER), the first need's order (ord1: for a descriptor read, the walk's reads
    before it)."""
    P: np.ndarray
    q1: np.ndarray
    t1: np.ndarray
    seq1: np.ndarray
    ord1: np.ndarray
    hasW: np.ndarray
    qW: np.ndarray
    tW: np.ndarray
    seqW: np.ndarray

    @property
    def path1(self) -> np.ndarray:
        return self.t1 == T_PATH


@dataclass
class PageAttrs:
    """Slot attributes of the pages (Base.pattr)."""
    hard0: np.ndarray         # a fault leaves the vectorised path (outside slots, RO slot)
    bb: np.ndarray            # block-backed slot (THP, hugetlb)
    ro: np.ndarray            # read-only slot
    rslot: np.ndarray         # uffd resolves the whole slot
    ispt: np.ndarray          # the page-table slot
    uf: np.ndarray            # the slot's uffd mode (UFFD_*)
    slot_no: np.ndarray


@dataclass
class FaultOutcome:
    """One policy's faults on the pages (policies with equal inputs share one): the
    translation fault at the first need (F1; None: no page is unmapped for any policy), its
    write flag (w1: the policy's answer), uffd MISSING/MINOR and WP events (ev1m, ev1w), host
    state after it (h1), whether it maps read-write (writable1), stage 2 after it (st1); the
    permission fault at the first write need (F2), its uffd WP event (ev2w), host state
    after it (h2); the slot's logging per page (la)."""
    F1: np.ndarray | None
    w1: np.ndarray | None
    ev1m: np.ndarray | None
    ev1w: np.ndarray | None
    h1: np.ndarray
    la: np.ndarray
    writable1: np.ndarray | None
    st1: np.ndarray
    F2: np.ndarray
    ev2w: np.ndarray
    h2: np.ndarray


@dataclass
class FaultPlan:
    """The faults of accesses [0, cut) for every policy, ready to apply (_apply_faults)."""
    cut: int
    pn: PageNeeds
    attrs: PageAttrs
    outcomes: list            # (FastVm, FaultOutcome)
    wc: object
    a: Accesses
    tlb: TlbHistory
    hw: HwNeeds
    gpos: np.ndarray          # trace position of each access
    blocks: "BlockUnits | None" = None


def _faults(g, wc, a: Accesses, tlb: TlbHistory, hw: HwNeeds, needs: Needs, rq: int,
            kindI: np.ndarray, gpos: np.ndarray) -> FaultPlan:
    """Per page, the first need and the first write need among the unmet ones
    (_first_needs); per policy, the translation and permission faults they take
    (_resolve: Host.handle_abort).  The cut is the first access whose fault leaves the
    simple class (module doc), or rq."""
    pn = _first_needs(g, needs)
    pn, attrs, blocks = _block_units(g, pn, _page_attrs(g.base, pn.P))
    P = pn.P
    elig = None if blocks is None else blocks.first >= 0
    sts = [np.take(vm.host.s2.a, P) for vm in g.vms]
    tf = None
    if any(bool((st == S2_UNMAPPED).any()) for st in sts):
        tf = _translation_inputs(a, tlb, hw, pn, kindI,
                                 any(needs_lookahead(vm.r.policy) for vm in g.vms))
    outcomes = []
    cut = rq
    reps = []                                   # (inputs, outcome) computed so far
    for vm, st in zip(g.vms, sts):
        h = np.take(vm.host.host.a, P)
        w1 = None if tf is None else _is_write(g, vm, tf)
        lkey = vm.flags_logact.tobytes()
        # a fault in a block-backed slot may map or split a block (Host.map_translation,
        # relax_permission) unless the slot is logging and the page is not in a block
        bb = attrs.bb
        blk = bb & (np.take(vm.host.s2_block.a, P) >= 0) if bb.any() else bb
        oc = None
        for (st_, h_, w1_, lkey_, blk_), oc_ in reps:
            if (lkey_ == lkey and np.array_equal(st_, st) and np.array_equal(h_, h)
                    and (w1 is None or np.array_equal(w1_, w1)) and np.array_equal(blk_, blk)):
                oc = oc_
                break
        if oc is None:
            oc, cut = _resolve(vm, pn, attrs, st, h, w1, blk, elig, cut)
            reps.append(((st, h, w1, lkey, blk), oc))
        cut = _permission_is_write(g, vm, a, pn, oc, cut)
        outcomes.append((vm, oc))
    return FaultPlan(cut, pn, attrs, outcomes, wc, a, tlb, hw, gpos, blocks)


def _first_needs(g, needs: Needs) -> PageNeeds:
    """Per page with an unmet need, the first need and the first write need (by access, then
    NEED_ORDER): an access restarts after each fault (Vm.access), so the page's first need
    takes its translation fault and its first write need its permission fault."""
    sc = g.scratch
    total = g.base.idx.total
    nq = needs.q.astype(np.int64)
    npg = needs.page.astype(np.int64)
    nW = needs.write.astype(bool)
    seq = nq * ORD + needs.order
    sc_pg = sc.get("pg", total + 1, dtype=np.int64, fill=NO_SEQ)
    np.minimum.at(sc_pg, npg, seq)
    iR = np.flatnonzero(seq == np.take(sc_pg, npg))
    sc_pg[npg] = NO_SEQ
    if nW.any():
        np.minimum.at(sc_pg, npg[nW], seq[nW])
        tW = np.take(sc_pg, npg)
        sc_pg[npg] = NO_SEQ
        iWm = np.flatnonzero(nW & (seq == tW))
    else:
        iWm = np.zeros(0, dtype=np.int64)
    sc_i = sc.get("pgi", total + 1, fill=-1, dtype=np.int64)
    P = npg[iR]
    sc_i[npg[iWm]] = iWm
    iW = np.take(sc_i, P)
    sc_i[npg[iWm]] = -1
    hasW = iW >= 0
    iWc = np.where(hasW, iW, 0)
    return PageNeeds(P=P, q1=nq[iR], t1=needs.type[iR], seq1=seq[iR], ord1=needs.order[iR],
                     hasW=hasW, qW=nq[iWc], tW=needs.type[iWc], seqW=seq[iWc])


def _page_attrs(base, P: np.ndarray) -> PageAttrs:
    pa = np.take(base.pattr, P)
    return PageAttrs(hard0=(pa & PA_HARD) != 0, bb=np.take(base.block_backing, P),
                     ro=(pa & PA_RO) != 0, rslot=(pa & PA_RSLOT) != 0,
                     ispt=(pa & PA_PT) != 0, uf=pa >> PA_UFFD_SHIFT,
                     slot_no=np.take(base.slot_no, P))


@dataclass
class BlockUnits:
    """Per page of PageNeeds: the index of the first page of the 2 MiB block its fault maps
    whole (first; -1: none), and the block's IPA (ipa)."""
    first: np.ndarray
    ipa: np.ndarray


def _block_units(g, pn: PageNeeds, at: PageAttrs) -> tuple[PageNeeds, PageAttrs,
                                                            BlockUnits | None]:
    """Host.map_translation's 2 MiB block (transparent_hugepage_adjust()/hugetlb), where its
    outcome is the same for every policy of the group: a block-backed slot not logging, no
    userfaultfd, the block inside the slot, every host page of it present and writable
    (all_host_rw) and none mapped at stage 2.  Then the first need of any of its pages takes
    a translation fault that maps the whole block read-write (maps_writable: a present
    writable page outside logging), and every later need of its pages is met: the block's
    pages keep only that first need.  Any other block-backed fault stays hard (_resolve)."""
    cand = at.bb & ~at.hard0 & (at.uf == UFFD_NONE)
    if not cand.any():
        return pn, at, None
    rows = np.flatnonzero(cand)
    k = at.slot_no[rows]
    bfirst, bipa, inside = g.base.block_of(pn.P[rows])
    ok = np.zeros(len(rows), dtype=bool)
    for b in np.unique(bfirst[inside]).tolist():
        sl = slice(b, b + BLOCK_PAGES)
        kb = int(k[np.argmax(bfirst == b)])
        if all(not vm.flags_logact[kb] and (vm.host.host.a[sl] == H_RW).all()
               and (vm.host.s2.a[sl] == S2_UNMAPPED).all()
               and (vm.host.s2_block.a[sl] < 0).all() for vm in g.vms):
            ok |= bfirst == b
    if not ok.any():
        return pn, at, None
    rows, bfirst, bipa = rows[ok], bfirst[ok], bipa[ok]
    # per block, the row of its first need (smallest order key); the others go
    o = np.lexsort((pn.seq1[rows], bfirst))
    head = np.ones(len(o), dtype=bool)
    head[1:] = bfirst[o][1:] != bfirst[o][:-1]
    keep = np.ones(len(pn.P), dtype=bool)
    keep[rows[o[~head]]] = False
    first = np.full(len(pn.P), -1, dtype=np.int64)
    ipa = np.zeros(len(pn.P), dtype=np.int64)
    first[rows], ipa[rows] = bfirst, bipa
    return (_rows(pn, keep), _rows(at, keep), BlockUnits(first[keep], ipa[keep]))


def _rows(dc, keep: np.ndarray):
    """A dataclass of per-page arrays, restricted to the rows `keep`."""
    return replace(dc, **{f.name: getattr(dc, f.name)[keep] for f in fields(dc)})


def _writes_page(a: Accesses, tlb: TlbHistory, hw: HwNeeds, qq: np.ndarray, pages: np.ndarray,
                 include_data: bool) -> np.ndarray:
    """Does access qq write `pages` (a hardware update; a data store if include_data)?"""
    w = hw.need_leaf[qq] & (a.leaf_pg[qq] == pages)
    for h in hw.haft:
        w |= h.need[qq] & (h.page[qq] == pages)
    if include_data:
        ds = a.isS[qq] if tlb.data is None else tlb.data[qq] & a.isS[qq]
        w |= ds & (a.dp[qq] == pages)
    return w


@dataclass
class TranslationInputs:
    """The FaultInfo fields (model.policies) of each page's first need, as a translation
    fault (Vm.s1ptw_fault for a descriptor read, Vm._attempt for a data access)."""
    s1ptw: np.ndarray
    instruction: np.ndarray
    wnr: np.ndarray               # data: a store (CAS reports 0 on a translation fault)
    walk_writes_page: np.ndarray  # the oracle's lookahead (Vm.oracle_walk_writes)


def _translation_inputs(a: Accesses, tlb: TlbHistory, hw: HwNeeds, pn: PageNeeds,
                        kindI: np.ndarray, lookahead: bool) -> TranslationInputs:
    path1, q1 = pn.path1, pn.q1
    if lookahead:
        wwp = path1 & _writes_page(a, tlb, hw, q1, pn.P, False)
    else:
        wwp = np.zeros(len(q1), dtype=bool)         # no policy of the group reads it
    return TranslationInputs(s1ptw=path1, instruction=a.isX[q1],
                             wnr=~path1 & a.isS[q1] & (kindI[q1] != CAS), walk_writes_page=wwp)


def _is_write(g, vm, tf: TranslationInputs) -> np.ndarray:
    """kvm_is_write_fault() of the translation faults: the policy's vector twin
    (model.policies.VECTOR_POLICIES)."""
    f = g.flags
    return np.broadcast_to(np.asarray(VECTOR_POLICIES[vm.r.policy](
        tf.s1ptw, False, tf.instruction, tf.wnr, f.ha, f.vm_protected, tf.walk_writes_page),
        dtype=bool), tf.s1ptw.shape)


def _permission_is_write(g, vm, a: Accesses, pn: PageNeeds, oc: FaultOutcome,
                         cut: int) -> int:
    """kvm_is_write_fault() of the permission faults (a hardware update: S1PTW, WnR = 1; a
    store: WnR = 1), asked of the policy: one it does not call a write ends in -EFAULT
    (user_mem_abort) — the reference code's."""
    if not oc.F2.any():
        return cut
    f = g.flags
    w2 = VECTOR_POLICIES[vm.r.policy](pn.tW == T_UPD, True, a.isX[pn.qW], True, f.ha,
                                      f.vm_protected, False)
    odd = oc.F2 & ~np.asarray(w2, dtype=bool)
    if odd.any():
        cut = min(cut, int(pn.qW[odd].min()))
    return cut


def _resolve(vm, pn: PageNeeds, at: PageAttrs, st: np.ndarray, h: np.ndarray,
             w1: np.ndarray | None, blk: np.ndarray, elig: np.ndarray | None,
             cut: int) -> tuple[FaultOutcome, int]:
    """Host.handle_abort for one policy's faults on the pages, vectorised for the simple
    class; the cut moves to the first access whose fault leaves it (a hard page, a uffd
    event resolving a whole slot, a page-table page filled by uffd, a block-backed fault
    other than _block_units' ...)."""
    la = vm.flags_logact[at.slot_no]
    nolog = ~la if elig is None else ~la & ~elig
    hard = at.hard0 | (at.bb & (nolog | blk))
    F1 = ev1m = ev1w = writable1 = None
    h1, st1 = h, st
    if w1 is not None:
        F1, ev1m, ev1w, h1, writable1, st1 = _translation_fault(at, st, h, w1, la)
        risky1 = F1 & (hard | ((ev1m | ev1w) & at.rslot) | ((h == H_MISSING) & at.ispt))
        if risky1.any():
            cut = min(cut, int(pn.q1[risky1].min()))
    F2, ev2w, h2 = _permission_fault(st1, h1, pn.hasW)
    risky2 = F2 & (hard | (ev2w & at.rslot) | (h1 == H_MISSING))
    if risky2.any():
        cut = min(cut, int(pn.qW[risky2].min()))
    return FaultOutcome(F1, w1, ev1m, ev1w, h1, la, writable1, st1, F2, ev2w, h2), cut


def _translation_fault(at: PageAttrs, st, h, w1, la):
    """Host.handle_abort of a translation fault (write flag w1) on each unmapped page:
    Host.gup (host_ops.gup_transition), then Host.map_translation, read-write when writable
    (a write, or a present writable page outside logging)."""
    F1 = st == S2_UNMAPPED
    uffd_missing = (at.uf == UFFD_MISSING) | (at.uf == UFFD_MINOR)
    new, ev_missing, ev_wp = gup_transition(h, w1, uffd_missing)
    ev1m = F1 & ev_missing
    ev1w = F1 & ev_wp
    h1 = np.where(F1, new, h).astype(np.int8)
    writable1 = maps_writable(w1, h1, la, at.ro)
    st1 = np.where(F1, np.where(writable1, S2_RW, S2_RO), st).astype(np.int8)
    return F1, ev1m, ev1w, h1, writable1, st1


def _permission_fault(st1, h1, has_write):
    """Host.handle_abort of a permission fault (a write) on each read-only page with a write
    need: (fault, uffd WP event, host state after).  Host.gup on a write
    (host_ops.gup_transition): zero page, KSM page, uffd-wp page -> writable (CoW, uffd WP
    event); then Host.relax_permission maps it read-write.  A missing page is left to the
    reference code (_resolve's cut)."""
    F2 = (st1 == S2_RO) & has_write
    if not F2.any():
        return F2, F2, h1
    new2, _, ev_wp2 = gup_transition(h1, True, False)
    return F2, F2 & ev_wp2, np.where(F2, new2, h1).astype(np.int8)


@dataclass
class FaultEffects:
    """What one FaultOutcome does before the cut, to apply to each of its policies."""
    changed: np.ndarray       # pages whose stage 2 and host state change
    s2new: np.ndarray         # their new stage-2 states
    hnew: np.ndarray          # their new host states
    dirty: np.ndarray         # pages marked dirty (mark_page_dirty_in_slot)
    s1ptw_tf: np.ndarray      # pages whose dirty round saw an S1PTW translation fault
    s1ptw_tf_written: np.ndarray  # ... written after it in the chunk (before the cut)
    counts: dict              # stage-2 faults by class
    double: int
    walks: int                # the walks the faults' restarts add
    reads: int                # ... and their descriptor reads
    uffd: list                # events for Group.emit_uffd
    blocks: list              # (first page index, IPA, stage-2 state) of blocks mapped whole


def _apply_faults(g, plan: FaultPlan) -> None:
    """Apply each policy's faults before the cut (policies sharing an outcome share its
    effects), then the group's minimum stage-2 state of the pages."""
    done = {}
    P = plan.pn.P
    for vm, oc in plan.outcomes:
        key = id(oc)
        if key not in done:
            done[key] = _fault_effects(plan, oc)
        e = done[key]
        host, r = vm.host, vm.r
        if e.changed.any():
            Ph = np.compress(e.changed, P)
            host.s2.a[Ph] = e.s2new
            host.host.a[Ph] = e.hnew
        if e.dirty.any():
            host.dirty_all[np.compress(e.dirty, P)] = True
        if e.s1ptw_tf.any():
            host.s1ptw_tf_all[np.compress(e.s1ptw_tf, P)] = True
            host.s1ptw_tf_written_all[np.compress(e.s1ptw_tf_written, P)] = True
        c = r.s2_faults
        for name, v in e.counts.items():
            c[name] += v
        r.double_faults += e.double
        r.walks += e.walks
        r.descriptor_reads += e.reads
        if e.uffd:
            g.emit_uffd(vm, e.uffd)
        for b, ipa, perm in e.blocks:            # Host.map_block
            host.s2.a[b:b + BLOCK_PAGES] = perm
            host.s2_block.a[b:b + BLOCK_PAGES] = ipa
    mnP = np.take(g.vms[0].host.s2.a, P)
    for vm in g.vms[1:]:
        mnP = np.minimum(mnP, np.take(vm.host.s2.a, P))
    g.s2min[P] = mnP
    for b in {b for e in done.values() for b, _ipa, _perm in e.blocks}:
        sl = slice(b, b + BLOCK_PAGES)
        g.s2min[sl] = np.min([vm.host.s2.a[sl] for vm in g.vms], axis=0)


def _fault_effects(plan: FaultPlan, oc: FaultOutcome) -> FaultEffects:
    """Counts (Vm._attempt, Vm.s1ptw_fault: a translation then a permission fault of one
    access on one page is a double fault), the restarts' walks and reads, the new states and
    dirty marks (Host.handle_abort) of the faults before the cut."""
    pn, cut, a, wc = plan.pn, plan.cut, plan.a, plan.wc
    q1, qW, path1 = pn.q1, pn.qW, pn.path1
    A1 = np.zeros(len(pn.P), dtype=bool) if oc.F1 is None else oc.F1 & (q1 < cut)
    A2 = oc.F2 & (qW < cut)
    F1 = A1 if oc.F1 is None else oc.F1
    writable1 = A1 if oc.F1 is None else oc.writable1
    upd2 = A2 & (pn.tW == T_UPD)
    wk1 = A1 & plan.tlb.walk[q1]
    wk2 = A2 & plan.tlb.walk[qW]
    counts = dict(
        s1ptw_translation=int(np.count_nonzero(A1 & path1)),
        data_translation=int(np.count_nonzero(A1 & ~path1)),
        s1ptw_permission=int(np.count_nonzero(upd2)),
        data_permission=int(np.count_nonzero(A2 & ~(pn.tW == T_UPD))))
    double = int(np.count_nonzero(upd2 & F1 & path1 & (q1 == qW)))
    walks = int(np.count_nonzero(wk1)) + int(np.count_nonzero(wk2))
    reads = (int(pn.ord1[A1 & path1].sum())
             + int(np.take(wc.nlev, a.vp[q1[wk1 & ~path1]]).sum())
             + int(np.take(wc.nlev, a.vp[qW[wk2]]).sum()))
    changed = A1 | A2
    s2new = np.compress(changed, np.where(A2, S2_RW, oc.st1)).astype(np.int8)
    hnew = np.compress(changed, np.where(A2, oc.h2, oc.h1))
    dirty = (A1 & writable1 & oc.la) | (A2 & oc.la)
    s1ptw_tf = A1 & path1 & oc.la             # Host.handle_abort: the round's walk faults
    # Host.guest_write after the fault: the page was unmapped at the chunk's start, so its
    # first write need (qW) is its only write in the chunk that can precede the next event,
    # and it comes at or after the fault (the first need)
    s1ptw_tf_written = s1ptw_tf & pn.hasW & (qW < cut)
    blocks = []
    if plan.blocks is not None:
        bk = A1 & (plan.blocks.first >= 0)
        blocks = list(zip(plan.blocks.first[bk].tolist(), plan.blocks.ipa[bk].tolist(),
                          oc.st1[bk].tolist()))
    return FaultEffects(changed, s2new, hnew, dirty, s1ptw_tf, s1ptw_tf_written, counts,
                        double, walks, reads,
                        _uffd_events(plan, oc, A1, A2), blocks)


def _uffd_events(plan: FaultPlan, oc: FaultOutcome, A1, A2) -> list:
    """The userfaultfd events of the faults before the cut, in access order: (order key,
    trace position, page index, mode, write, written by the access)."""
    if oc.F1 is None:
        e1 = A1
    else:
        e1 = A1 & (oc.ev1m | oc.ev1w)
    e2 = A2 & oc.ev2w
    if not (e1.any() or e2.any()):
        return []
    pn, a, tlb, hw, gpos = plan.pn, plan.a, plan.tlb, plan.hw, plan.gpos
    P, uf = pn.P, plan.attrs.uf
    wr1 = _writes_page(a, tlb, hw, pn.q1, P, True)
    wrW = _writes_page(a, tlb, hw, pn.qW, P, True)
    evs = []
    for k in np.flatnonzero(e1).tolist():
        evs.append((int(pn.seq1[k]) * 2, int(gpos[pn.q1[k]]), int(P[k]),
                    int(uf[k]) if oc.ev1m[k] else UFFD_WP, bool(oc.w1[k]), bool(wr1[k])))
    for k in np.flatnonzero(e2).tolist():
        evs.append((int(pn.seqW[k]) * 2 + 1, int(gpos[pn.qW[k]]), int(P[k]), UFFD_WP,
                    True, bool(wrW[k])))
    evs.sort()
    return evs
