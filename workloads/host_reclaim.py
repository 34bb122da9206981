"""Calibrated reclaim: the host takes guest memory away, coldest pages first (issue 9).

Two scenarios on the modelled clock (workloads/clock.py), both through the host-operation
interface (`swap_out` page sets, model/host_ops.py: stage 2 unmapped through the MMU
notifier, the page swapped until the guest touches it again):

* `reclaim`: kswapd under memory pressure (mm/vmscan.c balance_pgdat -> shrink_folio_list)
  at a rate in MB/s, in batches; each batch takes the pages the host's LRU holds coldest.
* `far_memory`: proactive reclaim of pages idle for at least cold_age_s (zswap-style far
  memory, Lagar-Cavilla et al., ASPLOS 2019; MGLRU's proactive reclaim, memory.reclaim).

How the host sees "cold" (`Recency`): a page's last access is the last trace position at
which the guest touched it, found through the stage-1 mappings present at start (VA ->
IPA).  A walk touches the page-table pages on its way: a last-level table page is as
recent as the most recent access to a page it maps (exact for a TLB miss; a TLB hit touches
no table, so real tables are colder: ASSUMPTION, it favours keeping tables mapped), and the
upper-level tables are touched by every access.  KVM's stage 2 keeps the host's view in step:
the hardware sets the stage-2 AF on every access, walks included (kvm_get_vtcr sets
VTCR_EL2.HA), and the LRU reads it through kvm_age_gfn / kvm_test_age_gfn.

Order of coldness: pages never touched (not mapped at start, never accessed) first, then
pages touched only before the window (the warm set's data pages, then its tables), then by
last access; ties in guest-physical address order.  Pages the guest maps during the window (demand paging, fork)
are not followed (ASSUMPTION: the realistic cases are warm guests).
"""
from __future__ import annotations

import numpy as np

from model.scenario import Step
from model.stage1 import build_tables

from .base import Knob, Workload, WorkloadError, host_scenario
from .clock import access_time
from .host import with_events
from .host_timed import FIRST, MB, PAGE, _times

# last access before the window's first: never touched; touched before the window (data,
# then tables: a table is at least as recent as the pages it maps)
NEVER, BEFORE, BEFORE_TABLE = -3, -2, -1
NOT_RECLAIMED = -10
BLOCK = 1 << 22                 # accesses taken at a time


