"""Data-heavy workload generators: many accesses per page, few pages per table.

Each is a seeded function `(seed, profile, **knobs) -> Workload`; the program's memory is
laid out and faulted in by the `linux` guest profile (workloads/linux.py).  Knobs shared with
the KVM selftests (tools/testing/selftests/kvm/lib/memstress.c, dirty_log_perf_test.c,
access_tracking_perf_test.c) keep their meaning: vcpus (-v), bytes_per_vcpu (-b),
write_percent (-w), random_access (-a), iterations (-i); the backing source (-s) is the
profile knob `backing`.  Each vCPU works on its own region of bytes_per_vcpu, consecutive in
VA as memstress lays them out; vCPUs run concurrently, interleaved in turns of `burst`
accesses.
"""
from __future__ import annotations

import numpy as np

from model.trace import DC_ZVA, READ64, WRITE64

from .base import Knob, WorkloadError, generator, interleave, need, vcpus_knob
from .linux import LinuxGuest, LinuxProfile

BURST = Knob("burst", 64, "accesses a vCPU makes per turn when vCPUs are interleaved")


def heap_base(profile: LinuxProfile, span: int, owner: str) -> int:
    """Where a generator's main VMA starts: 64 GiB, or lower for small VA sizes; 1 GiB
    aligned so that region-based layouts line up with the tables."""
    top = 1 << profile.va_bits
    base = min(1 << 36, top >> 2)
    base &= ~((1 << 30) - 1) if base >= 1 << 30 else ~(profile.geometry.granule - 1)
    if base + span > top:
        raise WorkloadError(f"{owner}: {span:#x} bytes of VA do not fit in va_bits = "
                            f"{profile.va_bits} above {base:#x}")
    return base


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


@generator("stream", "data-heavy",
           "memset/memcpy over each vCPU's buffer (glibc memset: STP stores, or DC ZVA for "
           "zeroing; memcpy: load + store per line), like STREAM or a page-zeroing loop",
           [vcpus_knob(2, "vCPUs, each streaming over its own buffer"),
            Knob("bytes_per_vcpu", 256 << 10, "buffer bytes per vCPU (memcpy: half source, "
                 "half destination)"),
            Knob("op", "memset", "memset (write64), memset_zva (dc_zva), memcpy (read64 + "
                 "write64)", ("memset", "memset_zva", "memcpy")),
            Knob("stride", 64, "bytes between consecutive accesses (64: one per cache line)"),
            Knob("passes", 2, "times each vCPU streams over its buffer"),
            BURST])
def stream(seed, profile, *, vcpus, bytes_per_vcpu, op, stride, passes, burst):
    name = "stream"
    need(vcpus >= 1 and passes >= 1, name, "vcpus and passes must be >= 1")
    need(stride >= 8 and stride % 8 == 0, name, "stride must be a multiple of 8 bytes")
    need(bytes_per_vcpu >= stride * (2 if op == "memcpy" else 1), name,
         "bytes_per_vcpu is smaller than one stride")
    gr = profile.geometry.granule
    per = _round_up(bytes_per_vcpu, gr)
    base = heap_base(profile, per * vcpus, name)
    g = LinuxGuest(name, profile)
    g.vma(base, per * vcpus, "anon")
    parts = []
    for v in range(vcpus):
        lo = base + v * per
        if op == "memcpy":
            half = bytes_per_vcpu // 2 // stride * stride
            off = np.arange(0, half, stride, dtype=np.uint64)
            va = np.empty(2 * len(off), dtype=np.uint64)
            va[0::2] = lo + off                     # load from the source half
            va[1::2] = lo + half + off              # store to the destination half
            kd = np.tile(np.array([READ64, WRITE64], dtype=np.uint8), len(off))
        else:
            va = lo + np.arange(0, bytes_per_vcpu - stride + 1, stride, dtype=np.uint64)
            kd = np.full(len(va), DC_ZVA if op == "memset_zva" else WRITE64, dtype=np.uint8)
        parts.append((v, np.tile(va, passes), np.tile(kd, passes)))
    g.run(*interleave(parts, burst))
    g.meta = dict(base=base, region=per)
    return g.build()


@generator("memstress", "data-heavy",
           "KVM selftests memstress guest code (dirty_log_perf_test, access_tracking_perf_test,"
           " demand_paging_test): each iteration touches every page of the vCPU's region once, "
           "in order or at random, writing with probability write_percent",
           [vcpus_knob(2, "vCPUs (-v)"),
            Knob("bytes_per_vcpu", 4 << 20, "bytes of guest memory per vCPU (-b)"),
            Knob("write_percent", 100, "percentage of accesses that write (-w)"),
            Knob("random_access", False, "pick a random page of the region each access (-a)"),
            Knob("iterations", 4, "passes over the region (-i)"),
            BURST])
