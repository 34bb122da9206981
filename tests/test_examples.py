"""The shipped example scenarios (workloads/scenarios/*.toml) show what they claim.

Each expectation is derived by hand in the file's comment header (and restated here); the
files are loaded through model.scenario_io exactly as `ptwbench scenario FILE` loads them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from model.reference import run_reference

EXAMPLES = Path(__file__).resolve().parents[1] / "workloads" / "scenarios"
EXPECTED = {
    "ro_firmware_page_tables.toml",
    "ha_af_set_after_hole.toml",
    "ha_af_clear_after_zap.toml",
    "thp_dirty_log_no_eager_split.toml",
    "uffd_wp_snapshot_pt_read.toml",
}
TABLES = [0, 1, 2, 3]           # root, L1, L2, L3 of a single 4K/48 mapping


def run(name: str):
    from model.scenario_io import load_scenario
    return run_reference(load_scenario(EXAMPLES / name))


def events(res):
    return [(e.slot, e.page, e.mode, e.write) for e in res.uffd_events]


def test_every_expected_example_ships():
    shipped = {p.name for p in EXAMPLES.glob("*.toml")}
    assert EXPECTED <= shipped


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_loads_and_runs(name):
    res = run(name)
    for pol, r in res.items():
        assert r.dirty_metrics()["dirty_false_negative"] == 0, pol
        assert r.efaults == 0, pol


def test_ro_firmware_page_tables():
    # Three accesses (exec, read64, write64); each one's first fetch is the root page of the
    # read-only "fw" slot.  legacy: write to a RO slot from the walker -> injected abort, the
    # access is dropped, so 3 aborts and exactly one S1PTW fault per access; nothing is mapped.
    # fix/oracle, and ha-promote with HA clear: reads; 6 table pages (0..5) fault once each,
    # 2 data pages (code, ram), and the store lands in ram page 0.
    res = run("ro_firmware_page_tables.toml")
    legacy = res["legacy"]
    assert legacy.guest_aborts == 3
    assert legacy.s2_faults["s1ptw_translation"] == 3
    assert legacy.s2_faults["data_translation"] == 0
    assert legacy.written_pages["ram"] == []
    for pol in ("fix", "ha-promote", "oracle"):
        r = res[pol]
        assert r.guest_aborts == 0, pol
        assert r.stage1_faults == 0, pol
        assert r.s2_faults["s1ptw_translation"] == 6, pol
        assert r.s2_faults["data_translation"] == 2, pol
        assert r.written_pages["ram"] == [0], pol


def test_ha_af_set_after_hole():
    # HA = 1, AF set, the four table pages missing with per-page uffd resolution: four MISSING
    # events.  ha-promote and legacy flag them WRITE and mark pages 0..3 dirty; nothing is
    # written (no descriptor changes) -> 4 false WRITE events, 4 false-positive dirty pages.
    # fix and oracle: 4 read events, nothing dirty.
    res = run("ha_af_set_after_hole.toml")
    for pol, write in (("ha-promote", True), ("legacy", True), ("fix", False), ("oracle", False)):
        r = res[pol]
        assert events(r) == [("pt", p, "missing", write) for p in TABLES], pol
        assert r.written_pages["pt"] == [], pol
        if write:
            assert r.dirty_pages["pt"] == TABLES, pol
            assert r.uffd_counts()["uffd_false_write"] == 4, pol
            # no harvest: the round is open, its 4 unwritten pages pending (not yet false)
            assert r.dirty_metrics()["dirty_pending_unwritten"] == 4, pol
        else:
            assert r.dirty_pages["pt"] == [], pol
            assert r.uffd_counts()["uffd_false_write"] == 0, pol
        assert r.double_faults == 0, pol


def test_ha_af_clear_after_zap():
    # fix: the last read faults twice on page 3 (translation -> RO, then permission for the
    # AF update): double_faults = 1; harvest [3].  ha-promote/legacy: one fault, no double, but
    # the harvest returns [0,1,2,3] with only page 3 written (3 false positives).  oracle: no
    # double fault and exact logs.
    res = run("ha_af_clear_after_zap.toml")
    fix = res["fix"]
    assert fix.double_faults == 1
    assert fix.s2_faults["s1ptw_permission"] == 1
    assert [h.dirty_pages for h in fix.harvests] == [[3]]
    for pol in ("ha-promote", "legacy"):
        r = res[pol]
        assert r.double_faults == 0, pol
        assert r.s2_faults["s1ptw_permission"] == 0, pol
        assert [h.dirty_pages for h in r.harvests] == [TABLES], pol
        assert [h.written_pages for h in r.harvests] == [[3]], pol
        assert r.dirty_metrics()["dirty_false_positive"] == 3, pol
    orc = res["oracle"]
    assert orc.double_faults == 0
    assert [h.dirty_pages for h in orc.harvests] == [[3]]
    for pol in res:
        assert res[pol].dirty_pages["pt"] == [3], pol      # AF update after the harvest


def test_thp_dirty_log_no_eager_split():
    # 1 translation fault maps the 2 MiB block; after logging starts the data write dissolves
    # it (page 256 RW, rest unmapped) and the restarted walk faults on pages 0..3 again:
    # 5 S1PTW translation faults and 1 data permission fault for everyone.  Harvest: fix and
    # oracle [256]; legacy and ha-promote (HA = 1) [0,1,2,3,256], 4 false positives.
    res = run("thp_dirty_log_no_eager_split.toml")
    for pol, marked in (("fix", [256]), ("oracle", [256]),
                        ("legacy", TABLES + [256]), ("ha-promote", TABLES + [256])):
        r = res[pol]
        assert r.s2_faults["s1ptw_translation"] == 5, pol
        assert r.s2_faults["data_permission"] == 1, pol
        assert r.s2_faults["data_translation"] == 0, pol
        assert [h.dirty_pages for h in r.harvests] == [marked], pol
        assert [h.written_pages for h in r.harvests] == [[256]], pol
        assert r.dirty_metrics()["dirty_false_positive"] == len(marked) - 1, pol


def test_uffd_wp_snapshot_pt_read():
    # The second read's 4 S1PTW translation faults hit write-protected pages 0..3.  legacy and
    # ha-promote (HA = 1): writes -> 4 WP events flagged WRITE, none written.  fix, oracle:
    # reads -> no event.
    res = run("uffd_wp_snapshot_pt_read.toml")
    for pol in ("legacy", "ha-promote"):
        r = res[pol]
        assert events(r) == [("pt", p, "wp", True) for p in TABLES], pol
        assert r.uffd_counts()["uffd_false_write"] == 4, pol
    for pol in ("fix", "oracle"):
        assert events(res[pol]) == [], pol
    for pol in res:
        assert res[pol].s2_faults["s1ptw_translation"] == 8, pol
        assert res[pol].written_pages["pt"] == [], pol
