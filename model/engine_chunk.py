"""The vectorised path of the numpy engine: one chunk of an interval, every policy of a group.

Within an interval (no event) and as long as no access leaves the "simple" class, every
access completes, so the TLB's history, the walks, the hardware updates and the guest's writes
do not depend on the policy; only the stage-2 faults' outcomes do, and those are per page
(DOMAIN.md §6): a page's fate in the interval is fixed by its first need (any access that
reads a descriptor from it or touches it as data) and its first write need:

* unmapped: a translation fault at the first need, whose class (S1PTW or data) and write flag
  (the policy's, VECTOR_POLICIES) decide the new mapping (read-only or read-write), host page
  state, userfaultfd event and dirty mark;
* read-only (then, or from the start): a permission fault at the first write need.

Everything else is first-occurrence reductions.  An access whose fault would leave the simple
class (outside every memslot, read-only slot, THP/hugetlb blocks, userfaultfd resolving a
whole slot, page-table content replaced), or whose TLB entry or walk is unusual, ends the
vectorised part: it runs through the reference code (the caller), and the chunk starts again
after it.

Tiers per chunk [i, j):
1. every access's class (load, store, exec, AT) and *sub-key* (vCPU, 4 KiB VA page) give a
   code per (sub-key, class) computed from the state at chunk start: 1 = settled (a TLB hit
   whose data page already allows the access: nothing happens but the count and, for a
   store, the written page), 0 = only the first occurrence in the chunk matters (the rest hit
   and find their needs met), 2 = every occurrence matters (AT, stage-1 faults);
2. the accesses that matter get the exact TLB history (which walk), their needs, and the
   per-page fault resolution for every policy.
"""
from __future__ import annotations

import numpy as np

from .arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE
from .engine_state import (H_MISSING, H_RW, H_WP, H_ZERO, MUTABLE_BITS, PAGE_MASK, U64)
from .host import S2_RO, S2_RW, S2_UNMAPPED
from .policies import VECTOR_POLICIES
from .results import UffdEvent
from .trace import CAS, KINDS

BIG = np.int64(1 << 62)
CLS_L, CLS_S, CLS_X, CLS_A = 0, 1, 2, 3
_CLASS = {"read64": CLS_L, "ld_preidx": CLS_L, "write64": CLS_S, "st_preidx": CLS_S,
          "cas": CLS_S, "dc_zva": CLS_S, "exec": CLS_X, "at": CLS_A}
CLASS_OF_KIND = np.array([_CLASS[k] for k in KINDS], dtype=np.int8)
T_PATH, T_UPD, T_DATA = 0, 1, 2
ORD = 16                                  # needs per access < ORD (<= 4 + 3 + 1 + 1)
AF64, AP2_64, DBM64, PXN64 = U64(DESC_AF), U64(DESC_AP2), U64(DESC_DBM), U64(DESC_PXN)


