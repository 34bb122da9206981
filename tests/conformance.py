"""page_fault_test.csv -> Scenario: the Linux selftest's cases as micro-scenarios.

One `Scenario` per CSV row, built in code from the dataclasses of model/scenario.py (no file
parsing involved).  How `tools/testing/selftests/kvm/aarch64/page_fault_test.c` maps onto a
scenario (tests/data/README.md, docs/semantics.md, docs/scenario-format.md):

* machine: 4K granule, 48-bit VA (4 levels: root L0, L1, L2, L3), HAFDBS = 2 (the selftest
  skips the with_af cases without HAFDBS, so the machine has it); TCR_EL1.HA clear at start.
* memslots "pt" (every stage-1 table) and "data" (TEST_GVA's page), anon backing, populated.
  RO in the flags -> `readonly`; LOG_DIRTY -> `log_dirty` (logging from creation, so the dirty
  log read after the access covers everything since the slot was created).  A uffd column
  that is not empty (`any` or `nofault`) -> uffd "missing" with `uffd_resolve = "slot"`: the
  selftest's handler copies the whole slot from a snapshot taken before the run (so a
  restored PTE has AF set again: the snapshot predates guest_clear_pte_af).
* vmm: `mmio_store = "write_backing"`: the selftest's MMIO handler (mmio_on_test_gpa_handler)
  memcpy()s mmio.data into the slot's hva — the second uffd fault of the RO+uffd write case.
* one mapping TEST_GVA -> first page of the data slot; AF set, writable, dirty, executable.
* steps, in the selftest's order (guest_prepare, then GUEST_SYNC(mem_mark_cmd), then the test):
    with_af: set_tcr(ha=true) [guest_set_ha], clear_af(TEST_GVA) [guest_clear_pte_af];
    hole_pt / hole_data: punch_hole pt / data [CMD_HOLE_PT / CMD_HOLE_DATA];
    the access (`guest_X` -> kind X); guest_write64 also reads back (READ_ONCE after the STR).

The table is test data kept in the repository: tests/data/page_fault_test.csv (provenance in
tests/data/README.md).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm

TEST_GVA = 0xC000_0000
PT_IPA = 0x4000_0000
PT_PAGES = 16                   # plenty for 4 tables (root, L1, L2, L3)
DATA_IPA = 0x8000_0000
DATA_PAGES = 4
DATA_PAGE = 0                   # TEST_GVA maps the first page of the data slot

ACCESS_KINDS = {                # CSV access -> docs/scenario-format.md access kind
    "guest_read64": "read64",
    "guest_write64": "write64",
    "guest_ld_preidx": "ld_preidx",
    "guest_st_preidx": "st_preidx",
    "guest_cas": "cas",
    "guest_dc_zva": "dc_zva",
    "guest_exec": "exec",
    "guest_at": "at",
}


def csv_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "page_fault_test.csv"


class Unexpressible(ValueError):
    """A row the model cannot express (the test must fail with this reason, not skip)."""


@dataclass(frozen=True)
class Row:
    name: str
    access: str
    ha_af: str
    pt_flags: frozenset[str]
    data_flags: frozenset[str]
    hole_pt: bool
    hole_data: bool
    uffd_pt: str                # "" | "any" | "nofault"
    uffd_data: str
    exp_uffd_faults: int | None
    exp_mmio_exits: int | None
    exp_fail_vcpu_runs: int | None
    data_dirty: bool | None     # None: not checked
    pt_dirty: bool | None
    notes: str

    @property
    def with_af(self) -> bool:
        return self.ha_af == "with_af"


def _flags(s: str) -> frozenset[str]:
    s = s.strip()
    if s in ("", "0"):
        return frozenset()
    return frozenset(f.strip() for f in s.split("|"))


def _int(s: str) -> int | None:
    s = s.strip()
    return int(s) if s else None


def _bool01(s: str) -> bool:
    s = s.strip()
    if s not in ("0", "1"):
        raise Unexpressible(f"hole column {s!r} is neither 0 nor 1")
    return s == "1"


def _yes_no(s: str) -> bool | None:
    s = s.strip()
    if not s:
        return None
    if s in ("yes", "yes(pte_pg)"):
        return True
    if s in ("no", "no(pte_pg)"):
        return False
    raise Unexpressible(f"dirty column {s!r} is not yes/no[(pte_pg)]")


def load_rows(path: Path | None = None) -> list[dict[str, str]]:
    """The raw CSV rows (dicts of strings); parsing each is deferred to the test so that a bad
    row fails its own test instead of breaking collection."""
    with open(path or csv_path(), newline="") as f:
        return list(csv.DictReader(f))


def parse_row(raw: dict[str, str]) -> Row:
    return Row(
        name=raw["name"],
        access=raw["access"].strip(),
        ha_af=raw["ha_af"].strip(),
        pt_flags=_flags(raw["pt_flags"]),
        data_flags=_flags(raw["data_flags"]),
        hole_pt=_bool01(raw["hole_pt"]),
        hole_data=_bool01(raw["hole_data"]),
        uffd_pt=raw["uffd_pt"].strip(),
        uffd_data=raw["uffd_data"].strip(),
        exp_uffd_faults=_int(raw["exp_uffd_faults"]),
        exp_mmio_exits=_int(raw["exp_mmio_exits"]),
        exp_fail_vcpu_runs=_int(raw["exp_fail_vcpu_runs"]),
        data_dirty=_yes_no(raw["data_dirty"]),
        pt_dirty=_yes_no(raw["pt_dirty"]),
        notes=raw.get("notes", ""),
    )


KNOWN_FLAGS = {"RO", "LOG_DIRTY"}


def _slot(name: str, ipa: int, pages: int, flags: frozenset[str], uffd_col: str) -> Memslot:
    unknown = flags - KNOWN_FLAGS
    if unknown:
        raise Unexpressible(f"memslot flags {sorted(unknown)} of slot {name!r} are not modelled")
    if uffd_col not in ("", "any", "nofault"):
        raise Unexpressible(f"uffd column {uffd_col!r} of slot {name!r} is not modelled")
    return Memslot(
        name=name, ipa=ipa, pages=pages,
        readonly="RO" in flags,
        log_dirty="LOG_DIRTY" in flags,
        backing="anon",
        populated=True,
        uffd="missing" if uffd_col else "none",
        uffd_resolve="slot",
    )


def row_to_scenario(row: Row) -> Scenario:
    if row.access not in ACCESS_KINDS:
        raise Unexpressible(f"access {row.access!r} has no docs/scenario-format.md access kind")
    if row.ha_af not in ("with_af", "no_af", "none"):
        raise Unexpressible(f"ha_af {row.ha_af!r} is not with_af/no_af/none")
    steps: list[Step] = []
    if row.with_af:
        steps.append(Step(op="set_tcr", ha=True))             # guest_set_ha
        steps.append(Step(op="clear_af", va=TEST_GVA))        # guest_clear_pte_af
    if row.hole_pt:
        steps.append(Step(op="punch_hole", slot="pt"))        # CMD_HOLE_PT
    if row.hole_data:
        steps.append(Step(op="punch_hole", slot="data"))      # CMD_HOLE_DATA
    steps.append(Step(op="access", va=TEST_GVA, kind=ACCESS_KINDS[row.access]))
    if row.access == "guest_write64":                         # READ_ONCE after the STR
        steps.append(Step(op="access", va=TEST_GVA, kind="read64"))
    return Scenario(
        name=row.name,
        machine=Machine(granule=4096, va_bits=48, hafdbs=2),
        guest=Guest(tcr_ha=False, tcr_hd=False, pt_slot="pt"),
        memslots=(
            _slot("pt", PT_IPA, PT_PAGES, row.pt_flags, row.uffd_pt),
            _slot("data", DATA_IPA, DATA_PAGES, row.data_flags, row.uffd_data),
        ),
        vmm=Vmm(mmio_store="write_backing"),
        mappings=(Mapping(va=TEST_GVA, ipa=DATA_IPA, pages=1, af=True, writable=True,
                          dirty=True, executable=True),),
        steps=tuple(steps),
        source=f"page_fault_test.csv:{row.name}",
    )


def expected_pte_page(granule: int = 4096, va_bits: int = 48) -> int:
    """Slot page holding TEST_GVA's leaf descriptor, from docs/scenario-format.md's layout rule alone: the
    root is granule 0 of pt_slot and, with a single mapping, each lower level's table is
    allocated at the next free granule, so the leaf (level-3) table is granule levels - 1.
    Returned in 4 KiB host pages (the unit of dirty-page indices)."""
    shift = granule.bit_length() - 1
    stride = shift - 3
    levels = -(-(va_bits - shift) // stride)
    index3 = (TEST_GVA >> shift) & ((1 << stride) - 1)
    return ((levels - 1) * granule + index3 * 8) // 4096
