"""Page-table-heavy workload generators: few accesses per page, many tables, or guest
page-table stores (the accesses that expose S1PTW faults).

Seeded functions `(seed, profile, **knobs) -> Workload`, laid out by the `linux` guest
profile (workloads/linux.py), which also makes the guest kernel's page-table stores (demand
paging, munmap, fork) trace events.
"""
from __future__ import annotations

import numpy as np

from model.trace import READ64, WRITE64

from .base import Knob, generator, interleave, need, vcpus_knob
from .data import BURST, heap_base
from .linux import LinuxGuest

REGION_BYTES = {"2m": 2 << 20, "1g": 1 << 30}


@generator("sparse", "pt-heavy",
           "sparse touches: one page per 2 MiB or 1 GiB region of a huge reserved VA range "
           "(a sparse array, a hash table over a reservation, a JVM/Go heap arena "
           "reservation): with 4K pages every region needs its own last-level table "
           "(1g: its own level-2 table too)",
           [vcpus_knob(1, "vCPUs sharing the regions"),
            Knob("region", "2m", "region size: 2m or 1g", tuple(REGION_BYTES)),
            Knob("regions", 256, "regions touched"),
            Knob("accesses", 8192, "accesses in all"),
            Knob("write_percent", 0, "percentage of accesses that write"),
            Knob("order", "random", "visit the regions in random or sequential (cyclic) order",
                 ("random", "sequential")),
            BURST])
