"""`ptwbench record` and `ptwbench convert` (issue 13): real programs into trace directories
(workloads/trace_dir.py), run with `ptwbench run trace:DIR`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli_runs import RunInputError, _kv
from .errors import nonneg_int

VALGRIND = ("valgrind", "--tool=lackey", "--trace-mem=yes", "--trace-children=yes")


def _profile(args) -> dict:
    return _kv(args.knob or [], "--knob")


def _check_out(out: Path) -> None:
    """The output's folder must be writable and its name usable, before any work."""
    from .runner import OutputError, check_out_root
    try:
        check_out_root(out.parent if str(out.parent) else Path("."), "--out")
        check_out_root(out, "--out")
    except OutputError as e:
        raise RunInputError(str(e)) from None


def cmd_convert(args) -> int:
    from workloads.base import WorkloadError
    from workloads.trace_dir import convert_file
    _check_out(Path(args.out))
    phases = _Phases("convert")
    try:
        d = convert_file(args.trace, Path(args.out), args.format, args.limit or None,
                         args.skip, progress=phases, **_profile(args))
    except WorkloadError as e:
        raise RunInputError(str(e)) from None
    finally:
        phases.close()
    print(f"{_what(d)}: {d}", file=sys.stderr)
    return 0


class _Phases:
    """Progress of convert/record, one bar (or line) per pass (bench/progress.py)."""

    def __init__(self, what: str):
        self.what, self.bar = what, None

    def __call__(self, phase: str):
        from .progress import Progress
        self.close()
        self.bar = Progress(None, f"{self.what}: {phase}", "accesses")
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _what(out) -> str:
    from workloads.compact import is_compact
    return "compact trace" if is_compact(out) else "trace directory"


class _Tee:
    """Blocks of the pipe, also written to FILE (under a temporary name until the end)."""

    def __init__(self, path: str | None):
        self.path = path
        self.f = None
        if path:
            fd, self.tmp = tempfile.mkstemp(prefix=Path(path).name + ".tmp-",
                                            dir=Path(path).parent or ".")
            self.f = os.fdopen(fd, "wb")

    def wrap(self, blocks):
        for b, line0 in blocks:
            if self.f:
                self.f.write(b)
            yield b, line0

    def done(self, ok: bool) -> None:
        if self.f:
            self.f.close()
            if ok:
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.path)
            else:
                os.unlink(self.tmp)


def _check_record(args, prog):
    """(profile knobs, VA bits, output path), checked before valgrind starts."""
    from workloads.base import WorkloadError
    from workloads.linux import make_profile
    if shutil.which("valgrind") is None:
        raise RunInputError("record: valgrind is not installed (Debian/Ubuntu: "
                            "apt-get install valgrind)")
    if shutil.which(prog[0]) is None:
        raise RunInputError(f"record: {prog[0]}: no such program")
    knobs = _profile(args)
    try:
        va_bits = make_profile(knobs, "record").va_bits
    except WorkloadError as e:
        raise RunInputError(str(e)) from None
    out = Path(args.out or f"trace-{Path(prog[0]).name}")
    if out.exists():
        raise RunInputError(f"{out}: already exists (choose another --out)")
    _check_out(out)
    return knobs, va_bits, out


