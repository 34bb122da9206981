"""The two semantic corrections of issue 11 (docs/scenario-format.md, `swap_out` and the MMIO
rule for `clear_af`), with expectations derived by hand, on both engines.

Layout (docs/scenario-format.md "Stage-1 table layout", 4K granule, 48-bit VA): one mapping
gives tables in pt pages 0 (root), 1 (L1), 2 (L2), 3 (L3): a cold walk takes four S1PTW
translation faults, one per table page.
"""
from __future__ import annotations

import tomllib

import pytest

from model.engine import run_engine
from model.reference import run_reference
from model.scenario_io import parse_scenario

ENGINES = {"reference": run_reference, "numpy": run_engine}
VA = 0xC000_0000


def _block_scenario(backing: str) -> str:
    # a 2 MiB data slot, one 2 MiB block-aligned mapping of 512 pages
    acc = lambda page: f'[[steps]]\nop = "access"\nva = {VA + page * 4096:#x}\nkind = "read64"\n'
    return f'''version = 1
[guest]
pt_slot = "pt"
[[memslots]]
name = "pt"
ipa = 0x40000000
pages = 16
[[memslots]]
name = "data"
ipa = 0x80000000
pages = 512
backing = "{backing}"
[[mappings]]
va = {VA:#x}
ipa = 0x80000000
pages = 512
''' + acc(0) + '''[[steps]]
op = "swap_out"
slot = "data"
first = 1
count = 1
''' + acc(0) + acc(2) + acc(1) + acc(3)


@pytest.mark.parametrize("engine", ENGINES)
def test_swap_out_part_of_a_thp_block(engine):
    """anon_thp: step 0 maps the whole block (1 data translation fault, 4 S1PTW ones).
    swap_out page 1 unmaps the block and swaps page 1 out.  Page 0 again: a translation fault,
    and the block cannot be mapped (page 1 not present): 4K page 0 only.  Page 2: another
    translation fault (not covered).  Page 1: translation fault, swapped in; now every page
    is present: the whole block is mapped.  Page 3: covered, no fault.
    Data translation faults: 1 + 1 + 1 + 1 = 4 (a plain zap would give 2)."""
    scn = parse_scenario(tomllib.loads(_block_scenario("anon_thp")), "thp.toml")
    for p, r in ENGINES[engine](scn).items():
        assert r.s2_faults["data_translation"] == 4, p
        assert r.s2_faults["s1ptw_translation"] == 4, p
        assert r.s2_faults["data_permission"] == r.s2_faults["s1ptw_permission"] == 0, p
        assert not r.uffd_events, p                   # swap-in never involves userfaultfd


@pytest.mark.parametrize("engine", ENGINES)
def test_swap_out_on_hugetlb_only_zaps(engine):
    """hugetlb pages are never swapped: swap_out only unmaps the block; page 0 again maps the
    whole block, pages 2, 1 and 3 are covered.  Data translation faults: 1 + 1 = 2."""
    scn = parse_scenario(tomllib.loads(_block_scenario("hugetlb")), "hugetlb.toml")
    for p, r in ENGINES[engine](scn).items():
        assert r.s2_faults["data_translation"] == 2, p
        assert r.s2_faults["s1ptw_translation"] == 4, p


CLEAR_AF_RO = f'''version = 1
[machine]
hafdbs = 2
[guest]
tcr_ha = true
pt_slot = "pt"
[[memslots]]
name = "pt"
ipa = 0x40000000
pages = 16
readonly = true
[[memslots]]
name = "data"
ipa = 0x80000000
pages = 4
[vmm]
mmio_store = "write_backing"
[[mappings]]
va = {VA:#x}
ipa = 0x80000000
pages = 1
af = true
[[steps]]
op = "access"
va = {VA:#x}
kind = "read64"
[[steps]]
op = "clear_af"
va = {VA:#x}
[[steps]]
op = "access"
va = {VA:#x}
kind = "read64"
'''


@pytest.mark.parametrize("engine", ENGINES)
def test_clear_af_routed_to_the_vmm_writes_the_backing(engine):
    """fix and oracle.  Step 0: four S1PTW translation faults (reads: the read-only slot is
    mapped read-only), one data translation fault; AF is set, no update.  Step 1: clear_af is
    a store (WnR = 1, ISV = 1) to pt page 3, mapped read-only: a data permission fault, a
    write to a read-only slot -> KVM_EXIT_MMIO; with write_backing the VMM writes the
    descriptor with AF cleared.  Step 2: the leaf now has AF = 0 and HA is on: the walker must
    write pt page 3 -> an S1PTW permission fault, a write to a read-only slot -> KVM injects
    a data abort.  Had the VMM not written the backing, step 2 would take no fault."""
    scn = parse_scenario(tomllib.loads(CLEAR_AF_RO), "clear_af_ro.toml")
    res = ENGINES[engine](scn)
    for p in ("fix", "oracle"):
        r = res[p]
        assert r.s2_faults == {"s1ptw_translation": 4, "s1ptw_permission": 1,
                               "data_translation": 1, "data_permission": 1}, p
        assert (r.mmio_exits, r.guest_aborts) == (1, 1), p
        assert not any(r.written_pages.values()), p     # the VMM's write is not the guest's
