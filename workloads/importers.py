"""Trace import, streamed: valgrind lackey output, CSV and NPZ, into a Workload.

Formats
-------
* lackey (`valgrind --tool=lackey --trace-mem=yes [--log-file=F] PROG`): one access per line,
  `I  ADDR,SIZE` (instruction fetch -> exec), ` L ADDR,SIZE` (load -> read64),
  ` S ADDR,SIZE` (store -> write64), ` M ADDR,SIZE` (modify: read64 then write64); ADDR is
  hexadecimal without 0x, SIZE decimal.  Valgrind's own lines (starting with `==`) and blank
  lines are skipped.  vCPU 0.  SIZE is checked but not used: an access that crosses a page
  boundary counts for its first page only.
* CSV: a header line `vcpu,va,kind`, then one access per line: vcpu decimal (0..65535),
  va decimal or 0x-hexadecimal, kind one of model.scenario.ACCESS_KINDS.  Blank lines are
  skipped; spaces around fields are allowed.
* NPZ (numpy.savez / savez_compressed): 1-D arrays `vcpu`, `va`, `kind` of equal length,
  integer dtypes, kind as codes (index into model.trace.KINDS).  Read member by member in
  chunks straight from the zip file (np.lib.format), never whole.
* compact (`.ptwc`, workloads/compact.py): runs of (vcpu, 4 KiB page, kind) with counts,
  LZMA-compressed; expanded run by run (VA = page << 12).

Every format is read in chunks of at most ~256 KiB of text (or 2^20 records) into numpy arrays,
so a 10^8-line input is never held as text or Python objects; the parsed trace itself is
numpy columns (11 bytes an access).  The lackey parser is vectorised (no Python per line).

Errors: `TraceError("{path}:{line}: {what}")` for the first bad line (NPZ: record number,
1-based), `TraceError("{path}: {what}")` when no line is to blame (unreadable, not a zip, a
missing array, no access at all).  VAs must lie below 2^va_bits (a TTBR0 address).

Layout (`import_trace`): the `linux` guest profile maps every touched page in first-touch
order (demand paging by default).  Pages that are ever fetched from form text VMAs (private
file, executable, fault-around), the others anonymous memory; touched pages of one kind less
than a fault-around window apart share a VMA.
"""
from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from typing import Iterator

import numpy as np

from model.scenario import ACCESS_KINDS
from model.trace import EXEC, KIND_CODE, KINDS, READ64, WRITE64

from .base import Workload, WorkloadError
from .linux import LinuxGuest, make_profile

# what reading a damaged zip member raises (deflate, LZMA, a cut file)
DAMAGED = (zipfile.BadZipFile, OSError, zlib.error, lzma.LZMAError, EOFError)

FORMATS = ("lackey", "csv", "npz", "compact")
CHUNK_BYTES = 1 << 18
CHUNK_RECORDS = 1 << 20


class TraceError(WorkloadError):
    """Malformed trace input: one line naming the file and the line."""


def detect_format(path: str) -> str:
    low = str(path).lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith(".npz"):
        return "npz"
    if low.endswith(".ptwc"):
        return "compact"
    return "lackey"


