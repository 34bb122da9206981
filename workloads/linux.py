"""The `linux` guest profile (docs/semantics.md §4): how a Linux/arm64 guest lays out and maintains its
stage-1 tables around a workload's accesses.

Workload generators describe what a program does — VMAs (`LinuxGuest.vma`), accesses
(`run`), `munmap`, `fork`, context switches — and `LinuxGuest.build()` turns that into a
scenario (memslots, the mappings present at start) and a trace whose events are the guest
kernel's page-table work, as internal ops executed by model.reference.Vm (guest_pte,
guest_free, guest_age, guest_fork, guest_switch).  The guest kernel is modelled here, at
generation time: it knows the stage-1 state exactly (hardware only ever sets AF and clears
AP[2], which needs no kernel event), so the events are fixed before any policy runs.

What the profile does (Linux sources in brackets):

* TCR_EL1 (`__cpu_setup`, `cpu_has_broken_dbm`): HA = HAFDBS >= 1; HD = HAFDBS >= 2 unless
  the core has a DBM erratum; KVM keeps HA/HD off on AmpereOne (AC03_CPU_38: it traps the
  guest's TCR_EL1 writes); TCR2_EL1.HAFT with FEAT_HAFT (v6.13+).  See CPUS.
* Demand paging (`handle_mm_fault`): the first access to an unmapped page is traced twice: the
  attempt, which walks and takes a stage-1 translation fault (counted in stage1_faults), then
  a `guest_pte` event — the kernel zeroes a new page if one is needed, allocates missing
  tables (zeroed page, then the table descriptor into its parent: `__pte_alloc`,
  `pmd_populate`) and stores the PTE — then the access again.  The same happens for every
  fault the kernel resolves: a write to a read-only PTE (`do_wp_page`: CoW copy, reuse, or
  making a shared page dirty), a write to a clean-writable PTE without HD, and an access to
  an old PTE without HA (`handle_pte_fault`: `pte_mkyoung`).
* PTE encodings (`PROT_DEFAULT`, `PAGE_SHARED`, `pte_mkwrite`): new PTEs are young; writable
  = DBM; anonymous pages are created dirty; a read fault on private anonymous memory maps the
  shared zero page read-only (`do_anonymous_page`, knob zero_page); a read fault on shared
  memory (shmem) maps clean-writable (DBM + AP[2]); private file pages (text) and shared file
  pages (knob kind "file", with dirty accounting: `vma_wants_writenotify`) map read-only.
* Fault-around (`do_fault_around`, `filemap_map_pages`): a read fault on file or shmem memory
  also maps the neighbouring pages of its fault_around_bytes-aligned window that are in the
  page cache (file and text: all, a warm cache; shmem: pages that exist), old when hardware
  AF is in use (`arch_wants_old_prefaulted_pte`), young otherwise.
* Aging (MGLRU `walk_pte_range`/`walk_pmd_range`; DAMON `damon_va_mkold`): every age_period
  accesses a pass test-and-clears the AF of some of each address space's mapped PTEs (CAS of
  young entries, then TLBI): the next age_fraction of them under a clock hand, every one
  (aging = mglru), or one random PTE per monitoring region (aging = damon); with HAFT active
  and age_nonleaf, the level-2 table AF too, and tables whose AF the hardware has not set
  again are skipped (workloads/aging.py).
* Writeback (knob writeback_period): dirty PTEs of shared file pages are cleaned and
  write-protected (`folio_mkclean`), so their next write faults again (`page_mkwrite`).
* munmap (`zap_pte_range`, `free_pgtables`): PTEs cleared (+TLBI); a last-level table whose
  range no VMA covers any more is unlinked and freed; freed pages (tables and anonymous data)
  are reused last-in first-out, as the page allocator's per-CPU lists do.
* fork (`dup_mmap`, `copy_page_range`, `__copy_present_ptes`): a new root; the PTEs of private
  VMAs (anon, text) are copied (`vma_needs_copy`: shared VMAs are not, the child faults them
  in), writable ones write-protected in both, the child's old.  Context switches
  (`guest_switch`) change TTBR0 for the whole VM and flush TLBs (the model has one TTBR0 and
  an untagged TLB).

Decisions where docs/semantics.md is silent:

* demand = false: every page the trace touches in the first address space before any munmap,
  fork or switch (and every page `mapped()` names) is mapped at start, as its first read fault
  would map it (anon: a new dirty page, no zero page; shmem clean-writable; file and text
  read-only) — a warmed-up process; young, or with aging on, with the access flags aging
  leaves (workloads/aging.py AgingRule.young_at_start, from the trace's own recency); in
  first-touch order, each page's missing tables then the page; the tables are where
  model.stage1.build_tables puts them (docs/scenario-format.md's rule).
* Memory: page tables in slot "pt" at IPA 1 GiB, data in slot "ram" at 4 GiB (layout
  "split"), or both from one pool in one slot "ram" at 1 GiB, interleaved in allocation order
  (layout "shared", as a real guest's page allocator hands them out; with ram_mb the pool is
  spread over the VM's memory, guest.pt_order = "spread", as a guest that has run a while
  allocates from free pages all over it; costs slot-size bytes of page-table memory in the
  numpy engine).  Slots are rounded up to 2 MiB so THP/hugetlb blocks can form.
* Kernel accesses (PTE loads/stores, page zeroing and CoW copies) are plain LDR/STR through the
  linear map: not walked, stage 2 only (model.reference.Vm._kernel_access).  A CoW copy's
  read of the source page is not modelled.  Only last-level tables are freed.
* `meta["attempts"]`: trace positions of the fault attempts; deleting them from the trace
  gives the program's own accesses.
* Instruction fetches from a page make it part of a text (private file, executable) VMA when
  the generator says so (importers do so for every page that is ever fetched).
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from model.arch import GRANULES, HOST_PAGE, Geometry, GeometryError, make_leaf_desc
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm
from model.stage1 import build_tables, spread_stride
from model.trace import KIND_CODE, STORE_MASK, Trace

from .aging import DAMON_REGIONS, REGIMES, AgingRule, AgingState, regime_period_ms
from .base import Knob, Workload, WorkloadError

# ---- CPUs: HAFDBS and errata (docs/semantics.md §4) ------------------------------------------------


@dataclass(frozen=True)
class Cpu:
    name: str
    hafdbs: int                  # ID_AA64MMFR1_EL1.HAFDBS
    haft: bool = False           # FEAT_HAFT
    hd_erratum: str = ""         # Linux leaves TCR_EL1.HD clear (cpu_has_broken_dbm)
    kvm_no_hahd: str = ""        # KVM keeps the guest's TCR_EL1.HA/HD clear
    note: str = ""


CPUS = {c.name: c for c in (
    Cpu("neoverse-n1", 2, note="Armv8.2 server core: hardware AF and dirty state"),
    Cpu("cortex-a72", 0, note="Armv8.0: no HAFDBS, the guest handles AF faults"),
    Cpu("cortex-a55", 2, hd_erratum="Cortex-A55 #1024718",
        note="HD off: DBM updates may be lost (erratum 1024718)"),
    Cpu("cortex-a510", 2, hd_erratum="Cortex-A510 #2051678",
        note="HD off: erratum 2051678"),
    Cpu("ampere1", 2, kvm_no_hahd="AmpereOne AC03_CPU_38",
        note="KVM traps TCR_EL1 and keeps HA/HD clear (AC03_CPU_38)"),
    Cpu("haft", 2, haft=True, note="Armv8.9/9.4 FEAT_HAFT: table AF too (Linux v6.13+)"),
)}


@dataclass(frozen=True)
class LinuxProfile:
    cpu: str = "neoverse-n1"
    granule: str = "4k"
    va_bits: int = 48
    demand: bool = True
    zero_page: bool = True
    fault_around_bytes: int = 65536
    age_period: int = 0
    age_fraction: float = 0.25
    age_nonleaf: bool = True
    writeback_period: int = 0
    layout: str = "split"
    backing: str = "anon"
    hw_update: str = "on-change"
    ram_mb: int = 0
    warm_stage2: bool = False
    age_period_ms: float = 0.0
    aging: str = ""
    damon_regions: int = DAMON_REGIONS

    @property
    def cpu_info(self) -> Cpu:
        return CPUS[self.cpu]

    @property
    def geometry(self) -> Geometry:
        return Geometry(GRANULES[self.granule], self.va_bits)

    def tcr(self) -> tuple[bool, bool, bool]:
        """Effective TCR_EL1.HA, TCR_EL1.HD, TCR2_EL1.HAFT the guest runs with."""
        c = self.cpu_info
        ha = c.hafdbs >= 1 and not c.kvm_no_hahd
        hd = ha and c.hafdbs >= 2 and not c.hd_erratum
        return ha, hd, ha and c.haft


PROFILE_KNOBS = (
    Knob("cpu", "neoverse-n1", "CPU profile: HAFDBS, HAFT and errata ("
         + "; ".join(f"{c.name}: {c.note}" for c in CPUS.values()) + ")", tuple(CPUS)),
    Knob("granule", "4k", "stage-1 granule", tuple(GRANULES)),
    Knob("va_bits", 48, "stage-1 VA size (T0SZ = 64 - va_bits)"),
    Knob("demand", True, "demand paging from an empty address space; false: the pages the "
         "trace touches are mapped at start (a warmed-up process)"),
    Knob("zero_page", True, "a read fault on private anonymous memory maps the zero page"),
    Knob("fault_around_bytes", 65536, "fault-around window of file/shmem read faults "
         "(/sys/kernel/mm/.../fault_around_bytes; 0 or one page: off)"),
    Knob("age_period", 0, "accesses between MGLRU-like aging passes (0: no aging)"),
    Knob("age_period_ms", 0.0, "guest time between aging passes, ms, on the modelled clock "
         "(workloads/clock.py; sets age_period; DAMON samples every 5 ms, mm/damon/core.c; "
         "MGLRU ages only under reclaim, mm/vmscan.c lru_gen_age_node); 0: age_period says",
         lo=0.0, source="Linux mm/damon/core.c damon_new_ctx: sample_interval = 5 ms"),
    Knob("age_fraction", 0.25, "fraction of each address space's PTEs one aging pass covers"),
    Knob("aging", "", "guest aging regime (workloads/aging.py): damon = DAMON sampling, one "
         "random PTE per region made old every 5 ms; mglru = MGLRU under sustained reclaim, "
         "every PTE test-and-cleared once per age_period_ms (default 1000 ms, ASSUMPTION "
         "100-10000 ms); none = no aging; '' = age_period/age_fraction say",
         REGIMES, source="Linux mm/damon/core.c damon_new_ctx (sample 5 ms), mm/damon/vaddr.c "
         "damon_va_mkold; mm/vmscan.c lru_gen_age_node -> walk_pte_range"),
    Knob("damon_regions", DAMON_REGIONS, "aging = damon: monitoring regions, one PTE each per "
         "sample (ASSUMPTION: DAMON adapts between min_nr_regions 10 and max_nr_regions 1000)",
         lo=1, hi=1 << 20, unit="regions",
         source="Linux mm/damon/core.c: min_nr_regions = 10, max_nr_regions = 1000"),
    Knob("age_nonleaf", True, "aging also clears table AF when HAFT is active"),
    Knob("writeback_period", 0, "accesses between writebacks of dirty file pages, which "
         "cleans and write-protects their PTEs (0: none)"),
    Knob("layout", "split", "split: tables in slot 'pt', data in 'ram'; shared: one slot, "
         "tables and data from one pool in allocation order (spread over the VM's memory "
         "when ram_mb is given)", ("split", "shared")),
    Knob("backing", "anon", "host backing of the memslots (KVM selftests -s)",
         ("anon", "anon_thp", "hugetlb", "shmem")),
    Knob("hw_update", "on-change", "hardware descriptor updates: on-change (architectural) "
         "or always", ("on-change", "always")),
    Knob("ram_mb", 0, "the VM's memory, MB: the RAM memslot is at least this large (pages "
         "the workload never maps included: host scans and migration cover them); 0: just "
         "what the workload uses", lo=0, hi=1 << 20),
    Knob("warm_stage2", False, "the window starts in a VM that has run: stage 2 already "
         "maps the tables and the pages mapped at start (with demand = false), as the faults "
         "that first touched them did; false: stage 2 starts empty (a VM just booted)"),
)
PROFILE_KNOB_NAMES = frozenset(k.name for k in PROFILE_KNOBS)


def coerce_profile_knobs(values: dict, owner: str = "linux") -> dict:
    """The profile knobs of `values`, checked and converted to their types."""
    known = {k.name: k for k in PROFILE_KNOBS}
    out = {}
    for name, v in values.items():
        if name not in known:
            raise WorkloadError(f"{owner}: unknown profile knob {name!r}")
        out[name] = known[name].coerce(v, owner)
    return out


def make_profile(values: dict, owner: str = "linux") -> LinuxProfile:
    out = coerce_profile_knobs(values, owner)
    p = LinuxProfile(**out)
    try:
        p.geometry
    except GeometryError as e:
        raise WorkloadError(f"{owner}: {e}") from None
    if not 0 < p.age_fraction <= 1:
        raise WorkloadError(f"{owner}: knob age_fraction: {p.age_fraction} is not in (0, 1]")
    if p.age_period < 0 or p.fault_around_bytes < 0 or p.writeback_period < 0:
        raise WorkloadError(f"{owner}: age_period, writeback_period and fault_around_bytes "
                            f"must be >= 0")
    _check_aging(out, owner)
    return p


def _check_aging(values: dict, owner: str) -> None:
    """A regime and the knobs it fixes must not contradict each other."""
    regime = values.get("aging", "")
    if regime == "none" and (values.get("age_period") or values.get("age_period_ms")):
        raise WorkloadError(f"{owner}: aging = none contradicts age_period / age_period_ms")
    if regime in ("damon", "mglru") and "age_fraction" in values:
        raise WorkloadError(f"{owner}: aging = {regime} decides which PTEs a pass ages; "
                            f"age_fraction does not apply")
    if "damon_regions" in values and regime != "damon":
        raise WorkloadError(f"{owner}: damon_regions applies to aging = damon only")


def aging_period_ms(values: dict) -> float:
    """The aging period in guest time a profile's knobs ask for (0: none, or age_period in
    accesses says): age_period_ms, else the regime's own (workloads/aging.py)."""
    if values.get("aging") == "none" or values.get("age_period"):
        return 0.0
    ms = float(values.get("age_period_ms") or 0.0)
    return ms or regime_period_ms(values.get("aging", ""))


