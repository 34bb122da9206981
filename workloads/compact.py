"""The compact trace form (issue 13, item 4): a real trace at a size that can be shipped.

What the form keeps and drops (docs/real-programs.md has the argument in full):

* **Offsets within a 4 KiB page are dropped**: an access is kept as its vCPU, its 4 KiB VA
  page and its kind.  Nothing in the model reads the low 12 bits of a VA: the guest layout
  (workloads/linux.py, importers.layout_vmas) works on pages, the engine's trace preparation
  keys everything by `va >> 12` (model/engine_state.py TracePrep), the reference keys its TLB
  by the granule page and takes stage 2 at the 4 KiB page of the output address
  (model/reference.py Vm._attempt: `page = oa & ~(HOST_PAGE - 1)`), and every metric counts
  pages or accesses.  Loading gives each access the VA `page << 12`.
* **Runs are run-length coded**: consecutive accesses with the same (vCPU, page, kind) are
  one record with a count.  This is lossless given the line above: expanding the runs gives
  the original access sequence, so every position (the clock: guest_seconds, where timed host
  events land, aging periods) is the original's.
* Then the columns are stored as .npy members of a zip file compressed with LZMA (stdlib
  `zipfile.ZIP_LZMA`; `numpy.load` opens it): `vcpu` uint16, `page_delta` int64 (page minus
  the previous record's page: small numbers that compress well), `kind` uint8 (codes of
  model.trace.KINDS), `count` uint32; and `meta.json` (format, version, accesses, runs, the
  recording's guest instruction count, its source and recipe).

So a compact file *is* the original trace up to page offsets: `compact:FILE`, `import:FILE`,
and `convert FILE` -> `trace:DIR` all lay it out and run it as they would the original.

Runs are expanded when read: the engine runs the original sequence (less the offsets).
Running each run once instead (the repeats would be TLB hits finding their needs met) was
measured and not worth its proof: the engine's vectorised path already settles such repeats
in bulk (a 4.7 M-access recording of `ls`: 0.88 s whole, 0.83 s with its 1.7 M repeats
dropped).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from model.trace import KINDS

from .importers import DAMAGED, TraceError, npy_member

FORMAT = "ptwbench-compact"
VERSION = 1
SUFFIX = ".ptwc"
PAGE_SHIFT = 12
U_SHIFT = np.uint64(PAGE_SHIFT)
COLUMNS = {"vcpu": np.dtype(np.uint16), "page_delta": np.dtype(np.int64),
           "kind": np.dtype(np.uint8), "count": np.dtype(np.uint32)}
MAX_COUNT = (1 << 32) - 1
READ_RUNS = 1 << 18                      # records read at a time
EXPAND_MAX = 1 << 22                     # accesses expanded at a time
COPY_BYTES = 1 << 24


def is_compact(path) -> bool:
    return str(path).lower().endswith(SUFFIX)


# ---- run-length coding --------------------------------------------------------------------
def runs_of(vc: np.ndarray, page: np.ndarray, kd: np.ndarray):
    """Starts and lengths of the runs of equal (vcpu, page, kind) in one chunk."""
    n = len(page)
    brk = np.ones(n, dtype=bool)
    if n > 1:
        brk[1:] = (page[1:] != page[:-1]) | (kd[1:] != kd[:-1]) | (vc[1:] != vc[:-1])
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


class RunWriter:
    """Accesses in, runs out to spool files (bounded memory), then the zip file."""

    def __init__(self, spool: Path):
        self.spool = Path(spool)
        self.files = {n: open(self.spool / n, "wb") for n in COLUMNS}
        self.carry = None                # (vcpu, page, kind, count) of the open run
        self.last_page = 0               # page of the last record written
        self.runs = 0
        self.accesses = 0

    def add(self, vc, va, kd) -> None:
        n = len(va)
        if n == 0:
            return
        self.accesses += n
        vc = np.asarray(vc, dtype=np.uint16)
        kd = np.asarray(kd, dtype=np.uint8)
        page = (np.asarray(va, dtype=np.uint64) >> U_SHIFT).astype(np.int64)
        starts, lengths = runs_of(vc, page, kd)
        rv, rp, rk = vc[starts], page[starts], kd[starts]
        rc = lengths.astype(np.int64)
        if self.carry is not None:
            cv, cp, ck, cc = self.carry
            if rv[0] == cv and rp[0] == cp and rk[0] == ck:
                rc[0] += cc
            else:
                rv = np.concatenate([[cv], rv]).astype(np.uint16)
                rp = np.concatenate([[cp], rp]).astype(np.int64)
                rk = np.concatenate([[ck], rk]).astype(np.uint8)
                rc = np.concatenate([[cc], rc])
        self.carry = (rv[-1], rp[-1], rk[-1], int(rc[-1]))
        self._write(rv[:-1], rp[:-1], rk[:-1], rc[:-1])

    def _write(self, rv, rp, rk, rc) -> None:
        if len(rc) == 0:
            return
        if rc.max() > MAX_COUNT:          # a run longer than uint32: several records
            reps = -(-rc // MAX_COUNT)
            idx = np.repeat(np.arange(len(rc)), reps)
            first = np.ones(len(idx), dtype=bool)
            first[1:] = idx[1:] != idx[:-1]
            k = np.arange(len(idx)) - np.flatnonzero(first).repeat(reps)
            cnt = np.minimum(MAX_COUNT, rc[idx] - k * MAX_COUNT)
            rv, rp, rk, rc = rv[idx], rp[idx], rk[idx], cnt
        delta = np.diff(rp, prepend=np.int64(self.last_page))
        self.last_page = int(rp[-1])
        for name, col in (("vcpu", rv), ("page_delta", delta), ("kind", rk), ("count", rc)):
            np.ascontiguousarray(col, dtype=COLUMNS[name]).tofile(self.files[name])
        self.runs += len(rc)

    def close(self) -> None:
        if self.carry is not None:
            cv, cp, ck, cc = self.carry
            self._write(np.array([cv], np.uint16), np.array([cp], np.int64),
                        np.array([ck], np.uint8), np.array([cc], np.int64))
            self.carry = None
        for f in self.files.values():
            f.close()

    def write_zip(self, out: Path, meta: dict) -> None:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as zf:
            for name, dt in COLUMNS.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as m:
                    np.lib.format.write_array_header_1_0(
                        m, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
                            "shape": (self.runs,)})
                    with open(self.spool / name, "rb") as f:
                        shutil.copyfileobj(f, m, COPY_BYTES)
            info = zipfile.ZipInfo("meta.json", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA            # a fixed date: same input, same file
            zf.writestr(info, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def write_compact(chunks, out: Path, *, source: dict, limit: int | None = None,
                  instrs=lambda: None) -> Path:
    """Accesses (chunks of (vcpu, va, kind)) -> compact file `out` (written under a
    temporary name, then renamed; nothing is left behind on failure)."""
    from .trace_dir import time_per_access
    out = Path(out)
    if out.exists():
        raise TraceError(f"{out}: already exists (choose another --out)")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=parent))
    try:
        w = RunWriter(tmp)
        try:
            for c in chunks:
                if limit is not None and w.accesses + len(c[1]) >= limit:
                    c = tuple(x[:limit - w.accesses] for x in c)
                w.add(*c)
                if limit is not None and w.accesses >= limit:
                    break
        finally:
            w.close()
        if w.accesses == 0:
            raise TraceError(f"{source.get('path', out.name)}: no accesses")
        tpa = time_per_access(instrs(), w.accesses)
        meta = dict(source, format=FORMAT, version=VERSION, accesses=w.accesses, runs=w.runs,
                    page_shift=PAGE_SHIFT, guest_instrs=tpa.get("guest_instrs"),
                    time_per_access=tpa)
        part = tmp / "out.ptwc"
        w.write_zip(part, meta)
        os.chmod(part, 0o644)
        os.replace(part, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- reading ------------------------------------------------------------------------------
def _zip(path):
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TraceError(f"{path}: not a compact trace (zip) file: {e}") from None


def read_meta(path) -> dict:
    """The meta.json of a compact file, checked (format, version, counts)."""
    with _zip(path) as zf:
        return _meta(path, zf)


def _meta(path, zf) -> dict:
    try:
        meta = json.loads(zf.read("meta.json"))
    except KeyError:
        raise TraceError(f"{path}: no meta.json (not a compact trace)") from None
    except (ValueError, *DAMAGED) as e:
        raise TraceError(f"{path}: meta.json is damaged ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceError(f"{path}: meta.json: format is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise TraceError(f"{path}: meta.json: version {meta.get('version')!r}, this "
                         f"ptwbench reads version {VERSION}")
    for k in ("accesses", "runs"):
        if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool) or meta[k] < 0:
            raise TraceError(f"{path}: meta.json: {k} {meta.get(k)!r} is not a count")
    return meta


def _member(path, zf, name: str, runs: int):
    f, shape, fortran, dtype = npy_member(path, zf, name, "column", ", ".join(COLUMNS))
    if dtype != COLUMNS[name] or len(shape) != 1 or fortran:
        raise TraceError(f"{path}: column {name!r} is {dtype} of shape {shape}, want 1-D "
                         f"{COLUMNS[name]}")
    if shape[0] != runs:
        raise TraceError(f"{path}: column {name!r} has {shape[0]} records, meta.json says "
                         f"{runs} (mismatched column lengths)")
    return f


def iter_runs(path, va_bits: int = 48, block: int = READ_RUNS):
    """The file's records, checked, in blocks: (vcpu, page, kind, count) arrays."""
    top = 1 << (va_bits - PAGE_SHIFT)
    with _zip(path) as zf:
        meta = _meta(path, zf)
        runs = meta["runs"]
        members = {n: _member(path, zf, n, runs) for n in COLUMNS}
        done, page, total = 0, 0, 0
        while done < runs:
            n = min(block, runs - done)
            cols = {}
            for name, f in members.items():
                size = n * COLUMNS[name].itemsize
                try:
                    buf = f.read(size)
                except DAMAGED as e:
                    raise TraceError(f"{path}: column {name!r} is damaged ({e})") from None
                if len(buf) != size:
                    raise TraceError(f"{path}: column {name!r} is truncated at record "
                                     f"{done + len(buf) // COLUMNS[name].itemsize + 1}")
                cols[name] = np.frombuffer(buf, dtype=COLUMNS[name])
            pages = np.cumsum(cols["page_delta"]) + page
            bad = (pages < 0) | (pages >= top)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TraceError(f"{path}: record {done + i + 1}: page {int(pages[i]):#x} is "
                                 f"outside 0..2^{va_bits - PAGE_SHIFT}")
            bad = cols["kind"] >= len(KINDS)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TraceError(f"{path}: record {done + i + 1}: kind code "
                                 f"{int(cols['kind'][i])} is not in 0..{len(KINDS) - 1}")
            if (cols["count"] == 0).any():
                i = int(np.flatnonzero(cols["count"] == 0)[0])
                raise TraceError(f"{path}: record {done + i + 1}: count 0")
            page = int(pages[-1])
            total += int(cols["count"].sum(dtype=np.int64))
            done += n
            yield cols["vcpu"], pages.astype(np.uint64), cols["kind"], cols["count"]
        if total != meta["accesses"]:
            raise TraceError(f"{path}: the records hold {total} accesses, meta.json says "
                             f"{meta['accesses']} (truncated or damaged)")


