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
   per-page fault resolution for every policy.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE
from .engine_walk import VaWalks, walk_vas
from .engine_state import (CLS_A, CLS_S, CLS_X, H_KSM, H_MISSING, H_RW, H_SWAPPED, H_WP, H_ZERO,
                           MUTABLE_BITS, PA_HARD, PA_PT, PA_RO, PA_RSLOT, PA_UFFD_SHIFT, PAGE_MASK, U64)
from .host import S2_RO, S2_RW, S2_UNMAPPED
from .policies import VECTOR_POLICIES
from .trace import CAS

BIG = np.int32(1 << 30)
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
        return walk_vas(base.geo, base.idx, base.pt_base, base.nptd, sh.read_v, self.root, va)

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
        if not len(offs):
            return True
        base = self.base
        if self._mark is None:
            self._mark = np.zeros(base.nptd + 1, dtype=bool)
        mark = self._mark
        mark[offs] = True
        hit = np.take(mark, self.doff).any(axis=0)       # doff -1 reads the last cell
        mark[offs] = False
        A = np.flatnonzero(hit)
        if not len(A):
            return True
        va = base.prep.vpages[A].astype(np.int64)
        w = self._walk(sh, va)
        nlev, pg, doff, tab_off, found = w.nlev, w.pg, w.doff, w.tab_off, w.found
        level, leaf, leaf_off, dp = w.level, w.leaf, w.leaf_off, w.dp
        lidx, tidx, tlev = self._indexes()
        # ids of new leaves and table descriptors; an aliasing descriptor: rebuild
        new_l, new_t = [], []
        lid = np.zeros(len(A), dtype=np.int32)
        for k, (o, fd) in enumerate(zip(leaf_off.tolist(), found.tolist())):
            if not fd:
                o = -1
            elif o in tlev:
                return False
            i = lidx.get(o)
            if i is None:
                i = lidx[o] = len(self.leaf_off_u) + len(new_l)
                new_l.append(o)
            lid[k] = i
        tid = np.zeros(tab_off.shape, dtype=np.int32)
        for l in range(tab_off.shape[0]):
            for k, o in enumerate(tab_off[l].tolist()):
                if o >= 0 and (o in lidx or tlev.get(o, l) != l):
                    return False
                i = tidx.get(o)
                if i is None:
                    i = tidx[o] = len(self.tab_off_u) + len(new_t)
                    new_t.append(o)
                    tlev[o] = l
                tid[l, k] = i
        if new_l:
            nl = np.array(new_l, dtype=np.int64)
            self.leaf_off_u = np.concatenate([self.leaf_off_u, nl])
            self.lbits = np.concatenate([self.lbits, self._lbits(sh, nl)])
        if new_t:
            nt = np.array(new_t, dtype=np.int64)
            self.tab_off_u = np.concatenate([self.tab_off_u, nt])
            self.tabaf = np.concatenate([self.tabaf, (sh.read_v(nt) & AF64) != 0])
        self.nlev[A], self.pg[:, A], self.doff[:, A] = nlev, pg, doff
        self.tab_off[:, A], self.tab_id[:, A] = tab_off, tid
        self.level[A], self.dp[A], self.leaf_id[A] = level, dp, lid
        self.leafm[A] = leaf & ~U64(MUTABLE_BITS)
        self.leaf_pg[A] = np.where(found, pg[np.maximum(nlev.astype(np.int64) - 1, 0),
                                             np.arange(len(A))], base.idx.total)
        self.sfx[A] = self._sfx(found, leaf, dp)
        rd = np.arange(self.L)[:, None] < nlev[None, :]
        self.path_pages = np.union1d(self.path_pages, pg[rd])
        vmark = np.zeros(len(self.nlev), dtype=bool)
        vmark[A] = True
        self._stale(sh, np.flatnonzero(vmark[self.tkey_vp]))
        return True

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
    (Vm.s1_check for the fault flag; Vm._attempt's hit rule for "settled".)"""
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
    s1f = ~found | (isX & pxn) | (isS & ap2 & ~(dbm & hd))
    if not ha:
        s1f |= ~af
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


def chunk(g, i: int, j: int) -> int:
    """Run accesses [i, j) of one interval for group g as far as the vectorised path goes;
    returns the position of the first access it leaves to the reference code, or j."""
    base, prep, f = g.base, g.base.prep, g.flags
    tr = base.trace
    wc = g.walkcache()
    C = j - i
    lut, _ = _code_lut(f.ha, f.hd)
    # ---- tier 1: first occurrence in [i, j) of each (sub-key, class), and its code ------------
    # stamps fo_base + C - p (p: position in the chunk) are larger than any earlier chunk's, and
    # the first occurrence has the largest: after the blocks up to p are stamped, an access is
    # the first of its (sub-key, class) iff it holds the stamp
    r0 = len(g.rev) - C
    fb = np.int32(g.fo_base)
    g.fo_base += C + 1
    Is, CIs, Us, codes_ = [], [], [], []
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
            Us.append(U + b0)
            codes_.append((ciU, codeU))
        inter = np.add(np.take(g.codeT, ci), isf, dtype=np.int8) > 1
        I = np.flatnonzero(inter)
        if len(I):
            Is.append(I + b0)
            CIs.append(np.take(ci, I))
    cut = C
    if Is:
        if len(Is) > 1:
            I, ciI = np.concatenate(Is), np.concatenate(CIs)
        else:
            I, ciI = Is[0], CIs[0]
        cut = _tier2(g, wc, i, C, I, ciI)
    # ---- the settled and repeated accesses before the cut --------------------------------------
    n_acc = cut
    if g.any_stopped:
        n_acc = int(np.count_nonzero(~g.stopped[tr.vcpu[i:i + cut]]))
    wps = []
    for U, (ciU, codeU) in zip(Us, codes_):
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
            vm.host.written_all[wpages] = True
    return i + cut


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
    g.dunT[ciU] = np.where(cls == CLS_S, mn != S2_RW, mn == S2_UNMAPPED)
    if g.any_stopped:
        codeU[g.stopped[np.take(prep.sk_vcpu, skU)]] = K_SETTLED
    return codeU


def _tier2(g, wc, i: int, C: int, I: np.ndarray, ciI: np.ndarray) -> int:
    base, prep, sh, f, sc = g.base, g.base.prep, g.shared, g.flags, g.scratch
    tr = base.trace
    m = len(I)
    q = np.arange(m, dtype=np.int32)
    sk = ciI >> 2
    cls = (ciI & 3).astype(np.int8)
    vp = np.take(prep.sk_vp, sk)
    tk = np.take(prep.sk_tkey, sk)
    isS = cls == CLS_S
    s0 = np.take(sh.tst, tk)
    sfx = np.take(wc.sfx, vp)
    lid = np.take(wc.leaf_id, vp)
    lb = np.take(wc.lbits, lid)
    s1fc = np.take(g.s1T, ciI)
    any_s1 = bool(s1fc.any())
    isA = cls == CLS_A
    any_A = bool(isA.any())
    ap20 = (lb & 2) != 0
    any_ap2 = bool(ap20.any())
    simple = not any_s1 and not any_A           # every access would complete a walk
    # ---- the TLB: which accesses walk (Vm._attempt's hit rule) --------------------------------
    sc_tk = sc.get("tk", prep.ntkeys)
    sc_leaf = sc.get("leaf", wc.nleaves)
    ff = first_by(sc_tk, tk, q, None if simple else ~isA & ~s1fc)
    s00 = s0 == 0
    td = None
    if simple and not any_ap2 and not (s0 == 1).any():
        # every access completes and every leaf is dirty: an invalid entry is filled dirty by
        # the key's first access (the only one that walks), a dirty one stays
        walk = s00 & (q == ff)
        D = np.where(s00, ff, -1)
    else:
        stc = isS if not any_s1 else isS & ~s1fc
        fs = first_by(sc_tk, tk, q, stc)
        ffc = np.minimum(ff, m - 1)
        ff_dirty = (ff < BIG) & ~np.take(isS, ffc)
        if any_ap2:
            td = np.where(ap20, first_by(sc_leaf, lid, q, stc & ap20), -1)
            ff_dirty &= np.take(td, ffc) < ff
        D = np.where(s0 == 2, -1, np.minimum(np.where(s00 & ff_dirty, ff, BIG), fs))
        walk = np.where(isS, q <= D, s00 & (q <= ff))
        if any_A:
            walk |= isA
    isX = cls == CLS_X
    if any_s1:
        pxn = (sfx & F_PXN) != 0
        s1fault = np.where(walk, s1fc, isX & pxn)
        complete = ~s1fault
    else:
        s1fault = None                          # no stage-1 fault (PXN implies one)
        complete = None
    # ---- hardware updates (Vm.s1_updates) --------------------------------------------------
    need_af = need_dbm = None
    need_leaf = None
    upd = None
    if f.ha:
        upd = walk if complete is None else walk & complete
        if any_A and not f.at_sets_af:
            upd = upd & ~isA
        af0 = (lb & 1) != 0
        if not af0.all():
            taf = first_by(sc_leaf, lid, q, upd & ~af0)
            need_af = upd & ~af0 & (q == taf)
            need_leaf = need_af
        if f.hd and any_ap2:
            need_dbm = upd & isS & ap20 & (q == td)
            need_leaf = need_dbm if need_leaf is None else need_leaf | need_dbm
        if f.always:
            need_leaf = upd if need_leaf is None else need_leaf | upd
    L = wc.L
    haft = []                                   # (level, need mask, page, tab id)
    if f.haft and L > 1 and upd is not None and upd.any():
        cands = []
        for l in range(L - 1):
            tid = np.take(wc.tab_id[l], vp)
            cand = upd & (np.take(wc.tab_off[l], vp) >= 0)
            cand &= ~np.take(wc.tabaf, tid)
            if cand.any():
                cands.append((l, cand, tid))
        if cands:
            tids = np.concatenate([np.compress(c, t) for _l, c, t in cands])
            keys = np.concatenate([np.compress(c, q) * 8 + l for l, c, _t in cands])
            sc_tab = sc.get("tab", wc.ntabs)
            np.minimum.at(sc_tab, tids, keys)
            firstk = np.take(sc_tab, tids)
            sc_tab[tids] = BIG
            o = 0
            for l, cand, tid in cands:
                idx = np.flatnonzero(cand)
                need = np.zeros(m, dtype=bool)
                need[idx[keys[o:o + len(idx)] == firstk[o:o + len(idx)]]] = True
                o += len(idx)
                haft.append((l, need, np.take(wc.pg[l], vp), tid))
    if need_leaf is None:
        need_leaf = np.zeros(m, dtype=bool)
        any_leaf = False
    else:
        any_leaf = bool(need_leaf.any())
    data = complete if not any_A else (~isA if complete is None else complete & ~isA)
    dpI = np.take(wc.dp, vp)
    leaf_pg = np.take(wc.leaf_pg, vp)
    # ---- needs not met by every policy's stage 2 at chunk start ------------------------------
    s2min = g.s2min
    pieces = []                                 # (q, order, page, write, type)
    wI = np.flatnonzero(walk)
    vpW = np.take(vp, wI)
    nlW = np.take(wc.nlev, vpW)
    if len(wI) and not g.paths_mapped(wc):
        pgW = np.take(wc.pg, vpW, axis=1)
        un = np.take(s2min, pgW) == S2_UNMAPPED
        if un.any():
            un &= np.arange(L)[:, None] < nlW
            ll, kk = np.nonzero(un)
            pieces.append((wI[kk], ll, pgW[ll, kk], np.zeros(len(kk), bool),
                           np.full(len(kk), T_PATH, np.int8)))

    def add(idx, pages, order, write, typ, unmet=False):
        if not len(idx):
            return
        pp = np.take(pages, idx)
        if unmet:                               # known unmet at chunk start
            nk = len(idx)
            pieces.append((idx, np.full(nk, order), pp, np.take(write, idx),
                           np.full(nk, typ, np.int8)))
            return
        mnp = np.take(s2min, pp)
        if isinstance(write, np.ndarray):
            wr = np.take(write, idx)
            keep = np.where(wr, mnp != S2_RW, mnp == S2_UNMAPPED)
        else:
            wr = np.full(len(idx), write)
            keep = mnp != S2_RW if write else mnp == S2_UNMAPPED
        if keep.any():
            nk = int(np.count_nonzero(keep))
            pieces.append((np.compress(keep, idx), np.full(nk, order), np.compress(keep, pp),
                           np.compress(keep, wr), np.full(nk, typ, np.int8)))

    for l, need, pgl, _tid in haft:
        add(np.flatnonzero(need), pgl, L + l, True, T_UPD)
    if any_leaf:
        add(np.flatnonzero(need_leaf), leaf_pg, 2 * L, True, T_UPD)
    dun = np.take(g.dunT, ciI)
    add(np.flatnonzero(dun if data is None else dun & data), dpI, 2 * L + 1, isS, T_DATA,
        unmet=True)
    # accesses the vectorised path must not take: a stale TLB entry, or an odd walk
    rq = m
    odd = (s0 > 0) & np.take(wc.stale_cand, tk)
    if wc.any_weird:
        odd |= ((sfx & F_WEIRD) != 0) & walk
    if odd.any():
        rq = int(np.argmax(odd))
    applies = None
    if pieces:
        rq, applies = _faults(g, pieces, rq, isS, isX, walk, tr.kind[i + I], data, dpI,
                              need_leaf, leaf_pg, haft, i + I, vp, wc)
    # ---- apply [0, rq): shared state ----------------------------------------------------------
    full = rq == m
    if not full:
        n_wk = int(np.searchsorted(wI, rq))
        wI, vpW, nlW = wI[:n_wk], vpW[:n_wk], nlW[:n_wk]
        ff = np.where(ff < rq, ff, BIG)
        D = np.where(D < rq, D, BIG)
    fin = np.where(D < BIG, 2, np.where(s00 & (ff < BIG), 1, s0)).astype(np.int8)
    if full:
        sh.tst[tk] = fin
    else:
        sh.tst[tk[:rq]] = fin[:rq]
    # TLB fills: every walk that completes (not AT)
    if simple:
        fI = wI
    else:
        fl = np.take(walk & (~isA if complete is None else complete & ~isA), wI)
        fI = np.compress(fl, wI)
    if len(fI):                                 # cached leaf: Shared.sync_tlb
        sh.tfill[np.take(tk, fI)] = True

    def upto(mask):
        return mask if full else mask[:rq]
    ds = isS if data is None else isS & data
    w_pages = [np.compress(upto(ds), dpI[:rq] if not full else dpI)]
    if need_af is not None:
        ls = np.compress(upto(need_af), lid[:rq] if not full else lid)
        sh.vals[sh.positions(np.take(wc.leaf_off_u, ls))] |= AF64
        wc.lbits[ls] |= np.uint8(1)
    if need_dbm is not None:
        ls = np.compress(upto(need_dbm), lid[:rq] if not full else lid)
        sh.vals[sh.positions(np.take(wc.leaf_off_u, ls))] &= ~AP2_64
        wc.lbits[ls] &= np.uint8(0xFD)
    if any_leaf:
        w_pages.append(np.compress(upto(need_leaf), leaf_pg[:rq] if not full else leaf_pg))
    for _l, need, pgl, tid in haft:
        sel = upto(need)
        ts = np.compress(sel, tid[:rq] if not full else tid)
        sh.vals[sh.positions(np.take(wc.tab_off_u, ts))] |= AF64
        wc.tabaf[ts] = True
        w_pages.append(np.compress(sel, pgl[:rq] if not full else pgl))
    wp = np.concatenate(w_pages) if len(w_pages) > 1 else w_pages[0]
    n_walk = len(wI)
    n_reads = int(nlW.sum())
    n_s1 = 0 if s1fault is None else int(np.count_nonzero(upto(s1fault)))
    for vm in g.vms:
        r = vm.r
        r.walks += n_walk
        r.descriptor_reads += n_reads
        r.stage1_faults += n_s1
        if len(wp):
            vm.host.written_all[wp] = True
    if applies is not None:
        applies()
    return int(I[rq]) if rq < m else C


def _faults(g, pieces, rq, isS, isX, walk, kindI, data, dpI, need_leaf, leaf_pg, haft,
            gpos, vp, wc):
    """Per page: the first need and the first write need among the unmet ones; per policy,
    the translation and permission faults they take (module doc).  Returns the cut (the first
    access whose fault leaves the simple class, or rq) and a function applying the faults
    before the cut to every policy."""
    base, f, sc = g.base, g.flags, g.scratch
    total = base.idx.total
    if len(pieces) == 1:
        nq, nord, npg, nW, nty = pieces[0]
    else:
        nq, nord, npg, nW, nty = (np.concatenate([p[k] for p in pieces]) for k in range(5))
    nq = nq.astype(np.int64)
    npg = npg.astype(np.int64)
    nW = nW.astype(bool)
    seq = nq * ORD + nord
    sc_pg = sc.get("pg", total + 1, dtype=np.int64, fill=np.int64(1) << 62)
    np.minimum.at(sc_pg, npg, seq)
    tR = np.take(sc_pg, npg)
    iR = np.flatnonzero(seq == tR)
    sc_pg[npg] = np.int64(1) << 62
    if nW.any():
        np.minimum.at(sc_pg, npg[nW], seq[nW])
        tW = np.take(sc_pg, npg)
        sc_pg[npg] = np.int64(1) << 62
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
    q1, t1 = nq[iR], nty[iR]
    qW, tWty = nq[iWc], nty[iWc]
    path1 = t1 == T_PATH

    def writes_page(qq, pages, include_data):
        """Does access qq write `pages` (a hardware update; a data store if include_data)?"""
        w = need_leaf[qq] & (leaf_pg[qq] == pages)
        for _l, need, pgl, _tid in haft:
            w |= need[qq] & (pgl[qq] == pages)
        if include_data:
            ds = isS[qq] if data is None else data[qq] & isS[qq]
            w |= ds & (dpI[qq] == pages)
        return w

    pa = np.take(base.pattr, P)
    hard0 = (pa & PA_HARD) != 0
    bb = np.take(base.block_backing, P)
    ro = (pa & PA_RO) != 0
    rslot = (pa & PA_RSLOT) != 0
    ispt = (pa & PA_PT) != 0
    uf = pa >> PA_UFFD_SHIFT
    slot_no = np.take(base.slot_no, P)
    sts = [np.take(vm.host.s2.a, P) for vm in g.vms]
    any_f1 = any(bool((st == S2_UNMAPPED).any()) for st in sts)
    if any_f1:
        instr1 = isX[q1]
        wnr1 = ~path1 & isS[q1] & (kindI[q1] != CAS)
        wwp1 = path1 & writes_page(q1, P, False)
    outcomes = []
    cut = rq
    reps = []                                   # (inputs, outcome) computed so far
    for vm, st in zip(g.vms, sts):
        h = np.take(vm.host.host.a, P)
        if any_f1:
            w1 = np.broadcast_to(np.asarray(VECTOR_POLICIES[vm.r.policy](
                path1, False, instr1, wnr1, f.ha, f.vm_protected, wwp1), dtype=bool), P.shape)
        else:
            w1 = None
        lkey = vm.flags_logact.tobytes()
        # a fault in a block-backed slot may map or split a block (Host.map_translation,
        # relax_permission) unless the slot is logging and the page is not in a block
        blk = bb & (np.take(vm.host.s2_block.a, P) >= 0) if bb.any() else bb
        oc = None
        for (st_, h_, w1_, lkey_, blk_), oc_ in reps:
            if (lkey_ == lkey and np.array_equal(st_, st) and np.array_equal(h_, h)
                    and (w1 is None or np.array_equal(w1_, w1)) and np.array_equal(blk_, blk)):
                oc = oc_
                break
        if oc is None:
            la = vm.flags_logact[slot_no]
            hard = hard0 | (bb & (~la | blk))
            if any_f1:
                F1 = st == S2_UNMAPPED
                miss = h == H_MISSING
                ev1m = F1 & miss & ((uf == 1) | (uf == 2))
                ev1w = F1 & (h == H_WP) & w1
                # Host.gup: missing -> uffd/new page/zero page; swapped -> swapped in
                # (do_swap_page: writable, no uffd); zero/wp -> writable on a write
                cow = (h == H_ZERO) | (h == H_KSM) | (h == H_WP)
                h1 = np.where(F1 & miss, np.where(ev1m | w1, H_RW, H_ZERO),
                              np.where(F1 & ((h == H_SWAPPED) | (w1 & cow)),
                                       H_RW, h)).astype(np.int8)
                writable1 = w1 | ((h1 == H_RW) & ~la & ~ro)
                st1 = np.where(F1, np.where(writable1, S2_RW, S2_RO), st).astype(np.int8)
                risky1 = F1 & (hard | ((ev1m | ev1w) & rslot) | (miss & ispt))
                if risky1.any():
                    cut = min(cut, int(q1[risky1].min()))
            else:
                F1 = ev1m = ev1w = writable1 = None
                h1, st1 = h, st
            F2 = (st1 == S2_RO) & hasW
            ev2w = F2 & (h1 == H_WP)
            h2 = np.where(F2 & ((h1 == H_ZERO) | (h1 == H_KSM) | (h1 == H_WP)), H_RW,
                          h1).astype(np.int8)
            risky2 = F2 & (hard | (ev2w & rslot) | (h1 == H_MISSING))
            if risky2.any():
                cut = min(cut, int(qW[risky2].min()))
            oc = (F1, w1, ev1m, ev1w, h1, la, writable1, st1, F2, ev2w, h2)
            reps.append(((st, h, w1, lkey, blk), oc))
        outcomes.append((vm, oc))

    def apply():
        done = {}
        for vm, oc in outcomes:
            F1, w1, ev1m, ev1w, h1, la, writable1, st1, F2, ev2w, h2 = oc
            key = id(oc)
            if key not in done:
                A1 = np.zeros(len(P), dtype=bool) if F1 is None else F1 & (q1 < cut)
                A2 = F2 & (qW < cut)
                if F1 is None:
                    F1 = ev1m = ev1w = writable1 = A1
                upd2 = A2 & (tWty == T_UPD)
                wk1 = A1 & walk[q1]
                wk2 = A2 & walk[qW]
                counts = dict(
                    s1ptw_translation=int(np.count_nonzero(A1 & path1)),
                    data_translation=int(np.count_nonzero(A1 & ~path1)),
                    s1ptw_permission=int(np.count_nonzero(upd2)),
                    data_permission=int(np.count_nonzero(A2 & ~(tWty == T_UPD))))
                double = int(np.count_nonzero(upd2 & F1 & path1 & (q1 == qW)))
                walks = int(np.count_nonzero(wk1)) + int(np.count_nonzero(wk2))
                reads = (int(nord[iR][A1 & path1].sum())
                         + int(np.take(wc.nlev, vp[q1[wk1 & ~path1]]).sum())
                         + int(np.take(wc.nlev, vp[qW[wk2]]).sum()))
                hA = A1 | A2
                s2new = np.compress(hA, np.where(A2, S2_RW, st1)).astype(np.int8)
                hnew = np.compress(hA, np.where(A2, h2, h1))
                dm = (A1 & writable1 & la) | (A2 & la)
                evs = []
                e1 = A1 & (ev1m | ev1w)
                e2 = A2 & ev2w
                if e1.any() or e2.any():
                    wr1 = writes_page(q1, P, True)
                    wrW = writes_page(qW, P, True)
                    for k in np.flatnonzero(e1).tolist():
                        evs.append((int(seq[iR][k]) * 2, int(gpos[q1[k]]), int(P[k]),
                                    int(uf[k]) if ev1m[k] else 3, bool(w1[k]), bool(wr1[k])))
                    for k in np.flatnonzero(e2).tolist():
                        evs.append((int(seq[iWc][k]) * 2 + 1, int(gpos[qW[k]]), int(P[k]), 3,
                                    True, bool(wrW[k])))
                    evs.sort()
                done[key] = (hA, s2new, hnew, dm, counts, double, walks, reads, evs)
            hA, s2new, hnew, dm, counts, double, walks, reads, evs = done[key]
            host, r = vm.host, vm.r
            if hA.any():
                Ph = np.compress(hA, P)
                host.s2.a[Ph] = s2new
                host.host.a[Ph] = hnew
            if dm.any():
                host.dirty_all[np.compress(dm, P)] = True
            c = r.s2_faults
            for name, v in counts.items():
                c[name] += v
            r.double_faults += double
            r.walks += walks
            r.descriptor_reads += reads
            if evs:
                g.emit_uffd(vm, evs)
        # the group's minimum stage-2 state
        mnP = np.take(g.vms[0].host.s2.a, P)
        for vm in g.vms[1:]:
            mnP = np.minimum(mnP, np.take(vm.host.s2.a, P))
        g.s2min[P] = mnP

    return cut, apply