def aging_rule(p: LinuxProfile, haft: bool) -> AgingRule:
    return AgingRule(p.aging if p.aging != "none" else "", p.age_fraction, p.damon_regions,
                     p.age_nonleaf and haft)


# ---- generator-side guest state ------------------------------------------------------------
RO, ZERO, CLEAN, DIRTY = range(4)      # PTE states: read-only, zero page, clean-writable, dirty
IPA_, S_, AF_ = range(3)               # fields of a page state [ipa, state, af]
VMA_KINDS = ("anon", "shmem", "file", "text")
PT_IPA = 0x4000_0000                   # 1 GiB
DATA_IPA = 0x1_0000_0000               # 4 GiB
BLOCK_PAGES = 512                      # 2 MiB in 4 KiB pages


@dataclass
class Vma:
    start: int                         # first VA page (granule index)
    pages: int
    kind: str
    obj: int                           # backing object (file or shmem) id
    pgoff: int = 0

    @property
    def end(self) -> int:
        return self.start + self.pages

    @property
    def exec(self) -> bool:
        return self.kind == "text"


@dataclass
class Space:
    vmas: list[Vma] = field(default_factory=list)
    pages: dict[int, list] = field(default_factory=dict)
    tables: dict[tuple[int, int], int] = field(default_factory=dict)
    hand: int = -1                     # aging clock hand (last VA page aged)
    _sorted: tuple = (-1, None)        # (len(pages) when sorted, the sorted VA pages)
    _starts: list = field(default_factory=list)   # VMA starts, for vma_of (cache)

    def sorted_pages(self) -> np.ndarray:
        """The mapped VA pages, sorted (cached while no page is mapped or unmapped)."""
        if self._sorted[0] != len(self.pages) or self._sorted[1] is None:
            self._sorted = (len(self.pages), np.array(sorted(self.pages), dtype=np.int64))
        return self._sorted[1]

    def forget_sorted(self) -> None:
        self._sorted = (-1, None)

    def vma_of(self, p: int) -> Vma | None:
        if len(self._starts) != len(self.vmas):          # VMAs changed (add, remove)
            self._starts = [v.start for v in self.vmas]
        i = bisect.bisect_right(self._starts, p) - 1
        if i >= 0 and p < self.vmas[i].end:
            return self.vmas[i]
        return None

    def overlaps(self, lo: int, hi: int) -> bool:
        return any(v.start < hi and lo < v.end for v in self.vmas)

    def add_vma(self, v: Vma) -> None:
        if self.overlaps(v.start, v.end):
            raise WorkloadError(f"VMA at VA page {v.start:#x} overlaps an existing VMA")
        bisect.insort(self.vmas, v, key=lambda x: x.start)
        self._starts = []

    def remove_range(self, lo: int, hi: int) -> None:
        out = []
        for v in self.vmas:
            if v.end <= lo or hi <= v.start:
                out.append(v)
                continue
            if v.start < lo:
                out.append(replace(v, pages=lo - v.start))
            if hi < v.end:
                out.append(replace(v, start=hi, pages=v.end - hi, pgoff=v.pgoff + hi - v.start))
        self.vmas = sorted(out, key=lambda x: x.start)
        self._starts = []


