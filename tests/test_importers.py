"""Trace import: lackey, CSV and NPZ parsing (streamed), bad input, and a real program traced
with valgrind lackey on the fly and run through every policy."""
import os
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest

from bench.cli import main
from model.engine import run_trace
from model.policies import DEFAULT_ORDER
from model.trace import EXEC, KIND_CODE, READ64, WRITE64
from tests.wl_helpers import program
from workloads.importers import (TraceError, import_trace, iter_lackey, iter_npz, read_trace)

LACKEY = """==123== Lackey, an example Valgrind tool
==123== Command: ./prog
==123==
I  04016e50,3
 S 1ffefffa58,8
I  04016e53,5
 L 04032e10,8

 M 0402ed68,4
I  04016e58,2
==123== Exit code:       0
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def test_lackey_kinds_and_addresses(tmp_path):
    vc, va, kd = read_trace(write(tmp_path, "t.lk", LACKEY))
    assert va.tolist() == [0x04016e50, 0x1ffefffa58, 0x04016e53, 0x04032e10, 0x0402ed68,
                           0x0402ed68, 0x04016e58]
    assert kd.tolist() == [EXEC, WRITE64, EXEC, READ64, READ64, WRITE64, EXEC]   # M = L + S
    assert vc.tolist() == [0] * 7


@pytest.mark.parametrize("chunk", [7, 16, 33, 64, 1 << 20])
def test_lackey_chunking_does_not_change_the_result(tmp_path, chunk):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(500):
        t = rng.choice(["I ", " L", " S", " M"])
        lines.append(f"{t} {int(rng.integers(0, 1 << 40)):08x},{int(rng.integers(1, 16))}")
    path = write(tmp_path, "r.lk", "\n".join(lines))            # no final newline
    whole = [np.concatenate(x) for x in zip(*iter_lackey(path))]
    parts = [np.concatenate(x) for x in zip(*iter_lackey(path, chunk_bytes=chunk))]
    for a, b in zip(whole, parts):
        assert np.array_equal(a, b)
    assert len(whole[1]) == 500 + sum(1 for ln in lines if ln.startswith(" M"))


BAD_LACKEY = [
    ("I  04016e50,3\n X 0400,8\n", 2),                 # unknown type
    ("I  04016e50,3\nI  04016e53,5\n L 04zz2e10,8\n", 3),  # bad hex
    (" L 04032e10\n", 1),                               # no size
    (" L 04032e10,\n", 1),                              # empty size
    (" L 04032e10,8x\n", 1),                            # bad size
    ("I  4016e50,3\n L 1000000000000000,8\n", 2),       # beyond va_bits (48)
    ("==1== hi\nhello\n", 2),                           # junk
    ("I 04016e50,3\n", 1),                              # one space after I
    (" L 04032e10,8\r\n", 1),                           # CRLF
]


@pytest.mark.parametrize("text,line", BAD_LACKEY)
def test_lackey_malformed_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path, "bad.lk", text)
    with pytest.raises(TraceError) as e:
        read_trace(path)
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert "\n" not in str(e.value)


def test_lackey_error_line_number_across_chunks(tmp_path):
    good = "I  04016e50,3\n" * 1000
    path = write(tmp_path, "late.lk", good + " Q 1,1\n" + good)
    with pytest.raises(TraceError, match=rf"^{path}:1001: "):
        list(iter_lackey(path, chunk_bytes=100))


@pytest.mark.parametrize("fmt,text,line", [
    ("csv", "vcpu,va,kind\n0,0x1000,read64\n1,4096,bogus\n", 3),
    ("csv", "vcpu,va,kind\n0,0x1000,read64,1\n", 2),
    ("csv", "vcpu,address,kind\n0,0x1000,read64\n", 1),
    ("csv", "vcpu,va,kind\n0,0x1000,read64\n-1,1,read64\n", 3),
    ("csv", "vcpu,va,kind\n0,0xg,read64\n", 2),
    ("csv", "vcpu,va,kind\n0,010,write64\n\n0,1 2,read64\n", 4),
    ("csv", "vcpu,va,kind\n0,0x1000000000000,read64\n", 2),
    ("lackey", BAD_LACKEY[1][0], 3),
])
def test_cli_bad_trace_one_line_exit_2_nothing_written(tmp_path, capsys, fmt, text, line):
    path = write(tmp_path, "bad." + ("csv" if fmt == "csv" else "lk"), text)
    before = sorted(os.listdir(tmp_path))
    assert main(["import-check", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f"{path}:{line}: " in err
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_import_check_summary(tmp_path, capsys):
    path = write(tmp_path, "t.lk", LACKEY)
    assert main(["import-check", path]) == 0
    out = capsys.readouterr().out
    assert "accesses read" in out and " 7" in out


def test_csv_reads_decimal_and_hex(tmp_path):
    path = write(tmp_path, "t.csv", "vcpu, va ,kind\n0,0x1000,read64\n3, 8192 ,cas\n\n"
                                    "1,0X10,exec\n")
    vc, va, kd = read_trace(path)
    assert vc.tolist() == [0, 3, 1] and va.tolist() == [0x1000, 8192, 0x10]
    assert kd.tolist() == [KIND_CODE["read64"], KIND_CODE["cas"], KIND_CODE["exec"]]


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streamed_in_chunks(tmp_path, compressed):
    n = 10_000
    rng = np.random.default_rng(1)
    cols = dict(vcpu=rng.integers(0, 4, n).astype(np.uint16),
                va=rng.integers(0, 1 << 47, n).astype(np.uint64),
                kind=rng.integers(0, 8, n).astype(np.uint8))
    path = str(tmp_path / "t.npz")
    (np.savez_compressed if compressed else np.savez)(path, **cols)
    got = [np.concatenate(x) for x in zip(*iter_npz(path, chunk=999))]
    for name, col in zip(("vcpu", "va", "kind"), got):
        assert np.array_equal(col, cols[name])


def test_npz_bad_value_names_the_record(tmp_path):
    path = str(tmp_path / "b.npz")
    np.savez(path, vcpu=np.zeros(5, np.int64), va=np.arange(5, dtype=np.int64) * 4096,
             kind=np.array([0, 1, 2, 99, 0], dtype=np.int64))
    with pytest.raises(TraceError, match=rf"^{path}:4: kind 99"):
        read_trace(path)
    np.savez(path, vcpu=np.zeros(5), va=np.zeros(5, np.int64), kind=np.zeros(5, np.int64))
    with pytest.raises(TraceError, match="1-D of integers"):
        read_trace(path)
    np.savez(path, va=np.zeros(5, np.int64), kind=np.zeros(5, np.int64))
    with pytest.raises(TraceError, match="no array 'vcpu'"):
        read_trace(path)


def _peak_parsing(path):
    tracemalloc.start()
    n = 0
    for _vc, va, _kd in iter_lackey(str(path)):
        n += len(va)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return n, peak


def test_lackey_is_streamed_not_loaded_whole(tmp_path):
    # consuming the chunks holds a bounded amount of memory, whatever the file size
    line = b" L 04032e10,8\nI  04016e50,3\n S 1ffefffa58,8\n M 0402ed68,4\n"
    peaks = []
    for reps in (10, 40):
        path = tmp_path / f"big{reps}.lk"
        with open(path, "wb") as f:
            for _ in range(reps):
                f.write(line * 10_000)
        n, peak = _peak_parsing(path)
        assert n == reps * 10_000 * 5
        peaks.append(peak)
    size = path.stat().st_size                       # ~24 MB
    assert peaks[1] < size / 4, peaks
    assert peaks[1] < 1.5 * peaks[0], peaks          # 4x the file, about the same memory


def test_imported_layout_text_and_anon(tmp_path):
    path = write(tmp_path, "t.lk", LACKEY)
    wl = import_trace(path)
    _, va, kd = program(wl)
    assert np.array_equal(va, read_trace(path)[1])            # the program is the file's
    kinds = {}
    for v in wl.trace.events:
        for a, d in zip(v[2].vas, v[2].descs):
            kinds[a] = d
    from model.arch import DESC_PXN
    fetched = {int(a) & ~0xFFF for a, k in zip(va, kd) if k == EXEC}
    for a in fetched:
        assert not kinds[a] & DESC_PXN                          # text: executable
    assert kinds[0x1ffefffa58 & ~0xFFF] & DESC_PXN              # the stack: not


C_PROGRAM = r"""
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t n = 256 << 10;
    volatile char *a = malloc(n);
    for (size_t i = 0; i < n; i += 4096) a[i] = (char)i;
    long s = 0;
    for (size_t i = 0; i < n; i += 64) s += a[i];
    free((void *)a);
    return (int)(s & 1);
}
"""


@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind not installed (.ci/run installs it)")
def test_lackey_trace_of_a_real_program_runs_under_every_policy(tmp_path):
    exe = tmp_path / "prog"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        (tmp_path / "prog.c").write_text(C_PROGRAM)
        subprocess.run([cc, "-O1", "-o", str(exe), str(tmp_path / "prog.c")], check=True)
    else:
        exe = "/bin/true"
    log = tmp_path / "prog.lk"
    subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={log}",
                    str(exe)], check=True, capture_output=True, timeout=120)
    text = log.read_text()
    fetches = sum(1 for ln in text.splitlines() if ln.startswith("I  "))
    data = sum(1 for ln in text.splitlines() if ln[:2] in (" L", " S"))
    modify = sum(1 for ln in text.splitlines() if ln.startswith(" M"))
    wl = import_trace(str(log))
    assert wl.meta["accesses"] == fetches + data + 2 * modify
    results = run_trace(wl.scenario, wl.trace)
    assert set(results) == set(DEFAULT_ORDER)
    for r in results.values():
        m = r.metrics()
        assert m["accesses"] == len(wl.trace)
        assert m["stage1_faults"] == wl.meta["guest_faults"] > 0   # demand paging only
        assert m["guest_aborts"] == m["vcpu_run_failures"] == m["dirty_false_negative"] == 0
        assert m["s2_data_translation"] > 0
    # under pre-copy migration too
    from workloads.registry import apply_host
    mig = apply_host(wl, "precopy", rounds=3)
    results = run_trace(mig.scenario, mig.trace)
    for r in results.values():
        assert len(r.harvests) == 3 * len(mig.scenario.memslots)
        assert r.metrics()["dirty_false_negative"] == 0