def _open(path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None


def _blocks(path: str, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Whole lines, in blocks of about chunk_bytes; yields (block, lines before it)."""
    with _open(path) as f:
        yield from blocks_of(f, path, chunk_bytes)


def blocks_of(f, path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
    """`_blocks` over an open binary file or pipe (`path` names it in errors)."""
    rest = b""
    line0 = 0
    while True:
        try:
            data = f.read(chunk_bytes)
        except OSError as e:
            raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
        if not data:
            if rest:
                yield rest + b"\n", line0
            return
        data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        block, rest = data[:cut + 1], data[cut + 1:]
        yield block, line0
        line0 += block.count(b"\n")


# ---- lackey -----------------------------------------------------------------------------
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[list(b"0123456789")] = True
_LACKEY_KIND = {ord("I"): EXEC, ord("L"): READ64, ord("S"): WRITE64, ord("M"): READ64}


_KIND_LUT = np.zeros(256, dtype=np.uint8)
for _c, _k in _LACKEY_KIND.items():
    _KIND_LUT[_c] = _k


def _expand_modify(va: np.ndarray, kind: np.ndarray, m: np.ndarray):
    """(vcpu, va, kind) columns of a lackey block: an M line (modify) is a load, then a
    store to the same address."""
    if m.any():
        rep = np.where(m, 2, 1)
        va = np.repeat(va, rep)
        kind = np.repeat(kind, rep)
        second = np.cumsum(rep) - 1
        kind[second[m]] = WRITE64
    return np.zeros(len(va), dtype=np.uint16), va, kind


def _lackey_block(block: bytes, line0: int, path: str, va_bits: int):
    """One block of whole lackey lines -> (vcpu, va, kind).  The common block (no valgrind
    line, one comma a line, sizes of one or two digits) takes the fast path; any other block,
    and every block with an error, the checking path (`_lackey_block_checked`), which gives
    the same result or names the first bad line."""
    out = _lackey_fast(block, va_bits)
    return out if out is not None else _lackey_block_checked(block, line0, path, va_bits)


_HEXCOMMANL = b"0123456789abcdefABCDEF,\n"
_LO4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_B6 = np.uint64(0x0101010101010101)
_M16 = np.uint64(0x000F000F000F000F)
_M32 = np.uint64(0x000000FF000000FF)
_U = {k: np.uint64(k) for k in (4, 6, 8, 9, 16, 32, 0xFFFF)}


def _hex8(x: np.ndarray) -> np.ndarray:
    """8 ASCII hex digits per uint64 (first digit in the lowest byte) -> their value
    (SWAR: each byte's nibble, then pairs, quads, the two halves)."""
    u = _U
    x = (x & _LO4) + u[9] * ((x >> u[6]) & _B6)           # '0'-'9' -> 0-9, a-f/A-F -> 10-15
    x = ((x & _M16) << u[4]) | ((x >> u[8]) & _M16)        # 16-bit lanes: two digits
    x = ((x & _M32) << u[8]) | ((x >> u[16]) & _M32)       # 32-bit lanes: four digits
    return ((x & u[0xFFFF]) << u[16]) | ((x >> u[32]) & u[0xFFFF])


def _lackey_fast(block: bytes, va_bits: int):
    """The common block, or None.  Checks: one comma a line; deleting the hex digits, commas
    and newlines leaves exactly 3 characters a line and they are each line's first three, an
    `I  ` or ` L|S|M ` prefix (so the address and the size hold hex digits only); 1..16
    address digits, then 1..2 decimal digits."""
    if not block:
        return None
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(a == 10)
    commas = np.flatnonzero(a == 44)
    n = len(ends)
    rest = block.translate(None, _HEXCOMMANL)
    if n == 0 or len(commas) != n or ends[-1] != len(a) - 1 or len(rest) != 3 * n:
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    hexlen = commas - starts - 3
    sizelen = ends - commas - 1
    if (hexlen.min() < 1 or hexlen.max() > 16 or sizelen.min() < 1 or sizelen.max() > 2):
        return None
    pre = np.frombuffer(rest, dtype=np.uint8).reshape(n, 3)
    c0, c1, c2 = pre[:, 0], pre[:, 1], pre[:, 2]
    fetch = c0 == 73                                    # "I  "
    if not ((np.where(fetch, c1 == 32, (c0 == 32) & ((c1 == 76) | (c1 == 83) | (c1 == 77)))
             & (c2 == 32)).all()
            and (a[starts] == c0).all() and (a[starts + 1] == c1).all()
            and (a[starts + 2] == c2).all()):
        return None
    t = np.where(fetch, c0, c1)
    if ((a[commas + 1] - np.uint8(48)) > 9).any():
        return None
    two = np.flatnonzero(sizelen == 2)
    if len(two) and ((a[commas[two] + 2] - np.uint8(48)) > 9).any():
        return None
    # addresses: the 16 bytes before each comma as two uint64 (whatever precedes a short
    # address decodes to high digits that the masks remove)
    buf = np.zeros(len(a) + 16, dtype=np.uint8)
    buf[16:] = a
    win = np.lib.stride_tricks.as_strided(buf, shape=(len(a) + 1, 16), strides=(1, 1))
    w = win[commas].view(np.uint64)                    # row r: a[r - 16:r]
    four = np.uint64(4)
    va = _hex8(w[:, 1])
    if hexlen.min() < 8:
        va &= (np.uint64(1) << four * np.minimum(hexlen, 8).astype(np.uint64)) - np.uint64(1)
    if hexlen.max() > 8:
        hi = np.flatnonzero(hexlen > 8)
        top = _hex8(w[hi, 0])
        top &= np.where(hexlen[hi] >= 16, np.uint64(0xFFFFFFFF),
                        (np.uint64(1) << four * (hexlen[hi] - 8).astype(np.uint64))
                        - np.uint64(1))
        va[hi] |= top << _U[32]
    if va_bits < 64 and int(va.max()) >> va_bits:
        return None
    return _expand_modify(va, _KIND_LUT[t], t == 77)


def _lackey_block_checked(block: bytes, line0: int, path: str, va_bits: int):
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(a == 10)                       # every line ends with \n
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts
    pad = np.concatenate([a, np.zeros(24, dtype=np.uint8)])
    c0, c1, c2 = pad[starts], pad[starts + 1], pad[starts + 2]
    fetch = (c0 == ord("I")) & (c1 == 32) & (c2 == 32)
    data = (c0 == 32) & ((c1 == ord("L")) | (c1 == ord("S")) | (c1 == ord("M"))) & (c2 == 32)
    cand = (fetch | data) & (length >= 6)
    commas = np.flatnonzero(a == 44)
    if len(commas):
        ci = np.minimum(np.searchsorted(commas, starts + 3), len(commas) - 1)
        comma = commas[ci]
        comma = np.where((comma >= starts + 3) & (comma < ends), comma, ends)
    else:
        comma = ends.copy()
    hexlen = comma - (starts + 3)
    ok = cand & (hexlen >= 1) & (hexlen <= 16) & (comma < ends - 1)
    # address: up to 16 hex digits right-aligned before the comma, one column at a time
    # (1-D temporaries only: memory stays proportional to the block)
    # (grouped by digit count, a handful per trace: Horner's rule on each group's rows)
    va = np.zeros(len(starts), dtype=np.uint64)
    hexok = np.zeros(len(starts), dtype=bool)
    first = starts + 3
    for width in np.unique(hexlen[ok]).tolist():
        sel = np.flatnonzero(ok & (hexlen == width))
        v = np.zeros(len(sel), dtype=np.uint64)
        good = np.ones(len(sel), dtype=bool)
        f0 = first[sel]
        for j in range(width):
            d = _HEX[pad[f0 + j]]
            good &= d != 255
            v = (v << np.uint64(4)) | d.astype(np.uint64)
        va[sel] = np.where(good, v, 0)
        hexok[sel] = good
    ok &= hexok
    # size: 1..8 decimal digits after the comma, to the end of the line
    sizelen = ends - comma - 1
    ok &= (sizelen >= 1) & (sizelen <= 8)
    for k in range(8):
        pos = comma + 1 + k
        ok &= (pos >= ends) | _DIGIT[pad[np.minimum(pos, len(pad) - 1)]]
    beyond = va >= np.uint64(1 << va_bits) if va_bits < 64 else np.zeros(len(va), bool)
    ok &= ~beyond
    skip = ~ok & ((length == 0) | ((c0 == ord("=")) & (c1 == ord("="))))
    if not np.all(ok | skip):
        bad = int(np.flatnonzero(~(ok | skip))[0])
        text = bytes(a[starts[bad]:ends[bad]]).decode("utf-8", "replace")
        what = "not a lackey line (want 'I  ADDR,SIZE' or ' L|S|M ADDR,SIZE')"
        if beyond[bad] and cand[bad] and hexok[bad] and 1 <= hexlen[bad] <= 16:
            what = f"address beyond va_bits = {va_bits}"
        raise TraceError(f"{path}:{line0 + bad + 1}: {what}: {text[:60]!r}")
    t = np.where(fetch, c0, c1)[ok]
    va = va[ok]
    m = t == ord("M")
    kind = np.zeros(len(t), dtype=np.uint8)
    for ch, code in _LACKEY_KIND.items():
        kind[t == ch] = code
    return _expand_modify(va, kind, m)


def iter_lackey(path: str, va_bits: int = 48, chunk_bytes: int = CHUNK_BYTES):
    for block, line0 in _blocks(path, chunk_bytes):
        out = _lackey_block(block, line0, path, va_bits)
        if len(out[1]):
            yield out


# ---- CSV ---------------------------------------------------------------------------------
def iter_csv(path: str, va_bits: int = 48, chunk_bytes: int = CHUNK_BYTES):
    first = True
    top = 1 << va_bits
    for block, line0 in _blocks(path, chunk_bytes):
        lines = block.split(b"\n")[:-1]
        vc, va, kd = [], [], []
        for n, raw in enumerate(lines, line0 + 1):
            line = raw.strip()
            if first:
                first = False
                if [f.strip() for f in line.split(b",")] != [b"vcpu", b"va", b"kind"]:
                    raise TraceError(f"{path}:{n}: the header must be 'vcpu,va,kind'")
                continue
            if not line:
                continue
            f = line.split(b",")
            if len(f) != 3:
                raise TraceError(f"{path}:{n}: {len(f)} fields, want 3 (vcpu,va,kind)")
            try:
                v = int(f[0].strip(), 10)
            except ValueError:
                raise TraceError(f"{path}:{n}: vcpu {f[0].strip().decode(errors='replace')!r}"
                                 f" is not a decimal integer") from None
            s = f[1].strip()
            try:
                x = int(s[2:], 16) if s[:2] in (b"0x", b"0X") else int(s, 10)
                if s[2:3] in (b"+", b"-", b"_") or b"_" in s:
                    raise ValueError
            except ValueError:
                raise TraceError(f"{path}:{n}: va {s.decode(errors='replace')!r} is not a "
                                 f"decimal or 0x-hexadecimal integer") from None
            k = KIND_CODE.get(f[2].strip().decode(errors="replace"))
            if k is None:
                raise TraceError(f"{path}:{n}: kind {f[2].strip().decode(errors='replace')!r}"
                                 f" is not one of {', '.join(ACCESS_KINDS)}")
            if not 0 <= v <= 0xFFFF:
                raise TraceError(f"{path}:{n}: vcpu {v} is outside 0..65535")
            if not 0 <= x < top:
                raise TraceError(f"{path}:{n}: va {x:#x} is outside 0..2^{va_bits}")
            vc.append(v)
            va.append(x)
            kd.append(k)
        if first and not lines:
            continue
        if va:
            yield (np.array(vc, dtype=np.uint16), np.array(va, dtype=np.uint64),
                   np.array(kd, dtype=np.uint8))
    if first:
        raise TraceError(f"{path}: empty file (no 'vcpu,va,kind' header)")


# ---- NPZ ---------------------------------------------------------------------------------
def npy_member(path, zf: zipfile.ZipFile, name: str, what: str, want: str):
    """Open the .npy member `name` of a zip (an .npz, a compact trace) and read its header:
    (file positioned at the data, shape, fortran order, dtype).  `what` names the member in
    messages ("array", "column"), `want` lists the members expected."""
    try:
        f = zf.open(name + ".npy")
    except KeyError:
        raise TraceError(f"{path}: no {what} {name!r} (want {want})") from None
    try:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0,
                       (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(f)
    except (ValueError, *DAMAGED) as e:
        raise TraceError(f"{path}: {what} {name!r}: not a .npy array ({e})") from None
    return f, shape, fortran, dtype


def _npz_member(path, zf: zipfile.ZipFile, name: str):
    f, shape, fortran, dtype = npy_member(path, zf, name, "array", "vcpu, va, kind")
    if len(shape) != 1 or dtype.kind not in "iu" or dtype.hasobject or (
            fortran and len(shape) > 1):
        raise TraceError(f"{path}: array {name!r} must be 1-D of integers, "
                         f"is {dtype} of shape {shape}")
    return f, shape[0], dtype


def iter_npz(path: str, va_bits: int = 48, chunk: int = CHUNK_RECORDS):
    try:
        zf = zipfile.ZipFile(_open(path))
    except zipfile.BadZipFile:
        raise TraceError(f"{path}: not an NPZ (zip) file") from None
    with zf:
        members = {n: _npz_member(path, zf, n) for n in ("vcpu", "va", "kind")}
        lengths = {n: m[1] for n, m in members.items()}
        if len(set(lengths.values())) != 1:
            raise TraceError(f"{path}: arrays differ in length: "
                             + ", ".join(f"{n} {v}" for n, v in lengths.items()))
        total = lengths["va"]
        limits = {"vcpu": (0, 0xFFFF), "va": (0, (1 << va_bits) - 1),
                  "kind": (0, len(KINDS) - 1)}
        done = 0
        while done < total:
            n = min(chunk, total - done)
            cols = {}
            for name, (f, _len, dtype) in members.items():
                try:
                    buf = f.read(n * dtype.itemsize)
                except DAMAGED as e:    # damaged member
                    raise TraceError(f"{path}: array {name!r} is damaged ({e})") from None
                if len(buf) != n * dtype.itemsize:
                    raise TraceError(f"{path}:{done + len(buf) // dtype.itemsize + 1}: array "
                                     f"{name!r} is truncated")
                col = np.frombuffer(buf, dtype=dtype)
                lo, hi = limits[name]
                badm = (col < lo) | (col > hi) if dtype.kind == "i" else col > hi
                if np.any(badm):
                    i = int(np.flatnonzero(badm)[0])
                    raise TraceError(f"{path}:{done + i + 1}: {name} {int(col[i])} is outside "
                                     f"{lo}..{hi}")
                cols[name] = col
            done += n
            yield (cols["vcpu"].astype(np.uint16), cols["va"].astype(np.uint64),
                   cols["kind"].astype(np.uint8))


def iter_trace(path: str, fmt: str | None = None, va_bits: int = 48):
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r} (one of {', '.join(FORMATS)})")
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file")
    if fmt == "compact":                            # the compact form (workloads/compact.py)
        from .compact import iter_compact
        return iter_compact(path, va_bits)
    return {"lackey": iter_lackey, "csv": iter_csv, "npz": iter_npz}[fmt](path, va_bits)


def read_trace(path: str, fmt: str | None = None, va_bits: int = 48, limit: int | None = None):
    """Every access of the file as (vcpu, va, kind) numpy arrays, validated; at most `limit`
    accesses (the rest of the file is still checked unless limit is reached)."""
    vc, va, kd = [], [], []
    n = 0
    for c in iter_trace(path, fmt, va_bits):
        if limit is not None and n + len(c[1]) >= limit:
            c = tuple(x[:limit - n] for x in c)
            vc.append(c[0]), va.append(c[1]), kd.append(c[2])
            n = limit
            break
        vc.append(c[0]), va.append(c[1]), kd.append(c[2])
        n += len(c[1])
    if n == 0:
        raise TraceError(f"{path}: no accesses")
    return np.concatenate(vc), np.concatenate(va), np.concatenate(kd)


def layout_vmas(pages: np.ndarray, exec_pages: np.ndarray, window: int):
    """VMAs for imported pages (sorted unique `pages`, of which `exec_pages` are fetched
    from): [(first page, pages, 'text'|'anon')], see the module docstring."""
    text = np.zeros(len(pages), dtype=bool)
    text[np.searchsorted(pages, exec_pages)] = True
    vmas = []
    u, t = pages.tolist(), text.tolist()
    i = 0
    while i < len(u):
        j = i
        while j + 1 < len(u) and t[j + 1] == t[i] and u[j + 1] - u[j] <= window:
            j += 1
        vmas.append((u[i], u[j] - u[i] + 1, "text" if t[i] else "anon"))
        i = j + 1
    return vmas


def import_trace(path: str, fmt: str | None = None, *, limit: int | None = None,
                 name: str | None = None, **profile_knobs) -> Workload:
    """Read a trace file and lay it out with the `linux` guest profile.  The parsed chunks
    are kept as they come (no concatenated copy); the touched and fetched page sets are
    accumulated on the way for the VMA layout."""
    profile = make_profile(profile_knobs, "import")
    geo = profile.geometry
    shift = np.uint64(geo.granule_shift)
    chunks = []
    pages = exec_pages = np.zeros(0, dtype=np.uint64)
    n = 0
    for c in iter_trace(path, fmt, profile.va_bits):
        if limit is not None and n + len(c[1]) >= limit:
            c = tuple(x[:limit - n] for x in c)
        chunks.append(c)
        n += len(c[1])
        p = c[1] >> shift
        pages = np.union1d(pages, p)
        exec_pages = np.union1d(exec_pages, p[c[2] == EXEC])
        if limit is not None and n >= limit:
            break
    if n == 0:
        raise TraceError(f"{path}: no accesses")
    name = name or f"import:{os.path.basename(str(path))}"
    g = LinuxGuest(name, profile)
    window = max(1, profile.fault_around_bytes // geo.granule)
    for first, npages, kind in layout_vmas(pages, exec_pages, window):
        g.vma(first << geo.granule_shift, npages << geo.granule_shift, kind)
    for c in chunks:
        g.run(*c)
    del chunks
    g.meta = dict(generator="import", path=str(path), format=fmt or detect_format(path),
                  limit=limit, accesses_read=n)
    return g.build()
