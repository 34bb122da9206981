"""Issue 23's probe table, one test (or more) per row: exit status 2, one line on stderr, no
traceback, nothing half-written, nothing computed lost.  Row 7 (a crafted trace directory)
is in tests/test_trace_dir.py, row 8 (SIGTERM) in tests/test_bad_input_cli.py."""
from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import runner
from bench.cli import main
from workloads import footprint

ROOT = Path(__file__).resolve().parents[1]
GB = 10 ** 9


def one_line_exit2(argv, capsys, started: bool = False) -> str:
    """Exit 2 and one error line; `started`: after the work began (a sweep's opening line)."""
    capsys.readouterr()
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert "Traceback" not in cap.err and len(lines) == 1 + started, cap.err
    assert lines[-1].startswith("ptwbench: error: "), cap.err
    return lines[-1]


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*")) if d.exists() else []


@pytest.fixture
def machine_8gb(monkeypatch):
    """A machine with 8 GB available, whatever this one has (the refusals are relative)."""
    monkeypatch.setattr(footprint, "machine_memory", lambda: (8 * GB, "available"))


# ---- row 1, 1b, 1c: memory estimated from the knobs before anything is built ------------
@pytest.mark.parametrize("argv", [
    ["zipf", "--knob", "keys=10000000000"], ["zipf", "--knob", "operations=1e10"],
    ["sparse", "--knob", "accesses=1e11"], ["memstress", "--knob", "iterations=1e9"],
    ["stream", "--knob", "passes=1e9"],
])
def test_row1_knobs_beyond_any_memory(argv, capsys, tmp_path):
    err = one_line_exit2(["run", *argv, "--out", str(tmp_path / "r")], capsys)
    assert "needs about" in err and "this machine has" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [
    ["zipf", "--knob", "keys=300000000"], ["gc", "--knob", "heap_bytes=1000000000000"],
    ["fork", "--knob", "children=1000000"],
    ["sparse", "--knob", "ram_mb=1048576", "--host", "numa"],      # row 1c
])
def test_row1b_1c_refused_on_an_8gb_machine(argv, capsys, machine_8gb, tmp_path):
    err = one_line_exit2(["run", *argv, "--out", str(tmp_path / "r")], capsys)
    assert "needs about" in err and "8 GB available" in err


def test_estimates_of_default_knobs_are_small():
    from workloads.registry import GENERATORS
    for name, e in GENERATORS.items():
        assert footprint.estimate_bytes(name, e.resolve({})) < 512 << 20, name


def test_every_generator_has_a_formula():
    """A generator added without one would be estimated at BASE_BYTES whatever its knobs."""
    from workloads.registry import GENERATORS
    for name, e in GENERATORS.items():
        assert footprint._counts(name, e.resolve({})) != (0, 0, 0), name