class Alloc:
    """The guest's page allocator over one slot: the slot's pages in allocation order
    (address order, or spread over `capacity` granules: model.stage1.allocation_order, the
    order the table layout rule follows) plus a LIFO free list."""

    def __init__(self, base: int, granule: int, capacity: int = 0):
        self.base, self.granule = base, granule
        self.next = 0
        self.free: list[int] = []
        self.capacity = capacity                # > 0: spread over this many granules
        self.stride = spread_stride(capacity) if capacity > 1 else 1

    def get(self) -> int:
        if self.free:
            return self.free.pop()
        if self.capacity and self.next >= self.capacity:
            raise WorkloadError(f"the guest's memory ({self.capacity} pages) is full: "
                                f"raise ram_mb")
        k = (self.next * self.stride) % self.capacity if self.capacity else self.next
        self.next += 1
        return self.base + k * self.granule

    def put(self, ipa: int) -> None:
        self.free.append(ipa)


def _as_array(x, n, dtype):
    a = np.asarray(x, dtype=dtype)
    return np.broadcast_to(a, (n,)).copy() if a.ndim == 0 else a


class LinuxGuest:
    """Collects a program's VMAs, accesses and address-space operations; `build()` replays
    them through the guest-kernel model into a Workload."""

    def __init__(self, name: str, profile: LinuxProfile, meta: dict | None = None):
        self.name = name
        self.p = profile
        self.geo = profile.geometry
        self.g = self.geo.granule_shift
        self.meta = dict(meta or {})
        self._ops: list[tuple] = []
        self._nobj = 0
        self._naccesses = 0

    # ---- the program's side ----------------------------------------------------------
    def vma(self, va: int, nbytes: int, kind: str = "anon", obj: int | None = None) -> int:
        """mmap a VMA at `va` (granule-aligned) of `nbytes` (rounded up); returns its object
        id (file/shmem contents are shared by every mapping of that object: `obj`, an id
        returned before, maps the same object again, as processes attaching one shared
        memory segment do)."""
        if kind not in VMA_KINDS:
            raise WorkloadError(f"{self.name}: unknown VMA kind {kind!r}")
        gr = self.geo.granule
        if va % gr or va < 0 or nbytes <= 0:
            raise WorkloadError(f"{self.name}: VMA at {va:#x} (+{nbytes:#x}) is not aligned")
        pages = -(-nbytes // gr)
        if va + pages * gr > (1 << self.p.va_bits):
            raise WorkloadError(f"{self.name}: VMA {va:#x}+{pages * gr:#x} is beyond "
                                f"va_bits = {self.p.va_bits}")
        if obj is None:
            self._nobj += 1
            obj = self._nobj
        elif not 0 < obj <= self._nobj or kind not in ("shmem", "file"):
            raise WorkloadError(f"{self.name}: object {obj} cannot be mapped again as {kind}")
        self._ops.append(("vma", Vma(va >> self.g, pages, kind, obj)))
        return obj

    def run(self, vcpu, va, kind) -> None:
        """Accesses, in order: vcpu and kind may be scalars (kind a name or a code)."""
        va = np.asarray(va, dtype=np.uint64)
        n = len(va)
        if n == 0:
            return
        if isinstance(kind, str):
            kind = KIND_CODE[kind]
        self._ops.append(("run", _as_array(vcpu, n, np.uint16), va,
                          _as_array(kind, n, np.uint8)))
        self._naccesses += n

    def mapped(self, va) -> None:
        """Pages (VAs) the process touched before the trace: with demand = false they are
        mapped at start, in this order, as the accesses before them are, but not traced (a
        warm process's older working set); with demand = true nothing is mapped at start
        and this does nothing."""
        self._ops.append(("mapped", np.asarray(va, dtype=np.uint64)))

    def munmap(self, va: int, nbytes: int) -> None:
        self._ops.append(("munmap", va >> self.g, -(-nbytes // self.geo.granule)))

    def fork(self, child: int) -> None:
        self._ops.append(("fork", child))

    def switch(self, asid: int) -> None:
        self._ops.append(("switch", asid))

    # ---- replay ------------------------------------------------------------------------
    def build(self) -> Workload:
        mappings = self._start()
        ops, self._ops = deque(self._ops), []
        while ops:                                  # release each input chunk once replayed
            op = ops.popleft()
            getattr(self, "_op_" + op[0])(*op[1:])
            del op
        return self._finish(mappings)

    def _start(self) -> list[Mapping]:
        """The replay's initial state; returns the mappings present at start."""
        p, geo = self.p, self.geo
        self.ha, self.hd, self.haft = p.tcr()
        self.fa = max(1, p.fault_around_bytes // geo.granule)
        gr = geo.granule
        if p.layout == "split":
            self.pt = Alloc(PT_IPA, gr)
            self.data = Alloc(DATA_IPA, gr)
        else:                       # one pool; spread over the VM's memory when it is known
            self.pt = self.data = Alloc(PT_IPA, gr, self._ram_granules())
        self.spaces: dict[int, Space] = {0: Space()}
        self.cur = 0
        self.refs: dict[int, int] = {}         # anonymous page IPA -> mappings
        self.objs: dict[int, dict[int, int]] = {}
        self.zero_ipa: int | None = None
        self.out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.events: list = []
        self.attempts: list[np.ndarray] = []    # trace positions of the fault attempts
        self.pos = 0
        self.nacc = 0
        self.last_periodic = 0
        self.next_age = p.age_period          # trace position the next aging pass is due at
        self.age_at = p.age_period            # ... and the access count it runs at
        self.rule = aging_rule(p, self.haft)
        self.pass_pos: list[int] = []          # trace positions of the aging passes
        self.stats = dict(guest_faults=0, fault_around_ptes=0, aging_passes=0, munmaps=0,
                          forks=0, switches=0, tables_freed=0, writebacks=0)
        self.root = self.pt.get()
        return self._premap() if not p.demand else []

    def _ram_granules(self) -> int:
        """The VM's memory in granules, rounded up to 2 MiB as _finish sizes the slot (0:
        ram_mb not given)."""
        ram = self.p.ram_mb * (1 << 20) // HOST_PAGE
        return -(-ram // BLOCK_PAGES) * BLOCK_PAGES // (self.geo.granule // HOST_PAGE)

    def _premap(self) -> list[Mapping]:
        """demand = false: map at start what the first address space touches before any
        munmap/fork/switch (see the module docstring)."""
        sp = self.spaces[0]
        vas, runs = [], []
        for op in self._ops:
            if op[0] == "vma":
                sp.add_vma(op[1])
            elif op[0] in ("run", "mapped"):
                vas.append(op[2] if op[0] == "run" else op[1])
                if op[0] == "run":
                    runs.append(op[2])
            else:
                break
        if not vas:
            return []
        vp = np.concatenate(vas) >> np.uint64(self.g)
        uniq, first = np.unique(vp, return_index=True)
        ages = dict.fromkeys(uniq.tolist(), 1 << 62)     # mapped, never accessed in the trace
        if runs:
            rp = np.concatenate(runs) >> np.uint64(self.g)
            ru, last_rev = np.unique(rp[::-1], return_index=True)
            ages.update(zip(ru.tolist(), last_rev.tolist()))   # accesses since the last one
        return self._premap_pages(uniq[np.argsort(first, kind="stable")].tolist(), ages)

    def _young_at_start(self, order: list[int], ages: dict | None) -> dict:
        """Item 5: with aging on, the access flags aging leaves in a warm guest (AgingRule
        .young_at_start, from the base trace's own recency); without, every PTE young."""
        if not self.p.age_period or ages is None:
            return {}
        pages = np.array(sorted(order), dtype=np.int64)
        age = np.array([ages.get(q, 0) for q in pages.tolist()], dtype=np.int64)
        young = self.rule.young_at_start(pages, age, self.p.age_period)
        self.stats["old_at_start"] = int(len(young) - np.count_nonzero(young))
        return dict(zip(pages.tolist(), young.tolist()))

    def _premap_pages(self, order: list[int], ages: dict | None = None) -> list[Mapping]:
        """Map `order` (VA pages in first-touch order) at start, in the first space; `ages`:
        accesses since each page's last access in the base trace (steady-state AF)."""
        sp = self.spaces[0]
        young = self._young_at_start(order, ages)
        maps: list[Mapping] = []
        for q in order:             # in first-touch order, a page's missing tables, then it
            vma = sp.vma_of(q)      # (one pool with layout = shared: interleaved)
            if vma is None:
                raise WorkloadError(f"{self.name}: access to VA {q << self.g:#x} outside "
                                    f"every VMA")
            self._alloc_tables(sp, q)
            af = young.get(q, True)
            if vma.kind == "anon":
                ipa = self.data.get()
                self.refs[ipa] = 1
                st = [ipa, DIRTY, af]
            else:
                ipa, _fresh = self._obj_page(vma, q)
                st = [ipa, CLEAN if vma.kind == "shmem" else RO, af]
            sp.pages[q] = st
            w, d = st[S_] in (CLEAN, DIRTY), st[S_] == DIRTY
            va = q << self.g
            last = maps[-1] if maps else None
            if (last and last.va + last.pages * self.geo.granule == va
                    and last.ipa + last.pages * self.geo.granule == ipa
                    and (last.writable, last.dirty, last.executable, last.af)
                    == (w, d, vma.exec, af)):
                maps[-1] = replace(last, pages=last.pages + 1)
            else:
                maps.append(Mapping(va=va, ipa=ipa, pages=1, af=af, writable=w, dirty=d,
                                    executable=vma.exec))
        self._init_tables = dict(sp.tables)
        self._premapped = len(order)
        return maps

    # ops ---------------------------------------------------------------------------------
    def _op_vma(self, v: Vma) -> None:
        sp = self.spaces[self.cur]
        if v not in sp.vmas:
            sp.add_vma(v)

    def _op_run(self, vc, va, kd) -> None:
        """Accesses, with the periodic kernel work between them: an aging pass due every
        age_period trace positions (the clock: workloads/clock.py, fault attempts included),
        a writeback every writeback_period accesses.  After a pass at position p, the next
        comes after (its due position - p) more accesses, late by the fault attempts among
        them (several due by then run together): the same wherever the runs are cut."""
        age, wb = self.p.age_period, self.p.writeback_period
        n = len(va)
        i = 0
        while i < n:
            if age and self.nacc >= self.age_at:
                while self.pos >= self.next_age:
                    self._age()
                    self.next_age += age
                self.age_at = self.nacc + self.next_age - self.pos
            if wb and self.nacc and self.last_periodic != self.nacc and self.nacc % wb == 0:
                self.last_periodic = self.nacc
                self._writeback()
            j = n
            if age:
                j = min(j, i + self.age_at - self.nacc)
            if wb:
                j = min(j, i + wb - self.nacc % wb)
            self._chunk(vc[i:j], va[i:j], kd[i:j])
            self.nacc += j - i
            i = j

    def _op_mapped(self, va) -> None:
        """Mapped at start (demand = false, _premap) or not at all: nothing to replay."""

    def _op_munmap(self, lo: int, pages: int) -> None:
        sp = self.spaces[self.cur]
        hi = lo + pages
        gone = sorted(q for q in sp.pages if lo <= q < hi)
        for q in gone:
            st = sp.pages.pop(q)
            self._unref(st[IPA_])
        sp.remove_range(lo, hi)
        sp.forget_sorted()
        self.stats["munmaps"] += 1
        if gone:
            self._event(Step("guest_pte", asid=self.cur, vas=tuple(q << self.g for q in gone),
                             descs=(0,) * len(gone)))
        shift = self.geo.level_shift(2) - self.g   # VA pages per last-level table: log2
        frees = []
        for pre in range(lo >> shift, ((hi - 1) >> shift) + 1):
            key = (2, pre)
            if key in sp.tables and not sp.overlaps(pre << shift, (pre + 1) << shift):
                self.pt.put(sp.tables.pop(key))
                frees.append(pre << (shift + self.g))
        if frees:
            self.stats["tables_freed"] += len(frees)
            self._event(Step("guest_free", asid=self.cur, vas=tuple(frees)))

    def _op_fork(self, child: int) -> None:
        if child in self.spaces:
            raise WorkloadError(f"{self.name}: address space {child} exists already")
        par = self.spaces[self.cur]
        ch = Space(vmas=list(par.vmas))
        tables = [self.pt.get()]
        vas = []
        for q in sorted(par.pages):
            if par.vma_of(q).kind not in ("anon", "text"):
                continue                            # vma_needs_copy(): shared VMAs
            st = par.pages[q]
            tables.extend(self._alloc_tables(ch, q))
            if st[S_] in (CLEAN, DIRTY):
                st[S_] = RO                         # wrprotect in the parent
            if st[IPA_] in self.refs:
                self.refs[st[IPA_]] += 1
            ch.pages[q] = [st[IPA_], st[S_], False]
            vas.append(q << self.g)
        self.spaces[child] = ch
        self.stats["forks"] += 1
        self._event(Step("guest_fork", asid=self.cur, child=child, vas=tuple(vas),
                         tables=tuple(tables)))

    def _op_switch(self, asid: int) -> None:
        if asid not in self.spaces:
            raise WorkloadError(f"{self.name}: no address space {asid}")
        self.cur = asid
        self.stats["switches"] += 1
        self._event(Step("guest_switch", asid=asid))

    # helpers -----------------------------------------------------------------------------
    def _event(self, st: Step) -> None:
        self.events.append((self.pos, self.pos, st))

    def _unref(self, ipa: int) -> None:
        n = self.refs.get(ipa)
        if n is None:
            return
        if n == 1:
            del self.refs[ipa]
            self.data.put(ipa)                      # the page goes back to the allocator
        else:
            self.refs[ipa] = n - 1

    def _alloc_tables(self, sp: Space, q: int) -> tuple[int, ...]:
        va = q << self.g
        out = []
        for level in range(self.geo.start_level, 3):
            key = (level, va >> self.geo.level_shift(level))
            if key not in sp.tables:
                t = self.pt.get()
                sp.tables[key] = t
                out.append(t)
        return tuple(out)

    def _obj_page(self, vma: Vma, q: int, create: bool = True) -> tuple[int | None, bool]:
        pages = self.objs.setdefault(vma.obj, {})
        off = q - vma.start + vma.pgoff
        if off in pages:
            return pages[off], False
        if not create:
            return None, False
        ipa = self.data.get()
        pages[off] = ipa
        return ipa, True

    def _zero(self) -> int:
        if self.zero_ipa is None:
            self.zero_ipa = self.data.get()
        return self.zero_ipa

    def _desc(self, st: list, vma: Vma) -> int:
        s = st[S_]
        return make_leaf_desc(st[IPA_], self.geo, 3, af=st[AF_], writable=s in (CLEAN, DIRTY),
                              dirty=s == DIRTY, executable=vma.exec)

    # the page-fault model ----------------------------------------------------------------
    def _chunk(self, vc, va, kd) -> None:
        """Accesses with no kernel event between them: find, in time order, every access the
        guest kernel must fix up, and trace it as attempt + event + access."""
        n = len(va)
        sp = self.spaces[self.cur]
        vp = (va >> np.uint64(self.g)).view(np.int64)       # pages < 2^52: no copy
        # pages numbered in first-touch order (a hash table, O(n): pandas.factorize), so the
        # first touches come out sorted
        inv, uniq = pd.factorize(vp, sort=False)
        cm = np.maximum.accumulate(inv)
        first = np.flatnonzero(np.concatenate(([True], cm[1:] > cm[:-1])))
        w = STORE_MASK[kd]
        fw = np.full(len(uniq), n, dtype=np.int64)
        wi = np.flatnonzero(w)
        fw[inv[wi[::-1]]] = wi[::-1]                # the last assignment, the first write, wins
        heap = list(zip(first.tolist(), [0] * len(uniq), range(len(uniq))))
        uniq_l, fw_l, w_l = uniq.tolist(), fw.tolist(), w
        faults = []
        while heap:
            i, rec, j = heapq.heappop(heap)
            q = uniq_l[j]
            write = bool(w_l[i])
            st = self._touch(sp, q, write, int(vc[i]))
            if st is not None:
                faults.append((i, st))
            if rec == 0 and not write and fw_l[j] < n and sp.pages[q][S_] != DIRTY:
                heapq.heappush(heap, (fw_l[j], 1, j))
        if faults:
            faults.sort(key=lambda f: f[0])
            idx = np.array([f[0] for f in faults], dtype=np.int64)
            # the attempt is a copy of its access, just before it: repeat those accesses
            # (one fault per access: a first write is queued only after a read touch)
            assert (np.diff(idx) > 0).all(), "two faults on one access"
            vc, va, kd = (_doubled(c, idx) for c in (vc, va, kd))
            for k, (i, st) in enumerate(faults):
                pos = self.pos + i + k + 1
                self.events.append((pos, pos, st))
            self.attempts.append(self.pos + idx + np.arange(len(idx)))
            self.stats["guest_faults"] += len(faults)
        self.out.append((vc, va, kd))
        self.pos += len(va)

    def _touch(self, sp: Space, q: int, write: bool, vcpu: int) -> Step | None:
        st = sp.pages.get(q)
        if st is None:
            return self._map_fault(sp, q, write, vcpu)
        if not self.ha and not st[AF_]:
            return self._present_fault(sp, q, st, write, vcpu)
        if write and (st[S_] in (RO, ZERO) or (st[S_] == CLEAN and not self.hd)):
            return self._present_fault(sp, q, st, write, vcpu)
        st[AF_] = True                              # hardware AF (HA) or already young
        if write and st[S_] == CLEAN:
            st[S_] = DIRTY                          # hardware dirty state (HD)
        return None

    def _present_fault(self, sp: Space, q: int, st: list, write: bool, vcpu: int) -> Step:
        vma = sp.vma_of(q)
        fill = ()
        if write and st[S_] in (RO, ZERO):          # do_wp_page
            if vma.kind in ("file", "shmem"):
                st[S_] = DIRTY                      # wp_page_shared
            elif st[S_] == RO and self.refs.get(st[IPA_]) == 1:
                st[S_] = DIRTY                      # wp_page_reuse: exclusive anon page
            else:                                   # wp_page_copy
                new = self.data.get()
                self._unref(st[IPA_])
                self.refs[new] = 1
                st[IPA_], st[S_] = new, DIRTY
                fill = (new,)
        elif write and st[S_] == CLEAN:
            st[S_] = DIRTY                          # pte_mkdirty (no HD)
        st[AF_] = True                              # pte_mkyoung
        return Step("guest_pte", vcpu=vcpu, asid=self.cur, vas=(q << self.g,),
                    descs=(self._desc(st, vma),), fill=fill)

    def _map_fault(self, sp: Space, q: int, write: bool, vcpu: int) -> Step:
        vma = sp.vma_of(q)
        if vma is None:
            raise WorkloadError(f"{self.name}: access to VA {q << self.g:#x} outside every VMA")
        tables = self._alloc_tables(sp, q)
        kind = vma.kind
        fill = ()
        if kind == "anon" or (kind == "text" and write):
            if kind == "anon" and not write and self.p.zero_page:
                st = [self._zero(), ZERO, True]
            else:                                   # do_anonymous_page / do_cow_fault
                ipa = self.data.get()
                self.refs[ipa] = 1
                fill = (ipa,)
                st = [ipa, DIRTY, True]
        else:
            ipa, fresh = self._obj_page(vma, q)
            if fresh and kind == "shmem":
                fill = (ipa,)                       # shmem_get_folio_gfp zeroes a new page
            st = [ipa, DIRTY if write else (CLEAN if kind == "shmem" else RO), True]
        sp.pages[q] = st
        entries = [(q, st)]
        if not write and kind != "anon" and self.fa > 1:    # do_fault_around
            base = q & ~(self.fa - 1)
            for r in range(base, base + self.fa):
                if r == q or r in sp.pages or not vma.start <= r < vma.end:
                    continue
                ipa, _ = self._obj_page(vma, r, create=kind != "shmem")
                if ipa is None:
                    continue                        # not in the page cache
                nst = [ipa, CLEAN if kind == "shmem" else RO, not self.ha]
                sp.pages[r] = nst
                entries.append((r, nst))
            entries.sort(key=lambda e: e[0])
            self.stats["fault_around_ptes"] += len(entries) - 1
        return Step("guest_pte", vcpu=vcpu, asid=self.cur,
                    vas=tuple(r << self.g for r, _ in entries),
                    descs=tuple(self._desc(s, vma) for _, s in entries),
                    tables=tables, fill=fill)

    def _age(self) -> None:
        """One aging pass over every address space (workloads/aging.py AgingRule.select)."""
        for asid in sorted(self.spaces):
            sp = self.spaces[asid]
            sel, sp.hand = self.rule.select(sp.sorted_pages(), sp.hand, len(self.pass_pos))
            win = sel.tolist()
            if not self.ha:
                win = [q for q in win if sp.pages[q][AF_]]
            for q in win:
                sp.pages[q][AF_] = False
            if win:
                self._event(Step("guest_age", asid=asid, vas=tuple(q << self.g for q in win),
                                 nonleaf=self.rule.nonleaf))
        self.pass_pos.append(self.pos)
        self.stats["aging_passes"] += 1

    def aging_state(self) -> AgingState | None:
        """What continues aging past this trace (workloads/clock.py with_seconds)."""
        if not self.p.age_period:
            return None
        return AgingState(self.rule, self.p.age_period, self.g,
                          {a: (sp.sorted_pages().copy(), sp.hand)
                           for a, sp in self.spaces.items()}, list(self.pass_pos), self.pos)

    def _writeback(self) -> None:
        """Writeback of dirty file pages (folio_mkclean -> page_mkclean_one: pte_wrprotect +
        pte_mkclean, with a flush): their PTEs become read-only again, so the next write
        faults (page_mkwrite).  A guest_pte event per address space."""
        for asid in sorted(self.spaces):
            sp = self.spaces[asid]
            vas, descs = [], []
            for q in sorted(sp.pages):
                st = sp.pages[q]
                if st[S_] != DIRTY:
                    continue
                vma = sp.vma_of(q)
                if vma.kind != "file":
                    continue
                st[S_] = RO
                vas.append(q << self.g)
                descs.append(self._desc(st, vma))
            self.stats["writebacks"] += 1
            if vas:
                self._event(Step("guest_pte", asid=asid, vas=tuple(vas), descs=tuple(descs)))

    # the scenario ------------------------------------------------------------------------
    def _finish(self, mappings: list[Mapping]) -> Workload:
        p, geo = self.p, self.geo
        gp = geo.granule // HOST_PAGE

        def pages(alloc: Alloc, at_least: int = 0) -> int:
            n = max(1, alloc.next) * gp
            return -(-max(n, at_least) // BLOCK_PAGES) * BLOCK_PAGES
        ram = p.ram_mb * (1 << 20) // HOST_PAGE     # the VM's memory, if larger
        ha, hd, haft = self.ha, self.hd, self.haft
        machine = Machine(granule=geo.granule, va_bits=p.va_bits, hafdbs=p.cpu_info.hafdbs,
                          haft=p.cpu_info.haft, hw_update=p.hw_update)
        if p.layout == "split":
            slots = (Memslot("pt", PT_IPA, pages(self.pt), backing=p.backing),
                     Memslot("ram", DATA_IPA, pages(self.data, ram), backing=p.backing))
            pt_slot = "pt"
        else:
            slots = (Memslot("ram", PT_IPA, pages(self.pt, ram), backing=p.backing),)
            pt_slot = "ram"
        guest = Guest(tcr_ha=ha, tcr_hd=hd, tcr2_haft=haft, pt_slot=pt_slot,
                      pt_order="spread" if self.pt.capacity else "address")
        scn = Scenario(name=self.name, machine=machine, guest=guest, memslots=slots,
                       vmm=Vmm(), mappings=tuple(mappings), steps=(),
                       source=f"<workload {self.name}>")
        if mappings:
            self._check_layout(scn)
        if p.warm_stage2:
            self.events[:0] = [(0, 0, st) for st in self._warm_steps(scn, mappings)]
        return self._assemble(scn)

    def _warm_steps(self, scn: Scenario, mappings: list[Mapping]) -> list[Step]:
        """warm_stage2 steps (model.host.Host.warm_stage2): the tables built at start and the
        data pages of the mappings present at start, per memslot."""
        gr = self.geo.granule
        gp = gr // HOST_PAGE
        tables = [self.root] + list(getattr(self, "_init_tables", {}).values())
        ipas = [np.asarray(tables, dtype=np.int64)]
        ipas += [m.ipa + np.arange(m.pages, dtype=np.int64) * gr for m in mappings]
        gran = np.unique(np.concatenate(ipas))
        host = (gran[:, None] + np.arange(gp, dtype=np.int64) * HOST_PAGE).ravel()
        steps = []
        for s in scn.memslots:
            sel = host[(host >= s.ipa) & (host < s.end)]
            if len(sel):
                steps.append(Step("warm_stage2", slot=s.name,
                                  pages=np.unique((sel - s.ipa) // HOST_PAGE)))
        return steps

    def _assemble(self, scn: Scenario) -> Workload:
        total = sum(len(o[1]) for o in self.out)
        vc = np.empty(total, np.uint16)
        va = np.empty(total, np.uint64)
        kd = np.empty(total, np.uint8)
        i = 0
        self.out.reverse()
        while self.out:                             # assemble, freeing chunks as they go
            c = self.out.pop()
            n = len(c[1])
            vc[i:i + n], va[i:i + n], kd[i:i + n] = c
            i += n
        trace = Trace(vc, va, kd, self.events)
        meta = self._end_meta()
        meta["attempts"] = (np.concatenate(self.attempts) if self.attempts
                            else np.zeros(0, dtype=np.int64))
        meta.update(trace_len=len(trace))
        return Workload(self.name, scn, trace, meta)

    def _end_meta(self) -> dict:
        """The workload's meta at the end of the replay (footprint, counts)."""
        p = self.p
        gp = self.geo.granule // HOST_PAGE
        meta = dict(self.meta)
        meta.update(self.stats)
        # guest footprint at the end, in 4 KiB pages (read by bench.runner): table granules
        # in use (every address space, roots included) and data granules in use (anonymous
        # pages, file/shmem page-cache pages, the zero page)
        tables = sum(len(sp.tables) for sp in self.spaces.values()) + len(self.spaces)
        data = set(self.refs)
        for pages in self.objs.values():
            data.update(pages.values())
        if self.zero_ipa is not None:
            data.add(self.zero_ipa)
        meta["pt_pages"], meta["data_pages"] = tables * gp, len(data) * gp
        meta["aging_state"] = self.aging_state()
        meta.update(accesses=int(self.nacc), events=len(self.events),
                    address_spaces=len(self.spaces), tcr_ha=self.ha, tcr_hd=self.hd,
                    tcr2_haft=self.haft, premapped_pages=getattr(self, "_premapped", 0),
                    table_granules=self.pt.next if p.layout == "split" else None,
                    data_granules=self.data.next)
        return meta

    def _check_layout(self, scn: Scenario) -> None:
        """The initial tables the generator assumed are those build_tables lays out."""
        geo = self.geo
        t = build_tables(scn)
        if t.root != self.root or t.tables_used != 1 + len(self._init_tables):
            raise AssertionError("initial table layout differs from build_tables")
        for (level, pre), ipa in self._init_tables.items():
            va = pre << geo.level_shift(level)
            table = t.root
            for lv in range(geo.start_level, level + 1):
                table = t.descriptors[table + geo.index(va, lv) * 8] & geo.oa_mask
            if table != ipa:
                raise AssertionError(f"table for {va:#x} at level {level + 1}: generator "
                                     f"{ipa:#x}, build_tables {table:#x}")


def _doubled(col: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """`col` with the elements at sorted positions `idx` repeated (each copy just before its
    original): slices joined when they are few, a repeat count per element otherwise."""
    if len(idx) * 64 < len(col):
        cuts = idx.tolist()
        parts, lo = [], 0
        for i in cuts:
            parts.append(col[lo:i + 1])
            lo = i
        parts.append(col[lo:])
        return np.concatenate(parts)
    rep = np.ones(len(col), dtype=np.int64)
    rep[idx] = 2
    return np.repeat(col, rep)
