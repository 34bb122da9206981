"""The compact trace form (issue 13 item 4, workloads/compact.py): it gives the full form's
metrics exactly, on every metric of metrics.csv and every policy, for generated access shapes
and for real programs recorded with valgrind, under the position-based and the timed host
scenarios; and bad compact files are one line, exit 2, nothing written."""
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.catalog import build
from bench.cli import main
from bench.runner import METRIC_COLUMNS, run_workload
from workloads import compact
from workloads.importers import TraceError
from workloads.trace_dir import convert_file

from tests.test_trace_dir import one_line_exit2

HAS_VALGRIND = shutil.which("valgrind") is not None

# host scenarios, with knobs that put their events inside a window of a few ms of guest time
# (the timed ones: workloads/host_timed.py; the clock is 10 ns an access without a recording)
HOSTS = [
    ("none", {}),
    ("precopy", {"rounds": 3}),
    ("postcopy", {}),
    ("snapshot", {}),
    ("pressure", {}),
    ("numa", {"scan_size_mb": 1, "scan_period_s": 0.00005, "first_s": 0.0}),
    ("ksm", {"pages_to_scan": 64, "sleep_ms": 0.05, "merge_percent": 30.0}),
    ("migration", {"link_gbit_s": 1.0, "downtime_limit_ms": 1.0}),
    ("migration+numa", {"migration": {"link_gbit_s": 25.0},
                        "numa": {"scan_size_mb": 1, "scan_period_s": 0.00005, "first_s": 0.0}}),
]
THP_HOST = ("khugepaged", {"pages_to_scan": 512, "scan_sleep_ms": 0.5})


def rows(workload: str, host: str, hk: dict, knobs: dict) -> list[dict]:
    w = build(workload, knobs, host, hk)
    r = run_workload(w, host=host)
    out = []
    for row in r.rows:
        assert set(METRIC_COLUMNS) <= set(row)
        out.append({k: v for k, v in row.items() if k != "workload"})
    return out, w


def assert_same(full: str, small: str, knobs: dict, hosts=HOSTS) -> list[str]:
    """Every metric of every policy equal, under every host; returns the hosts that placed
    events inside the window, not only at its start (so that a test can check it saw them)."""
    seen = []
    base = None
    for host, hk in hosts:
        a, wa = rows(full, host, hk, knobs)
        b, wb = rows(small, host, hk, knobs)
        assert len(a) == 4, host
        assert a == b, host
        assert len(wa.trace) == len(wb.trace)
        if host == "none":
            base = {(p, st.op) for p, _i, st in wa.trace.events}
        own = {p for p, _i, st in wa.trace.events if (p, st.op) not in (base or set())}
        if any(0 < p < len(wa.trace) for p in own):
            seen.append(host)                   # host events inside the window
    return seen


# ---- the format ---------------------------------------------------------------------------
def random_trace(n: int, seed: int, vcpus: int = 2):
    """Runs of one page and kind, offsets within the page random."""
    r = np.random.default_rng(seed)
    k = n
    lens = r.integers(1, 8, k)
    vc = np.repeat(r.integers(0, vcpus, k), lens)[:n].astype(np.uint16)
    pg = np.repeat(r.integers(0x400, 0x480, k), lens)[:n].astype(np.uint64)
    kd = np.repeat(r.choice([0, 1, 6], k), lens)[:n].astype(np.uint8)
    va = (pg << np.uint64(12)) | r.integers(0, 4096, len(pg)).astype(np.uint64)
    return vc, va, kd


def chunks_of(cols, size):
    n = len(cols[0])
    for lo in range(0, n, size):
        yield tuple(c[lo:lo + size] for c in cols)


