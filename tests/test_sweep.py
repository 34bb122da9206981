"""`ptwbench sweep` (issue 6): the grid, determinism across worker counts and executors (a
real dask.distributed LocalCluster), kill and resume, bad specs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.compare import compare
from bench.runner import COLUMNS
from bench.sweep import SweepError, load_sweep, point_id, points, run_sweep

ROOT = Path(__file__).resolve().parents[1]
POLICIES = 4

TINY = """
[sweep]
name = "tiny"
seeds = [1, 2]
engine = "reference"      # the executable specification: these tests are about the sweep

[[grid]]
workloads = ["sparse", "memstress"]
hosts = ["none", "precopy"]
[grid.knobs.sparse]
regions = [8, 16]
accesses = 64
[grid.knobs.memstress]
bytes_per_vcpu = 65536
iterations = 1
[grid.host_knobs.precopy]
rounds = 2
"""
TINY_POINTS = (2 + 1) * 2 * 2          # (sparse x 2 region counts + memstress) x hosts x seeds


def ptwbench(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=300, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny sweep on one worker (in-process) and on a pool of two."""
    d = tmp_path_factory.mktemp("sweep")
    spec = load_sweep(TINY, "tiny.toml")
    r1 = run_sweep(spec, d / "w1", workers=1, progress=False)
    r2 = run_sweep(spec, d / "w2", workers=2, progress=False)
    assert not r1.failures and not r2.failures and not r1.errors
    return spec, d / "w1", d / "w2"


# ---- the grid --------------------------------------------------------------------------------
def test_points_order_ids_and_dedup():
    spec = load_sweep(TINY, "tiny.toml")
    pts = points(spec)
    assert len(pts) == TINY_POINTS
    assert [p["id"] for p in pts] == [p["id"] for p in points(load_sweep(TINY, "again.toml"))]
    assert len({p["id"] for p in pts}) == len(pts)
    # order: workload, knobs, host, host knobs, variant, seed
    assert [(p["workload"], p["knobs"].get("regions"), p["host"], p["seed"]) for p in pts[:5]
            ] == [("sparse", 8, "none", 1), ("sparse", 8, "none", 2),
                  ("sparse", 8, "precopy", 1), ("sparse", 8, "precopy", 2),
                  ("sparse", 16, "none", 1)]
    assert pts[2]["host_knobs"] == {"rounds": 2} and pts[0]["host_knobs"] == {}
    # the id depends on the point only: the same point in another spec, a duplicate grid
    # (run once), knob values coerced (a float knob given as an int)
    other = load_sweep(TINY + TINY[TINY.index("[[grid]]"):], "dup.toml")     # grid twice
    assert [p["id"] for p in points(other)] == [p["id"] for p in pts]
    a = load_sweep('[[grid]]\nworkloads = ["zipf"]\n[grid.knobs.zipf]\ns = 1\n', "a.toml")
    b = load_sweep('[[grid]]\nworkloads = ["zipf"]\n[grid.knobs.zipf]\ns = 1.0\n', "b.toml")
    assert points(a)[0]["id"] == points(b)[0]["id"] == point_id(points(b)[0])
    assert points(a)[0]["seed"] == 1                                  # default seeds [1]
    assert points(a)[0]["engine"] == "numpy"                          # default engine
    assert pts[0]["engine"] == "reference"
    numpy = load_sweep(TINY.replace('engine = "reference"', ""), "n.toml")
    assert not {p["id"] for p in pts} & {p["id"] for p in points(numpy)}  # engine in the id
    n = load_sweep('[sweep]\nseeds = 3\n[[grid]]\nworkloads = ["sparse"]\n', "n.toml")
    assert [p["seed"] for p in points(n)] == [0, 1, 2]
    assert load_sweep("[[grid]]\n", "x/name.toml")["out"] == "results/sweep-name"
    # incompatible workload x host pairs are skipped (fork stores to its page tables)
    f = load_sweep('[[grid]]\nworkloads = ["fork", "sparse"]\nhosts = ["firmware"]\n', "f.toml")
    assert [p["workload"] for p in points(f)] == ["sparse"]
    # "*": every generator
    from workloads.registry import GENERATORS
    star = load_sweep('[[grid]]\nworkloads = "*"\nvariants = ["default", "haft"]\n', "s.toml")
    assert len(points(star)) == 2 * len(GENERATORS)


