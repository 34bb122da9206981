"""Traces streamed from disk in bounded chunks (issue 6): columns that read only the rows
asked for, so a 10^9-access trace runs through the numpy engine with memory bounded by the
engine's own state, not by the trace.

A trace directory holds `vcpu.npy` (uint16), `va.npy` (uint64) and `kind.npy` (uint8, codes
of model.trace.KINDS) of equal length (`save_trace_dir` writes them, in chunks, from any
iterable of Trace pieces).  `open_trace_dir` returns a `Trace` whose columns are `DiskColumn`s:
array-likes that support what the engine does with trace columns — slices, integer-array and
scalar indexing, len, min, max — by reading the needed rows with `np.fromfile` (plain reads:
the file's pages are never mapped into the process, so they do not count towards its RSS)
into a cache of one block.  The engine reads the trace front to back, so every block is read
about once; results are identical to an in-memory run (tests/test_trace_stream.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .trace import KINDS, Trace

COLUMNS = {"vcpu": np.uint16, "va": np.uint64, "kind": np.uint8}
BLOCK = 1 << 22                      # rows cached per column (4 Mi rows: 32 MiB of VAs)


class TraceFileError(ValueError):
    """A trace directory that cannot be read: one line naming the file."""


class LazyColumn:
    """A trace column the engine reads by rows without holding it whole: step-1 slices,
    integer-array and scalar indexing, len, min, max (subclasses: where the rows come
    from)."""
    n: int
    dtype: np.dtype

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.n)
            if step != 1:
                raise IndexError(f"{type(self).__name__} supports step-1 slices only")
            return self._rows(lo, hi) if hi > lo else np.zeros(0, dtype=self.dtype)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.n if key < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(i)
            return self._rows(i, i + 1)[0]
        idx = np.asarray(key)
        if idx.size == 0:
            return np.zeros(idx.shape, dtype=self.dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if lo < 0 or hi > self.n:
            raise IndexError("index out of range")
        return self._take(idx, lo, hi)

    def tolist(self) -> list:                       # the reference engine's per-access loop
        return np.asarray(self).tolist()


class DiskColumn(LazyColumn):
    """One trace column in a .npy file, read on demand in blocks."""

    def __init__(self, path: Path, dtype, block: int = BLOCK):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.block = block
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, fortran, dt = read(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise TraceFileError(f"{self.path}: not a readable .npy file: {e}") from None
        if dt != self.dtype or len(shape) != 1 or fortran:
            raise TraceFileError(f"{self.path}: expected a 1-D {self.dtype} array, got "
                                 f"{dt} {shape}")
        self.n = shape[0]
        self._lo, self._buf = 0, np.zeros(0, dtype=self.dtype)
        self._min = self._max = None

    @property
    def nbytes(self) -> int:
        return self.n * self.dtype.itemsize

    def _read(self, lo: int, hi: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=self.dtype, count=hi - lo,
                           offset=self.offset + lo * self.dtype.itemsize)

    def _cover(self, lo: int, hi: int) -> None:
        """Make the cache hold rows [lo, hi)."""
        if self._lo <= lo and hi <= self._lo + len(self._buf):
            return
        end = min(self.n, max(hi, lo + self.block))
        self._lo, self._buf = lo, self._read(lo, end)

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        self._cover(lo, hi)
        return self._buf[lo - self._lo:hi - self._lo]

    def _take(self, idx: np.ndarray, lo: int, hi: int) -> np.ndarray:
        self._cover(lo, hi)
        return self._buf[idx - self._lo]

    def _scan(self) -> None:
        mn = mx = None
        for a in range(0, self.n, self.block):
            part = self._read(a, min(self.n, a + self.block))
            pmn, pmx = part.min(), part.max()
            mn = pmn if mn is None or pmn < mn else mn
            mx = pmx if mx is None or pmx > mx else mx
        self._min, self._max = mn, mx

    def min(self):
        if self._min is None:
            self._scan()
        return self._min

    def max(self):
        if self._max is None:
            self._scan()
        return self._max

    def __array__(self, dtype=None, copy=None):     # whole column: only for small traces
        a = self._read(0, self.n)
        return a.astype(dtype) if dtype is not None else a


class TiledColumn(LazyColumn):
    """A column repeated to `n` rows without copying (a workload's access stream served
    again and again: workloads/clock.py with_seconds); a slice inside one period is a view
    of the base array."""

    def __init__(self, base: np.ndarray, n: int):
        self.base = np.ascontiguousarray(base)
        self.dtype = self.base.dtype
        self.period = len(self.base)
        self.n = int(n)
        if self.period == 0 and self.n:
            raise ValueError("cannot tile an empty column")

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        a = lo % self.period
        if a + (hi - lo) <= self.period:
            return self.base[a:a + hi - lo]
        return self.base[np.arange(lo, hi, dtype=np.int64) % self.period]

    def _take(self, idx: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return self.base[idx % self.period]

    def min(self):
        return self.base.min()

    def max(self):
        return self.base.max()

    def __array__(self, dtype=None, copy=None):     # whole column: only for small traces
        a = np.resize(self.base, self.n)
        return a.astype(dtype) if dtype is not None else a


def repeat_period(tr: Trace) -> int | None:
    """The period of a trace whose accesses repeat (every column a TiledColumn of one
    period: access p equals access p + period), else None."""
    cols = (tr.vcpu, tr.va, tr.kind)
    if not all(isinstance(c, TiledColumn) for c in cols):
        return None
    periods = {c.period for c in cols}
    return periods.pop() if len(periods) == 1 else None


def _same_lengths(tr: Trace, error: type) -> int:
    """The trace's length; `error` when its three columns differ in length."""
    n = len(tr.va)
    if len(tr.vcpu) != n or len(tr.kind) != n:
        raise error(f"trace columns differ in length: vcpu {len(tr.vcpu)}, va {n}, "
                    f"kind {len(tr.kind)}")
    return n