class WalkCache:
    """The stage-1 walk of every 4 KiB VA page of the trace over the current page-table
    memory (Vm.s1_walk's rules), without stage-2 checks.  Valid while the tables keep their
    shape (Shared.version) and root; the leaf's AF and AP[2] are read live."""

    def __init__(self, base, ptmem: np.ndarray, root: int, version: int):
        self.version, self.root = version, root
        geo, idx = base.geo, base.idx
        va = base.prep.vpages.astype(np.int64)
        n = len(va)
        L = geo.levels
        self.L = L
        total = idx.total
        nptd = len(ptmem)
        table = np.full(n, root, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        nlev = np.zeros(n, dtype=np.int8)
        pg = np.full((L, n), total, dtype=np.int32)
        tab_off = np.full((max(L - 1, 1), n), -1, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        level = np.full(n, -1, dtype=np.int8)
        leaf = np.zeros(n, dtype=U64)
        leaf_off = np.zeros(n, dtype=np.int64)
        oa_mask = np.int64(geo.oa_mask)
        for l, lev in enumerate(range(geo.start_level, 4)):
            shift = geo.level_shift(lev)
            addr = table + ((va >> shift) & ((1 << geo.index_bits(lev)) - 1)) * 8
            nlev += alive
            pg[l] = np.where(alive, idx.index_v(addr & PAGE_MASK), total)
            off = (addr - base.pt_base) >> 3
            inpt = alive & (off >= 0) & (off < nptd)
            desc = np.where(inpt, ptmem[np.clip(off, 0, max(nptd - 1, 0))], U64(0))
            valid = (desc & U64(1)).astype(bool)
            bit1 = (desc & U64(DESC_TABLE)).astype(bool)
            if lev < 3:
                is_tab = alive & valid & bit1
                is_leaf = alive & valid & ~bit1 & (geo.block_size(lev) is not None)
                if l < L - 1:
                    tab_off[l] = np.where(is_tab, off, -1)
            else:
                is_tab = np.zeros(n, dtype=bool)
                is_leaf = alive & valid & bit1
            found |= is_leaf
            level[is_leaf] = lev
            leaf[is_leaf] = desc[is_leaf]
            leaf_off[is_leaf] = off[is_leaf]
            table = np.where(is_tab, desc.astype(np.int64) & oa_mask, table)
            alive = is_tab
        self.nlev, self.pg, self.tab_off = nlev, pg, tab_off
        self.found, self.level, self.leaf_off = found, level, leaf_off
        self.leafm = leaf & ~U64(MUTABLE_BITS)
        self.dbm = (leaf & DBM64).astype(bool)
        self.pxn = (leaf & PXN64).astype(bool)
        lsh = np.array([geo.level_shift(lv) for lv in range(4)], dtype=np.int64)
        size = np.left_shift(np.int64(1), lsh[np.maximum(level, 0)])
        oa = (leaf.astype(np.int64) & oa_mask & ~(size - 1)) | (va & (size - 1))
        self.dp = np.where(found, idx.index_v(oa & PAGE_MASK), total).astype(np.int32)
        self.leaf_pg = np.where(found, pg[np.maximum(nlev.astype(np.int64) - 1, 0),
                                           np.arange(n)], total).astype(np.int32)
        uo, inv = np.unique(np.where(found, leaf_off, -1), return_inverse=True)
        self.leaf_id = inv.astype(np.int32).reshape(-1)
        self.nleaves = max(1, len(uo))
        # table descriptors (FEAT_HAFT updates): a dense id per descriptor offset
        tflat = tab_off.reshape(-1)
        ut, tinv = np.unique(tflat, return_inverse=True)
        self.tab_id = tinv.astype(np.int32).reshape(tab_off.shape)
        self.ntabs = max(1, len(ut))
        # a descriptor that is a table at two levels, or a table and a leaf (recursive
        # tables): leave such walks to the reference code
        weird = False
        if L > 1:
            lv_of = np.repeat(np.arange(tab_off.shape[0]), n)
            m = tflat >= 0
            pairs = np.unique(np.stack([tflat[m], lv_of[m]]), axis=1) if m.any() else None
            if pairs is not None and pairs.shape[1] != len(np.unique(tflat[m])):
                weird = True
            if m.any() and np.intersect1d(tflat[m], leaf_off[found]).size:
                weird = True
        self.weird = np.full(n, weird, dtype=bool)


def first_by(scratch: np.ndarray, keys: np.ndarray, q: np.ndarray, mask) -> np.ndarray:
    """Per element: the smallest q among elements with the same key where mask holds; BIG
    where none.  `scratch` (dense over keys) holds BIG on entry and on exit."""
    if mask is None:
        km, qm = keys, q
    else:
        if not mask.any():
            return np.full(len(keys), BIG, dtype=np.int64)
        km, qm = keys[mask], q[mask]
    np.minimum.at(scratch, km, qm)
    out = scratch[keys]
    scratch[km] = BIG
    return out


class Scratch:
    """BIG-filled scratch arrays by name, grown on demand."""

    def __init__(self):
        self.a: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, fill=BIG, dtype=np.int64) -> np.ndarray:
        a = self.a.get(name)
        if a is None or len(a) < n:
            a = np.full(n, fill, dtype=dtype)
            self.a[name] = a
        return a


def codes(g, wc, skU: np.ndarray, clsU: np.ndarray) -> np.ndarray:
    """Tier-1 code of each (sub-key, class) from the state at chunk start (module doc)."""
    prep, sh, f = g.base.prep, g.shared, g.flags
    vp = prep.sk_vp[skU]
    tk = prep.sk_tkey[skU]
    st = sh.tst[tk]
    found = wc.found[vp]
    lv = sh.ptmem[wc.leaf_off[vp]]
    dp = wc.dp[vp]
    mn = g.vms[0].host.s2.a[dp]
    for vm in g.vms[1:]:
        mn = np.minimum(mn, vm.host.s2.a[dp])
    isS, isX, isA = clsU == CLS_S, clsU == CLS_X, clsU == CLS_A
    pxn = wc.pxn[vp]
    stale = (st > 0) & (~found | (sh.tleaf[tk] != wc.leafm[vp]) | (sh.tlvl[tk] != wc.level[vp]))
    s1f = ~found | (isX & pxn)
    if not f.ha:
        s1f |= (lv & AF64) == 0
    s1f |= isS & ((lv & AP2_64) != 0) & ~(wc.dbm[vp] & f.hd)
    settled = np.where(isS, (st == 2) & (mn == S2_RW),
                       (st >= 1) & (mn >= S2_RO) & ~(isX & pxn))
    settled &= ~isA & ~stale & (dp != g.base.idx.total)
    code = np.where(settled, 1, np.where(s1f | isA | stale | wc.weird[vp], 2, 0)).astype(np.int8)
    if g.any_stopped:
        code[g.stopped[prep.sk_vcpu[skU]]] = 1
    return code


def chunk(g, i: int, j: int) -> int:
    """Run accesses [i, j) of one interval for group g as far as the vectorised path goes;
    returns the position of the first access it leaves to the reference code, or j."""
    base, prep, sh, f = g.base, g.base.prep, g.shared, g.flags
    tr = base.trace
    wc = g.walkcache()
    C = j - i
    cls = CLASS_OF_KIND[tr.kind[i:j]]
    ci = prep.ck[i:j] + cls
    # ---- tier 1: first occurrence of each (sub-key, class), and its code ---------------------
    val = g.rev[len(g.rev) - C:] + g.fo_base
    g.fo_base += C + 1
    np.maximum.at(g.fo, ci, val)
    isf = g.fo[ci] == val
    U = np.flatnonzero(isf)
    ciU = ci[U]
    codeU = codes(g, wc, ciU >> 2, ciU & 3)
    g.codeT[ciU] = codeU
    cd = g.codeT[ci]
    inter = (cd == 2) | ((cd == 0) & isf)
    I = np.flatnonzero(inter)
    cut = C
    if len(I):
        cut = _tier2(g, wc, i, C, I, ci[I], cls[I])
    # ---- the settled and repeated accesses before the cut --------------------------------------
    n_acc = cut
    if g.any_stopped:
        n_acc = int(np.count_nonzero(~g.stopped[tr.vcpu[i:i + cut]]))
    pos = U[(codeU == 1) & (cls[U] == CLS_S) & (U < cut)]
    if g.any_stopped and len(pos):
        pos = pos[~g.stopped[tr.vcpu[i + pos]]]
    wpages = wc.dp[prep.sk_vp[ci[pos] >> 2]] if len(pos) else None
    for vm in g.vms:
        vm.r.accesses += n_acc
        if wpages is not None:
            vm.host.written_all[wpages] = True
    return i + cut


def _tier2(g, wc, i: int, C: int, I: np.ndarray, ciI: np.ndarray, cls: np.ndarray) -> int:
    base, prep, sh, f, sc = g.base, g.base.prep, g.shared, g.flags, g.scratch
    tr = base.trace
    total = base.idx.total
    m = len(I)
    q = np.arange(m, dtype=np.int64)
    sk = ciI >> 2
    vp = prep.sk_vp[sk]
    tk = prep.sk_tkey[sk]
    isS, isX, isA = cls == CLS_S, cls == CLS_X, cls == CLS_A
    s0 = sh.tst[tk]
    found = wc.found[vp]
    lv = sh.ptmem[wc.leaf_off[vp]]
    af0 = (lv & AF64) != 0
    ap20 = (lv & AP2_64) != 0
    dbm = wc.dbm[vp]
    pxn = wc.pxn[vp]
    s1fc = ~found | (isX & pxn) | (isS & ap20 & ~(dbm & f.hd))
    if not f.ha:
        s1fc |= ~af0
    # ---- the TLB: which accesses walk (Vm._attempt's hit rule) --------------------------------
    sc_tk = sc.get("tk", prep.ntkeys)
    sc_leaf = sc.get("leaf", wc.nleaves)
    fillc = ~isA & ~s1fc
    ff = first_by(sc_tk, tk, q, fillc)
    stc = isS & ~s1fc
    fs = first_by(sc_tk, tk, q, stc)
    lid = wc.leaf_id[vp]
    td = np.where(ap20, first_by(sc_leaf, lid, q, stc & ap20), -1)
    has_ff = ff < BIG
    ffc = np.minimum(ff, m - 1)
    ff_dirty = has_ff & ~isS[ffc] & (td[ffc] < ff)
    D = np.where(s0 == 2, -1, np.minimum(np.where((s0 == 0) & ff_dirty, ff, BIG), fs))
    walk = np.where(isS, q <= D, isA | ((s0 == 0) & (q <= ff)))
    s1fault = np.where(walk, s1fc, isX & pxn)
    complete = ~s1fault
    nlev = wc.nlev[vp].astype(np.int64)
    # ---- hardware updates (Vm.s1_updates) --------------------------------------------------
    if f.ha:
        upd = walk & complete
        if not f.at_sets_af:
            upd &= ~isA
    else:
        upd = np.zeros(m, dtype=bool)
    taf = first_by(sc_leaf, lid, q, upd & ~af0)
    need_af = upd & ~af0 & (q == taf)
    need_dbm = upd & isS & ap20 & (q == td) if f.hd else np.zeros(m, dtype=bool)
    need_leaf = need_af | need_dbm
    if f.always:
        need_leaf |= upd
    leaf_pg = wc.leaf_pg[vp]
    L = wc.L
    haft = []                                   # (level, mask, page, desc offset)
    if f.haft and L > 1:
        tid_l, key_l, lv_l, cand_l = [], [], [], []
        for l in range(L - 1):
            toff = wc.tab_off[l, vp]
            has = upd & (toff >= 0)
            if not has.any():
                continue
            tv = sh.ptmem[np.where(has, toff, 0)]
            cand = has & ((tv & AF64) == 0)
            if not cand.any():
                continue
            cand_l.append((l, cand, toff))
            tid_l.append(wc.tab_id[l, vp][cand])
            key_l.append(q[cand] * 8 + l)
        if cand_l:
            tids = np.concatenate(tid_l)
            keys = np.concatenate(key_l)
            sc_tab = sc.get("tab", wc.ntabs)
            np.minimum.at(sc_tab, tids, keys)
            firstk = sc_tab[tids]
            sc_tab[tids] = BIG
            o = 0
            for (l, cand, toff), kk in zip(cand_l, key_l):
                k = len(kk)
                need = np.zeros(m, dtype=bool)
                need[np.flatnonzero(cand)[kk == firstk[o:o + k]]] = True
                o += k
                haft.append((l, need, wc.pg[l, vp], toff))
    data = complete & ~isA
    dpI = wc.dp[vp]
    # ---- needs not met by every policy's stage 2 at chunk start ------------------------------
    s2s = [vm.host.s2.a for vm in g.vms]

    def unmet(pages, write):
        mn = s2s[0][pages]
        for a in s2s[1:]:
            mn = np.minimum(mn, a[pages])
        if isinstance(write, np.ndarray):
            return np.where(write, mn != S2_RW, mn == S2_UNMAPPED)
        return mn != S2_RW if write else mn == S2_UNMAPPED

    pieces = []                                 # (q, order, page, write, type)

    def add(mask, pages, order, write, typ):
        if mask is not None and not mask.any():
            return
        qq = q[mask] if mask is not None else q
        pp = pages[mask] if mask is not None else pages
        wr = write[mask] if isinstance(write, np.ndarray) else write
        keep = unmet(pp, wr)
        if not keep.any():
            return
        qq, pp = qq[keep], pp[keep]
        wr = wr[keep] if isinstance(wr, np.ndarray) else np.full(len(qq), wr)
        pieces.append((qq, np.full(len(qq), order), pp, wr, np.full(len(qq), typ, np.int8)))

    for l in range(L):
        add(walk & (nlev > l), wc.pg[l][vp], l, False, T_PATH)
    for l, need, pgl, _toff in haft:
        add(need, pgl, L + l, True, T_UPD)
    add(need_leaf, leaf_pg, 2 * L, True, T_UPD)
    add(data, dpI, 2 * L + 1, isS, T_DATA)
    # accesses the vectorised path must not take: a stale TLB entry, or an odd walk
    rq = m
    odd = np.flatnonzero((s0 > 0) & (~found | (sh.tleaf[tk] != wc.leafm[vp])
                                     | (sh.tlvl[tk] != wc.level[vp]))
                         | (wc.weird[vp] & walk))
    if len(odd):
        rq = int(odd[0])
    faults = None
    if pieces:
        faults = _faults(g, pieces, rq, q, isS, isX, walk, nlev, tr.kind[i + I], data, dpI,
                         need_leaf, leaf_pg, haft, i + I)
        rq = faults[0]
    # ---- apply [0, rq) ---------------------------------------------------------------------------
    qv = q < rq
    ffv = np.where(ff < rq, ff, BIG)
    Dv = np.where(D < rq, D, BIG)
    fin = np.where(Dv < BIG, 2, np.where((s0 == 0) & (ffv < BIG), 1, s0)).astype(np.int8)
    sh.tst[tk[qv]] = fin[qv]
    filled = qv & walk & complete & ~isA
    if filled.any():
        sh.tleaf[tk[filled]] = wc.leafm[vp[filled]]
        sh.tlvl[tk[filled]] = wc.level[vp[filled]]
    w_pages = [dpI[qv & data & isS]]
    lo_ = wc.leaf_off[vp]
    if need_af.any():
        o = lo_[need_af & qv]
        sh.ptmem[o] |= AF64
    if need_dbm.any():
        o = lo_[need_dbm & qv]
        sh.ptmem[o] &= ~AP2_64
    w_pages.append(leaf_pg[need_leaf & qv])
    for _l, need, pgl, toff in haft:
        sel = need & qv
        sh.ptmem[toff[sel]] |= AF64
        w_pages.append(pgl[sel])
    wp = np.concatenate(w_pages)
    n_walk = int(np.count_nonzero(walk & qv))
    n_reads = int(nlev[walk & qv].sum())
    n_s1 = int(np.count_nonzero(s1fault & qv))
    for k, vm in enumerate(g.vms):
        r = vm.r
        r.walks += n_walk
        r.descriptor_reads += n_reads
        r.stage1_faults += n_s1
        if len(wp):
            vm.host.written_all[wp] = True
        if faults is not None:
            faults[1][k]()
    return int(I[rq]) if rq < m else C


def _faults(g, pieces, rq, q, isS, isX, walk, nlev, kindI, data, dpI, need_leaf, leaf_pg,
            haft, gpos):
    """Per page: the first need and the first write need among the unmet ones; per policy,
    the translation and permission faults they take (module doc).  Returns the cut (first
    access whose fault leaves the simple class, or rq) and one apply function per policy."""
    base, f, sc = g.base, g.flags, g.scratch
    total = base.idx.total
    nq = np.concatenate([p[0] for p in pieces])
    nord = np.concatenate([p[1] for p in pieces])
    npg = np.concatenate([p[2] for p in pieces]).astype(np.int64)
    nW = np.concatenate([p[3] for p in pieces]).astype(bool)
    nty = np.concatenate([p[4] for p in pieces])
    seq = nq * ORD + nord
    sc_pg = sc.get("pg", total + 1)
    tR = first_by(sc_pg, npg, seq, None)
    iR = np.flatnonzero(seq == tR)
    tW = first_by(sc_pg, npg, seq, nW)
    iWm = np.flatnonzero(nW & (seq == tW))
    sc_i = sc.get("pgi", total + 1, fill=-1)
    P = npg[iR]
    sc_i[npg[iWm]] = iWm
    iW = sc_i[P]
    sc_i[npg[iWm]] = -1
    hasW = iW >= 0
    iWc = np.where(hasW, iW, 0)
    q1, t1 = nq[iR], nty[iR]
    qW, tW_ = nq[iWc], nty[iWc]
    path1 = t1 == T_PATH

    def writes_page(qq, pages, include_data):
        """Does access qq write `pages` (a hardware update; a data store if include_data)?"""
        w = need_leaf[qq] & (leaf_pg[qq] == pages)
        for _l, need, pgl, _toff in haft:
            w |= need[qq] & (pgl[qq] == pages)
        if include_data:
            w |= data[qq] & isS[qq] & (dpI[qq] == pages)
        return w

    instr1 = isX[q1]
    wnr1 = ~path1 & isS[q1] & (kindI[q1] != CAS)
    wwp1 = path1 & writes_page(q1, P, False)
    wr1 = writes_page(q1, P, True)
    wrW = writes_page(qW, P, True)
    outside = base.outside[P]
    ro = base.ro[P]
    blk = base.block_backing[P]
    uf = base.uffd_code[P]
    rslot = base.resolve_slot[P]
    ispt = base.is_pt[P]
    slot_no = base.slot_no[P]
    hard = outside | ro | blk
    per_vm = []
    cut = rq
    for vm in g.vms:
        st = vm.host.s2.a[P]
        h = vm.host.host.a[P]
        F1 = st == S2_UNMAPPED
        w1 = np.asarray(VECTOR_POLICIES[vm.r.policy](path1, False, instr1, wnr1, f.ha,
                                                     f.vm_protected, wwp1), dtype=bool)
        miss = h == H_MISSING
        ev1m = F1 & miss & ((uf == 1) | (uf == 2))
        ev1w = F1 & (h == H_WP) & w1
        h1 = np.where(F1 & miss, np.where(ev1m | w1, H_RW, H_ZERO),
                      np.where(F1 & w1 & ((h == H_ZERO) | (h == H_WP)), H_RW, h)).astype(np.int8)
        la = vm.flags_logact[slot_no]
        writable1 = w1 | ((h1 == H_RW) & ~la & ~ro)
        st1 = np.where(F1, np.where(writable1, S2_RW, S2_RO), st).astype(np.int8)
        F2 = (st1 == S2_RO) & hasW
        ev2w = F2 & (h1 == H_WP)
        h2 = np.where(F2 & ((h1 == H_ZERO) | (h1 == H_WP)), H_RW, h1).astype(np.int8)
        risky1 = F1 & (hard | ((ev1m | ev1w) & rslot) | (miss & ispt))
        risky2 = F2 & (hard | (ev2w & rslot) | (h1 == H_MISSING))
        if risky1.any():
            cut = min(cut, int(q1[risky1].min()))
        if risky2.any():
            cut = min(cut, int(qW[risky2].min()))
        per_vm.append((vm, st, h, F1, w1, ev1m, ev1w, h1, la, writable1, st1, F2, ev2w, h2))

    def make_apply(vm, st, h, F1, w1, ev1m, ev1w, h1, la, writable1, st1, F2, ev2w, h2):
        def apply():
            A1 = F1 & (q1 < cut)
            A2 = F2 & (qW < cut)
            if not (A1.any() or A2.any()):
                return
            host, r = vm.host, vm.r
            s2 = host.s2.a
            s2[P[A1]] = st1[A1]
            s2[P[A2]] = S2_RW
            hA = A1 | A2
            host.host.a[P[hA]] = np.where(A2, h2, h1)[hA]
            dm = (A1 & writable1 & la) | (A2 & la)
            if dm.any():
                host.dirty_all[P[dm]] = True
            c = r.s2_faults
            c["s1ptw_translation"] += int(np.count_nonzero(A1 & path1))
            c["data_translation"] += int(np.count_nonzero(A1 & ~path1))
            upd2 = A2 & (tW_ == T_UPD)
            c["s1ptw_permission"] += int(np.count_nonzero(upd2))
            c["data_permission"] += int(np.count_nonzero(A2 & ~(tW_ == T_UPD)))
            r.double_faults += int(np.count_nonzero(upd2 & F1 & path1 & (q1 == qW)))
            wk1 = A1 & walk[q1]
            wk2 = A2 & walk[qW]
            r.walks += int(np.count_nonzero(wk1)) + int(np.count_nonzero(wk2))
            r.descriptor_reads += (int(nord[iR][A1 & path1].sum())
                                   + int(nlev[q1][wk1 & ~path1].sum())
                                   + int(nlev[qW][wk2].sum()))
            ev_sel = [(A1 & (ev1m | ev1w), seq[iR] * 2, q1, np.where(ev1m, uf, 3), w1, wr1),
                      (A2 & ev2w, seq[iWc] * 2 + 1, qW, np.full(len(P), 3), True, wrW)]
            evs = []
            for sel, key, qq, mode, wflag, wrt in ev_sel:
                if sel.any():
                    wf = np.broadcast_to(wflag, sel.shape)
                    for k in np.flatnonzero(sel).tolist():
                        evs.append((int(key[k]), int(gpos[qq[k]]), int(P[k]), int(mode[k]),
                                    bool(wf[k]), bool(wrt[k])))
            if evs:
                evs.sort()
                g.emit_uffd(vm, evs)
        return apply

    applies = [make_apply(*x) for x in per_vm]
    return cut, applies