def sparse(seed, profile, *, vcpus, region, regions, accesses, write_percent, order, burst):
    name = "sparse"
    need(vcpus >= 1 and regions >= 1 and accesses >= 1, name,
         "vcpus, regions and accesses must be >= 1")
    need(0 <= write_percent <= 100, name, "write_percent must be in 0..100")
    size = REGION_BYTES[region]
    gr = profile.geometry.granule
    need(size >= gr, name, "region is smaller than a page")
    base = heap_base(profile, regions * size, name)
    base = -(-base // size) * size
    rng = np.random.default_rng(seed)
    page_in = rng.integers(0, size // gr, regions, dtype=np.int64)   # one page per region
    addr = (base + np.arange(regions, dtype=np.int64) * size + page_in * gr).astype(np.uint64)
    if order == "random":
        idx = rng.integers(0, regions, accesses)
    else:
        idx = np.arange(accesses) % regions
    va = addr[idx] + (rng.integers(0, gr // 8, accesses) * 8).astype(np.uint64)
    kd = np.where(rng.integers(0, 100, accesses) < write_percent, WRITE64, READ64)
    g = LinuxGuest(name, profile)
    g.vma(base, regions * size, "anon")
    vc = np.arange(accesses) % vcpus
    g.run(*interleave([(v, va[vc == v], kd[vc == v]) for v in range(vcpus)], burst))
    g.meta = dict(base=base, region_bytes=size)
    return g.build()


@generator("pointer_chase", "pt-heavy",
           "pointer chasing through a linked list whose nodes are scattered over a large VA "
           "range (graph traversal, B-tree/skip-list lookups, lmbench lat_mem_rd with a "
           "random stride): each hop loads the next pointer, TLB and table locality are poor",
           [vcpus_knob(1, "vCPUs, each chasing the same list from its own start node"),
            Knob("nodes", 4096, "list nodes (each on its own page)"),
            Knob("span_bytes", 64 << 30, "VA range the nodes are scattered over"),
            Knob("hops", 8192, "loads per vCPU"),
            BURST])
def pointer_chase(seed, profile, *, vcpus, nodes, span_bytes, hops, burst):
    name = "pointer_chase"
    need(vcpus >= 1 and nodes >= 2 and hops >= 1, name, "vcpus, hops >= 1, nodes >= 2")
    gr = profile.geometry.granule
    npages = span_bytes // gr
    need(npages >= nodes, name, "span_bytes holds fewer pages than nodes")
    base = heap_base(profile, npages * gr, name)
    rng = np.random.default_rng(seed)
    pages = rng.choice(npages, nodes, replace=False)
    addr = (base + pages.astype(np.int64) * gr
            + rng.integers(0, gr // 64, nodes) * 64).astype(np.uint64)
    cycle = rng.permutation(nodes)              # the list: cycle[i] -> cycle[i + 1]
    g = LinuxGuest(name, profile)
    g.vma(base, npages * gr, "anon")
    parts = []
    for v in range(vcpus):
        start = (v * nodes) // vcpus
        parts.append((v, addr[cycle[(start + np.arange(hops)) % nodes]], READ64))
    g.run(*interleave(parts, burst))
    g.meta = dict(base=base)
    return g.build()


@generator("mmap_churn", "pt-heavy",
           "mmap/munmap churn (allocators returning memory to the OS: glibc malloc of large "
           "blocks, jemalloc/tcmalloc purging, short-lived buffers): each round maps a region "
           "at a random place, writes some of its pages and unmaps the oldest region, so the "
           "guest kernel keeps storing PTEs, allocating and freeing tables",
           [vcpus_knob(1, "vCPUs (threads of the process)"),
            Knob("rounds", 64, "mmap rounds"),
            Knob("region_bytes", 256 << 10, "bytes per mmap"),
            Knob("touches", 64, "accesses per round into the newest region"),
            Knob("live", 4, "regions alive at once (older ones are munmapped)"),
            Knob("span_bytes", 1 << 30, "VA window mmap places regions in"),
            Knob("write_percent", 100, "percentage of accesses that write")])
def mmap_churn(seed, profile, *, vcpus, rounds, region_bytes, touches, live, span_bytes,
               write_percent):
    name = "mmap_churn"
    need(vcpus >= 1 and rounds >= 1 and touches >= 1 and live >= 1, name,
         "vcpus, rounds, touches and live must be >= 1")
    need(0 <= write_percent <= 100, name, "write_percent must be in 0..100")
    gr = profile.geometry.granule
    rpages = -(-region_bytes // gr)
    slots = span_bytes // (rpages * gr)
    need(slots >= live + 1, name, "span_bytes holds too few regions for live + 1")
    base = heap_base(profile, span_bytes, name)
    rng = np.random.default_rng(seed)
    g = LinuxGuest(name, profile)
    alive: list[int] = []
    placed = []
    for r in range(rounds):
        free = sorted(set(range(slots)) - set(alive))
        s = int(rng.choice(free))
        va0 = base + s * rpages * gr
        g.vma(va0, rpages * gr, "anon")
        alive.append(s)
        placed.append(va0)
        va = (va0 + rng.integers(0, rpages, touches) * gr
              + rng.integers(0, gr // 8, touches) * 8).astype(np.uint64)
        kd = np.where(rng.integers(0, 100, touches) < write_percent, WRITE64, READ64)
        g.run(np.arange(touches) % vcpus, va, kd)
        if len(alive) > live:
            old = alive.pop(0)
            g.munmap(base + old * rpages * gr, rpages * gr)
    g.meta = dict(base=base, regions=placed, alive=[base + s * rpages * gr for s in alive])
    return g.build()


@generator("fork", "pt-heavy",
           "fork-like address-space copies (a pre-forking server, Redis BGSAVE, a shell "
           "pipeline): the parent fills its heap, forks children, and the processes take "
           "turns; each fork copies the page tables (a new root per process), and the first "
           "write to a shared page in any of them is a copy-on-write fault",
           [vcpus_knob(1, "vCPUs (threads of the running process)"),
            Knob("heap_bytes", 2 << 20, "heap the parent fills before forking"),
            Knob("children", 3, "child processes (address spaces besides the parent's)"),
            Knob("accesses", 8192, "accesses after the forks, all processes together"),
            Knob("write_percent", 30, "percentage of accesses that write"),
            Knob("slice", 512, "accesses per time slice before a context switch")])
def fork(seed, profile, *, vcpus, heap_bytes, children, accesses, write_percent, slice):
    name = "fork"
    need(vcpus >= 1 and children >= 1 and accesses >= 0 and slice >= 1, name,
         "vcpus, children, slice must be >= 1")
    need(0 <= write_percent <= 100, name, "write_percent must be in 0..100")
    gr = profile.geometry.granule
    pages = -(-heap_bytes // gr)
    base = heap_base(profile, pages * gr, name)
    rng = np.random.default_rng(seed)
    g = LinuxGuest(name, profile)
    g.vma(base, pages * gr, "anon")
    g.run(np.arange(pages) % vcpus, base + np.arange(pages, dtype=np.uint64) * gr, WRITE64)
    for c in range(1, children + 1):
        g.fork(c)
    procs = children + 1
    done, turn = 0, 0
    while done < accesses:
        n = min(slice, accesses - done)
        asid = turn % procs
        g.switch(asid)
        va = (base + rng.integers(0, pages, n) * gr
              + rng.integers(0, gr // 8, n) * 8).astype(np.uint64)
        kd = np.where(rng.integers(0, 100, n) < write_percent, WRITE64, READ64)
        g.run(np.arange(n) % vcpus, va, kd)
        done += n
        turn += 1
    g.meta = dict(base=base, heap_pages=pages)
    return g.build()


@generator("gc", "pt-heavy",
           "a stop-the-world mark-sweep collection of a large heap (JVM/Go/.NET/Boehm): mark "
           "loads the header of each live object in traversal order and sets its bit in a "
           "side mark bitmap; sweep walks the whole heap in address order, loading each "
           "header and threading dead objects onto a free list (a store into the object)",
           [vcpus_knob(2, "GC threads, each marking and sweeping its share of the heap"),
            Knob("heap_bytes", 16 << 20, "heap size"),
            Knob("object_bytes", 4096, "object size (the heap is an array of objects)"),
            Knob("live_percent", 30, "percentage of objects that survive"),
            Knob("cycles", 1, "collections"),
            BURST])
def gc(seed, profile, *, vcpus, heap_bytes, object_bytes, live_percent, cycles, burst):
    name = "gc"
    need(vcpus >= 1 and cycles >= 1, name, "vcpus and cycles must be >= 1")
    need(object_bytes >= 16 and object_bytes % 8 == 0, name,
         "object_bytes must be a multiple of 8, >= 16")
    need(0 <= live_percent <= 100, name, "live_percent must be in 0..100")
    gr = profile.geometry.granule
    nobj = heap_bytes // object_bytes
    need(nobj >= vcpus, name, "fewer objects than GC threads")
    heap_span = -(-nobj * object_bytes // gr) * gr
    bitmap_bytes = -(-((nobj + 7) // 8) // gr) * gr   # one bit per object, whole pages
    base = heap_base(profile, heap_span + (1 << 30) + bitmap_bytes, name)
    bitmap = base + -(-heap_span // (1 << 30)) * (1 << 30)
    rng = np.random.default_rng(seed)
    g = LinuxGuest(name, profile)
    g.vma(base, heap_span, "anon")
    g.vma(bitmap, bitmap_bytes, "anon")
    # the mutator has allocated (written) every object before the first collection
    g.run(np.arange(nobj) % vcpus, base + np.arange(nobj, dtype=np.uint64) * object_bytes,
          WRITE64)
    nlive = round(nobj * live_percent / 100)
    share = np.arange(nobj) * vcpus // nobj            # object -> GC thread (contiguous)
    for _ in range(cycles):
        live = np.zeros(nobj, dtype=bool)
        live[rng.choice(nobj, nlive, replace=False)] = True
        parts = []
        for v in range(vcpus):
            mine = np.flatnonzero(share == v)
            lv = rng.permutation(mine[live[mine]])    # traversal order of the live graph
            va = np.empty(2 * len(lv), dtype=np.uint64)
            va[0::2] = base + lv.astype(np.uint64) * object_bytes      # load the header
            va[1::2] = bitmap + (lv // 64).astype(np.uint64) * 8       # set the mark bit
            kd = np.tile(np.array([READ64, WRITE64], dtype=np.uint8), len(lv))
            parts.append((v, va, kd))
        g.run(*interleave(parts, burst))                                # mark
        parts = []
        for v in range(vcpus):
            mine = np.flatnonzero(share == v)
            dead = ~live[mine]
            hdr = base + mine.astype(np.uint64) * object_bytes
            # each object: load its header, and if dead, store the free-list link into it
            va = np.repeat(hdr, np.where(dead, 2, 1))
            kd = np.full(len(va), READ64, dtype=np.uint8)
            second = np.cumsum(np.where(dead, 2, 1)) - 1
            kd[second[dead]] = WRITE64
            va[second[dead]] += np.uint64(8)
            parts.append((v, va, kd))
        g.run(*interleave(parts, burst))                                # sweep
    g.meta = dict(base=base, bitmap=bitmap, objects=nobj, live_objects=nlive)
    return g.build()


@generator("shared_db", "pt-heavy",
           "a database whose processes share one large buffer (PostgreSQL shared_buffers, an "
           "Oracle SGA): every backend maps the segment at the same address in its own "
           "address space, so each builds its own PTEs to the buffer pages it touched; with "
           "random tuple access over a large buffer most of a backend's leaf tables hold few "
           "PTEs, and page tables reach 5-20 % of RAM (Oracle, mshare cover letter: 300 GB "
           "SGA x 1500 processes -> 878 GB of PTEs; ByteDance: 19 % VmPTE).  The backends' "
           "address spaces are modelled as disjoint VA windows of one, each mapping the same "
           "shmem object (same data pages, its own tables).  Defaults are small; the "
           "realistic map's guest: processes = 100, buffer_mb = 2048, pages_per_process = "
           "2048, accesses = 200000 in a 4 GiB VM (page tables 8.5 % of RAM)",
           [vcpus_knob(4, "vCPUs the backends run on (backend b on vCPU b mod vcpus)"),
            Knob("processes", 16, "backends attached to the shared buffer", lo=1, hi=4096),
            Knob("buffer_mb", 64, "shared buffer size, MB (PostgreSQL shared_buffers: 25 % "
                 "of RAM is the documented starting point; the VM is ram_mb)", lo=1),
            Knob("pages_per_process", 256, "buffer pages each backend has touched (its "
                 "PTEs), spread at random over the buffer", lo=1),
            Knob("private_kb", 256, "private memory per backend (work_mem, caches), KB",
                 lo=0),
            Knob("accesses", 8192, "accesses in all", lo=1),
            Knob("write_percent", 20, "percentage of buffer accesses that write (updates, "
                 "hint bits)", lo=0, hi=100),
            BURST])
def shared_db(seed, profile, *, vcpus, processes, buffer_mb, pages_per_process, private_kb,
              accesses, write_percent, burst):
    name = "shared_db"
    gr = profile.geometry.granule
    bpages = -(-buffer_mb * (1 << 20) // gr)
    need(pages_per_process <= bpages, name, "pages_per_process exceeds the buffer")
    ppages = -(-private_kb * 1024 // gr)
    window = -(-(bpages + ppages) * gr // (1 << 30)) * (1 << 30)    # 1 GiB per backend
    base = heap_base(profile, processes * window, name)
    rng = np.random.default_rng(seed)
    g = LinuxGuest(name, profile)
    obj = None
    own = []                                        # each backend's buffer pages
    for b in range(processes):
        obj = g.vma(base + b * window, bpages * gr, "shmem", obj)
        if ppages:
            g.vma(base + b * window + bpages * gr, ppages * gr, "anon")
        own.append(rng.choice(bpages, pages_per_process, replace=False))
    # every backend's pages, mapped before the window (its PTEs: a warm backend); with
    # demand = true the window faults in the pages it touches instead
    first = []
    for b in range(processes):
        first.append(base + b * window + own[b].astype(np.uint64) * gr)
        first.append(base + b * window + bpages * gr + np.arange(ppages, dtype=np.uint64) * gr)
    g.mapped(np.concatenate(first))
    who = rng.integers(0, processes, accesses)
    priv = rng.random(accesses) < (0.2 if ppages else 0.0)   # ASSUMPTION: 1 in 5 private
    slot = rng.integers(0, pages_per_process, accesses)
    own_a = np.stack(own)
    va = np.where(priv, base + who.astype(np.uint64) * window + bpages * gr
                  + (slot % max(1, ppages)).astype(np.uint64) * gr,
                  base + who.astype(np.uint64) * window
                  + own_a[who, slot].astype(np.uint64) * gr).astype(np.uint64)
    va += (rng.integers(0, gr // 8, accesses) * 8).astype(np.uint64)
    kd = np.where(rng.integers(0, 100, accesses) < write_percent, WRITE64, READ64)
    vc = who % vcpus
    g.run(*interleave([(v, va[vc == v], kd[vc == v]) for v in range(vcpus)], burst))
    g.meta = dict(base=base, window_bytes=window, buffer_pages=bpages)
    w = g.build()
    ram = max(profile.ram_mb * (1 << 20) // 4096, w.meta["pt_pages"] + w.meta["data_pages"])
    w.meta["pt_share"] = round(w.meta["pt_pages"] / ram, 4)
    return w