class TiledTrace(Trace):
    """A Trace over TiledColumns (no copy of the repeats)."""

    def __post_init__(self) -> None:
        _same_lengths(self, ValueError)
        if self.step_of_access is not None:
            raise ValueError("a tiled trace has no step_of_access")


class StreamedTrace(Trace):
    """A Trace over DiskColumns (no copy into memory)."""

    def __post_init__(self) -> None:
        n = _same_lengths(self, TraceFileError)
        if n and int(self.kind.max()) >= len(KINDS):
            raise TraceFileError(f"{self.kind.path}: kind code {int(self.kind.max())} is "
                                 f"not in KINDS")


def open_trace_dir(d: Path, events=(), block: int = BLOCK) -> StreamedTrace:
    d = Path(d)
    cols = {}
    for name, dt in COLUMNS.items():
        p = d / f"{name}.npy"
        if not p.exists():
            raise TraceFileError(f"{p}: missing")
        cols[name] = DiskColumn(p, dt, block)
    return StreamedTrace(cols["vcpu"], cols["va"], cols["kind"], list(events))


def save_trace_dir(d: Path, pieces, n: int) -> None:
    """Write `n` accesses from an iterable of Trace pieces to d/{vcpu,va,kind}.npy, in
    chunks (each file written under a temporary name, then renamed)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    outs = {}
    for name, dt in COLUMNS.items():
        tmp = d / f".{name}.npy.tmp"
        f = open(tmp, "wb")
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dt)), "fortran_order": False,
                "shape": (n,)})
        outs[name] = (f, tmp)
    written = 0
    try:
        for t in pieces:
            for name in COLUMNS:
                getattr(t, name).astype(COLUMNS[name], copy=False).tofile(outs[name][0])
            written += len(t)
        if written != n:
            raise ValueError(f"pieces hold {written} accesses, not {n}")
        for name, (f, tmp) in outs.items():
            f.close()
            os.replace(tmp, d / f"{name}.npy")
    finally:
        for f, tmp in outs.values():
            f.close()
            if tmp.exists():
                tmp.unlink()
