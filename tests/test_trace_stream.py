"""Chunked streaming of traces from disk: identical to an in-memory run (issue 6)."""
import numpy as np
import pytest

from bench.shapes import data_heavy, pt_heavy
from model.engine import run_trace
from model.trace import Trace
from model.trace_stream import DiskColumn, TraceFileError, open_trace_dir, save_trace_dir


def _pieces(tr, size):
    for a in range(0, len(tr), size):
        yield Trace(tr.vcpu[a:a + size], tr.va[a:a + size], tr.kind[a:a + size])


@pytest.mark.parametrize("shape", [data_heavy, pt_heavy])
@pytest.mark.parametrize("block", [997, 1 << 16])
def test_streamed_equals_in_memory(tmp_path, shape, block):
    kw = {"harvest_every": 3000} if shape is pt_heavy else {}
    scn, tr = shape(20_000, **kw)
    save_trace_dir(tmp_path, _pieces(tr, 4096), len(tr))
    st = open_trace_dir(tmp_path, tr.events, block=block)    # tiny blocks: many re-reads
    a = run_trace(scn, tr)
    b = run_trace(scn, st)
    for p in a:
        assert b[p].metrics() == a[p].metrics()
        assert b[p].as_json() == a[p].as_json()


def test_disk_column_indexing(tmp_path):
    x = np.arange(10_000, dtype=np.uint64) * 3
    np.save(tmp_path / "va.npy", x)
    c = DiskColumn(tmp_path / "va.npy", np.uint64, block=64)
    assert len(c) == 10_000 and c.min() == 0 and c.max() == 29_997
    assert (c[100:300] == x[100:300]).all() and c[-1] == x[-1] and c[5] == 15
    idx = np.array([7, 9000, 12])
    assert (c[idx] == x[idx]).all()
    assert (np.asarray(c) == x).all()


def test_bad_trace_dir(tmp_path):
    with pytest.raises(TraceFileError, match="vcpu.npy: missing"):
        open_trace_dir(tmp_path)
    np.save(tmp_path / "vcpu.npy", np.zeros(3, np.uint16))
    np.save(tmp_path / "va.npy", np.zeros(3, np.int32))         # wrong dtype
    np.save(tmp_path / "kind.npy", np.zeros(3, np.uint8))
    with pytest.raises(TraceFileError, match="va.npy: expected a 1-D uint64"):
        open_trace_dir(tmp_path)
