"""`ptwbench hunt` (issue 24): the planted optimum, resume after kill -9, Dask against
sequential, bad space files, the real objective against `ptwbench run`.

The planted, kill and Dask tests replace only the evaluation of a configuration
(`--trial-fn` / `trial_fn`, tests/hunt_helpers.py): the space, the sampler, the SQLite
storage, the executors and the outputs are the real ones."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from bench import hunt
from bench.hunt_report import hunt_summary_line
from tests.hunt_helpers import PLANT_OPTIMUM

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent

# A realistic case (the map's db/mglru/10G guest) with one knob left free: MGLRU's period.
PLANTED = """
[knobs]
workload = "sparse"
ram_mb = 4096
layout = "split"
backing = "anon"
aging = "mglru"
"sparse.regions" = 54000
"sparse.accesses" = 200000
"sparse.write_percent" = 30
"numa.scan_rate" = "fast"
"migration.link_gbit_s" = 10.0
"migration.downtime_limit_ms" = 300.0
"""
PLANT_TRIALS = 40        # stated budget: the planted optimum within 5 % in 40 trials


def cli(*args, timeout=120, env=None):
    return subprocess.run([PY, "-m", "bench.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def study_at(d: Path, name: str):
    optuna = hunt._optuna()
    return optuna.load_study(study_name=name, storage=f"sqlite:///{d / 'study.db'}")


def test_planted_optimum_found_within_5_percent(tmp_path):
    spec = tmp_path / "plant.toml"
    spec.write_text(PLANTED)
    r = cli("hunt", "--space", str(spec), "--trials", str(PLANT_TRIALS), "--study", "plant",
            "--out", str(tmp_path), "--seed", "3", "--trial-fn",
            "tests.hunt_helpers:planted")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "hunt-plant"
    best = tomllib.loads((d / "best.toml").read_text())
    period = best["case"][0]["knobs"]["sparse"]["age_period_ms"]
    assert abs(period - PLANT_OPTIMUM) / PLANT_OPTIMUM <= 0.05, period
    # every output is there and says what it searched
    for f in ("hunt.csv", "report.md", "best_so_far.png", "q_vs_qstar.png", "meta.json"):
        assert (d / f).stat().st_size > 0, f
    assert (d / "hunt.csv").read_text().count("\n") == PLANT_TRIALS + 1
    line = hunt_summary_line(d)
    assert line.startswith(f"searched {PLANT_TRIALS} configurations within calibrated ranges")
    assert "matters: yes" in line and line in r.stdout
    # best.toml is a beer spec the beer accepts; its command names the same configuration
    from bench.beer import load_spec
    load_spec((d / "best.toml").read_text(), "best.toml")
    assert f"--knob age_period_ms={period!r}" in r.stdout


def _complete(d: Path) -> dict[int, float]:
    """The complete trials in the study's database, read directly: number -> param."""
    try:
        with sqlite3.connect(d / "study.db") as db:
            rows = db.execute("SELECT t.number, p.param_value FROM trials t JOIN trial_params p "
                              "ON p.trial_id = t.trial_id WHERE t.state = 'COMPLETE' AND "
                              "p.param_name = 'age_period_ms'").fetchall()
    except sqlite3.OperationalError:                      # tables not created yet
        return {}
    return dict(rows)


def test_kill_9_then_resume_keeps_every_finished_trial(tmp_path):
    spec = tmp_path / "plant.toml"
    spec.write_text(PLANTED)
    log = tmp_path / "evaluated.log"
    env = {**os.environ, "HUNT_TEST_LOG": str(log), "HUNT_TEST_SLEEP_S": "0.4"}
    args = [PY, "-m", "bench.cli", "hunt", "--space", str(spec), "--trials", "12",
            "--study", "k", "--out", str(tmp_path), "--trial-fn",
            "tests.hunt_helpers:slow_planted", "--no-progress"]
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    d = tmp_path / "hunt-k"
    t0 = time.time()
    while time.time() - t0 < 60:
        if (d / "study.db").exists() and len(_complete(d)) >= 4:
            break
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = _complete(d)
    assert 4 <= len(before) < 12
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after = _complete(d)
    assert len(after) == 12                               # the study's total, exactly
    assert {n: after[n] for n in before} == before        # every finished trial kept
    ran = [float(x) for x in log.read_text().split()]
    for v in after.values():                              # none evaluated twice
        assert ran.count(v) == 1, v


