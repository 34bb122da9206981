"""Trace directories converted from real traces, streamed (issue 13): `ptwbench convert` and
`ptwbench record` share this code (record = lackey on a pipe -> the same converter).

Two passes, memory bounded by the pages touched, never by the trace's length:

1. *Spool*: the parsed accesses (lackey, CSV, NPZ, or lackey text read from valgrind's pipe)
   are appended to raw columns in the temporary directory, and the touched pages (with their
   first-touch position) and the fetched pages are accumulated, deduplicated as they come.
2. *Layout and replay*: the VMAs are laid out exactly as `import:PATH` lays them out
   (`importers.layout_vmas`, first-touch placement by the `linux` profile), then the raw
   columns are replayed in blocks through `LinuxGuest` (its page-fault model inserts each
   fault attempt and its `guest_pte` event), and the resulting trace is written as the
   `model.trace_stream` columns.

A trace directory holds `vcpu.npy`, `va.npy`, `kind.npy` (model.trace_stream's columns, with
the fault attempts), `scenario.json` (the scenario, in the scenario file format),
`events.json` (the trace's events), `aging.json` (with aging: what goes on aging past the
recorded window, workloads/aging.py AgingState) and `meta.json` (the workload's meta: the
source, the recording, the layout and the time per access the program implies), all JSON
(workloads/trace_json.py): reading a trace directory runs no code.  A directory of the first
format (a pickled `workload.pkl`) is refused, never loaded: convert its source again.
Everything is written under DIR.tmp-XXXX, then renamed: a failure leaves no partial
directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from model.trace import EXEC
from model.trace_stream import COLUMNS, TraceFileError, open_trace_dir

from .base import Workload, WorkloadError
from .importers import TraceError, layout_vmas
from .linux import LinuxGuest, make_profile
from .trace_json import (aging_text, events_text, parse_aging, parse_events, read_json,
                         read_scenario, scenario_dict)

FORMAT_VERSION = 2                      # 1: workload.pkl (a pickle; refused)
REPLAY_BLOCK = 1 << 22                  # accesses replayed through the guest at a time
HEADER_BYTES = 128                      # fixed .npy header, rewritten with the length at the end
# time per access for the calibrated clock (issue 13): valgrind counts guest instructions; a
# program's time is instructions x CPI / frequency, spread over its accesses.
ASSUMED_CPI = 1.0                       # ASSUMPTION: 1 cycle per instruction (a modern core
ASSUMED_GHZ = 2.5                       # on integer code), at 2.5 GHz (ASSUMPTION: a server core)
_INSTRS = re.compile(rb"==\d+==\s+guest instrs:\s+([\d,]+)")


class ColumnWriter:
    """Appends chunks to the three trace columns as .npy files with a fixed-size header
    (its length written when closed)."""

    def __init__(self, d: Path):
        self.d = Path(d)
        self.files = {n: open(self.d / f"{n}.npy", "wb") for n in COLUMNS}
        for f in self.files.values():
            f.write(b"\0" * HEADER_BYTES)
        self.n = 0

    def append(self, chunk) -> None:
        vc, va, kd = chunk
        for (name, dt), col in zip(COLUMNS.items(), (vc, va, kd)):
            np.ascontiguousarray(col, dtype=dt).tofile(self.files[name])
        self.n += len(va)

    def close(self) -> int:
        for name, f in self.files.items():
            f.seek(0)
            f.write(_header(COLUMNS[name], self.n))
            f.close()
        return self.n


def _header(dtype, n: int) -> bytes:
    d = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (
        np.lib.format.dtype_to_descr(np.dtype(dtype)), n)
    body = d.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def read_columns(d: Path, block: int = REPLAY_BLOCK):
    """The columns of a directory written by ColumnWriter, in blocks."""
    t = open_trace_dir(d)
    for lo in range(0, len(t), block):
        hi = min(len(t), lo + block)
        yield t.vcpu[lo:hi].copy(), t.va[lo:hi].copy(), t.kind[lo:hi].copy()


class PageSet:
    """Touched pages with their first-touch position, and fetched pages: deduplicated per
    chunk, merged every `merge` chunks (memory ~ pages touched)."""

    def __init__(self, shift: int, merge: int = 64):
        self.shift = np.uint64(shift)
        self.merge = merge
        self.pages, self.first, self.exec = [], [], []
        self.last_pages, self.last = [], []   # each page's last touch (steady-state AF)
        self.pos = 0

    def add(self, va: np.ndarray, kind: np.ndarray) -> None:
        p = va >> self.shift
        # a page's first touch is the start of one of its runs: sort the run starts only
        # (a program's accesses come in runs on a page)
        starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))
        # pages in first-touch order (a hash table: pandas.factorize), so each page's first
        # run start is where its code first exceeds every code before it
        codes, u = pd.factorize(p[starts], sort=False)
        new = np.concatenate(([True], codes[1:] > np.maximum.accumulate(codes)[:-1]))
        self.pages.append(np.asarray(u, dtype=np.uint64))
        self.first.append(starts[new].astype(np.int64) + self.pos)
        ends = np.flatnonzero(np.concatenate((p[1:] != p[:-1], [True])))
        u, i = np.unique(p[ends][::-1], return_index=True)
        self.last_pages.append(u)
        self.last.append(ends[::-1][i].astype(np.int64) + self.pos)
        ex = p[kind == EXEC]
        if len(ex):
            ex = ex[np.concatenate(([True], ex[1:] != ex[:-1]))]
        self.exec.append(np.unique(ex))
        self.pos += len(va)
        if len(self.pages) >= self.merge:
            self._merge()

    def _merge(self) -> None:
        p, f = np.concatenate(self.pages), np.concatenate(self.first)
        o = np.lexsort((f, p))
        p, f = p[o], f[o]
        keep = np.ones(len(p), dtype=bool)
        keep[1:] = p[1:] != p[:-1]
        self.pages, self.first = [p[keep]], [f[keep]]
        self.exec = [np.unique(np.concatenate(self.exec))]
        lp, la = np.concatenate(self.last_pages), np.concatenate(self.last)
        o = np.lexsort((-la, lp))                   # per page, the latest touch first
        lp, la = lp[o], la[o]
        keep = np.concatenate(([True], lp[1:] != lp[:-1]))
        self.last_pages, self.last = [lp[keep]], [la[keep]]

    def ages(self) -> dict:
        """Accesses since each page's last touch, at the end of what was added."""
        self._merge()
        return dict(zip(self.last_pages[0].tolist(), (self.pos - 1 - self.last[0]).tolist()))

    def result(self):
        """(sorted unique pages, their first-touch order as a list, sorted fetched pages)"""
        if not self.pages:
            z = np.zeros(0, dtype=np.uint64)
            return z, [], z
        self._merge()
        p, f = self.pages[0], self.first[0]
        return p, p[np.argsort(f, kind="stable")].tolist(), self.exec[0]