class Recency:
    """The host LRU's view of every guest page (all memslots, address order), advanced
    along the trace."""

    def __init__(self, wl: Workload):
        scn = wl.scenario
        self.trace = wl.trace
        self.slots = sorted(scn.memslots, key=lambda s: s.ipa)
        self.base = np.cumsum([0] + [s.pages for s in self.slots])
        self.total = int(self.base[-1])
        self.ipa = np.array([s.ipa for s in self.slots], dtype=np.int64)
        self.last = np.full(self.total, NEVER, dtype=np.int64)
        self.reclaimed_at = np.full(self.total, NOT_RECLAIMED, dtype=np.int64)
        self.pos = 0
        geo = scn.machine.geometry
        self.gr = geo.granule
        self.shift = self.gr.bit_length() - 1
        maps = sorted(scn.mappings, key=lambda m: m.va)
        self.vstart = np.array([m.va >> self.shift for m in maps], dtype=np.int64)
        self.npg = np.array([m.pages for m in maps], dtype=np.int64)
        self.ipa0 = np.array([m.ipa for m in maps], dtype=np.int64)
        self.moff = np.cumsum([0] + [m.pages for m in maps])[:-1].astype(np.int64)
        leaf = np.zeros(int(self.npg.sum()), dtype=np.int64)
        upper = np.zeros(0, dtype=np.int64)
        if maps:
            t = build_tables(scn)
            for k, m in enumerate(maps):
                for i in range(m.pages):
                    leaf[self.moff[k] + i] = t.leaf_addr[m.va + i * self.gr] & ~(PAGE - 1)
            tables = np.unique(np.array(list(t.descriptors), dtype=np.int64) & ~(PAGE - 1))
            upper = np.setdiff1d(tables, leaf)
            data = np.concatenate([m.ipa + np.arange(m.pages * (self.gr // PAGE),
                                                     dtype=np.int64) * PAGE for m in maps])
            self._set(data, BEFORE)
            self._set(tables, BEFORE_TABLE)
        self.leaf = leaf
        self.upper = self.gidx(upper)
        self.upper = self.upper[self.upper >= 0]

    def gidx(self, ipa: np.ndarray) -> np.ndarray:
        """Global page index of each IPA (-1 outside every memslot)."""
        k = np.searchsorted(self.ipa, ipa, side="right") - 1
        k = np.maximum(k, 0)
        i = (ipa - self.ipa[k]) // PAGE
        ok = (ipa >= self.ipa[k]) & (i < self.base[k + 1] - self.base[k])
        return np.where(ok, self.base[k] + i, -1)

    def _set(self, ipa: np.ndarray, value) -> None:
        g = self.gidx(ipa)
        self.last[g[g >= 0]] = value

    def advance(self, end: int) -> None:
        """Take the accesses [pos, end) into account (in blocks: a long window of a
        repeated or streamed trace is never held whole)."""
        a, self.pos = self.pos, max(self.pos, end)
        for lo in range(a, end, BLOCK):
            self._advance(lo, min(end, lo + BLOCK))

    def _advance(self, a: int, end: int) -> None:
        if not len(self.vstart):
            return
        va = np.asarray(self.trace.va[a:end]).astype(np.int64)
        vg = va >> self.shift
        k = np.searchsorted(self.vstart, vg, side="right") - 1
        kk = np.maximum(k, 0)
        ok = (k >= 0) & (vg < self.vstart[kk] + self.npg[kk])
        pos = np.arange(a, end, dtype=np.int64)[ok]
        k, vg, va = kk[ok], vg[ok], va[ok]
        data = self.ipa0[k] + (vg - self.vstart[k]) * self.gr + ((va & (self.gr - 1))
                                                                   & ~(PAGE - 1))
        leaf = self.leaf[self.moff[k] + vg - self.vstart[k]]
        for ipa in (data, leaf):
            g = self.gidx(ipa)
            rev = g[::-1]
            u, first = np.unique(rev, return_index=True)
            keep = u >= 0
            self.last[u[keep]] = pos[::-1][first[keep]]
        if len(pos):
            self.last[self.upper] = pos[-1]

    def present(self) -> np.ndarray:
        """Pages not reclaimed, or touched (swapped in) since."""
        return (self.reclaimed_at == NOT_RECLAIMED) | (self.last >= self.reclaimed_at)

    def coldest(self, count: int) -> np.ndarray:
        """Up to `count` present pages, coldest first (global indices, ascending)."""
        g = np.flatnonzero(self.present())
        order = np.lexsort((g, self.last[g]))
        return np.sort(g[order[:count]])

    def reclaim(self, g: np.ndarray, pos: int) -> list[Step]:
        """Mark `g` reclaimed at `pos`; the swap_out steps, one per memslot."""
        self.reclaimed_at[g] = pos
        steps = []
        for k, s in enumerate(self.slots):
            sel = g[(g >= self.base[k]) & (g < self.base[k + 1])] - self.base[k]
            if len(sel):
                steps.append(Step("swap_out", slot=s.name, pages=sel))
        return steps


@host_scenario("reclaim",
               "host reclaim under memory pressure (kswapd: balance_pgdat -> "
               "shrink_folio_list -> try_to_unmap): every batch_period_ms the coldest "
               "guest pages (host LRU order, page tables included) are swapped out at "
               "reclaim_mb_s; the MMU notifier unmaps stage 2",
               [Knob("reclaim_mb_s", 100.0, "reclaim rate, MB/s (MiB)", lo=1e-6,
                     source="ASSUMPTION: a host under steady memory pressure; range "
                            "10-1000 MB/s"),
                Knob("batch_period_ms", 10.0, "ms between reclaim batches", lo=1e-3,
                     source="ASSUMPTION: kswapd batches (SWAP_CLUSTER_MAX = 32 pages per "
                            "shrink, many per wake-up); range 1-100 ms"),
                Knob("sustained", True, "the pressure started before the window: memory the "
                     "guest never touched is already reclaimed when it starts (else the "
                     "first batches take that idle memory and none of the working set)",
                     source="ASSUMPTION: a host overcommitted for a while"),
                FIRST])
def reclaim(wl: Workload, *, reclaim_mb_s, batch_period_ms, sustained, first_s):
    if not reclaim_mb_s > 0 or not batch_period_ms > 0:
        raise WorkloadError("reclaim: reclaim_mb_s and batch_period_ms must be > 0")
    per_batch = max(1, round(reclaim_mb_s * MB / PAGE * batch_period_ms / 1000))
    rec = Recency(wl)
    ev = []
    if sustained:                     # swapped before the window: never mapped at stage 2
        ev += [(0, st) for st in rec.reclaim(np.flatnonzero(rec.last == NEVER), 0)]
    for pos, _t in _times(wl, first_s, batch_period_ms / 1000):
        rec.advance(pos)
        ev += [(pos, st) for st in rec.reclaim(rec.coldest(per_batch), pos)]
    return with_events(wl, ev, "reclaim", dict(reclaim_mb_s=reclaim_mb_s,
                                               batch_period_ms=batch_period_ms,
                                               sustained=sustained, first_s=first_s,
                                               pages_per_batch=per_batch))


@host_scenario("far_memory",
               "proactive far-memory reclaim (zswap-style, memory.reclaim / MGLRU): every "
               "scan_period_s the pages idle for at least cold_age_s are swapped out",
               [Knob("cold_age_s", 120.0, "idle time after which a page is cold, s", lo=0.0,
                     source="Lagar-Cavilla et al., ASPLOS 2019: 120 s cold-age threshold"),
                Knob("scan_period_s", 1.0, "s between scans", lo=1e-6,
                     source="ASSUMPTION: one scan per second; range 0.1-60 s"),
                FIRST])
def far_memory(wl: Workload, *, cold_age_s, scan_period_s, first_s):
    """Idle time: pages touched in the window since their last access; pages touched
    only before the window as if touched at its start (ASSUMPTION: the least idle they can
    be); pages never touched are idle for ever."""
    if cold_age_s < 0 or not scan_period_s > 0:
        raise WorkloadError("far_memory: cold_age_s must be >= 0 and scan_period_s > 0")
    ns = access_time(wl).ns
    rec = Recency(wl)
    ev = []
    for pos, t in _times(wl, first_s, scan_period_s):
        rec.advance(pos)
        last_s = np.where(rec.last >= 0, rec.last * ns * 1e-9, 0.0)
        idle = np.where(rec.last == NEVER, np.inf, t - last_s)
        g = np.flatnonzero(rec.present() & (idle >= cold_age_s))
        ev += [(pos, st) for st in rec.reclaim(g, pos)]
    return with_events(wl, ev, "far_memory", dict(cold_age_s=cold_age_s,
                                                  scan_period_s=scan_period_s,
                                                  first_s=first_s))
