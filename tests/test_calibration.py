"""The calibration table (bench/calibration.py), its document and the cost model's defaults."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from bench import calibration as cal
from bench.cost import PARAMS, CostModel, param_range

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "calibration.md"
BEGIN, END = "<!-- BEGIN TABLE", "<!-- END TABLE -->"


def test_every_row_has_unit_source_confidence_and_a_range():
    cal.check_table()
    for r in cal.table():
        assert r["unit"] and r["source"] and r["confidence"] in cal.CONFIDENCE
        assert r["lo"] <= r["value"] <= r["hi"]
        assert cal.unit_of(r["name"]) == r["unit"]
    json.dumps(cal.table())                            # rows are plain data for JSON reports


@pytest.mark.parametrize("change, words", [
    (dict(source=""), "no source"),
    (dict(unit=""), "no unit"),
    (dict(confidence="sure"), "confidence 'sure'"),
    (dict(unit="ms"), "suffix"),
    (dict(lo=2.0), "does not contain"),
    (dict(value=float("nan")), "finite"),
])
def test_check_table_refuses_bad_rows(change, words):
    good = cal.constant("s2_wp_fault_altra_us")
    with pytest.raises(ValueError, match=words):
        cal.check_table((replace(good, **change),))
    with pytest.raises(ValueError, match="duplicate"):
        cal.check_table((good, good))


def test_suffixes_name_units_longest_first():
    assert cal.unit_of("x_mb_s") == "MB/s" and cal.unit_of("x_s") == "s"
    assert cal.unit_of("x_gbit_s") == "Gbit/s" and cal.unit_of("x_pages_s") == "pages/s"
    assert cal.unit_of("x_mib") == "MiB" and cal.unit_of("speed") is None


def test_published_figures_match_their_sources_arithmetic():
    # 926 ms for the write-protect faults of 2 GiB of 4 KiB pages
    assert cal.value("s2_wp_fault_altra_us") == pytest.approx(926e3 / (2 * 2**30 / 4096),
                                                              abs=0.01)
    # 150-180 k MINOR faults per second
    c = cal.constant("uffd_minor_round_trip_us")
    assert (c.lo, c.hi) == (pytest.approx(1e6 / 180e3, abs=0.05),
                            pytest.approx(1e6 / 150e3, abs=0.05))
    # x-clear-bitmap-shift 18: chunks of 2^18 4 KiB pages = 1 GiB
    assert cal.value("qemu_clear_chunk_pages") * 4096 == 2**30
    # QEMU's 128 MiB/s cap is the link range's lower end, in Gbit/s
    assert cal.constant("migration_link_gbit_s").lo == pytest.approx(1.073741824)
    assert cal.value("pte_per_4k_page_b") / 4096 == pytest.approx(0.001953125)
    assert cal.value("pt_sparse_server_share") == pytest.approx(110 / 590)
    assert cal.value("postcopy_fault_avg_us") == pytest.approx((233 + 268) / 2, abs=0.5)


def test_the_issue_s_figures_are_all_there():
    names = {r["name"] for r in cal.table()}
    for n in ("s2_wp_fault_altra_us", "hvc_round_trip_altra_us", "mmio_exit_user_altra_us",
              "uffd_minor_round_trip_us", "postcopy_fault_preempt_us",
              "postcopy_fault_vanilla_us", "postcopy_fault_avg_us", "uffd_wp_round_trip_us",
              "qemu_max_bandwidth_mib_s", "qemu_downtime_limit_ms", "qemu_clear_chunk_pages",
              "qemu_dirty_ring_reap_period_s", "numa_scan_size_mib",
              "numa_scan_period_min_ms", "numa_scan_period_max_ms", "numa_scan_delay_ms",
              "khugepaged_pages_to_scan_pages", "khugepaged_scan_sleep_ms",
              "khugepaged_alloc_sleep_ms", "ksm_pages_to_scan_pages", "ksm_sleep_ms",
              "far_memory_cold_age_s", "mglru_min_ttl_ms", "damon_sample_interval_ms",
              "damon_aggr_interval_ms", "damon_min_regions_count", "damon_max_regions_count",
              "pte_per_4k_page_b", "link_10g_gbit_s", "link_25g_gbit_s", "link_100g_gbit_s",
              "stream_access_ns", "pointer_hop_ns"):
        assert n in names
    assert cal.constant("uffd_wp_round_trip_us").confidence == "assumption"
    with pytest.raises(KeyError, match="no constant"):
        cal.value("nope_us")


def test_cost_model_defaults_come_from_the_table():
    cm = CostModel()
    assert set(cal.COST_DEFAULTS) == set(PARAMS)
    for p in PARAMS:
        row = cal.constant(cal.COST_DEFAULTS[p])
        assert getattr(cm, p) == row.value
        assert param_range(p) == (row.lo, row.hi)
        assert cal.unit_of(p) == row.unit               # the knob's name carries the unit
    # re-sending a page at 10 Gbit/s: 4096 * 8 bits / 10^4 bits per us + 1 us
    assert cm.resend_us == pytest.approx(3.2768 + 1.0)
    assert cm.exit_us == pytest.approx(1.77)


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(re.escape(BEGIN) + r"[^\n]*\n(.*?)" + re.escape(END), text, re.S)
    assert m, f"{DOC} has no generated table between {BEGIN!r} and {END!r}"
    return m.group(1)


def test_doc_and_table_agree():
    assert _doc_table() == cal.markdown_table(), (
        "docs/calibration.md's table differs from bench/calibration.py: regenerate it with "
        "python -m bench.calibration --markdown")
    # and the table has a row per constant, each with its value
    lines = [ln for ln in _doc_table().splitlines() if ln.startswith("| `")]
    assert len(lines) == len(cal.TABLE)
    for ln, c in zip(lines, cal.TABLE):
        assert f"`{c.name}`" in ln and f"| {c.value:.6g} |" in ln and c.confidence in ln


def test_markdown_detects_a_changed_value():
    rows = list(cal.TABLE)
    rows[0] = replace(rows[0], value=rows[0].value + 0.01)
    assert cal.markdown_table(tuple(rows)) != _doc_table()


def test_cli(capsys):
    assert cal.main(["--markdown"]) == 0
    assert capsys.readouterr().out == cal.markdown_table()
    assert cal.main([]) == 0 and "s2_wp_fault_altra_us" in capsys.readouterr().out
    assert cal.main(["--bogus"]) == 2


@pytest.mark.parametrize("doc", ["calibration.md", "cost-model.md"])
def test_docs_state_the_cost_defaults_and_their_rows(doc):
    # each knob row of the hand-written tables (after the generated one):
    # | `knob` | ... `row` ... | default | ...
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8").split(END)[-1]
    cm, seen = CostModel(), set()
    for ln in text.splitlines():
        m = re.match(r"\| `(\w+)` \|(.*)", ln)
        if not m or m.group(1) not in PARAMS:
            continue
        knob, cells = m.group(1), [c.strip() for c in m.group(2).split("|")]
        seen.add(knob)
        assert f"`{cal.COST_DEFAULTS[knob]}`" in cells, (doc, knob)
        numbers = [float(x) for c in cells for x in re.findall(r"^([\d.]+)", c)]
        assert getattr(cm, knob) in numbers, (doc, knob, numbers)
    assert seen == set(PARAMS)