class _StreamGuest(LinuxGuest):
    """LinuxGuest replaying into a ColumnWriter instead of memory."""

    def replay(self, vmas, order, raw: Path, writer: ColumnWriter, ages=None):
        for first, npages, kind in vmas:
            self.vma(first << self.g, npages << self.g, kind)
        mappings = self._start()                    # demand = false: _premap adds the VMAs
        for _op, v in self._ops:
            self._op_vma(v)
        self._ops = []
        if not self.p.demand:
            mappings = self._premap_pages(order, ages)
        self.out = writer
        for vc, va, kd in counted(read_columns(raw), getattr(self, "progress", None)):
            self._naccesses += len(va)
            self._op_run(vc, va, kd)
        return self._finish(mappings)

    def _assemble(self, scn):                       # the trace is on disk already
        meta = self._end_meta()
        meta["trace_len"] = self.out.n
        return Workload(self.name, scn, None, meta)


def spool(chunks, raw: Path, shift: int, limit: int | None):
    """Pass 1: chunks -> raw columns in `raw`; returns (accesses, PageSet)."""
    w = ColumnWriter(raw)
    pages = PageSet(shift)
    try:
        for c in chunks:
            if limit is not None and w.n + len(c[1]) >= limit:
                c = tuple(x[:limit - w.n] for x in c)
            if len(c[1]):
                w.append(c)
                pages.add(c[1], c[2])
            if limit is not None and w.n >= limit:
                break
    finally:
        n = w.close()
    return n, pages


