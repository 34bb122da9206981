"""Conformance: every row of page_fault_test.csv (the Linux selftest, v6.2+) under `fix`.

Each row becomes a scenario (tests/conformance.py) and is checked on exactly the columns the
row checks.  A row the model cannot express fails with the reason (never a skip).
"""
from __future__ import annotations

import pytest

from tests.conformance import (DATA_PAGE, PT_IPA, TEST_GVA, csv_path, expected_pte_page, load_rows,
                         parse_row, row_to_scenario)
from model.arch import DESC_AF, HOST_PAGE
from model.engine import run_engine
from model.reference import Vm, run_reference
from model.stage1 import build_tables

RAW_ROWS = load_rows()


def test_csv_is_the_65_row_table():
    assert csv_path().is_file()
    assert len(RAW_ROWS) == 65
    assert len({r["name"] for r in RAW_ROWS}) == 65


def test_pte_page_of_the_standard_layout_is_page_3():
    # By hand, docs/scenario-format.md's layout rule with 4K granule / 48-bit VA (4 levels, L0..L3) and
    # a single mapping: the root (L0) table is page 0 of pt_slot; inserting TEST_GVA needs an
    # L1 table (next free page: 1), an L2 table (2) and an L3 table (3).  The leaf descriptor
    # of TEST_GVA = 0xc0000000 is entry (0xc0000000 >> 12) & 511 = 0 of the L3 table, so it
    # lies in page 3 at offset 0.
    assert expected_pte_page(4096, 48) == 3
    scn = row_to_scenario(parse_row(RAW_ROWS[0]))
    tables = build_tables(scn)
    assert tables.leaf_addr[TEST_GVA] == PT_IPA + 3 * HOST_PAGE
    assert tables.tables_used == 4


def _events_in(res, slot):
    return [e for e in res.uffd_events if e.slot == slot]


ENGINES = {"reference": run_reference, "numpy": run_engine}


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("raw", RAW_ROWS, ids=[r["name"] for r in RAW_ROWS])
def test_row(raw, engine):
    row = parse_row(raw)                 # Unexpressible -> the test fails with the reason
    scn = row_to_scenario(row)
    res = ENGINES[engine](scn, ("fix",))["fix"]
    pte_pg = expected_pte_page()
    facts = (f"uffd={[(e.slot, e.page, e.write) for e in res.uffd_events]} "
             f"mmio={res.mmio_exits} fail={res.vcpu_run_failures} aborts={res.guest_aborts} "
             f"s1={res.stage1_faults} dirty={res.dirty_pages} s2={res.s2_faults}")

    if row.exp_uffd_faults is not None:
        assert len(res.uffd_events) == row.exp_uffd_faults, facts
    # `nofault`: registered but must not fire; `any`: a fault is expected there.
    for slot, col in (("pt", row.uffd_pt), ("data", row.uffd_data)):
        if col == "nofault":
            assert _events_in(res, slot) == [], facts
        elif col == "any":
            assert len(_events_in(res, slot)) >= 1, facts
    if row.exp_mmio_exits is not None:
        assert res.mmio_exits == row.exp_mmio_exits, facts
    if row.exp_fail_vcpu_runs is not None:
        assert res.vcpu_run_failures == row.exp_fail_vcpu_runs, facts
    if row.data_dirty is not None:
        assert (DATA_PAGE in res.dirty_pages["data"]) == row.data_dirty, facts
    if row.pt_dirty is not None:
        assert (pte_pg in res.dirty_pages["pt"]) == row.pt_dirty, facts
    # The selftest's default handlers fail the test on any unexpected guest exception
    # (setup_default_handlers): no abort injected by KVM, no stage-1 fault either.
    assert res.guest_aborts == 0, facts
    assert res.stage1_faults == 0, facts
    assert res.efaults == 0, facts


WITH_AF = [r for r in RAW_ROWS if r["ha_af"] == "with_af"]


@pytest.mark.parametrize("raw", WITH_AF, ids=[r["name"] for r in WITH_AF])
def test_with_af_rows_end_with_af_set(raw):
    # guest_check_pte_af: every with_af case (TEST_ACCESS, TEST_UFFD, TEST_DIRTY_LOG,
    # TEST_UFFD_AND_DIRTY_LOG all list _CHECK(_with_af)) asserts the PTE's AF is set at the
    # end — set by the hardware (HA) on the access, or restored by the uffd handler's copy of
    # the pre-run snapshot.
    row = parse_row(raw)
    scn = row_to_scenario(row)
    vm = Vm(scn, "fix")
    for i, st in enumerate(scn.steps):
        vm.run_step(i, st)
    leaf_addr = PT_IPA + expected_pte_page() * HOST_PAGE   # entry 0 of the L3 table
    assert vm.host.read_desc(leaf_addr) & DESC_AF


@pytest.mark.parametrize("raw", [r for r in WITH_AF if r["name"].startswith("TEST_ACCESS/")],
                         ids=[r["name"] for r in WITH_AF if r["name"].startswith("TEST_ACCESS/")])
def test_test_access_with_af_af_is_set_by_hardware(raw):
    # TEST_ACCESS with_af has no hole: AF can only come back through the walker's hardware
    # update (HA), which is a real write of the L3 table page.  Check that the AF was clear
    # before the access (clear_af worked) and set after it.
    row = parse_row(raw)
    scn = row_to_scenario(row)
    vm = Vm(scn, "fix")
    leaf_addr = PT_IPA + expected_pte_page() * HOST_PAGE
    access_idx = next(i for i, st in enumerate(scn.steps) if st.op == "access")
    for i, st in enumerate(scn.steps[:access_idx]):
        vm.run_step(i, st)
    assert not vm.host.read_desc(leaf_addr) & DESC_AF
    vm.run_step(access_idx, scn.steps[access_idx])
    assert vm.host.read_desc(leaf_addr) & DESC_AF
    assert expected_pte_page() in vm.host.written["pt"]