ENQUEUED = [{"age_period_ms": p} for p in (150.0, 420.0, 700.0, 2500.0, 9000.0, 333.0)]


def _hunt_with(tmp_path, name: str, ex) -> set:
    space = hunt.load_space_text(PLANTED, "plant.toml")
    study = hunt.open_study(f"sqlite:///{tmp_path / name}.db", name, space, seed=5)
    for params in ENQUEUED:
        study.enqueue_trial(params)
    res = hunt.run_hunt(study, space, len(ENQUEUED), ex=ex,
                        trial_fn="tests.hunt_helpers:planted")
    assert res.ran == len(ENQUEUED) and not res.failures
    return {(t.params["age_period_ms"], t.value, t.user_attrs["net_ms_per_migration"])
            for t in study.trials}


def test_dask_local_cluster_gives_the_sequential_trials(tmp_path):
    distributed = pytest.importorskip("distributed")
    seq = _hunt_with(tmp_path, "seq", hunt.executor(1))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        par = _hunt_with(tmp_path, "dask", hunt.executor(client=client))
        spec = tmp_path / "plant.toml"                # the CLI's --scheduler path too
        spec.write_text(PLANTED)
        r = cli("hunt", "--space", str(spec), "--trials", "3", "--study", "cli", "--out",
                str(tmp_path), "--scheduler", lc.scheduler_address, "--no-map",
                "--trial-fn", "tests.hunt_helpers:planted")
        assert r.returncode == 0, r.stderr
        assert "dask.distributed" in (tmp_path / "hunt-cli" / "report.md").read_text()
    assert par == seq
    assert {p for p, _, _ in seq} == {e["age_period_ms"] for e in ENQUEUED}


BAD_SPACES = [
    ("[knobs]\nbogus_knob = 1\n", "knobs.bogus_knob: unknown knob"),
    ("[knobs]\nram_mb = [1024, 4096]\n", "outside the calibrated range"),
    ("[knobs]\n\"migration.link_gbit_s\" = 100.0\n", "outside the calibrated range"),
    ("[knobs]\nram_mb = [8192, 4096]\n", "empty range"),
    ("[knobs]\naging = []\n", "empty list of choices"),
    ("[knobs]\nram_mb = \"big\"\n", "expected an integer"),
    ("[knobs]\nram_mb = 4096.5\n", "expected an integer"),
    ("stress = \"yes\"\n", "stress: expected true or false"),
    ("[knobs]\nworkload = \"stream\"\n", "is not one of"),
    ("colour = 1\n", "colour: unknown key"),
    ("[knobs]\nworkload = \"gc\"\n\"sparse.regions\" = 1024\n", "never has workload"),
    ("[knobs\n", "not valid TOML"),
]


@pytest.mark.parametrize("text,why", BAD_SPACES)
def test_bad_space_file_is_one_line(tmp_path, text, why):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    with pytest.raises(hunt.HuntError) as e:
        hunt.load_space(str(spec))
    assert why in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(spec))


@pytest.mark.parametrize("text,why", [BAD_SPACES[0], BAD_SPACES[1], BAD_SPACES[3],
                                      BAD_SPACES[5]])
def test_bad_space_file_exit_2_nothing_written(tmp_path, text, why):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "results"
    r = cli("hunt", "--space", str(spec), "--trials", "2", "--study", "b", "--out", str(out),
            "--trial-fn", "tests.hunt_helpers:planted")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and why in r.stderr, r.stderr
    assert not out.exists()