@pytest.mark.parametrize("size", [1, 7, 1000, 100000])
def test_round_trip_in_any_chunking(tmp_path, size):
    vc, va, kd = random_trace(20000, 3)
    f = compact.write_compact(chunks_of((vc, va, kd), size), tmp_path / "t.ptwc",
                              source={"source": "test"})
    got = [np.concatenate(c) for c in zip(*compact.iter_compact(f))]
    assert np.array_equal(got[0], vc)
    assert np.array_equal(got[1], va & ~np.uint64(0xFFF))          # offsets dropped
    assert np.array_equal(got[2], kd)
    meta = compact.read_meta(f)
    assert meta["accesses"] == 20000
    # runs: a change of vcpu, page or kind starts one (counted independently here)
    key = vc.astype(np.int64) * 10**9 + (va >> np.uint64(12)).astype(np.int64) * 10 + kd
    assert meta["runs"] == 1 + int(np.count_nonzero(key[1:] != key[:-1]))


def test_same_input_same_bytes(tmp_path):
    cols = random_trace(5000, 4)
    a = compact.write_compact(chunks_of(cols, 999), tmp_path / "a.ptwc", source={})
    b = compact.write_compact(chunks_of(cols, 5000), tmp_path / "b.ptwc", source={})
    assert a.read_bytes() == b.read_bytes()


def test_long_runs_split_and_expanded_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "MAX_COUNT", 1000)
    n = 5500
    cols = (np.zeros(n, np.uint16), np.full(n, 0x7000, np.uint64), np.ones(n, np.uint8))
    f = compact.write_compact(chunks_of(cols, 300), tmp_path / "t.ptwc", source={})
    runs = list(compact.iter_runs(f))
    assert [int(c) for c in runs[0][3]] == [1000] * 5 + [500]
    pieces = list(compact.expand(*runs[0], limit=700))
    assert max(len(p[0]) for p in pieces) <= 700
    assert sum(len(p[0]) for p in pieces) == n
    assert all((p[1] == 0x7000).all() for p in pieces)


def test_compression(tmp_path):
    """A lackey text of a looping program with random heap accesses (the worst case for
    compression: the heap pages are random) is still 10 times smaller compact."""
    from tests.test_trace_dir import lackey_text
    p = tmp_path / "p.lackey"
    p.write_text(lackey_text(100000, 2))
    f = convert_file(str(p), tmp_path / "p.ptwc")
    m = compact.read_meta(f)
    assert m["accesses"] > 100000
    assert f.stat().st_size * 10 < p.stat().st_size
    assert m["time_per_access"]["guest_instrs"] == 1234


# ---- compact = full on every metric: generated shapes -------------------------------------
GENERATED = [("stream", {"bytes_per_vcpu": 1 << 20, "passes": 2}),
             ("zipf", {"keys": 4096, "operations": 6000}),
             ("sparse", {"regions": 64, "accesses": 8000}),
             ("pointer_chase", {"nodes": 512, "span_bytes": 1 << 30, "hops": 3000}),
             ("gc", {"heap_bytes": 4 << 20})]


def shape_npz(tmp_path, gen, knobs, seed=0):
    """A generator's access stream (its vCPUs, kinds and pages), with random offsets in the
    pages, as an NPZ trace: the full form."""
    w = build(gen, knobs, "none", {}, seed)
    n = min(len(w.trace), 20000)
    r = np.random.default_rng(seed)
    va = np.asarray(w.trace.va[:n]) & ~np.uint64(0xFFF)
    va = va | r.integers(0, 4096, n).astype(np.uint64)
    p = tmp_path / f"{gen}.npz"
    np.savez(p, vcpu=np.asarray(w.trace.vcpu[:n]), va=va, kind=np.asarray(w.trace.kind[:n]))
    return p


@pytest.mark.parametrize("gen,gknobs", GENERATED)
def test_generated_shapes_compact_equals_full(tmp_path, gen, gknobs):
    full = shape_npz(tmp_path, gen, {k: v for k, v in gknobs.items()})
    small = convert_file(str(full), tmp_path / f"{gen}.ptwc")
    assert small.stat().st_size < full.stat().st_size
    seen = assert_same(f"import:{full}", f"compact:{small}", {"access_ns": 100.0},
                       [HOSTS[i] for i in
                                          (0, 1, 2, 5, 6, 8)])
    for h in ("precopy", "numa", "ksm", "migration+numa"):
        assert h in seen, (h, seen)