# ---- determinism: worker count and executor ------------------------------------------------
def test_workers_1_and_2_byte_identical(tiny):
    spec, w1, w2 = tiny
    for name in ("metrics.csv", "verdict.csv", "points.csv", "report.md"):
        assert (w1 / name).read_bytes() == (w2 / name).read_bytes(), name
    df = pd.read_csv(w1 / "metrics.csv")
    assert list(df.columns) == ["point"] + list(COLUMNS)
    assert len(df) == TINY_POINTS * POLICIES
    assert not df.duplicated(["point", "policy"]).any()
    assert not df.duplicated(["workload", "host", "variant", "seed", "policy"]).any()
    assert "sparse[accesses=64,regions=8]" in set(df["workload"])
    assert "precopy[rounds=2]" in set(df["host"])
    for p in points(spec):                        # each point's rows too
        a, b = (json.loads((w / "points" / f"{p['id']}.json").read_text()) for w in (w1, w2))
        assert a["rows"] == b["rows"] and a["point"] == b["point"]
    assert len(pd.read_csv(w1 / "timings.csv")) == TINY_POINTS * POLICIES
    meta = json.loads((w2 / "meta.json").read_text())
    assert meta["ptwbench"]["git_revision"] and meta["details"]["points"] == TINY_POINTS
    assert "2 workers" in meta["details"]["executor"]
    md = (w1 / "report.md").read_text()
    assert "a workload where ha-promote's saving over fix matters: " in md and "| workload" in md
    assert compare(w1, w2, throughput=False)[0] == 0                  # compare works on sweeps


