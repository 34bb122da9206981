"""Variants that do what they say (issue 20 item 9, bench/variants.py): `haft` runs the HAFT
guest profile, every variant changes a metric on a case built to show it, and a variant the
guest profile contradicts is refused with one line."""
import pytest

from bench.catalog import build
from bench.cli import main
from bench.runner import run_workload
from bench.variants import VARIANTS, VariantError, contradiction, variant_workload

# shared memory read then written: the PTE is clean-writable (DBM), so the first store is a
# hardware dirty update with HD, a stage-1 permission fault the guest handles without it
SHMEM = ("zipf", dict(keys=2048, operations=600, mapping="shmem", read_percent=50), "none")
# an aged page-table-heavy guest during pre-copy: aging clears AF (and with HAFT the level-2
# table AF), the walker sets it again: descriptor writes into logged page-table pages
AGED = ("sparse", dict(regions=64, accesses=1500, write_percent=30, age_period=256,
                       age_fraction=0.5), "precopy")


def rows(case, variant):
    w, k, h = case
    return {r["policy"]: r for r in run_workload(build(w, k, h), host=h,
                                                 variant=variant).rows}


@pytest.fixture(scope="module")
def aged():
    return {v: rows(AGED, v) for v in VARIANTS}


def test_every_variant_is_shown_by_a_case(aged):
    # the tests below, one or more per variant
    shown = {"af-only", "no-hafdbs", "haft", "hw-always", "pkvm", "x86-ept-ad", "x86-ept"}
    assert shown == set(VARIANTS) - {"default"}


@pytest.mark.parametrize("variant", ["af-only", "no-hafdbs"])
def test_without_hardware_dirty_state_stores_to_clean_ptes_fault(variant):
    d, v = rows(SHMEM, "default"), rows(SHMEM, variant)
    assert v["fix"]["stage1_faults"] > d["fix"]["stage1_faults"]


@pytest.mark.parametrize("variant", ["haft", "hw-always"])
def test_more_walker_writes_mark_more_page_table_pages_dirty(aged, variant):
    # haft: aging also clears the table AF, which the next walk sets again; hw-always: the
    # walker writes the descriptor back on every walk
    assert aged[variant]["fix"]["dirty_marked_pt"] > aged["default"]["fix"]["dirty_marked_pt"]


@pytest.mark.parametrize("variant", ["pkvm", "no-hafdbs"])
def test_ha_promote_acts_as_fix_where_the_host_cannot_use_tcr(aged, variant):
    keys = ("s2_faults", "s2_data_permission", "dirty_marked_pt")
    d, v = aged["default"], aged[variant]
    assert any(d["ha-promote"][k] != d["fix"][k] for k in keys)
    assert all(v["ha-promote"][k] == v["fix"][k] for k in keys)


def test_x86_ept_ad_walks_are_writes_at_stage_2(aged):
    # EPT A/D: every walk's table accesses are writes (SDM Vol. 3C "Accessed and Dirty
    # Flags for EPT"): every walked page-table page is dirty, more than on arm
    assert aged["x86-ept-ad"]["fix"]["dirty_marked_pt"] > aged["default"]["fix"]["dirty_marked_pt"]


def test_x86_ept_rows_are_one_machine(aged):
    # every policy row is the same x86 machine (no ha-promote): its ha-promote row is fix's
    keys = ("s2_faults", "s2_data_permission", "dirty_marked_pt")
    assert any(aged["default"]["ha-promote"][k] != aged["default"]["fix"][k] for k in keys)
    assert all(aged["x86-ept"]["ha-promote"][k] == aged["x86-ept"]["fix"][k] for k in keys)


def test_variant_haft_is_the_haft_profile():
    w, k, h = AGED
    as_variant = variant_workload(build(w, k, h), "haft")
    as_profile = build(w, dict(k, cpu="haft"), h)
    assert as_variant.scenario == as_profile.scenario
    assert list(as_variant.trace.events) == list(as_profile.trace.events)
    got = {r["policy"]: r for r in run_workload(build(w, k, h), host=h, variant="haft").rows}
    want = {r["policy"]: r for r in run_workload(as_profile, host=h).rows}
    assert ({p: {c: x for c, x in r.items() if c != "variant"} for p, r in got.items()}
            == {p: {c: x for c, x in r.items() if c != "variant"} for p, r in want.items()})


@pytest.mark.parametrize("variant,cpu", [("haft", "cortex-a72"), ("af-only", "haft"),
                                         ("no-hafdbs", "haft"), ("hw-always", "ampere1")])
def test_contradictory_variant_and_profile_are_refused(variant, cpu, capsys):
    assert contradiction(variant, cpu)
    with pytest.raises(VariantError, match="contradicts"):
        variant_workload(build("zipf", dict(keys=64, operations=10, cpu=cpu)), variant)
    rc = main(["run", "zipf", "--knob", "keys=64", "--knob", "operations=10", "--knob",
               f"cpu={cpu}", "--variant", variant, "--no-save"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "contradicts" in err


def test_sweep_refuses_a_contradictory_grid():
    from bench.sweep import SweepError, load_sweep
    spec = ('[[grid]]\nworkloads = ["zipf"]\nvariants = ["default", "haft"]\n'
            '[grid.knobs.zipf]\ncpu = ["neoverse-n1", "cortex-a72"]\n')
    with pytest.raises(SweepError, match="haft contradicts cpu=cortex-a72"):
        load_sweep(spec, "s.toml")


def test_beer_refuses_a_contradictory_case():
    from bench.beer import load_spec
    from bench.spec_checks import SpecError
    spec = ('micro = false\n[[case]]\nworkloads = ["zipf"]\nvariants = ["haft"]\n'
            '[case.knobs.zipf]\ncpu = "cortex-a72"\n')
    with pytest.raises(SpecError, match=r"case\[0\].knobs.zipf: --variant haft contradicts"):
        load_spec(spec, "b.toml")
