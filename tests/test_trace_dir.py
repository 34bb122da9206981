"""Trace directories (issue 13): `convert` gives exactly what `import:PATH` gives, `record`
streams valgrind's pipe into the same converter, `run trace:DIR`, and bad input."""
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from workloads import trace_dir
from workloads.importers import import_trace
from workloads.registry import build

HAS_VALGRIND = shutil.which("valgrind") is not None


def lackey_text(n: int, seed: int) -> str:
    """A program-like lackey trace: a code loop over a few text pages, a stack, a heap walk."""
    r = np.random.default_rng(seed)
    lines = ["==7== Lackey, an example Valgrind tool"]
    heap = 0x5a0000
    for i in range(n):
        pc = 0x400000 + (i * 4) % 0x3000 + 0x10000 * (r.random() < 0.01)
        lines.append(f"I  {pc:08x},4")
        u = r.random()
        if u < 0.3:
            lines.append(f" L {heap + int(r.integers(0, 1 << 20)) * 8:x},8")
        elif u < 0.45:
            lines.append(f" S 1ffefff{int(r.integers(0, 0x800)) * 8:03x},8")
        elif u < 0.5:
            lines.append(f" M {heap + int(r.integers(0, 1 << 18)) * 8:x},4")
    lines.append("==7==   guest instrs:  1,234")
    return "\n".join(lines) + "\n"


@pytest.fixture
def trace_file(tmp_path):
    p = tmp_path / "prog.lackey"
    p.write_text(lackey_text(30000, 1))
    return p


def same_workload(a, b):
    assert len(a.trace) == len(b.trace)
    for col in ("vcpu", "va", "kind"):
        assert np.array_equal(np.asarray(getattr(a.trace, col)),
                              np.asarray(getattr(b.trace, col))), col
    assert list(a.trace.events) == list(b.trace.events)
    assert a.scenario.memslots == b.scenario.memslots
    assert a.scenario.mappings == b.scenario.mappings
    assert a.scenario.guest == b.scenario.guest and a.scenario.machine == b.scenario.machine
    for k in ("pt_pages", "data_pages", "guest_faults", "events", "accesses"):
        assert a.meta[k] == b.meta[k], k


@pytest.mark.parametrize("knobs", [{}, {"demand": False}, {"age_period": 5000},
                                   {"demand": False, "age_period": 700},   # steady-state AF
                                   {"demand": False, "aging": "damon", "age_period": 900},
                                   {"granule": "16k", "zero_page": False}])
def test_convert_equals_import(trace_file, tmp_path, monkeypatch, knobs):
    """Pass 1 + pass 2, replayed in small blocks, lays out and faults exactly as import:PATH
    (the in-memory importer, an independent path through LinuxGuest.build)."""
    monkeypatch.setattr(trace_dir, "REPLAY_BLOCK", 4099)
    ref = import_trace(str(trace_file), **knobs)
    d = trace_dir.convert_file(str(trace_file), tmp_path / "t", **knobs)
    got = trace_dir.load(d)
    same_workload(ref, got)
    assert got.meta["time_per_access"]["guest_instrs"] == 1234
    # steady-state AF at start (the pages' last touches, spooled apart by convert)
    assert got.meta.get("old_at_start") == ref.meta.get("old_at_start")
    if not knobs.get("demand", True) and knobs.get("age_period"):
        assert 0 < ref.meta["old_at_start"] < ref.meta["premapped_pages"]


def test_run_trace_dir_equals_import_under_hosts(trace_file, tmp_path, capsys):
    d = tmp_path / "t"
    assert main(["convert", str(trace_file), "--out", str(d)]) == 0
    for host in ("precopy", "postcopy", "snapshot", "pressure"):
        outs = []
        for wl in (f"import:{trace_file}", f"trace:{d}"):
            capsys.readouterr()
            assert main(["run", wl, "--host", host, "--format", "csv", "--no-save"]) == 0
            out = capsys.readouterr().out.replace(f"import:{trace_file.name}", "W").replace(
                f"trace:{d.name}", "W")
            # the clock differs by design: a trace directory knows its recording's
            # instructions per access, import:PATH uses the default (workloads/clock.py)
            rows = [r.split(",") for r in out.strip().splitlines()]
            keep = [i for i, c in enumerate(rows[0])
                    if c != "guest_seconds" and not c.endswith("_per_s")]
            outs.append([[r[i] for i in keep] for r in rows])
        assert outs[0] == outs[1], host