def expand(vc, page, kd, count, limit: int = EXPAND_MAX):
    """Runs -> accesses (VA = page << 12), in pieces of at most about `limit` accesses (a
    longer single run is cut)."""
    count = count.astype(np.int64)
    ends = np.cumsum(count)
    lo, base = 0, 0
    while lo < len(count):
        hi = int(np.searchsorted(ends, base + limit, side="right"))
        if hi == lo:                                 # one run longer than limit
            c = int(ends[lo] - base)
            take = min(c, limit)
            yield (np.full(take, vc[lo], np.uint16), np.full(take, page[lo] << U_SHIFT,
                                                             np.uint64),
                   np.full(take, kd[lo], np.uint8))
            base += take
            if base == int(ends[lo]):
                lo += 1
            continue
        c = count[lo:hi].copy()
        c[0] = ends[lo] - base
        yield (np.repeat(vc[lo:hi], c), np.repeat(page[lo:hi] << U_SHIFT, c),
               np.repeat(kd[lo:hi], c))
        base = int(ends[hi - 1])
        lo = hi


def iter_compact(path, va_bits: int = 48):
    """The accesses of a compact file, expanded, in chunks (importers.iter_trace's form)."""
    for vc, pg, kd, cnt in iter_runs(path, va_bits):
        yield from expand(vc, pg, kd, cnt)
