"""`ptwbench sweep SPEC.toml`: the CLI side of bench.sweep."""
from __future__ import annotations

import gc
import importlib.util
import re
import sys
from pathlib import Path

from model.policies import POLICIES

from .cli_runs import RunInputError
from .errors import OUTPUT_ERRNOS, interrupted_status, nonneg_int, os_error_line

# dask.distributed addresses: [protocol://]host:port (distributed.comm.addressing)
SCHEDULER_ADDRESS = re.compile(r"(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9A-Fa-f:]+\]|"
                               r"[A-Za-z0-9][A-Za-z0-9.-]*):\d{1,5}")


def _quiet(fn):
    """Run fn; a client that failed to connect is collected here, without the 'Exception
    ignored' report its finaliser would print."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _u: None
    try:
        return fn()
    finally:
        gc.collect()
        sys.unraisablehook = hook


# memory the sweep process holds per point while it runs (the point, its result rows for
# every policy, timings and run meta, kept until the aggregate): ASSUMPTION, ~20 KB measured
# as the size of a points/ID.json of a default-size point, doubled for Python's objects
POINT_BYTES = 40_000


def _check_memory(n: int, spec: str) -> None:
    from workloads.footprint import human, machine_memory
    have, what = machine_memory()
    if n * POINT_BYTES > have:
        raise RunInputError(f"{spec}: {n:,} points would hold about {human(n * POINT_BYTES)} "
                            f"of results in memory; this machine has {human(have)} {what}")


def _check_out(out: Path, what: str) -> None:
    from .runner import OutputError, check_out_root
    try:
        check_out_root(out, what)
    except OutputError as e:
        raise RunInputError(str(e)) from None


def _run(spec, out: Path, args, client):
    """run_sweep, or the exit status of a sweep stopped (Ctrl-C, SIGTERM, a full disk): its
    finished points stay in OUT/points for the rerun."""
    from .sweep import SweepError, run_sweep
    again = f"the finished points are in {out / 'points'}: rerun the same command to go on"
    try:
        return run_sweep(spec, out, workers=args.workers, client=client,
                         progress=False if args.no_progress else None)
    except SweepError as e:
        raise RunInputError(str(e)) from None
    except KeyboardInterrupt as e:
        print(f"ptwbench: sweep interrupted; {again}", file=sys.stderr)
        return interrupted_status(e)
    except OSError as e:                     # a full or read-only disk while writing
        if e.errno not in OUTPUT_ERRNOS:
            raise
        print(f"ptwbench: error: {os_error_line(e)}; {again}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()


def cmd_sweep(args) -> int:
    from .sweep import (POINT_LIMIT, SweepError, check_generators, connect, count_points,
                        iter_points, load_sweep_file)
    try:
        spec = load_sweep_file(args.spec)
    except SweepError as e:
        raise RunInputError(str(e)) from None
    n = count_points(spec)
    if args.list:                              # lazily: any size, bounded memory
        for p in iter_points(spec):
            print(p["id"], p["workload"], p["knobs"], p["host"], p["host_knobs"],
                  p["variant"], p["seed"], p["engine"])
        return 0
    if n > POINT_LIMIT and not args.yes:
        raise RunInputError(f"{args.spec}: {n:,} points (x {len(POLICIES)} policies) is over "
                            f"the limit of {POINT_LIMIT:,}: about {n * 0.3 / 3600:,.1f} "
                            f"core-hours at 0.3 s a point; --yes runs it anyway")
    _check_memory(n, args.spec)
    try:
        check_generators(spec)
    except SweepError as e:
        raise RunInputError(str(e)) from None
    client = None
    if args.scheduler:                       # connect before writing anything
        if not SCHEDULER_ADDRESS.fullmatch(args.scheduler):
            raise RunInputError(f"--scheduler: {args.scheduler!r} is not a scheduler address "
                                f"(like tcp://HOST:8786)")
        if importlib.util.find_spec("distributed") is None:
            raise RunInputError("--scheduler: dask.distributed is not installed (pip install "
                                "'ptwbench[dask]')")
        try:
            client = _quiet(lambda: connect(args.scheduler, args.timeout))
        except (OSError, TimeoutError, ValueError) as e:
            raise RunInputError(f"--scheduler: cannot connect to {args.scheduler}: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from None
    out = Path(args.out) if args.out else Path(spec["out"])
    _check_out(out, "--out" if args.out else f"{args.spec}: sweep.out")
    print(f"sweep {spec['name']}: {n:,} points x {len(POLICIES)} policies -> {out}",
          file=sys.stderr)
    res = _run(spec, out, args, client)
    if isinstance(res, int):
        return res
    print(f"sweep {spec['name']}: {res.points} points, {res.ran} run, {res.resumed} already "
          f"done; results: {res.out}", file=sys.stderr)
    status = 0
    if res.failures:
        p, why = res.failures[0]
        print(f"ptwbench: error: {len(res.failures)} of {res.points} points failed (not "
              f"written; rerun to retry them); first: {p['id']} ({p['workload']} "
              f"{p['host']} {p['variant']} seed {p['seed']}): {why}", file=sys.stderr)
        return 1
    if res.errors:
        p, why = res.errors[0]
        print(f"ptwbench: error: {len(res.errors)} of {res.points} points rejected by the "
              f"registry (see report.md); first: {p['id']}: {why}", file=sys.stderr)
        status = 1
    print(res.answer)
    return status


def register(sub) -> None:
    s = sub.add_parser("sweep", help="a grid of runs (workloads x knobs x hosts x variants x "
                       "seeds), parallel, resumable; see bench/sweep.py for the spec")
    s.add_argument("spec", metavar="SPEC.toml", help="the sweep spec (format: bench/sweep.py)")
    ex = s.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=nonneg_int, metavar="N",
                    help="local worker processes (default, or 0: one per CPU available)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a dask.distributed cluster (e.g. tcp://host:8786)")
    s.add_argument("--timeout", type=float, default=20.0, metavar="S",
                   help="seconds to wait for the dask scheduler (default 20)")
    s.add_argument("--out", help="result directory (default: the spec's sweep.out)")
    s.add_argument("--list", action="store_true", help="print the points and exit")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--yes", action="store_true",
                   help="run a sweep over the size limit (bench.sweep.POINT_LIMIT points)")
    s.set_defaults(func=cmd_sweep)