def test_stress_ranges_need_stress_and_are_labelled(tmp_path):
    spec = tmp_path / "wide.toml"
    spec.write_text("stress = true\n" + PLANTED.replace('ram_mb = 4096', 'ram_mb = 2048'))
    r = cli("hunt", "--space", str(spec), "--trials", "3", "--study", "w", "--out",
            str(tmp_path), "--trial-fn", "tests.hunt_helpers:planted")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "hunt-w"
    assert "in a stress space" in hunt_summary_line(d)
    assert "STRESS space" in (d / "report.md").read_text()
    assert 'section = "stress"' in (d / "best.toml").read_text()
    assert set(line.split(",")[2] for line in
               (d / "hunt.csv").read_text().splitlines()[1:]) == {"stress"}


def test_real_trial_matches_ptwbench_run(tmp_path):
    """One trial of the real objective (a small realistic guest over a whole migration):
    hunt.csv's measures are what `ptwbench run` of the best command measures."""
    spec = tmp_path / "one.toml"
    spec.write_text("""
[knobs]
workload = "sparse"
ram_mb = 4096
layout = "split"
backing = "anon"
aging = "mglru"
age_period_ms = 1000.0
"sparse.regions" = 8192
"sparse.accesses" = 50000
"sparse.write_percent" = 30
"numa.scan_rate" = "fast"
"migration.link_gbit_s" = 10.0
"migration.downtime_limit_ms" = 300.0
""")
    r = cli("hunt", "--space", str(spec), "--trials", "1", "--study", "r", "--out",
            str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "hunt-r"
    import csv
    row = next(csv.DictReader((d / "hunt.csv").open()))
    cmd = next(x for x in r.stdout.splitlines() if x.startswith("best: "))[6:].split()
    assert cmd[:2] == ["ptwbench", "run"]
    run = cli(*cmd[1:], "--format", "csv", "--no-save", timeout=300)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(run.stdout.splitlines()))
    fix = next(x for x in rows if x["policy"] == "fix")
    hap = next(x for x in rows if x["policy"] == "ha-promote")
    assert int(row["exits_saved"]) == int(fix["s2_faults"]) - int(hap["s2_faults"]) > 0
    assert int(row["false_dirty_extra"]) == (int(hap["dirty_false_positive"])
                                             - int(fix["dirty_false_positive"]))
    assert float(row["migration_seconds"]) == pytest.approx(float(fix["migration_seconds"]))
    q = fix["q_measured"]
    assert (row["q_measured"] == "") == (q == "") and (
        q == "" or float(row["q_measured"]) == pytest.approx(float(q)))


def test_docs_table_is_the_knobs():
    text = (ROOT / "docs" / "hunt.md").read_text()
    a = text.index("<!-- BEGIN KNOBS")
    a = text.index("\n", a) + 1
    b = text.index("<!-- END KNOBS -->")
    assert text[a:b] == hunt.knobs_markdown()


def test_every_calibrated_range_inside_the_stress_range_and_the_registry():
    """Each knob's realistic range lies in its stress range, and every range end is a value
    the generator or host scenario accepts (its registry entry coerces it)."""
    from workloads import registry as reg
    for k in hunt.KNOBS.values():
        if k.kind == "cat":
            assert set(k.choices) <= set(k.widest()), k.name
            ends = k.widest()
        else:
            lo, hi = k.widest()
            assert lo <= k.lo < k.hi <= hi, k.name
            ends = (lo, hi)
        owner, dot, name = k.name.partition(".")
        if k.name in ("workload", "variant"):
            continue
        for v in ends:
            if not dot:
                reg.coerce_profile_knobs({k.name: v}, "hunt")
            elif owner in ("migration", "numa"):
                reg.host_entry(owner).resolve({name: v})
            else:
                reg.generator_entry(owner).resolve({name: v})