def memstress(seed, profile, *, vcpus, bytes_per_vcpu, write_percent, random_access,
              iterations, burst):
    name = "memstress"
    need(vcpus >= 1 and iterations >= 1, name, "vcpus and iterations must be >= 1")
    need(0 <= write_percent <= 100, name, "write_percent must be in 0..100")
    gr = profile.geometry.granule
    pages = bytes_per_vcpu // gr
    need(pages >= 1, name, "bytes_per_vcpu is smaller than one page")
    base = heap_base(profile, pages * gr * vcpus, name)
    rng = np.random.default_rng(seed)
    g = LinuxGuest(name, profile)
    g.vma(base, pages * gr * vcpus, "anon")
    parts = []
    for v in range(vcpus):
        n = pages * iterations
        if random_access:                        # guest_random_u32() % pages
            idx = rng.integers(0, pages, n, dtype=np.int64)
        else:
            idx = np.tile(np.arange(pages, dtype=np.int64), iterations)
        va = (base + v * pages * gr + idx * gr).astype(np.uint64)
        write = rng.integers(0, 100, n) < write_percent
        parts.append((v, va, np.where(write, WRITE64, READ64).astype(np.uint8)))
    g.run(*interleave(parts, burst))
    g.meta = dict(base=base, pages_per_vcpu=pages)
    return g.build()


def zipf_ranks(rng, n_items: int, s: float, size: int) -> np.ndarray:
    """Ranks 0..n_items-1 drawn with P(rank k) proportional to (k+1)^-s (bounded Zipf, as
    YCSB's ZipfianGenerator; inverse-CDF sampling)."""
    w = np.arange(1, n_items + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)


@generator("zipf", "data-heavy",
           "key-value store under a YCSB-style Zipfian load (memcached/Redis GET/SET, or an "
           "LMDB-like mmap'd store with mapping=file): per operation a hash-bucket load, then "
           "a load (GET) or store (SET) of the value; hot keys scattered over the heap",
           [vcpus_knob(2, "vCPUs (server threads)"),
            Knob("keys", 65536, "keys in the store"),
            Knob("value_bytes", 256, "bytes per value slot"),
            Knob("s", 0.99, "Zipf exponent (YCSB: 0.99)"),
            Knob("read_percent", 95, "percentage of GETs (YCSB-B: 95, YCSB-A: 50)"),
            Knob("operations", 4096, "operations in all (2 accesses each)"),
            Knob("mapping", "anon", "heap memory: anon (malloc), shmem (shared memory), file "
                 "(MAP_SHARED file with dirty accounting: read faults map read-only)",
                 ("anon", "shmem", "file")),
            BURST])
def zipf(seed, profile, *, vcpus, keys, value_bytes, s, read_percent, operations, mapping,
         burst):
    name = "zipf"
    need(vcpus >= 1 and keys >= 2 and operations >= 1, name,
         "vcpus, keys and operations must be >= 1 (keys >= 2)")
    need(value_bytes >= 8 and value_bytes % 8 == 0, name, "value_bytes must be a multiple of 8")
    need(s > 0, name, "s must be > 0")
    need(0 <= read_percent <= 100, name, "read_percent must be in 0..100")
    gr = profile.geometry.granule
    index_bytes = _round_up(keys * 8, gr)
    heap_bytes = _round_up(keys * value_bytes, gr)
    base = heap_base(profile, index_bytes + (1 << 30) + heap_bytes, name)
    heap = base + _round_up(index_bytes, 1 << 30)        # index and values in separate VMAs
    rng = np.random.default_rng(seed)
    slot = rng.permutation(keys)                          # rank -> value slot (hot keys spread)
    bucket = rng.permutation(keys)                        # rank -> hash bucket
    g = LinuxGuest(name, profile)
    g.vma(base, index_bytes, "anon")
    g.vma(heap, heap_bytes, mapping)
    ranks = zipf_ranks(rng, keys, s, operations)
    get = rng.integers(0, 100, operations) < read_percent
    va = np.empty(2 * operations, dtype=np.uint64)
    va[0::2] = base + bucket[ranks].astype(np.uint64) * 8
    va[1::2] = heap + slot[ranks].astype(np.uint64) * value_bytes
    kd = np.empty(2 * operations, dtype=np.uint8)
    kd[0::2] = READ64
    kd[1::2] = np.where(get, READ64, WRITE64)
    vc = np.repeat(np.arange(operations) % vcpus, 2)
    parts = [(v, va[vc == v], kd[vc == v]) for v in range(vcpus)]
    g.run(*interleave(parts, burst))
    g.meta = dict(index_base=base, heap_base=heap)
    return g.build()
