"""meta.json (issue 23, item 3): one shape for run, beer and sweep (bench/meta.py's schema),
the ptwbench version, and a git revision only when the package is itself a git checkout."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import meta as M
from bench.cli import main

SMALL = {"regions": "8", "accesses": "64"}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """meta.json of a run, a beer and a sweep, each as small as they come."""
    d = tmp_path_factory.mktemp("meta")
    assert main(["run", "sparse", "--knob", "regions=8", "--knob", "accesses=64",
                 "--out", str(d / "run"), "--format", "csv"]) == 0
    (d / "b.toml").write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\n'
                              '[case.knobs.sparse]\nregions = 8\naccesses = 64\n')
    assert main(["beer", "--spec", str(d / "b.toml"), "--out", str(d / "beer"),
                 "--workers", "1"]) == 0
    (d / "s.toml").write_text('[[grid]]\nworkloads = ["sparse"]\n'
                              '[grid.knobs.sparse]\nregions = 8\naccesses = 64\n')
    assert main(["sweep", str(d / "s.toml"), "--out", str(d / "sweep"), "--workers", "1",
                 "--no-progress"]) == 0
    found = {"run": next((d / "run").iterdir()) / "meta.json",
             "beer": next((d / "beer").iterdir()) / "meta.json",
             "sweep": d / "sweep" / "meta.json"}
    return {job: json.loads(p.read_text()) for job, p in found.items()}


@pytest.mark.parametrize("job", M.JOBS)
def test_meta_json_validates_against_the_one_schema(three, job):
    m = three[job]
    assert M.validate(m) == [] and m["job"] == job
    assert m["schema_version"] == M.SCHEMA_VERSION
    from importlib import metadata
    assert m["ptwbench"]["version"] == metadata.version("ptwbench")
    assert set(m) == set(three["run"])                      # the same top-level shape


def test_run_and_beer_record_each_run(three):
    assert [r["workload"] for r in three["run"]["runs"]] == ["sparse"]
    assert three["run"]["spec"]["knobs"] == SMALL
    assert {r["workload"] for r in three["beer"]["runs"]} == {"sparse"}
    assert three["sweep"]["details"]["points"] == 1


@pytest.mark.parametrize("edit, what", [
    (lambda m: m.pop("schema_version"), "missing 'schema_version'"),
    (lambda m: m.update(extra=1), "unknown key 'extra'"),
    (lambda m: m["ptwbench"].update(version=1), "meta.ptwbench.version"),
    (lambda m: m["runs"][0].pop("seed"), "meta.runs[0]: missing 'seed'"),
    (lambda m: m.update(job="bench"), "meta.job"),
])
def test_the_schema_check_can_fail(three, edit, what):
    m = json.loads(json.dumps(three["run"]))
    edit(m)
    assert any(what in p for p in M.validate(m)), M.validate(m)


def _git(d: Path, *args):
    subprocess.run(["git", "-C", str(d), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                        "PATH": "/usr/bin:/bin"})


def test_revision_only_of_a_checkout_of_the_package_itself(tmp_path):
    """A package installed inside a user's repository (a venv's site-packages under it) has
    no revision of its own; a checkout whose top is the package's folder has its HEAD."""
    user = tmp_path / "user"
    site = user / ".venv" / "lib" / "site-packages"
    (site / "bench").mkdir(parents=True)
    _git(user, "init", "-q")
    (user / "x").write_text("x")
    _git(user, "add", "x")
    _git(user, "commit", "-qm", "user's")
    assert M.source_revision(site) is None
    checkout = tmp_path / "ptwbench"
    (checkout / "bench").mkdir(parents=True)
    (checkout / "bench" / "f.py").write_text("")
    _git(checkout, "init", "-q")
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-qm", "ours")
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert M.source_revision(checkout) == head
    (checkout / "bench" / "f.py").write_text("changed")
    assert M.source_revision(checkout) == head + "+dirty"
    assert M.source_revision(checkout / "bench") is None    # a folder inside, not the top
