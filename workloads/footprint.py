"""The memory a generated workload would need, estimated from its knobs before anything is
built (issue 23: a value that needs more memory than the machine has is refused with one line
stating the estimate, instead of a MemoryError traceback or minutes of swapping).

Estimate = BASE + accesses x PER_ACCESS + guest pages x PER_PAGE + elements x PER_ELEMENT:

* accesses: the trace's length, derived from the knobs per generator (`_counts`);
* guest pages: 4 KiB pages of the VM's memory (the RAM memslot: the pages the generator
  touches, or `ram_mb` of the linux profile when larger), which the host scenarios and the
  engine keep per-page state for;
* elements: per-key / per-node / per-copied-PTE arrays a generator builds (zipf's rank
  weights and permutations, pointer_chase's nodes, fork's copied page tables).

The constants are ASSUMPTIONs measured as peak RSS of `ptwbench run` (numpy engine, every
policy) on an x86-64 Linux machine, rounded up: zipf operations=1e5 -> 2e6 (4M accesses):
+298 MB, ~78 B an access; sparse --host numa ram_mb=1024 -> 16384: +207 MB for 3.9M pages,
~52 B a page; zipf keys=2e7: ~30 B a key.  They bound the order of magnitude, not the byte.
"""
from __future__ import annotations

import os

from .base import WorkloadError

BASE_BYTES = 120 << 20          # the interpreter, numpy, pandas and the engine's modules
PER_ACCESS_BYTES = 100          # ASSUMPTION (measured ~78, above): trace + engine per access
PER_PAGE_BYTES = 64             # ASSUMPTION (measured ~52): per-page host and engine state
PER_ELEMENT_BYTES = 40          # ASSUMPTION (measured ~30): per-key arrays of a generator
PAGE = 4096


def _pages(nbytes: int) -> int:
    return -(-int(nbytes) // PAGE)


def _counts(name: str, k: dict) -> tuple[int, int, int]:
    """(accesses, guest pages, elements) of generator `name` with resolved knobs `k`."""
    v = k.get("vcpus", 1)
    if name == "stream":
        return v * k["passes"] * k["bytes_per_vcpu"] // max(8, k["stride"]), \
            v * _pages(k["bytes_per_vcpu"]), 0
    if name == "memstress":
        per = _pages(k["bytes_per_vcpu"])
        return v * k["iterations"] * per, v * per, 0
    if name == "zipf":
        return 2 * k["operations"], _pages(k["keys"] * (k["value_bytes"] + 8)), 3 * k["keys"]
    if name == "sparse":
        return k["accesses"], 2 * k["regions"], k["regions"]
    if name == "pointer_chase":
        return v * k["hops"], k["nodes"], 2 * k["nodes"]
    if name == "mmap_churn":
        rp = _pages(k["region_bytes"])
        return k["rounds"] * (k["touches"] + rp), k["live"] * rp, k["rounds"] * rp
    if name == "fork":
        hp = _pages(k["heap_bytes"])       # each process's copied PTEs: ~250 B each (fork
        return hp + k["accesses"], hp, 6 * hp * (k["children"] + 1)  # children=2000: 345 MB)
    if name == "gc":
        nobj = k["heap_bytes"] // max(16, k["object_bytes"])
        return nobj * (1 + 4 * k["cycles"]), _pages(k["heap_bytes"]), 2 * nobj
    if name == "shared_db":                  # every backend's PTEs to its buffer pages are
        bp = _pages(k["buffer_mb"] << 20)     # mapped at start (~3 elements' worth each)
        pp = _pages(k["private_kb"] << 10)
        return k["accesses"], bp + k["processes"] * pp, \
            bp + 3 * k["processes"] * (k["pages_per_process"] + pp)
    return 0, 0, 0                            # a generator without a formula: BASE only


def estimate_bytes(name: str, knobs: dict, ram_mb: int = 0) -> int:
    """Estimated peak memory of building and running generator `name` (resolved knobs)."""
    acc, pages, elems = _counts(name, knobs)
    pages = max(pages, int(ram_mb) * (1 << 20) // PAGE)
    return (BASE_BYTES + acc * PER_ACCESS_BYTES + pages * PER_PAGE_BYTES
            + elems * PER_ELEMENT_BYTES)


def machine_memory() -> tuple[int, str]:
    """(bytes, what) the machine can give a run: MemAvailable of /proc/meminfo, else the
    physical memory (os.sysconf)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "installed"
    except (ValueError, OSError, AttributeError):
        return 1 << 62, "unknown"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} EB"


def check_footprint(name: str, knobs: dict, ram_mb: int = 0, avail=None) -> int:
    """Refuse (WorkloadError, one line with the estimate) a generator whose knobs need more
    memory than the machine has; returns the estimate."""
    need = estimate_bytes(name, knobs, ram_mb)
    have, what = avail if avail is not None else machine_memory()
    if need > have:
        acc, pages, elems = _counts(name, knobs)
        pages = max(pages, int(ram_mb) * (1 << 20) // PAGE)
        raise WorkloadError(f"{name}: needs about {human(need)} of memory, estimated from its "
                            f"knobs ({acc:.3g} accesses, {pages:.3g} guest pages, {elems:.3g} "
                            f"array elements); this machine has {human(have)} {what}")
    return need