def test_streamed_host_scenario_keeps_trace_on_disk(trace_file, tmp_path):
    from model.trace_stream import StreamedTrace
    d = trace_dir.convert_file(str(trace_file), tmp_path / "t")
    w = build(f"trace:{d}", host_name="precopy")
    assert isinstance(w.trace, StreamedTrace)


# ---- bad input ---------------------------------------------------------------------------
def one_line_exit2(argv, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def no_partial(parent: Path, name: str):
    assert not [p for p in parent.iterdir() if p.name.startswith(name)]


@pytest.fixture
def converted(trace_file, tmp_path):
    d = tmp_path / "t"
    trace_dir.convert_file(str(trace_file), d)
    return d


def test_truncated_trace_dir(converted, capsys):
    va = converted / "va.npy"
    data = va.read_bytes()
    va.write_bytes(data[:len(data) - 80])
    err = one_line_exit2(["run", f"trace:{converted}", "--no-save"], capsys)
    assert "va.npy" in err and "truncated" in err


def test_mismatched_column_lengths(converted, capsys):
    np.save(converted / "kind.npy", np.load(converted / "kind.npy")[:-3])
    err = one_line_exit2(["run", f"trace:{converted}", "--no-save"], capsys)
    assert "differ in length" in err


def test_dtype_mismatch(converted, capsys):
    np.save(converted / "va.npy", np.load(converted / "va.npy").astype(np.int32))
    err = one_line_exit2(["run", f"trace:{converted}", "--no-save"], capsys)
    assert "va.npy" in err and "uint64" in err


@pytest.mark.parametrize("name", ["events.json", "scenario.json", "meta.json"])
def test_missing_json_file(converted, capsys, name):
    (converted / name).unlink()
    err = one_line_exit2(["run", f"trace:{converted}", "--no-save"], capsys)
    assert name in err and "missing" in err


def test_round_trip_through_json_equals_reconversion(converted, trace_file, tmp_path):
    """scenario.json and events.json give back what the converter built: the same events
    (every Step field) as a second, independent conversion's in-memory import."""
    ref = import_trace(str(trace_file))
    got = trace_dir.load(converted)
    same_workload(ref, got)
    assert any(st.op == "guest_pte" and st.descs for _p, _i, st in got.trace.events)


@pytest.mark.parametrize("edit, what", [
    (lambda t: t.replace('"op":"guest_pte"', '"op":"os.system"', 1), "not a step"),
    (lambda t: t.replace('"vas":[', '"vas":["x",', 1), "vas"),
    (lambda t: t.replace('"version": 1', '"version": 7', 1), "version"),
    (lambda t: t[:len(t) // 2], "not valid JSON"),
])
def test_bad_events_json(converted, capsys, edit, what):
    p = converted / "events.json"
    p.write_text(edit(p.read_text()))
    err = one_line_exit2(["run", f"trace:{converted}", "--no-save"], capsys)
    assert what in err and "events.json" in err


class _Payload:
    """Unpickling this creates the file `marker` (what a crafted workload.pkl could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("where", ["run", "beer", "sweep"])
def test_pickled_trace_dir_is_refused_not_loaded(converted, tmp_path, capsys, where):
    """Issue 23 probe 7: a crafted old-format directory (workload.pkl whose unpickling would
    create a file) is refused with one line saying how to convert it; the file is not
    created, whether the directory is named on the command line or in a spec."""
    import pickle
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))     # the payload does work
    assert (tmp_path / "control").exists()
    for name in ("events.json", "scenario.json"):
        (converted / name).unlink()
    (converted / "workload.pkl").write_bytes(pickle.dumps({"version": 1,
                                                           "x": _Payload(marker)}))
    if where == "run":
        argv = ["run", f"trace:{converted}", "--no-save"]
    else:
        spec = tmp_path / "s.toml"
        spec.write_text(f'micro = false\n[[case]]\nworkloads = ["trace:{converted}"]\n'
                        if where == "beer" else
                        f'[[grid]]\nworkloads = ["trace:{converted}"]\n')
        argv = ([where, "--spec", str(spec)] if where == "beer" else [where, str(spec)]) + [
            "--out", str(tmp_path / "out")]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert "workload.pkl" in err and "convert" in err and "Traceback" not in err


def test_convert_bad_line_leaves_nothing(tmp_path, capsys):
    p = tmp_path / "bad.lackey"
    p.write_text("I  0400,4\n L zz,8\n")
    err = one_line_exit2(["convert", str(p), "--out", str(tmp_path / "t")], capsys)
    assert "bad.lackey:2" in err
    no_partial(tmp_path, "t")


def test_convert_existing_out(converted, trace_file, capsys):
    err = one_line_exit2(["convert", str(trace_file), "--out", str(converted)], capsys)
    assert "already exists" in err


def fake_valgrind(tmp_path, monkeypatch, body: str):
    b = tmp_path / "bin"
    b.mkdir()
    v = b / "valgrind"
    v.write_text(f"#!{sys.executable}\n" + body)
    v.chmod(v.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{b}:{os.environ['PATH']}")


@pytest.mark.parametrize("out", ["t", "t.ptwc"])
def test_record_non_lackey_stream(tmp_path, monkeypatch, capsys, out):
    # the fake valgrind writes to the --log-fd it is given (its 5th argument); the recording
    # goes to a trace directory or a compact file: neither is left behind
    fake_valgrind(tmp_path, monkeypatch,
                  "import os, sys\nfd = int(sys.argv[4].split('=')[1])\n"
                  "os.write(fd, b'hello world\\n')\n")
    err = one_line_exit2(["record", "--out", str(tmp_path / out), "--", "true"], capsys)
    assert "not a lackey line" in err
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


def test_record_without_valgrind(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    err = one_line_exit2(["record", "--out", str(tmp_path / "t"), "--", "/bin/true"], capsys)
    assert "apt-get install valgrind" in err


def test_record_missing_program(tmp_path, capsys):
    err = one_line_exit2(["record", "--out", str(tmp_path / "t"), "--",
                          "/no/such/prog"], capsys)
    assert "no such program" in err
    no_partial(tmp_path, "t")


@pytest.mark.skipif(not HAS_VALGRIND, reason="valgrind not installed")
def test_record_failing_program(tmp_path, capsys):
    err = one_line_exit2(["record", "--out", str(tmp_path / "t"), "--", "false"], capsys)
    assert "failed (exit status 1)" in err
    no_partial(tmp_path, "t")


@pytest.mark.skipif(not HAS_VALGRIND, reason="valgrind not installed")
def test_record_tee_convert_equal(tmp_path, capsys):
    """record --tee keeps the lackey text of the same recording: converting it gives the
    recorded directory's metrics byte for byte."""
    rec, txt, conv = tmp_path / "rec", tmp_path / "rec.lackey", tmp_path / "conv"
    assert main(["record", "--out", str(rec), "--tee", str(txt), "--", "/bin/ls", "/"]) == 0
    assert main(["convert", str(txt), "--out", str(conv)]) == 0
    outs = []
    for d in (rec, conv):
        capsys.readouterr()
        assert main(["run", f"trace:{d}", "--host", "precopy", "--format", "csv",
                     "--no-save"]) == 0
        outs.append(capsys.readouterr().out.replace(f"trace:{d.name}", "trace:W"))
    assert outs[0] == outs[1]
    assert outs[0].count("\n") == 5                       # header + four policies
    a, b = trace_dir.load(rec), trace_dir.load(conv)
    assert a.meta["time_per_access"] == b.meta["time_per_access"]
    assert a.meta["time_per_access"]["guest_instrs"] > 0