def test_dask_local_cluster_matches_local_pool(tiny, tmp_path):
    import distributed                    # a dependency: a missing install fails, not skips
    _, w1, _ = tiny
    (tmp_path / "tiny.toml").write_text(TINY)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        p = ptwbench("sweep", str(tmp_path / "tiny.toml"), "--scheduler",
                     cluster.scheduler_address, "--out", str(tmp_path / "dask"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("a workload where ha-promote's saving over fix matters: ")
    d = tmp_path / "dask"
    assert (d / "metrics.csv").read_bytes() == (w1 / "metrics.csv").read_bytes()
    assert (d / "report.md").read_bytes() == (w1 / "report.md").read_bytes()
    assert "dask.distributed" in json.loads((d / "meta.json").read_text())["details"][
        "executor"]


def test_unreachable_scheduler_is_bad_input(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    rc = main(["sweep", str(tmp_path / "tiny.toml"), "--scheduler", "tcp://127.0.0.1:9",
               "--timeout", "1", "--out", str(out)])
    assert rc == 2 and not out.exists()


# ---- kill and resume -------------------------------------------------------------------------
KILL = """
[sweep]
name = "kill"
seeds = 4
engine = "reference"
[[grid]]
workloads = ["sparse", "memstress"]
hosts = ["none", "precopy", "snapshot"]
variants = ["default", "hw-always"]
[grid.knobs.sparse]
regions = 8
accesses = 64
[grid.knobs.memstress]
bytes_per_vcpu = 65536
iterations = 1
"""


def test_kill_and_resume(tmp_path):
    (tmp_path / "kill.toml").write_text(KILL)
    spec = load_sweep(KILL, "kill.toml")
    total = len(points(spec))
    assert total == 2 * 3 * 2 * 4
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep",
                             str(tmp_path / "kill.toml"), "--workers", "2", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "points").is_dir() and len(list((out / "points").glob("*.json"))) >= 3:
                break
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # the CLI and its pool workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {f.name: f.read_bytes() for f in (out / "points").glob("*.json")}
    assert 3 <= len(before) < total, "the sweep ended before it was killed"
    assert not (out / "metrics.csv").exists()
    p = ptwbench("sweep", str(tmp_path / "kill.toml"), "--workers", "2", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert f"{total} points, {total - len(before)} run, {len(before)} already done" in p.stderr
    files = list((out / "points").glob("*.json"))
    assert sorted(f.stem for f in files) == sorted(p["id"] for p in points(spec))
    assert not list((out / "points").glob(".*"))                      # no temporary files left
    for name, data in before.items():                                 # finished points kept
        assert (out / "points" / name).read_bytes() == data
    df = pd.read_csv(out / "metrics.csv")
    assert len(df) == total * POLICIES and not df.duplicated(["point", "policy"]).any()
    assert list(df["point"].drop_duplicates()) == [p["id"] for p in points(spec)]
    # a third run has nothing to do and writes the same metrics
    metrics = (out / "metrics.csv").read_bytes()
    again = run_sweep(spec, out, workers=1, progress=False)
    assert again.ran == 0 and again.resumed == total
    assert (out / "metrics.csv").read_bytes() == metrics


def test_resume_reruns_damaged_points_and_cleans_temporaries(tiny, tmp_path):
    spec, w1, _ = tiny
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(w1, out)
    for f in ("metrics.csv", "report.md"):
        (out / f).unlink()
    pts = points(spec)
    (out / "points" / f"{pts[0]['id']}.json").write_text('{"id": "trunc')       # unreadable
    (out / "points" / f"{pts[1]['id']}.json").unlink()                           # missing
    (out / "points" / f".{pts[1]['id']}.json.xyz.tmp").write_text("half")        # killed write
    r = run_sweep(spec, out, workers=1, progress=False)
    assert (r.ran, r.resumed) == (2, TINY_POINTS - 2)
    assert (out / "metrics.csv").read_bytes() == (w1 / "metrics.csv").read_bytes()
    assert not list((out / "points").glob(".*.tmp"))


def test_crashed_point_is_not_written_and_rerun(tiny, tmp_path, monkeypatch):
    import bench.sweep as sweep
    spec, w1, _ = tiny
    bad = points(spec)[3]["id"]
    real = sweep.run_point

    def flaky(p):
        if p["id"] == bad:
            raise MemoryError("simulated")
        return real(p)
    monkeypatch.setattr(sweep, "run_point", flaky)
    r = run_sweep(spec, tmp_path / "o", workers=1, progress=False)
    assert [(p["id"], why) for p, why in r.failures] == [(bad, "MemoryError: simulated")]
    assert r.ran == TINY_POINTS - 1 and not (tmp_path / "o" / "metrics.csv").exists()
    assert not (tmp_path / "o" / "points" / f"{bad}.json").exists()
    monkeypatch.setattr(sweep, "run_point", real)
    r = run_sweep(spec, tmp_path / "o", workers=1, progress=False)
    assert (r.ran, r.resumed, r.failures) == (1, TINY_POINTS - 1, [])
    assert (tmp_path / "o" / "metrics.csv").read_bytes() == (w1 / "metrics.csv").read_bytes()


def test_rejected_point_is_recorded_and_not_rerun(tmp_path):
    spec_text = ('[sweep]\nname = "rej"\nengine = "reference"\n[[grid]]\nworkloads = ["sparse"]\n'
                 '[grid.knobs.sparse]\nregions = 8\naccesses = 64\nwrite_percent = [50, 150]\n')
    (tmp_path / "rej.toml").write_text(spec_text)
    out = tmp_path / "out"
    rc = main(["sweep", str(tmp_path / "rej.toml"), "--workers", "1", "--out", str(out),
               "--no-progress"])
    assert rc == 2 and not out.exists()    # the CLI checks every knob value with the generator
    # the library still records a point the registry rejects at run time (a property of the
    # point), and does not run it again
    run_sweep(load_sweep(spec_text, "rej.toml"), out, workers=1, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert len(df) == POLICIES and (df["workload"].str.contains("write_percent=50")).all()
    assert "write_percent must be in 0..100" in (out / "report.md").read_text()
    assert list(pd.read_csv(out / "points.csv")["status"]) == ["ok", "error"]
    r = run_sweep(load_sweep(spec_text, "rej.toml"), out, workers=1, progress=False)
    assert r.ran == 0 and len(r.errors) == 1


def test_micro_scenario_points(tmp_path):
    from bench.catalog import scenario_files
    from bench.sweep import run_point
    stem = scenario_files()[0].stem
    spec = load_sweep(f'[[grid]]\nworkloads = ["micro:{stem}"]\nhosts = ["scenario"]\n'
                      f'variants = ["default", "hw-always"]\n', "m.toml")
    pts = points(spec)
    assert [(p["workload"], p["host"], p["variant"]) for p in pts] == [
        (f"micro:{stem}", "scenario", "default"), (f"micro:{stem}", "scenario", "hw-always")]
    r = run_point(pts[0])
    assert r["error"] is None and len(r["rows"]) == POLICIES
    with pytest.raises(SweepError, match="scenario"):
        load_sweep(f'[[grid]]\nworkloads = ["micro:{stem}"]\n', "m.toml")


def test_one_sweep_per_directory(tmp_path, capsys):
    from bench.sweep import _Lock
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "o").mkdir()
    lock = _Lock(tmp_path / "o")
    try:
        assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "o")]) == 2
    finally:
        lock.release()
    assert "another sweep is running" in capsys.readouterr().err
    assert not list((tmp_path / "o" / "points").iterdir())