def test_estimate_bounds_a_measured_peak(tmp_path):
    """The estimate is above what the run really takes (peak RSS of a child process), within
    a factor that keeps it useful."""
    from workloads.registry import GENERATORS
    knobs = {"regions": 256}
    ram_mb = 4096
    est = footprint.estimate_bytes("sparse", GENERATORS["sparse"].resolve(knobs), ram_mb)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # VmHWM: this process's peak (ru_maxrss keeps the forking parent's across exec)
    code = ("import sys\nfrom bench.cli import main\n"
            f"rc = main(['run', 'sparse', '--host', 'numa', '--knob', 'ram_mb={ram_mb}', "
            "'--no-save', '--format', 'csv'])\n"
            "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')]\n"
            "print('PEAK', hwm[0].split()[1])\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    peak = int(p.stdout.rsplit("PEAK ", 1)[1]) * 1024          # VmHWM: KiB
    assert peak <= est <= 10 * peak, (peak, est)


# ---- row 1d, bad knob values in spec files: the file and the key --------------------------
@pytest.mark.parametrize("cmd, text, key", [
    ("beer", 'micro = false\n[[case]]\nworkloads = ["zipf"]\n[case.knobs.zipf]\n'
     'keys = 10000000000\n', "case[0].knobs.zipf"),
    ("sweep", '[[grid]]\nworkloads = ["gc"]\n[grid.knobs.gc]\nheap_bytes = 1e12\n',
     "grid[0].knobs.gc.heap_bytes"),
    ("beer", 'micro = false\n[[case]]\nworkloads = ["zipf"]\n[case.knobs.zipf]\n'
     'keys = "many"\n', "case[0].knobs.zipf"),
    ("sweep", '[[grid]]\nworkloads = ["sparse"]\n[grid.knobs.sparse]\nregions = [8, "x"]\n',
     "grid[0].knobs.sparse.regions"),
])
def test_row1d_spec_knobs_name_the_file_and_key(cmd, text, key, capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    argv = ([cmd, "--spec", str(spec)] if cmd == "beer" else [cmd, str(spec)])
    err = one_line_exit2(argv + ["--out", str(tmp_path / "o")], capsys)
    assert f"{spec}: {key}" in err
    assert not (tmp_path / "o").exists()


# ---- row 2, 2b, 2c, 2d: outputs ---------------------------------------------------------
@pytest.mark.parametrize("cmd", ["sweep", "convert", "run", "beer"])
def test_row2_read_only_out(cmd, capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:        # root writes anywhere but on a read-only mount, where
        real = os.access         # access(2) says W_OK is refused (EROFS): that, for ro/
        monkeypatch.setattr(runner.os, "access", lambda p, m: False if Path(p) == ro
                            else real(p, m))
    spec = tmp_path / "s.toml"
    spec.write_text('[[grid]]\nworkloads = ["sparse"]\n')
    trace = tmp_path / "t.csv"
    trace.write_text("vcpu,va,kind\n0,0x400000,read64\n")
    argv = {"sweep": ["sweep", str(spec), "--out", str(ro / "x")],
            "convert": ["convert", str(trace), "--out", str(ro / "t.ptwc")],
            "run": ["run", "sparse", "--out", str(ro / "x")],
            "beer": ["beer", "--spec", str(spec), "--out", str(ro / "x")]}[cmd]
    if cmd == "beer":
        spec.write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\n')
    err = one_line_exit2(argv, capsys)
    assert "not writable" in err and leftovers(ro) == []


def _enospc_after(n: int, monkeypatch):
    """bench.runner.write_atomic fails with ENOSPC from its (n+1)-th call on, leaving what a
    full disk leaves: nothing of the file (write_atomic's own cleanup)."""
    real, calls = runner.write_atomic, [0]

    def write_atomic(path, data):
        calls[0] += 1
        if calls[0] > n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)
    monkeypatch.setattr(runner, "write_atomic", write_atomic)


@pytest.mark.parametrize("after", [0, 3])
def test_row2b_full_disk_beer(after, capsys, tmp_path, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\n'
                    '[case.knobs.sparse]\nregions = 8\naccesses = 64\n')
    _enospc_after(after, monkeypatch)
    err = one_line_exit2(["beer", "--spec", str(spec), "--out", str(tmp_path / "o"),
                          "--workers", "1"], capsys)
    assert "No space left on device" in err
    assert leftovers(tmp_path / "o") == []           # no beer-*, no .tmp


@pytest.mark.parametrize("cmd", ["run", "beer", "sweep", "convert"])
def test_row2b_nearly_full_disk_refused_before_work(cmd, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_free_bytes", lambda p: 5 * 10**6)
    spec = tmp_path / "s.toml"
    spec.write_text('[[grid]]\nworkloads = ["sparse"]\n' if cmd == "sweep" else
                    'micro = false\n[[case]]\nworkloads = ["sparse"]\n')
    trace = tmp_path / "t.csv"
    trace.write_text("vcpu,va,kind\n0,0x400000,read64\n")
    out = tmp_path / "o"
    argv = {"run": ["run", "sparse"], "beer": ["beer", "--spec", str(spec)],
            "sweep": ["sweep", str(spec)], "convert": ["convert", str(trace)]}[cmd]
    err = one_line_exit2(argv + ["--out", str(out)], capsys)
    assert "5.0 MB free" in err and not out.exists()


def test_row2b_full_disk_sweep_keeps_finished_points(capsys, tmp_path, monkeypatch):
    """A disk that fills while the sweep aggregates: one line, the points already computed
    stay on disk, and a rerun (space freed) finishes without running them again."""
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nseeds = 2\n[[grid]]\nworkloads = ["sparse"]\n'
                    '[grid.knobs.sparse]\nregions = 8\naccesses = 64\n')
    out = tmp_path / "o"
    _enospc_after(2, monkeypatch)                    # the 2 points, then the aggregate
    err = one_line_exit2(["sweep", str(spec), "--out", str(out), "--workers", "1",
                          "--no-progress"], capsys, started=True)
    assert "No space left on device" in err and "rerun" in err
    assert len(list((out / "points").glob("*.json"))) == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert "0 run, 2 already done" in capsys.readouterr().err


def test_row2b_full_disk_convert(capsys, tmp_path, monkeypatch):
    from workloads import trace_dir
    trace = tmp_path / "t.csv"
    trace.write_text("vcpu,va,kind\n" + "".join(f"0,{0x400000 + i * 4096},read64\n"
                                                for i in range(50)))

    def full(_events):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "d"))
    monkeypatch.setattr(trace_dir, "events_text", full)
    err = one_line_exit2(["convert", str(trace), "--out", str(tmp_path / "d")], capsys)
    assert "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_row2_read_only_at_write_time_keeps_the_printed_result(capsys, tmp_path,
                                                                monkeypatch):
    """The file system turns read-only after the checks: the run's result was printed (the
    CSV on stdout), the error says it was not saved, nothing is left behind."""
    def mkdtemp(**_kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "res"))
    monkeypatch.setattr(runner.tempfile, "mkdtemp", mkdtemp)
    capsys.readouterr()
    assert main(["run", "sparse", "--knob", "regions=8", "--knob", "accesses=64",
                 "--out", str(tmp_path / "res"), "--format", "csv"]) == 2
    cap = capsys.readouterr()
    assert cap.out.startswith("workload,host,variant,seed,policy,")
    (line,) = cap.err.splitlines()
    assert "Read-only file system" in line and "not saved" in line
    assert leftovers(tmp_path / "res") == []


