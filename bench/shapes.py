"""Benchmark shapes: a data-heavy and a page-table-heavy guest, as (Scenario, Trace).

* data-heavy: uniform random 8-byte accesses over a densely mapped 64 MiB heap (memstress
  -like), 30 % stores, page tables a few pages;
* page-table-heavy: one 4K page mapped per 2 MiB region over 16 GiB of VA (every page has a
  leaf table of its own), random accesses, 30 % stores, under dirty logging with a harvest
  every `harvest_every` accesses (pre-copy migration): every round re-faults the walked
  page-table pages.
4K granule, 48-bit VA (4 levels), one vCPU, HA + HD.

The columns are generated in place, a chunk of random numbers at a time, so that making a
10^7-access trace needs little more memory than the trace itself (11 bytes per access).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm
from model.trace import Trace

HEAP = 0x1000_0000
CHUNK = 1 << 20


def _kinds(rng, n: int, store_fraction: float = 0.3) -> np.ndarray:
    kind = np.empty(n, dtype=np.uint8)                      # 1 = write64, 0 = read64
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        np.less(rng.random(b - a), store_fraction, out=kind[a:b], casting="unsafe")
    return kind


def data_heavy(n: int, seed: int = 1, heap_pages: int = 16384) -> tuple[Scenario, Trace]:
    slots = (Memslot("pt", 0x4000_0000, 64), Memslot("data", 0x8000_0000, heap_pages))
    scn = Scenario("data-heavy", Machine(), Guest(tcr_ha=True, tcr_hd=True, pt_slot="pt"),
                   slots, Vmm(), (Mapping(HEAP, 0x8000_0000, heap_pages),), ())
    rng = np.random.default_rng(seed)
    va = np.empty(n, dtype=np.uint64)
    for a in range(0, n, CHUNK):
        x = rng.integers(0, heap_pages * 512, min(n, a + CHUNK) - a, dtype=np.uint64)
        x <<= np.uint64(3)
        x += np.uint64(HEAP)
        va[a:a + len(x)] = x
    return scn, Trace(np.zeros(n, np.uint16), va, _kinds(rng, n))


def pt_heavy(n: int, seed: int = 1, regions: int = 8192, harvest_every: int = 100_000,
             af: bool = True, dirty: bool = True) -> tuple[Scenario, Trace]:
    """`af=False` maps the pages old (hardware sets AF: walks write their leaf's page, which
    dirty logging protects: S1PTW permission faults, double faults); `dirty=False` maps them
    clean-writable (the first store's walk clears AP[2] through DBM)."""
    two_m = 2 << 20
    pt_pages = 1 + 1 + 16 + regions + 16                  # root, L1, L2s, one L3 per region
    slots = (Memslot("pt", 0x4000_0000, pt_pages, log_dirty=True),
             Memslot("data", 0x1_0000_0000, regions, log_dirty=True))
    maps = tuple(Mapping(HEAP + r * two_m, 0x1_0000_0000 + r * 4096, af=af, dirty=dirty)
                 for r in range(regions))
    scn = Scenario("pt-heavy", Machine(), Guest(tcr_ha=True, tcr_hd=True, pt_slot="pt"),
                   slots, Vmm(), maps, ())
    rng = np.random.default_rng(seed)
    va = np.empty(n, dtype=np.uint64)
    for a in range(0, n, CHUNK):                           # the region of each access
        x = rng.integers(0, regions, min(n, a + CHUNK) - a, dtype=np.uint64)
        x *= np.uint64(two_m)
        x += np.uint64(HEAP)
        va[a:a + len(x)] = x
    for a in range(0, n, CHUNK):                           # its 8-byte word in the page
        x = rng.integers(0, 512, min(n, a + CHUNK) - a, dtype=np.uint64)
        x <<= np.uint64(3)
        va[a:a + len(x)] += x
    kind = _kinds(rng, n)
    events = []
    for pos in range(harvest_every, n, harvest_every):
        events.append((pos, -1, Step("harvest", slot="pt")))
        events.append((pos, -1, Step("harvest", slot="data")))
    return scn, Trace(np.zeros(n, np.uint16), va, kind, events)


def event_heavy(n: int, seed: int = 1, heap_pages: int = 16384, harvest_every: int = 10**6,
                numa_every: int = 10**5, numa_fraction: float = 0.01,
                age_every: int = 10**6) -> tuple[Scenario, Trace]:
    """The data-heavy guest, warm, under host and guest-kernel events (issue 10): pre-copy
    (dirty logging from the start, a harvest of both slots every `harvest_every` accesses),
    NUMA-balancing hinting unmaps (model/host_ops.py `numa_hint`) of `numa_fraction` of the
    page-table and of the data pages every `numa_every` accesses (random runs of 8 data
    pages, single page-table pages; one op per slot), and an aging pass (test-and-clear AF of every heap PTE,
    MGLRU walk_pte_range) every `age_every` accesses."""
    scn, tr = data_heavy(n, seed, heap_pages)
    slots = tuple(replace(s, log_dirty=False) for s in scn.memslots)
    scn = replace(scn, name="event-heavy", memslots=slots)
    pt, data = slots
    pt_used = 1 + 1 + 1 + -(-heap_pages // 512)          # root, L1, L2, leaf tables
    rng = np.random.default_rng(seed + 1)
    ages = tuple(HEAP + q * 4096 for q in range(heap_pages))
    events = [(0, -1, Step("enable_dirty_log", slot=s.name)) for s in slots]
    for pos in range(1, n):
        here = []
        if pos % harvest_every == 0:
            here += [Step("harvest", slot=s.name) for s in slots]
        if pos % numa_every == 0:                       # one scan's unmaps per slot
            k = max(1, round(numa_fraction * pt_used))
            here.append(Step("numa_hint", slot=pt.name,
                             pages=np.sort(rng.choice(pt_used, k, replace=False))))
            runs = max(1, round(numa_fraction * heap_pages / 8))
            first = np.sort(rng.choice(heap_pages // 8, runs, replace=False)) * 8
            here.append(Step("numa_hint", slot=data.name,
                             pages=(first[:, None] + np.arange(8)).ravel()))
        if pos % age_every == 0:
            here.append(Step("guest_age", vas=ages))
        events += [(pos, -1, st) for st in here]
    return scn, Trace(tr.vcpu, tr.va, tr.kind, events)


def thp_logging(n: int, seed: int = 1, heap_pages: int = 16384,
                harvest_every: int = 10**6) -> tuple[Scenario, Trace]:
    """The data-heavy guest on a THP-backed data slot under pre-copy without eager split
    (issue 10): before logging starts the heap is mapped with 2 MiB stage-2 blocks; each
    write fault on a read-only block under logging maps its 4 KiB page and unmaps the rest
    of the block (docs/semantics.md §3.3)."""
    scn, tr = data_heavy(n, seed, heap_pages)
    pt, data = scn.memslots
    scn = replace(scn, name="thp-logging",
                  memslots=(pt, replace(data, backing="anon_thp")))
    start = min(n, 10**5)                                 # blocks mapped before logging
    events = [(start, -1, Step("enable_dirty_log", slot=s.name)) for s in scn.memslots]
    for pos in range(start + harvest_every, n, harvest_every):
        events += [(pos, -1, Step("harvest", slot=s.name)) for s in scn.memslots]
    return scn, Trace(tr.vcpu, tr.va, tr.kind, events)