@pytest.mark.parametrize("args,why", [
    (["--storage", "nosuchdb://x/y"], "--storage: cannot open"),
    (["--trials", "0"], "--trials: 0 is not >= 1"),
    (["--study", "../up"], "--study:"),
    (["--space", "/no/such/space.toml"], "--space /no/such/space.toml:"),
    (["--scheduler", "not an address"], "--scheduler:"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, args, why):
    out = tmp_path / "results"
    r = cli("hunt", "--study", "a", *args, "--out", str(out), "--trial-fn",
            "tests.hunt_helpers:planted")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and why in r.stderr, r.stderr
    assert not out.exists()


def test_map_warm_start_is_the_beers_realistic_cases():
    """A new realistic hunt starts from the default beer's 24 realistic cases: each
    enqueued configuration runs what the beer runs — the case's own knobs exactly, every
    other knob at the registry's default (what the beer leaves it at)."""
    from bench.beer import default_spec_text
    space = hunt.builtin_space("realistic")
    cases = [c for c in tomllib.loads(default_spec_text())["case"]
             if c.get("section") == "realistic"]
    # the map's cases at QEMU's default bandwidth cap are outside the default space (its
    # link knob is link_gbit_s: 10 or 25 Gbit/s)
    inside = [c for c in cases if "bandwidth_mb_s" not in c["host_knobs"].get("migration", {})]
    params = hunt.map_params(space)
    assert len(params) == len(inside) >= 24
    cases = inside
    for c, p in zip(cases, params):
        wl = c["workloads"][0]
        cfg = hunt.config_of(hunt.values_of(p, space), space)
        assert cfg["workload"] == wl and cfg["variant"] == c.get("variants", ["default"])[0]
        assert c.get("knobs", {}).get(wl, {}).items() <= cfg["knobs"].items()
        for h, kv in c.get("host_knobs", {}).items():
            assert kv.items() <= cfg["host_knobs"][h].items()
        if cfg["knobs"]["aging"] == "mglru":          # workloads/aging.py MGLRU_PERIOD_MS
            assert cfg["knobs"]["age_period_ms"] == 1000.0
        assert cfg["host_knobs"]["migration"]["downtime_limit_ms"] == 300.0   # QEMU default
        if "numa" not in c.get("host_knobs", {}):          # the numa scenario's default
            assert cfg["host_knobs"]["numa"]["scan_rate"] == "fast"
    narrow = hunt.load_space_text('[knobs]\nworkload = "gc"\naging = "mglru"\n', "n.toml")
    assert [p["migration.link_gbit_s"] for p in hunt.map_params(narrow)] == [25.0, 10.0]


def test_best_toml_of_a_catalogue_program_is_a_beer_spec():
    from bench.beer import load_spec
    from bench.hunt_report import best_toml
    space = hunt.builtin_space("realistic")
    params = [p for p in hunt.map_params(space) if p["workload"].startswith("catalogue:")]
    cfg = hunt.config_of(hunt.values_of(params[0], space), space)

    class T:                                  # the fields of an Optuna trial best_toml reads
        number, value, user_attrs = 3, 0.01, {"net_ms_per_migration": 1.0}
    spec = load_spec(best_toml(cfg, T, space, "x"), "best.toml")
    case = spec["case"][0]
    assert case["workloads"] == [cfg["workload"]]
    assert case["knobs"][cfg["workload"]] == cfg["knobs"]
    assert case["host_knobs"] == cfg["host_knobs"]


def test_beer_hunt_line(tmp_path):
    """`beer --hunt DIR` adds the hunt's one line to verdict.txt; a DIR without a finished
    hunt is one line, exit 2, before the beer runs."""
    import json as _json
    import subprocess as _sp
    import sys as _sys
    h = tmp_path / "h"
    h.mkdir()
    (h / "summary.json").write_text(_json.dumps({
        "stress": False, "searched": 7,
        "best": {"label": "db/damon/10G/4096MB", "net_ms_per_migration": 12.5,
                 "matters": True}}))
    spec = tmp_path / "s.toml"
    spec.write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\nhosts = ["precopy"]\n'
                    '[case.knobs.sparse]\nregions = 16\naccesses = 64\n')

    def beer(*a):
        return _sp.run([_sys.executable, "-m", "bench.cli", "beer", "--spec", str(spec),
                        "--out", str(tmp_path / "o"), *a], capture_output=True, text=True,
                       timeout=600)
    p = beer("--hunt", str(tmp_path / "none"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    p = beer("--hunt", str(h))
    assert p.returncode == 0, p.stderr
    assert ("Searched 7 configurations within calibrated ranges; best: "
            "db/damon/10G/4096MB (net 12.5 ms per migration, matters: yes)") in \
        " ".join(p.stdout.split())