def test_list_writes_nothing(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--list", "--out",
                 str(tmp_path / "o")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == TINY_POINTS
    assert not (tmp_path / "o").exists()


# ---- bad specs ---------------------------------------------------------------------------
GRID = '[[grid]]\nworkloads = ["sparse"]\n'


@pytest.mark.parametrize("spec,key", [
    ("[sweep\n", "not valid TOML"),
    ("colour = 1\n" + GRID, "colour"),
    ('[sweep]\nnmae = "x"\n' + GRID, "sweep.nmae"),
    ('[sweep]\nseeds = "many"\n' + GRID, "sweep.seeds"),
    ("[sweep]\nseeds = [1, true]\n" + GRID, "sweep.seeds"),
    ('[sweep]\nengine = "gpu"\n' + GRID, "sweep.engine"),
    ('[sweep]\nname = "a b"\n' + GRID, "sweep.name"),
    ('[sweep]\nname = "x"\n', "grid"),
    ('[[grid]]\nworkloads = ["nope"]\n', "grid[0].workloads"),
    ('[[grid]]\nworkloads = "sparse"\n', "grid[0].workloads"),
    ('[[grid]]\nhosts = ["moon"]\n', "grid[0].hosts"),
    ('[[grid]]\nhosts = []\n', "grid[0].hosts"),
    ('[[grid]]\nvariants = ["fast"]\n', "grid[0].variants"),
    ('[[grid]]\nwhat = 1\n', "grid[0].what"),
    (GRID + '[[grid]]\nworkloads = ["sparse"]\nseeds = -1\n', "grid[1].seeds"),
    (GRID + "[grid.knobs.sparse]\nregions = 'many'\n", "grid[0].knobs.sparse.regions"),
    (GRID + "[grid.knobs.sparse]\nregions = [8, 'x']\n", "grid[0].knobs.sparse.regions"),
    (GRID + "[grid.knobs.sparse]\nregoins = 8\n", "grid[0].knobs.sparse.regoins"),
    (GRID + "[grid.knobs.sparse]\ngranule = ['4k', '8k']\n", "grid[0].knobs.sparse.granule"),
    (GRID + "[grid.knobs.sparse]\nregions = []\n", "grid[0].knobs.sparse.regions"),
    (GRID + "[grid.knobs.memstress]\niterations = 1\n", "grid[0].knobs.memstress"),
    ('[[grid]]\nhosts = ["precopy"]\n[grid.host_knobs.precopy]\nrounds = 1.5\n',
     "grid[0].host_knobs.precopy.rounds"),
    ('[[grid]]\nhosts = ["precopy"]\n[grid.host_knobs.snapshot]\nstart_frac = 0.5\n',
     "grid[0].host_knobs.snapshot"),
    ('[[grid]]\nworkloads = ["fork"]\nhosts = ["firmware"]\n', "grid"),
    ('[[grid]]\nworkloads = ["micro:nope"]\nhosts = ["scenario"]\n', "grid[0].workloads"),
])
def test_bad_spec(tmp_path, monkeypatch, capsys, spec, key):
    monkeypatch.chdir(tmp_path)                      # the default out dir would be results/
    f = tmp_path / "bad.toml"
    f.write_text(spec)
    with pytest.raises(SweepError):
        load_sweep(spec, str(f))
    assert main(["sweep", str(f)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{f}: {key}" in lines[0], lines
    assert list(tmp_path.iterdir()) == [f]           # nothing written, no out dir


def test_bad_spec_exit_status_through_the_cli(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[[grid]]\nworkloads = ["nope"]\n[sweep]\nout = "o"\n')
    p = ptwbench("sweep", str(f), cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "grid[0].workloads" in p.stderr and str(f) in p.stderr
    assert not (tmp_path / "o").exists()
    p = ptwbench("sweep", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    p = ptwbench("sweep", str(f), "--workers", "1", "--scheduler", "tcp://x:1", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