def test_row2c_out_name_too_long(capsys, tmp_path):
    err = one_line_exit2(["run", "sparse", "--out", str(tmp_path / ("a" * 300))], capsys)
    assert "too long" in err and leftovers(tmp_path) == []


def test_row2d_long_workload_name_keeps_the_result(capsys, tmp_path):
    """A trace file whose name takes most of NAME_MAX: the report is printed and the result
    directory written (under a shortened, still unique name)."""
    trace = tmp_path / ("t" * 240 + ".csv")
    trace.write_text("vcpu,va,kind\n" + "".join(f"0,{0x400000 + i * 4096},write64\n"
                                                for i in range(20)))
    capsys.readouterr()
    assert main(["run", f"import:{trace}", "--out", str(tmp_path / "res"),
                 "--format", "csv"]) == 0
    cap = capsys.readouterr()
    (d,) = (tmp_path / "res").iterdir()
    assert len(d.name) <= runner.RUN_NAME_MAX and (d / "metrics.csv").read_text() == cap.out


def test_unique_run_dirs_for_concurrent_writers(tmp_path):
    """Eight writers of one result name at once: eight directories, none lost."""
    names, errors = [], []

    def write(i):
        try:
            names.append(runner.write_dir_atomic(tmp_path / "beer-x", {"f": str(i)},
                                                 unique=True).name)
        except Exception as e:                      # noqa: BLE001 (reported below)
            errors.append(e)
    ts = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(set(names)) == 8
    assert sorted((tmp_path / n / "f").read_text() for n in names) == [str(i) for i in range(8)]


def test_write_dir_atomic_does_not_spin_on_a_failed_rename(tmp_path, monkeypatch):
    def rename(_a, _b):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(runner.os, "rename", rename)
    with pytest.raises(OSError):
        runner.write_dir_atomic(tmp_path / "d", {"f": "x"}, unique=True)
    assert leftovers(tmp_path) == []


