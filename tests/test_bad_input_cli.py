"""Every bad input of issue #11's list: one line on stderr, exit status 2, and no file or
directory created or changed — checked before any work starts.  Run through the real command
line (a subprocess), in an empty working directory whose tree is compared before and after."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def ptwbench(args, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): (p.stat().st_mtime_ns if p.is_file() else None)
            for p in sorted(d.rglob("*"))}


def npz(path: Path, n=100):
    np.savez(path, vcpu=np.zeros(n, np.uint16),
             va=(np.arange(n, dtype=np.uint64) * 4096 + 0x400000), kind=np.zeros(n, np.uint8))


def corrupt_member(path: Path, member: str):
    """Flip one byte inside the stored data of `member` (so only its CRC check can tell)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra; the data follows
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    data = info.header_offset + 30 + name_len + extra_len
    raw[data + info.compress_size - 3] ^= 0xFF
    path.write_bytes(bytes(raw))


def spec(d: Path, name: str, text: str | bytes) -> str:
    p = d / "in" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


CASES = {
    "run --seed -1": lambda d: ["run", "sparse", "--seed", "-1"],
    "host-knob seed=-1": lambda d: ["run", "sparse", "--host", "pressure",
                                    "--host-knob", "seed=-1"],
    # a chained host's knob must name its host (once silently dropped: ran target=all)
    "host-knob unnamed, chained hosts": lambda d: ["run", "sparse", "--host",
                                                   "precopy+pressure", "--host-knob",
                                                   "target=pt"],
    "host-knob of a host not in the chain": lambda d: ["run", "sparse", "--host",
                                                       "precopy+pressure", "--host-knob",
                                                       "numa.first_s=0.1"],
    "host-knob unknown, chained hosts": lambda d: ["run", "sparse", "--host",
                                                   "precopy+pressure", "--host-knob",
                                                   "pressure.tagret=pt"],
    "beer knobs of a workload not in the case": lambda d: ["beer", "--spec", spec(
        d, "k.toml", 'micro = false\n[[case]]\nworkloads = ["sparse"]\n'
        '[case.knobs.zipf]\nkeys = 64\n')],
    "beer host knobs of a host not in the case": lambda d: ["beer", "--spec", spec(
        d, "h.toml", 'micro = false\n[[case]]\nworkloads = ["sparse"]\n'
        'hosts = ["precopy"]\n[case.host_knobs.pressure]\ntarget = "pt"\n')],
    "beer spec seed = -1": lambda d: ["beer", "--spec", spec(d, "s.toml", "seed = -1\n")],
    "vcpus=70000": lambda d: ["run", "memstress", "--knob", "vcpus=70000"],
    "vcpus=70000 reference": lambda d: ["run", "memstress", "--knob", "vcpus=70000",
                                        "--engine", "reference"],
    "corrupted npz": lambda d: (npz(d / "in.npz"), corrupt_member(d / "in.npz", "va.npy"),
                                ["import-check", str(d / "in.npz")])[-1],
    "binary beer spec": lambda d: ["beer", "--spec", spec(d, "b.toml", bytes(range(256)))],
    "micro = false, no case": lambda d: ["beer", "--spec", spec(d, "m.toml", "micro = false\n")],
    "workloads as a string": lambda d: ["beer", "--spec", spec(
        d, "w.toml", '[[case]]\nworkloads = "sparse"\n')],
    "--out is a file": lambda d: (Path(d / "afile").write_text("x"),
                                  ["run", "sparse", "--out", str(d / "afile")])[-1],
    "--stamp exists": lambda d: ((d / "res" / "beer-x").mkdir(parents=True),
                                 ["beer", "--out", str(d / "res"), "--stamp", "x"])[-1],
    "--stamp 300 characters": lambda d: ["beer", "--stamp", "a" * 300],
    "--stamp ../../x": lambda d: ["beer", "--out", str(d / "res"), "--stamp", "../../x"],
    "sweep knob only the generator rejects": lambda d: ["sweep", spec(
        d, "sw.toml", '[sweep]\nname = "neg"\n[[grid]]\nworkloads = ["sparse"]\n'
        '[grid.knobs.sparse]\nregions = -8\n'), "--out", str(d / "sw")],
    "sweep over the size limit": lambda d: ["sweep", spec(
        d, "big.toml", '[sweep]\nname = "big"\nseeds = 10000\n[[grid]]\n'
        'workloads = ["sparse", "memstress"]\nhosts = ["none", "precopy"]\n'), "--out",
        str(d / "big")],
    "import-check --limit -5": lambda d: (npz(d / "in.npz"),
                                          ["import-check", str(d / "in.npz"), "--limit", "-5"])[-1],
    "--scheduler garbage": lambda d: ["sweep", spec(
        d, "t.toml", '[sweep]\nname = "t"\n[[grid]]\nworkloads = ["sparse"]\n'),
        "--scheduler", "garbage", "--out", str(d / "t")],
    "compare --threshold nan": lambda d: ["compare", str(d), str(d), "--threshold", "nan"],
    "compare --threshold -5": lambda d: ["compare", str(d), str(d), "--threshold", "-5"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    args = CASES[case](tmp_path)
    before = tree(tmp_path)
    r = ptwbench(args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "Exception ignored" not in r.stderr
    assert tree(tmp_path) == before                 # nothing created or changed
    assert r.stdout == ""


def test_chained_host_knobs_reach_their_host(tmp_path):
    """--host-knob HOST.K=V with chained hosts: pressure on the page-table slot only gives
    other results than the default (every slot); the one-host spelling equals plain K=V."""
    def csv(*args):
        r = ptwbench(["run", "sparse", "--format", "csv", "--no-save", *args], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout
    chained = ["--host", "precopy+pressure"]
    pt = csv(*chained, "--host-knob", "pressure.target=pt")
    data = csv(*chained, "--host-knob", "pressure.target=data")
    assert pt != data
    one = ["--host", "pressure", "--host-knob"]
    assert csv(*one, "pressure.target=pt") == csv(*one, "target=pt") != csv(*one, "target=data")


def test_two_runs_in_the_same_second_do_not_collide(tmp_path):
    a = ptwbench(["run", "sparse", "--out", "res", "--format", "csv"], cwd=tmp_path)
    b = ptwbench(["run", "sparse", "--out", "res", "--format", "csv"], cwd=tmp_path)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    dirs = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert len(dirs) == 2 and len(set(dirs)) == 2
    # the two results are the same run (deterministic) in two directories
    m = [(tmp_path / "res" / d / "metrics.csv").read_bytes() for d in dirs]
    assert m[0] == m[1]


def test_result_files_respect_the_umask(tmp_path):
    env_umask = "umask 027 && "
    r = subprocess.run(["bash", "-c", env_umask + f"{sys.executable} -m bench.cli run sparse "
                        f"--out res --format csv"], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr
    (d,) = (tmp_path / "res").iterdir()
    assert d.stat().st_mode & 0o777 == 0o750
    for f in d.iterdir():
        assert f.stat().st_mode & 0o777 == 0o640, f


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_exits_130_without_traceback_or_partial_output(tmp_path, sig, status):
    """Ctrl-C, and SIGTERM handled the same way (issue 23 probe 8: SIGTERM printed ~40 lines
    of worker tracebacks): one line, no traceback, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT at its default in the child, so that Python turns it into KeyboardInterrupt even
    # when the tests run in the background of a non-interactive shell (which starts them
    # with SIGINT ignored, inherited across exec)
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "beer", "--out", "res"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C once the cases run (the worker processes exist): a signal during the imports
    # can be swallowed by a library's bare except, and a loaded machine imports slowly
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if not kids.exists() or kids.read_text().split():
            break
        time.sleep(0.1)
    time.sleep(1 if kids.exists() else 6)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == status, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "ptwbench: interrupted"
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())
