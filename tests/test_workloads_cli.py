"""`ptwbench workloads`: every generator and host scenario with its knobs and defaults; knob
checking in the registry."""
import json

import pytest

from bench.cli import main
from workloads.base import WorkloadError
from workloads.linux import PROFILE_KNOBS
from workloads.registry import GENERATORS, HOST_SCENARIOS, IMPORT_KNOBS, build, make


def test_workloads_lists_every_generator_host_scenario_and_knob(capsys):
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    for e in list(GENERATORS.values()) + list(HOST_SCENARIOS.values()):
        assert f" {e.name}\n" in out
        for k in e.knobs:
            assert f"\n    {k.name} " in out, (e.name, k.name)
    for k in PROFILE_KNOBS + IMPORT_KNOBS:
        assert f"\n    {k.name} " in out
    assert "import:PATH" in out


def test_workloads_json_has_defaults(capsys):
    assert main(["workloads", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    gens = {g["name"]: g for g in data["generators"]}
    assert set(gens) == set(GENERATORS)
    for name, e in GENERATORS.items():
        assert {k["name"]: k["default"] for k in gens[name]["knobs"]} == \
            {k.name: k.default for k in e.knobs}
        assert gens[name]["stands_for"] and all(k["help"] for k in gens[name]["knobs"])
    assert {h["name"] for h in data["host_scenarios"]} == set(HOST_SCENARIOS)


def test_host_knobs_carry_units_and_sources(capsys):
    """Issue 9: every numeric host knob has its unit (in its name, or a count of pages or
    accesses) and a source (kernel, QEMU, or an ASSUMPTION label); the calibrated ones name
    a kernel or QEMU default unless marked ASSUMPTION."""
    assert main(["workloads", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for h in data["host_scenarios"]:
        for k in h["knobs"]:
            if isinstance(k["default"], bool) or k["choices"] or k["name"] == "seed":
                continue
            where = (h["name"], k["name"])
            assert k["unit"] or k["name"] in ("rounds", "fraction"), where
            assert k["source"], where
            if h["name"] in ("numa", "ksm", "khugepaged", "migration"):
                assert (k["source"].startswith(("Linux", "QEMU", "ASSUMPTION"))), where
    units = {k["name"]: k["unit"] for h in data["host_scenarios"] for k in h["knobs"]}
    assert units["scan_period_s"] == "s" and units["bandwidth_mb_s"] == "MB/s"
    assert units["period_accesses"] == "accesses" and units["pages_to_scan"] == "pages"


def test_every_generator_runs_with_its_defaults_quickly():
    # the defaults are sized for the reference engine: ~10^4 accesses each
    for name in GENERATORS:
        wl = make(name)
        assert 1_000 <= wl.meta["accesses"] <= 40_000, name


def test_knob_strings_are_coerced_and_checked():
    a = make("memstress", 1, bytes_per_vcpu="0x10000", random_access="true", iterations="2",
             demand="false", cpu="cortex-a55")
    assert a.meta["bytes_per_vcpu"] == 0x10000 and a.meta["random_access"] is True
    assert a.meta["profile"]["demand"] is False and a.meta["profile"]["cpu"] == "cortex-a55"
    for bad, what in ((dict(iterations="two"), "not an integer"),
                      (dict(op="memmove"), "not one of"),
                      (dict(random_access="maybe"), "not true or false"),
                      (dict(nope=1), "unknown")):
        with pytest.raises(WorkloadError, match=what):
            make("memstress" if "op" not in bad else "stream", **bad)
    with pytest.raises(WorkloadError, match="unknown workload"):
        make("nosuch")
    with pytest.raises(WorkloadError, match="unknown host scenario"):
        build("memstress", 0, "nosuch")