def time_per_access(instrs, accesses: int) -> dict:
    """`instrs`: a count, (count, where it comes from), or a LackeyWindow."""
    what = "valgrind guest instrs"
    if isinstance(instrs, tuple):
        instrs, what = instrs
    if isinstance(instrs, LackeyWindow):
        what = instrs.basis()
        instrs = instrs.instrs()
    if not instrs or not accesses:
        return {"ns_per_access": None, "basis": "no instruction count (not a recording)"}
    ns = instrs * ASSUMED_CPI / ASSUMED_GHZ / accesses
    return {"ns_per_access": round(ns, 4), "guest_instrs": int(instrs),
            "assumed_cpi": ASSUMED_CPI, "assumed_ghz": ASSUMED_GHZ,
            "basis": f"{what} x ASSUMED_CPI / ASSUMED_GHZ / accesses"}


def counted(chunks, progress):
    """The chunks, telling `progress(n)` the accesses of each as it passes (None: nothing)."""
    for c in chunks:
        if progress is not None:
            progress(len(c[1]))
        yield c


def convert(chunks, out: Path, *, name: str, source: dict, limit: int | None = None,
            instrs=lambda: None, progress=None, **profile_knobs) -> Path:
    """Both passes, into `out` (written under out.tmp-XXXX, then renamed).  `progress(phase)`
    (optional): a callable(accesses) for each pass, "read" then "lay out"."""
    out = Path(out)
    chunks = counted(chunks, progress("read") if progress else None)
    if out.exists():
        raise WorkloadError(f"{out}: already exists (choose another --out)")
    profile = make_profile(profile_knobs, "convert")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=parent))
    try:
        raw = tmp / "raw"
        raw.mkdir()
        n, pages = spool(chunks, raw, profile.geometry.granule_shift, limit)
        if n == 0:
            raise TraceError(f"{source.get('path', name)}: no accesses")
        uniq, order, exec_pages = pages.result()
        ages = pages.ages() if len(uniq) else {}
        del pages
        window = max(1, profile.fault_around_bytes // profile.geometry.granule)
        vmas = layout_vmas(uniq, exec_pages, window)
        tpa = time_per_access(instrs(), n)
        profile, period_ms = _aging_on_clock(profile, profile_knobs, tpa)
        g = _StreamGuest(name, profile)
        g.progress = progress("lay out") if progress else None
        writer = ColumnWriter(tmp)
        try:
            wl = g.replay(vmas, order, raw, writer, ages)
        finally:
            writer.close()
        shutil.rmtree(raw)
        attempts = (np.concatenate(g.attempts) if g.attempts else np.zeros(0, np.int64))
        np.save(tmp / "attempts.npy", attempts)
        meta = dict(wl.meta, **source, generator="trace", accesses_read=n,
                    profile=asdict(profile), vmas=len(vmas), pages_touched=len(uniq))
        meta["time_per_access"] = tpa
        if period_ms:
            meta["aging_period_ms"] = period_ms
        (tmp / "scenario.json").write_text(json.dumps(scenario_dict(wl.scenario), indent=1)
                                           + "\n")
        (tmp / "events.json").write_text(events_text(g.events))
        if wl.meta.get("aging_state") is not None:
            (tmp / "aging.json").write_text(aging_text(wl.meta["aging_state"]))
        (tmp / "meta.json").write_text(json.dumps(dict(meta, format_version=FORMAT_VERSION,
                                                       name=name),
                                                  indent=2, sort_keys=True, default=str)
                                       + "\n")
        os.chmod(tmp, 0o755)                       # mkdtemp's 0700 -> a normal directory
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _aging_on_clock(profile, knobs: dict, tpa: dict):
    """age_period_ms (or an aging regime's period) in accesses on the recording's clock,
    known once the trace is spooled; (profile, period in ms)."""
    from dataclasses import replace
    from .clock import ACCESS_TIME
    from .linux import aging_period_ms, coerce_profile_knobs
    ms = aging_period_ms(coerce_profile_knobs(knobs, "convert"))
    if not ms:
        return profile, 0.0
    ns = tpa.get("ns_per_access") or ACCESS_TIME["import"].ns
    return replace(profile, age_period=max(1, round(ms * 1e6 / ns))), ms


def _refuse_pickle(d: Path) -> None:
    """A first-format directory (workload.pkl, a pickle) is never unpickled: loading a pickle
    runs whatever code it names.  The message says how to make a new one."""
    how = "ptwbench convert TRACE --out NEWDIR (or ptwbench record)"
    try:
        m = json.loads((d / "meta.json").read_text())
        if m.get("source") == "file" and m.get("path"):
            how = f"ptwbench convert {m['path']} --out NEWDIR"
        elif m.get("source") == "record" and m.get("command"):
            how = f"ptwbench record --out NEWDIR -- {' '.join(map(str, m['command']))}"
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    raise WorkloadError(f"{d}: an old trace directory (workload.pkl, a pickle: not loaded, "
                        f"it could run code); convert it again: {how}")


def check_format(d: Path) -> None:
    """Cheap, before any run (spec checks too): refuses a first-format directory."""
    if (d / "workload.pkl").exists() and not (d / "events.json").exists():
        _refuse_pickle(d)


def load(d: Path) -> Workload:
    """A trace directory as a Workload whose trace is streamed from disk."""
    d = Path(d)
    if not d.is_dir():
        raise WorkloadError(f"{d}: not a trace directory (no such directory)")
    check_format(d)
    meta = read_json(d / "meta.json")
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise WorkloadError(f"{d / 'meta.json'}: not a version-{FORMAT_VERSION} trace "
                            f"directory")
    scenario = read_scenario(d / "scenario.json")
    try:
        trace = open_trace_dir(d)
        n = len(trace)
        for col in (trace.vcpu, trace.va, trace.kind):
            size = col.path.stat().st_size
            if size != col.offset + n * col.dtype.itemsize:
                raise TraceFileError(f"{col.path}: {size} bytes, want "
                                     f"{col.offset + n * col.dtype.itemsize} (truncated?)")
    except TraceFileError as e:
        raise WorkloadError(str(e)) from None
    if n != meta.get("trace_len"):
        raise WorkloadError(f"{d}: {n} accesses, meta.json says {meta.get('trace_len')}")
    trace.events = parse_events(read_json(d / "events.json"), str(d / "events.json"), n)
    scenario = replace(scenario, source=f"<workload {meta.get('name', d.name)}>")
    meta = {k: v for k, v in meta.items() if k not in ("format_version", "name")}
    if meta.get("aging_state") is not None:         # meta.json holds its summary only
        meta["aging_state"] = parse_aging(read_json(d / "aging.json"), str(d / "aging.json"))
    return Workload(f"trace:{d.name}", scenario, trace, dict(meta, path=str(d)))


def lackey_instrs(block: bytes) -> int:
    """Guest instructions in valgrind's summary lines of a lackey text block."""
    return sum(int(m.replace(b",", b"")) for m in _INSTRS.findall(block))


class LackeyWindow:
    """Parsed lackey blocks (importers' vectorised parser), accesses [skip, skip + limit) of
    them, with the guest instructions of that window for the clock: valgrind's summary
    (`guest instrs`) when the window is the whole recording, else the window's instruction
    fetches — lackey writes one `I` line per guest instruction executed (lackey/lk_main.c,
    trace_instr), so the two agree on a whole recording (tests/test_catalogue.py)."""

    def __init__(self, skip: int = 0, limit: int | None = None):
        self.skip, self.limit = skip, limit
        self.summary = 0                 # valgrind's guest instrs lines
        self.fetches = 0                 # I lines kept
        self.seen = 0                    # accesses parsed
        self.kept = 0
        self.cut = False                 # stopped at the limit (the program may run on)

    def chunks(self, blocks, path: str, va_bits: int):
        from .importers import _lackey_block
        for block, line0 in blocks:
            if b"guest instrs" in block:
                self.summary += lackey_instrs(block)
            out = _lackey_block(block, line0, path, va_bits)
            n = len(out[1])
            lo = min(n, max(0, self.skip - self.seen))
            self.seen += n
            hi = n
            if self.limit is not None:
                hi = min(n, lo + self.limit - self.kept)
            if hi > lo:
                out = tuple(c[lo:hi] for c in out)
                self.kept += hi - lo
                self.fetches += int(np.count_nonzero(out[2] == EXEC))
                yield out
            if self.limit is not None and self.kept >= self.limit:
                self.cut = True
                return

    def _whole(self) -> bool:
        return not self.skip and not self.cut and bool(self.summary)

    def instrs(self) -> int:
        return self.summary if self._whole() else self.fetches

    def basis(self) -> str:
        return ("valgrind guest instrs" if self._whole() else
                "lackey instruction fetches of the window kept (one I line per guest "
                "instruction)")


def lackey_chunks(blocks, path: str, va_bits: int, count: list):
    """Parsed lackey blocks; adds valgrind's guest instruction counts to count[0]."""
    w = LackeyWindow()
    for c in w.chunks(blocks, path, va_bits):
        count[0] = w.instrs()
        yield c
    count[0] = w.instrs()


def convert_file(path: str, out: Path, fmt: str | None = None, limit: int | None = None,
                 skip: int = 0, progress=None, **profile_knobs) -> Path:
    """`ptwbench convert`: a lackey, CSV, NPZ or compact file -> trace directory, or -> a
    compact file when `out` ends with .ptwc (workloads/compact.py).  `skip`: leave out the
    first accesses (lackey only: a program's start-up)."""
    from .compact import is_compact, read_meta, write_compact
    from .importers import CHUNK_BYTES, FORMATS, _blocks, detect_format, iter_trace
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r} (one of {', '.join(FORMATS)})")
    if skip and fmt != "lackey":
        raise TraceError(f"{path}: --skip applies to lackey text only")
    va_bits = make_profile(profile_knobs, "convert").va_bits
    instrs = lambda: None                           # noqa: E731
    src = dict(source="file", path=str(path), format=fmt, limit=limit, skip=skip)
    if fmt == "lackey":
        if not os.path.isfile(path):
            raise TraceError(f"{path}: no such file")
        win = LackeyWindow(skip, limit)
        chunks = win.chunks(_blocks(path, 4 * CHUNK_BYTES), path, va_bits)
        instrs, limit = (lambda: win), None         # the window applies the limit
    else:
        chunks = iter_trace(path, fmt, va_bits)
    if fmt == "compact":                            # the recording it was made from
        m = read_meta(path)
        src.update(compact_source={k: m.get(k) for k in ("source", "command", "path",
                                                         "recipe") if m.get(k) is not None})
        if m.get("guest_instrs") and not limit:
            instrs = lambda: (m["guest_instrs"],    # noqa: E731
                              m["time_per_access"]["basis"].split(" x ")[0])
    if is_compact(out):
        if profile_knobs:
            raise TraceError(f"{out}: the compact form is laid out when run; profile knobs "
                             f"({', '.join(sorted(profile_knobs))}) apply there")
        chunks = counted(chunks, progress("read") if progress else None)
        return write_compact(chunks, Path(out), source=src, limit=limit, instrs=instrs)
    return convert(chunks, out, name=Path(out).name, source=src, limit=limit,
                   instrs=instrs, progress=progress, **profile_knobs)