def test_generated_shape_thp_and_warm(tmp_path):
    """khugepaged needs THP-backed memslots; a warm guest (demand = false) of 64 MiB."""
    full = shape_npz(tmp_path, "zipf", {"keys": 4096, "operations": 6000})
    small = convert_file(str(full), tmp_path / "z.ptwc")
    seen = assert_same(f"import:{full}", f"compact:{small}",
                       {"backing": "anon_thp", "demand": False, "ram_mb": 64,
                        "access_ns": 100.0},
                       [("none", {}), THP_HOST, ("precopy", {}), HOSTS[6]])
    assert "khugepaged" in seen


# ---- compact = full on every metric: real programs recorded with valgrind ------------------
SQL = ("create table t(a integer primary key, b text); "
       "insert into t(b) select hex(randomblob(64)) from generate_series(1, 2000); "
       "select count(*), sum(length(b)) from t where a % 7 = 3;")
PROGRAMS = {
    "ls": ["ls", "-l", "/usr/bin"],
    # the sqlite3 shell, or SQLite through CPython's module where the shell is not installed
    "sqlite3": (["sqlite3", ":memory:", SQL] if shutil.which("sqlite3") else
                ["python3", "-S", "-c", "import sqlite3; c = sqlite3.connect(':memory:'); "
                 "c.execute('create table t(a integer primary key, b text)'); "
                 "c.executemany('insert into t(b) values (?)', [(str(i) * 20,) for i in "
                 "range(2000)]); print(c.execute('select count(*) from t where a % 7 = 3')"
                 ".fetchall())"]),
    "python3": ["python3", "-S", "-c", "import json; d = {str(i): [i] * 8 for i in "
                "range(3000)}; s = json.dumps(d); print(len(json.loads(s)))"],
}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    if not HAS_VALGRIND:
        pytest.skip("valgrind not installed")
    d = tmp_path_factory.mktemp("rec")
    out = {}
    for name, argv in PROGRAMS.items():
        if shutil.which(argv[0]) is None:
            continue
        txt = d / f"{name}.lackey"
        assert main(["record", "--out", str(d / name), "--tee", str(txt), "--limit",
                     "600000", "--no-stdin", "--", *argv]) == 0
        out[name] = txt
    if len(out) < 3:
        pytest.skip("fewer than three of ls, sqlite3, python3 installed")
    return out


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_real_programs_compact_equals_full(recordings, tmp_path, name):
    txt = recordings[name]
    full = convert_file(str(txt), tmp_path / "full")                   # the trace directory
    small = convert_file(str(txt), tmp_path / f"{name}.ptwc")
    m = compact.read_meta(small)
    assert m["accesses"] >= 600000                  # the tee keeps whole blocks
    assert small.stat().st_size * 10 < m["accesses"]
    seen = assert_same(f"trace:{full}", f"compact:{small}", {"access_ns": 100.0})
    for h in ("precopy", "numa", "ksm", "migration"):
        assert h in seen, (h, seen)


def test_real_program_compact_to_trace_dir(recordings, tmp_path, capsys):
    """compact -> convert -> trace:DIR gives the full trace directory's metrics byte for
    byte (the same recording), the clock included."""
    txt = recordings["ls"]
    assert main(["convert", str(txt), "--out", str(tmp_path / "a")]) == 0
    assert main(["convert", str(txt), "--out", str(tmp_path / "ls.ptwc")]) == 0
    assert main(["convert", str(tmp_path / "ls.ptwc"), "--out", str(tmp_path / "b")]) == 0
    outs = []
    for wl in (f"trace:{tmp_path / 'a'}", f"trace:{tmp_path / 'b'}",
               f"compact:{tmp_path / 'ls.ptwc'}"):
        capsys.readouterr()
        assert main(["run", wl, "--host", "precopy", "--format", "csv", "--no-save"]) == 0
        out = capsys.readouterr().out
        outs.append([line.split(",", 1)[1] for line in out.strip().splitlines()])
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.skipif(not HAS_VALGRIND, reason="valgrind not installed")
def test_record_straight_to_compact(tmp_path, capsys):
    f = tmp_path / "true.ptwc"
    assert main(["record", "--out", str(f), "--no-stdin", "--", "true"]) == 0
    m = compact.read_meta(f)
    assert m["source"] == "record" and m["command"] == ["true"]
    assert m["time_per_access"]["ns_per_access"] > 0       # valgrind's instruction count
    assert main(["run", f"compact:{f}", "--format", "csv", "--no-save"]) == 0


