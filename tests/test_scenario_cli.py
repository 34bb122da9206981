"""`ptwbench scenario`: every shipped scenario runs; `--json` has exactly docs/scenario-format.md's shape."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "workloads" / "scenarios").glob("*.toml"))

# docs/scenario-format.md "Output": the keys of one policy's object, in this order
POLICY_KEYS = ["s2_faults", "double_faults", "uffd_events", "mmio_exits",
               "vcpu_run_failures", "guest_aborts", "stage1_faults", "harvests",
               "dirty_pages", "written_pages"]
S2_KEYS = ["s1ptw_translation", "s1ptw_permission", "data_translation", "data_permission"]
EVENT_KEYS = ["step", "slot", "page", "mode", "write"]
HARVEST_KEYS = ["step", "slot", "dirty_pages"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", "scenario", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("engine", ["numpy", "reference"])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_json_shape(path, engine):
    from model.scenario_io import load_scenario
    scn = load_scenario(path)
    p = run(str(path), "--json", "--engine", engine)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc) == ["scenario", "policies"] and doc["scenario"] == scn.name
    assert list(doc["policies"]) == ["fix", "legacy", "ha-promote", "oracle"]
    slots = [s.name for s in scn.memslots]
    for pol in doc["policies"].values():
        assert list(pol) == POLICY_KEYS
        assert list(pol["s2_faults"]) == S2_KEYS
        assert all(isinstance(v, int) and v >= 0 for v in pol["s2_faults"].values())
        for e in pol["uffd_events"]:
            assert list(e) == EVENT_KEYS and e["slot"] in slots
            assert e["mode"] in ("missing", "minor", "wp") and isinstance(e["write"], bool)
            assert 0 <= e["step"] < len(scn.steps)
        for h in pol["harvests"]:
            assert list(h) == HARVEST_KEYS and h["dirty_pages"] == sorted(h["dirty_pages"])
        for k in ("dirty_pages", "written_pages"):
            assert list(pol[k]) == slots
            assert all(v == sorted(set(v)) for v in pol[k].values())


def test_policy_selection_and_text_table():
    path = SHIPPED[0]
    p = run(str(path), "--json", "--policy", "oracle", "fix")
    assert p.returncode == 0
    assert list(json.loads(p.stdout)["policies"]) == ["oracle", "fix"]
    p = run(*map(str, SHIPPED))                        # every shipped scenario, as tables
    assert p.returncode == 0 and p.stdout.count("scenario: ") == len(SHIPPED)
    p = run(str(path), "--policy", "lazy")
    assert p.returncode == 2 and "lazy" in p.stderr and p.stdout == ""
