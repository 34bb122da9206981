"""`ptwbench hunt`: the CLI side of bench.hunt (issue 24)."""
from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path

from .cli_runs import DEFAULT_RESULTS, RunInputError

# The default budget ends within 30 minutes on 2 cores: no trial starts after DEFAULT_MINUTES
# and one trial of the realistic space takes ~3-70 s (docs/hunt.md, measured under load).
DEFAULT_TRIALS = 80       # the realistic map's 44 cases, then 36 chosen by TPE
DEFAULT_MINUTES = 25.0


def _checks(args):
    """Everything checked before anything is written: (space, out dir, study name, storage)."""
    from .hunt import HuntError, load_space
    from .runner import OutputError, check_name, check_out_root
    if args.trials < 1:
        raise RunInputError(f"--trials: {args.trials} is not >= 1")
    if args.workers is not None and args.workers < 1:
        raise RunInputError(f"--workers: {args.workers} is not >= 1")
    if args.minutes is not None and args.minutes < 0:
        raise RunInputError(f"--minutes: {args.minutes} is not >= 0")
    if args.seed < 0:
        raise RunInputError(f"--seed: {args.seed} is not >= 0")
    try:
        space = load_space(args.space)
        root = check_out_root(Path(args.out))
        name = args.study or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        check_name(f"hunt-{name}", "--study")
    except (HuntError, OutputError) as e:
        raise RunInputError(str(e)) from None
    if args.trial_fn and ":" not in args.trial_fn:
        raise RunInputError(f"--trial-fn: {args.trial_fn!r} is not MODULE:FUNCTION")
    d = root / f"hunt-{name}"
    storage = args.storage or f"sqlite:///{(d / 'study.db').resolve()}"
    return space, d, name, storage


def _client(args):
    from .sweep_cmd import SCHEDULER_ADDRESS, _quiet
    if not SCHEDULER_ADDRESS.fullmatch(args.scheduler):
        raise RunInputError(f"--scheduler: {args.scheduler!r} is not a scheduler address "
                            f"(like tcp://HOST:8786)")
    if importlib.util.find_spec("distributed") is None:
        raise RunInputError("--scheduler: dask.distributed is not installed (pip install "
                            "'ptwbench[dask]')")
    from .sweep import connect
    try:
        return _quiet(lambda: connect(args.scheduler, args.timeout))
    except (OSError, TimeoutError, ValueError) as e:
        raise RunInputError(f"--scheduler: cannot connect to {args.scheduler}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None


def cmd_hunt(args) -> int:
    from .hunt import (DEFAULT_TRIAL_FN, HuntError, enqueue_map, executor, open_study, redact,
                       run_hunt)
    from .hunt_report import write_outputs
    from .runner import environment
    space, d, name, storage = _checks(args)
    client = _client(args) if args.scheduler else None
    top = d                                         # the first directory created here
    while not top.parent.exists():
        top = top.parent
    fresh = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(storage, name, space, args.seed)
    except HuntError as e:
        if fresh:                                   # nothing written
            import shutil
            shutil.rmtree(top, ignore_errors=True)
        raise RunInputError(str(e)) from None
    label = "stress" if space.stress else "realistic"
    start = 0 if args.no_map else enqueue_map(study, space)
    print(f"hunt {name}: {space.name} space ({label}), {args.trials} trials in all"
          f"{f', the first {start} the realistic map' if start else ''}, storage "
          f"{redact(storage)} -> {d}", file=sys.stderr)
    ex = executor(args.workers or 1, client)
    say = (lambda _line: None) if args.no_progress else (
        lambda line: print(f"hunt {name}: {line}", file=sys.stderr, flush=True))
    try:
        run = run_hunt(study, space, args.trials, ex=ex,
                       trial_fn=args.trial_fn or DEFAULT_TRIAL_FN,
                       minutes=DEFAULT_MINUTES if args.minutes is None else args.minutes,
                       progress=say)
    except KeyboardInterrupt:
        print(f"ptwbench: hunt interrupted; finished trials are kept in {redact(storage)}: "
              f"rerun with --study {name} to go on", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
    meta = {"study": name, "storage": redact(storage), "seed": args.seed,
            "trials": args.trials, "map_cases_enqueued": start,
            "trial_fn": args.trial_fn or DEFAULT_TRIAL_FN,
            "environment": environment()}
    s = write_outputs(d, study, space, run, meta)
    from .hunt_report import summary_line
    print(summary_line(s))
    if s["best"]:
        print(f"best: {s['best']['command']}")
    print(f"results: {d}", file=sys.stderr)
    if run.failures:
        n, why = run.failures[0]
        print(f"ptwbench: error: {len(run.failures)} trials failed (rerun with --study {name} "
              f"to retry them); first: trial {n}: {why}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    h = sub.add_parser("hunt", help="search the calibrated configuration space for where "
                       "ha-promote pays (Optuna; docs/hunt.md)")
    h.add_argument("--space", default="realistic", metavar="realistic|stress|FILE",
                   help="the space: realistic (default), stress, or a TOML file that narrows "
                        "or replaces it (docs/hunt.md)")
    h.add_argument("--trials", type=int, default=DEFAULT_TRIALS, metavar="N",
                   help=f"the study's total of finished trials (default {DEFAULT_TRIALS}); a "
                        f"resumed hunt runs only the missing ones")
    h.add_argument("--minutes", type=float, default=None, metavar="M",
                   help=f"start no trial after M minutes (default {DEFAULT_MINUTES:g}; 0: no "
                        f"limit)")
    h.add_argument("--seed", type=int, default=1, help="the TPE sampler's seed (default 1)")
    h.add_argument("--storage", metavar="URL",
                   help="an SQLAlchemy URL of the study's database (default: SQLite "
                        "study.db in the hunt's directory); share one to hunt from several "
                        "machines")
    h.add_argument("--study", metavar="NAME",
                   help="the study's name (default: the UTC time); an existing one resumes; "
                        "results go to OUT/hunt-NAME")
    h.add_argument("--out", default=str(DEFAULT_RESULTS), help="results root (default: results)")
    ex = h.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, metavar="N",
                    help="local worker processes (default 1)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run the trials on a dask.distributed cluster (tcp://host:8786)")
    h.add_argument("--timeout", type=float, default=20.0, metavar="S",
                   help="seconds to wait for the dask scheduler (default 20)")
    h.add_argument("--no-map", action="store_true",
                   help="do not start from the default beer's realistic cases (a new study "
                        "runs those inside the space first)")
    h.add_argument("--no-progress", action="store_true", help="no line per trial")
    h.add_argument("--trial-fn", metavar="MODULE:FUNCTION",
                   help="a test hook: this function evaluates each configuration instead of "
                        "the model (tests/hunt_helpers.py)")
    h.set_defaults(func=cmd_hunt)