def cmd_record(args) -> int:
    from workloads.base import WorkloadError
    from workloads.importers import CHUNK_BYTES, blocks_of
    from workloads.compact import is_compact, write_compact
    from workloads.trace_dir import LackeyWindow, convert, counted
    prog = args.prog
    if prog and prog[0] == "--":
        prog = prog[1:]
    if not prog:
        raise RunInputError("record: no program given (ptwbench record [--out DIR] -- PROG ARGS)")
    knobs, va_bits, out = _check_record(args, prog)
    r, w = os.pipe()
    stdin = subprocess.DEVNULL if args.no_stdin else None
    p = subprocess.Popen([*VALGRIND, f"--log-fd={w}", *prog], pass_fds=(w,), stdin=stdin,
                         start_new_session=True)
    os.close(w)
    name = f"valgrind lackey pipe of {prog[0]}"
    win = LackeyWindow(args.skip, args.limit or None)
    tee = _Tee(args.tee)
    phases = _Phases("record")
    ok = False
    try:
        with os.fdopen(r, "rb", buffering=0) as pipe:
            chunks = win.chunks(tee.wrap(blocks_of(pipe, name, 4 * CHUNK_BYTES)), name,
                                va_bits)
            src = dict(source="record", command=list(prog),
                       valgrind=" ".join(VALGRIND), limit=args.limit or None,
                       skip=args.skip)

            def finished():
                # the program's status, once the pipe is drained (not when --limit cut the
                # recording: the program is then killed)
                if win.cut:                         # no need to run it further
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    return
                rc = p.wait()
                if rc != 0:
                    raise WorkloadError(f"record: {' '.join(prog)} failed (exit status {rc})")
            if is_compact(out):                     # the compact form (workloads/compact.py)
                if knobs:
                    raise WorkloadError(f"{out}: the compact form is laid out when run; "
                                        f"profile knobs apply there")
                write_compact(counted(_checked(chunks, finished), phases("read")), out,
                              source=src, instrs=lambda: win)
            else:
                convert(_checked(chunks, finished), out, name=out.name, source=src,
                        instrs=lambda: win, progress=phases, **knobs)
        ok = True
    except WorkloadError as e:
        raise RunInputError(str(e)) from None
    finally:
        phases.close()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        tee.done(ok)
    print(f"{_what(out)}: {out}", file=sys.stderr)
    return 0


def _checked(chunks, finished):
    """The chunks, then the program's exit status checked (before pass 2 starts)."""
    yield from chunks
    finished()


def register(sub) -> None:
    c = sub.add_parser("convert", help="a trace file (lackey, CSV, NPZ, compact .ptwc) -> "
                       "trace directory for `run trace:DIR`, or compact file for "
                       "`run compact:FILE` (streamed)")
    c.add_argument("trace", metavar="TRACE", help="a trace file: lackey text, CSV, NPZ or compact (.ptwc)")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="the trace directory to create (must not exist); a name ending in "
                   ".ptwc: the compact form instead (docs/real-programs.md)")
    c.add_argument("--format", choices=("lackey", "csv", "npz", "compact"), default=None,
                   help="the trace's format (default: by extension)")
    c.add_argument("--limit", type=nonneg_int, default=0, help="at most N accesses (0: all)")
    c.add_argument("--skip", type=nonneg_int, default=0,
                   help="leave out the first N accesses (lackey text: a program's start-up)")
    c.add_argument("--knob", action="append", metavar="K=V", help="linux profile knob")
    c.set_defaults(func=cmd_convert)
    r = sub.add_parser("record", help="run PROG under valgrind lackey, streamed into a trace "
                       "directory (no text file unless --tee)")
    r.add_argument("--out", metavar="DIR", help="default: trace-PROG; a name ending in .ptwc: "
                   "the compact form (docs/real-programs.md)")
    r.add_argument("--limit", type=nonneg_int, default=0,
                   help="stop after N accesses (0: all)")
    r.add_argument("--skip", type=nonneg_int, default=0,
                   help="leave out the first N accesses (a program's start-up)")
    r.add_argument("--tee", metavar="FILE", help="also keep the lackey text in FILE")
    r.add_argument("--knob", action="append", metavar="K=V", help="linux profile knob")
    r.add_argument("--no-stdin", action="store_true", help="PROG reads /dev/null")
    r.add_argument("prog", nargs=argparse_remainder(), metavar="-- PROG ARGS",
                   help="the program to trace and its arguments, after --")
    r.set_defaults(func=cmd_record)


def argparse_remainder():
    import argparse
    return argparse.REMAINDER