# ---- bad input ----------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    return compact.write_compact(chunks_of(random_trace(3000, 5), 1000),
                                 tmp_path / "g.ptwc", source={})


def rewrite(src: Path, dst: Path, change):
    """A copy of compact file src with its members changed by change(dict name -> bytes)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_LZMA) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return dst


def npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def bad_files(good: Path, d: Path):
    with zipfile.ZipFile(good) as z:
        meta = json.loads(z.read("meta.json"))
        count = np.load(io.BytesIO(z.read("count.npy")))
        kind = np.load(io.BytesIO(z.read("kind.npy")))
    trunc = d / "trunc.ptwc"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    notzip = d / "text.ptwc"
    notzip.write_text("I  0400000,4\n")
    return {
        "truncated": (trunc, "not a compact trace"),
        "not a zip": (notzip, "not a compact trace"),
        "lengths": (rewrite(good, d / "len.ptwc", lambda m: m.update(
            {"count.npy": npy(count[:-1])})), "mismatched column lengths"),
        "dtype": (rewrite(good, d / "dt.ptwc", lambda m: m.update(
            {"count.npy": npy(count.astype(np.int64))})), "want 1-D uint32"),
        "missing column": (rewrite(good, d / "miss.ptwc", lambda m: m.pop("kind.npy")),
                           "no column 'kind'"),
        "accesses": (rewrite(good, d / "acc.ptwc", lambda m: m.update(
            {"meta.json": json.dumps(dict(meta, accesses=meta["accesses"] + 1))})),
            "truncated or damaged"),
        "kind code": (rewrite(good, d / "kind.ptwc", lambda m: m.update(
            {"kind.npy": npy(np.full_like(kind, 200))})), "kind code 200"),
        "count 0": (rewrite(good, d / "zero.ptwc", lambda m: m.update(
            {"count.npy": npy(np.zeros_like(count))})), "count 0"),
        "format": (rewrite(good, d / "fmt.ptwc", lambda m: m.update(
            {"meta.json": json.dumps(dict(meta, format="other"))})), "format is not"),
    }




def test_bad_compact_files(good, tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    for what, (f, msg) in bad_files(good, d).items():
        err = one_line_exit2(["run", f"compact:{f}", "--no-save"], capsys)
        assert msg in err, (what, err)
        out = tmp_path / f"dir-{f.stem}"
        err = one_line_exit2(["convert", str(f), "--out", str(out)], capsys)
        assert msg in err, (what, err)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(out.name)], what
        with pytest.raises(TraceError):
            list(compact.iter_compact(f))


def test_bad_source_leaves_no_compact_file(tmp_path, capsys):
    p = tmp_path / "bad.lackey"
    p.write_text("I  0400000,4\nhello\n")
    err = one_line_exit2(["convert", str(p), "--out", str(tmp_path / "o.ptwc")], capsys)
    assert "bad.lackey:2" in err
    assert [x.name for x in tmp_path.iterdir()] == ["bad.lackey"]


def test_compact_takes_profile_knobs_only(good, capsys):
    err = one_line_exit2(["run", f"compact:{good}", "--knob", "passes=2", "--no-save"],
                         capsys)
    assert "unknown knob" in err


@pytest.mark.skipif(not HAS_VALGRIND, reason="valgrind not installed")
def test_record_compact_failing_program_leaves_nothing(tmp_path, capsys):
    err = one_line_exit2(["record", "--out", str(tmp_path / "f.ptwc"), "--", "false"], capsys)
    assert "failed (exit status 1)" in err
    assert list(tmp_path.iterdir()) == []