# ---- row 3: compare validates both sides -------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    for side in ("a", "b"):
        assert main(["run", "sparse", "--knob", "regions=8", "--knob", "accesses=64",
                     "--out", str(d / side), "--format", "csv"]) == 0
    return [next((d / s).iterdir()) for s in ("a", "b")]


def _damage(path: Path, how: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "abc":
        cells = lines[1].split(",")
        cells[-3] = "abc"
        lines[1] = ",".join(cells)
    elif how == "duplicate":
        lines.append(lines[1])
    elif how == "truncated":
        text = "".join(lines)
        path.write_text(text[:len(text) // 2])
        return
    path.write_text("".join(lines))


@pytest.mark.parametrize("file", ["metrics.csv", "timings.csv"])
@pytest.mark.parametrize("how", ["abc", "duplicate", "truncated"])
def test_row3_compare_damaged(two_runs, file, how, capsys, tmp_path):
    import shutil
    a, b = two_runs
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    _damage(bad / file, how)
    for argv in (["compare", str(a), str(bad)], ["compare", str(bad), str(a)]):
        err = one_line_exit2(argv, capsys)
        assert "is damaged" in err and file in err


def test_row3_compare_speaks_plainly(two_runs, capsys, tmp_path):
    import shutil
    a, b = two_runs
    other = tmp_path / "o"
    shutil.copytree(b, other)
    m = other / "metrics.csv"
    m.write_text(m.read_text().replace("sparse", "sparse2"))
    capsys.readouterr()
    assert main(["compare", str(a), str(other), "--no-throughput"]) == 1
    out = capsys.readouterr().out
    assert "_merge" not in out and "left_only" not in out and f"only in {a}" in out


# ---- row 4: a damaged compact file -------------------------------------------------------
@pytest.mark.parametrize("offset", [200, 60000, 120000])
def test_row4_flipped_byte_in_compact(offset, capsys, tmp_path):
    src = ROOT / "workloads" / "catalogue" / "gcc-compile.ptwc"
    raw = bytearray(src.read_bytes())
    raw[offset] ^= 0xFF
    f = tmp_path / "f.ptwc"
    f.write_bytes(bytes(raw))
    for argv in (["run", f"compact:{f}", "--no-save"], ["import-check", str(f)],
                 ["convert", str(f), "--out", str(tmp_path / "d")]):
        err = one_line_exit2(argv, capsys)
        assert str(f) in err and ("damaged" in err or "not a .npy" in err
                                  or "not a compact" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ptwc"]


# ---- row 5: seed counts ------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["100000000", "1000000000"])
def test_row5_huge_seed_counts_refused_at_once(seeds, capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'[sweep]\nseeds = {seeds}\n[[grid]]\nworkloads = ["sparse"]\n')
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = one_line_exit2(["sweep", str(spec), "--out", str(tmp_path / "o")], capsys)
    assert "sweep.seeds" in err and "over the limit" in err
    # refused before any list of seeds was built (10^8 seeds: 3.9 GB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000
    assert not (tmp_path / "o").exists()


def test_sweep_points_beyond_memory(capsys, tmp_path, machine_8gb):
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nseeds = 100000\n[[grid]]\nworkloads = ["sparse", "zipf"]\n'
                    'variants = ["default", "haft"]\n')
    err = one_line_exit2(["sweep", str(spec), "--out", str(tmp_path / "o"), "--yes"], capsys)
    assert "400,000 points" in err and "8 GB available" in err


# ---- row 6: two beers finishing in the same second ---------------------------------------
def test_row6_beers_in_the_same_second_keep_both(tmp_path, monkeypatch, capsys):
    import datetime as dt

    from bench import beer

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5, tzinfo=tz)
    monkeypatch.setattr(beer, "datetime", Frozen)
    spec = tmp_path / "s.toml"
    spec.write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\n'
                    '[case.knobs.sparse]\nregions = 8\naccesses = 64\n')
    for _ in range(2):
        assert main(["beer", "--spec", str(spec), "--out", str(tmp_path / "o"),
                     "--workers", "1"]) == 0
    dirs = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert dirs == ["beer-20260102T030405Z", "beer-20260102T030405Z-2"]
    for d in dirs:
        assert (tmp_path / "o" / d / "verdict.txt").is_file()


# ---- row 9: bounded --repeat; --seconds shows progress ------------------------------------
def test_row9_repeat_bounded(capsys):
    err = one_line_exit2(["run", "sparse", "--repeat", "100000000", "--no-save"], capsys)
    assert "--repeat" in err


def test_row9_long_run_reports_progress_when_not_on_a_terminal(tmp_path):
    """Not on a terminal, a run prints a progress line every PTWBENCH_PROGRESS_SECONDS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PTWBENCH_PROGRESS_SECONDS": "0"}
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", "memstress", "--seconds",
                        "0.01", "--no-save", "--format", "csv"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("run memstress: ")]
    assert lines and lines[-1].split(": ")[1].startswith(tuple("0123456789"))
    assert "(100%)" in lines[-1]


# ---- item 7: one name per count, human sizes, --workers 0 --------------------------------
def test_one_name_per_count_in_every_format(capsys):
    """md, text and csv name each count the same (once s2_faults in md, exits in text)."""
    outs = {}
    for fmt in ("md", "text", "csv"):
        capsys.readouterr()
        assert main(["run", "sparse", "--knob", "regions=8", "--knob", "accesses=64",
                     "--no-save", "--format", fmt]) == 0
        outs[fmt] = capsys.readouterr().out
    header = next(x for x in outs["md"].splitlines() if x.startswith("| policy"))
    names = [c.strip() for c in header.strip("|").split("|")][1:]
    assert "s2_faults" in names
    text_names = [x.split()[0] for x in outs["text"].splitlines()[2:] if x.strip()]
    csv_names = outs["csv"].splitlines()[0].split(",")
    for n in names:
        assert n in text_names and n in csv_names, n
    assert "exits " not in outs["text"].splitlines()[2]


@pytest.mark.parametrize("value, want", [("1Ti", 1 << 40), ("4Gi", 4 << 30),
                                         ("256Ki", 256 << 10), ("1e6", 10 ** 6),
                                         ("0x1000", 4096), ("4GiB", 4 << 30)])
def test_human_sizes_accepted(value, want):
    from workloads.base import Knob
    assert Knob("bytes_per_vcpu", 1, "").coerce(value, "stream") == want


def test_sizes_as_shown_by_workloads_are_accepted(capsys):
    """Every default `ptwbench workloads` prints (256Ki, 4Mi, 64Gi) reads back as itself."""
    from bench.workloads_cmd import _fmt
    from workloads.registry import GENERATORS
    for e in GENERATORS.values():
        for k in e.knobs:
            if isinstance(k.default, int) and not isinstance(k.default, bool):
                assert k.coerce(_fmt(k.default), e.name) == k.default, (e.name, k.name)


@pytest.mark.parametrize("bad", ["1.5Ki", "Ki", "many", "1e400"])
def test_bad_sizes_one_line(bad, capsys):
    err = one_line_exit2(["run", "stream", "--knob", f"bytes_per_vcpu={bad}", "--no-save"],
                         capsys)
    assert "bytes_per_vcpu" in err and "not an integer" in err


def test_sweep_workers_0_is_every_core(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[[grid]]\nworkloads = ["sparse"]\n'
                    '[grid.knobs.sparse]\nregions = 8\naccesses = 64\n')
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--no-progress"]) == 0


# ---- row 8 for a sweep (the beer's: tests/test_bad_input_cli.py) --------------------------
def test_row8_sigterm_to_a_sweep_keeps_finished_points(tmp_path):
    import signal
    import time
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nseeds = 16\n[[grid]]\nworkloads = ["sparse", "memstress"]\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PTWBENCH_PROGRESS_SECONDS": "0"}
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(spec), "--out",
                          str(tmp_path / "o"), "--workers", "2"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120             # SIGTERM once a point is on disk
    while time.monotonic() < deadline and p.poll() is None and not list(
            (tmp_path / "o" / "points").glob("*.json")):
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1]
    kept = list((tmp_path / "o" / "points").glob("*.json"))
    assert kept and not list((tmp_path / "o" / "points").glob(".*.tmp"))
    assert not (tmp_path / "o" / "metrics.csv").exists()
