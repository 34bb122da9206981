"""Scenario objects (docs/scenario-format.md, version 1): the micro-scenario contract.

`load_scenario(path)` and `parse_scenario(data, source)` live in model/scenario_io.py; this
module only holds the validated, immutable objects every engine consumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .arch import Geometry, HOST_PAGE

ACCESS_KINDS = ("read64", "write64", "ld_preidx", "st_preidx", "cas", "dc_zva", "exec", "at")
OPS = ("access", "clear_af", "set_tcr", "punch_hole", "zap", "swap_out", "uffd_wp",
       "enable_dirty_log", "harvest", "flush_tlb")
BACKINGS = ("anon", "anon_thp", "hugetlb", "shmem")
UFFD_MODES = ("none", "missing", "minor", "wp")
UFFD_RESOLVE = ("page", "slot")
HW_UPDATE = ("on-change", "always")
MMIO_STORE = ("ignore", "write_backing")
# Internal ops: the guest kernel's own page-table work (Linux guest profile, workloads/linux.py).
# They exist only as trace events built by workload generators; scenario files (docs/scenario-format.md,
# a public format) never accept them: model/scenario_io.py knows only OPS.
INTERNAL_OPS = ("guest_pte", "guest_free", "guest_age", "guest_fork", "guest_switch")


class ScenarioError(ValueError):
    """Invalid scenario: the message is one line naming the file and the offending key/step."""


@dataclass(frozen=True)
class Machine:
    granule: int = 4096          # bytes
    va_bits: int = 48
    hafdbs: int = 2              # 0 none, 1 AF only, 2 AF + dirty state
    haft: bool = False
    hw_update: str = "on-change"
    at_sets_af: bool = False
    isa: str = "arm64"           # comparison machines: model/x86.py, docs/x86.md

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.granule, self.va_bits)


@dataclass(frozen=True)
class Guest:
    tcr_ha: bool = False
    tcr_hd: bool = False
    tcr2_haft: bool = False
    pt_slot: str = ""
    vm_protected: bool = False
    # the order the guest's page allocator hands out pt_slot's pages in, for the table
    # layout rule (model/stage1.py allocation_order): "address" or "spread"
    pt_order: str = "address"


@dataclass(frozen=True)
class Memslot:
    name: str
    ipa: int
    pages: int                   # 4 KiB host pages
    readonly: bool = False
    log_dirty: bool = False
    backing: str = "anon"
    populated: bool = True
    uffd: str = "none"
    uffd_resolve: str = "page"

    @property
    def end(self) -> int:
        return self.ipa + self.pages * HOST_PAGE

    def contains(self, ipa: int) -> bool:
        return self.ipa <= ipa < self.end


@dataclass(frozen=True)
class Vmm:
    mmio_store: str = "ignore"


@dataclass(frozen=True)
class Mapping:
    va: int
    ipa: int
    pages: int = 1               # granules
    af: bool = True
    writable: bool = True
    dirty: bool = True
    executable: bool = False


@dataclass(frozen=True)
class Step:
    """One step; only the fields of its op are meaningful (docs/scenario-format.md "Steps")."""
    op: str
    vcpu: int = 0
    va: int = 0
    kind: str = ""
    slot: str = ""
    first: int = 0
    count: int = 0
    ha: bool | None = None
    hd: bool | None = None
    haft: bool | None = None
    initially_set: bool = False
    eager_split: bool = False
    # internal ops only (INTERNAL_OPS; see model.reference.Vm.guest_*):
    asid: int = 0                       # address space the guest kernel works on
    child: int = 0                      # guest_fork: the new address space
    vas: tuple[int, ...] = ()           # VAs whose descriptors the op reads or writes
    descs: tuple[int, ...] = ()         # guest_pte: new leaf descriptor per VA (0 = clear)
    tables: tuple[int, ...] = ()        # IPAs of fresh table granules, used in order
    fill: tuple[int, ...] = ()          # IPAs of data granules the kernel writes first
    nonleaf: bool = False               # guest_age: also test-and-clear table AF (HAFT)
    # host ops (model/host_ops.py): the slot's page indices (ascending int64 array) instead
    # of first/count; generators only (scenario files use first/count)
    pages: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Scenario:
    name: str
    machine: Machine
    guest: Guest
    memslots: tuple[Memslot, ...]
    vmm: Vmm = field(default_factory=Vmm)
    mappings: tuple[Mapping, ...] = ()
    steps: tuple[Step, ...] = ()
    source: str = "<scenario>"

    def slot(self, name: str) -> Memslot:
        for s in self.memslots:
            if s.name == name:
                return s
        raise KeyError(name)

    def slot_of(self, ipa: int) -> Memslot | None:
        for s in self.memslots:
            if s.contains(ipa):
                return s
        return None
