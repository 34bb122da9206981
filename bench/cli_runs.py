"""`ptwbench run`, `ptwbench beer`, `ptwbench compare`."""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from .errors import OUTPUT_ERRNOS, nonneg_int, os_error_line
from .spec_checks import SpecError, check_seeds

DEFAULT_RESULTS = Path("results")
# timed runs of one `run`: pyperf takes 20 values by default; 1000 is 50x that, and a progress
# bar shows how far a long one has got
MAX_REPEAT = 1000


class RunInputError(ValueError):
    """Bad parameters: one line, exit 2, nothing written."""


def q_line(row: dict) -> str:
    """The case's q against its break-even (bench/breakeven.py), in words."""
    q, qs = row.get("q_measured"), row.get("q_break_even")
    if q is None:
        return ("q: no page-table page took an S1PTW translation fault in a complete dirty "
                "round (nothing to measure)")
    side = "above" if qs is not None and q > qs else "at or below"
    return (f"q = {q:.3g} over {row['dirty_rounds']} complete dirty rounds ("
            f"{row['s1ptw_tf_round_written']} of {row['s1ptw_tf_round_pages']} walk-faulted "
            f"page-table pages written before their harvest), {side} the break-even "
            f"q* = {qs:.3g}" if qs is not None else f"q = {q:.3g} (no break-even)")


def _kv(items, what) -> dict:
    out = {}
    for it in items or ():
        if "=" not in it:
            raise RunInputError(f"{what}: {it!r} is not NAME=VALUE")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def _host_kv(items, host: str) -> dict:
    """--host-knob values: K=V for one host (HOST.K=V also accepted); HOST.K=V for each
    host of a chain (precopy+pressure), as catalog.build takes them: {HOST: {K: V}}."""
    flat = _kv(items, "--host-knob")
    hosts = host.split("+")
    if len(hosts) == 1:
        return {k.split(".", 1)[1] if k.startswith(host + ".") else k: v
                for k, v in flat.items()}
    out: dict = {}
    for k, v in flat.items():
        h, dot, name = k.partition(".")
        if not dot or h not in hosts:
            raise RunInputError(f"--host-knob {k}: with chained hosts name the host, "
                                f"HOST.KNOB=VALUE with HOST one of {', '.join(hosts)}")
        out.setdefault(h, {})[name] = v
    return out


def _out_root(out: str) -> Path:
    from .runner import OutputError, check_out_root
    try:
        return check_out_root(Path(out))
    except OutputError as e:
        raise RunInputError(str(e)) from None


def _check_run_args(args) -> dict:
    """Everything `run` can check before building anything; returns the --knob values."""
    from .variants import VARIANTS, contradiction
    if args.variant not in VARIANTS:
        raise RunInputError(f"--variant: unknown variant {args.variant!r} "
                            f"(known: {', '.join(VARIANTS)})")
    try:
        check_seeds([args.seed], "--seed")
    except SpecError as e:
        raise RunInputError(str(e)) from None
    if not 1 <= args.repeat <= MAX_REPEAT:
        raise RunInputError(f"--repeat: {args.repeat} is not in 1..{MAX_REPEAT}")
    if args.warmup > MAX_REPEAT:
        raise RunInputError(f"--warmup: {args.warmup} is over {MAX_REPEAT}")
    if not args.no_save:
        _out_root(args.out)
    knobs = _kv(args.knob, "--knob")
    why = contradiction(args.variant, knobs.get("cpu"))
    if why:
        raise RunInputError(why)
    return knobs


def _run_with_progress(w, args):
    from model.policies import DEFAULT_ORDER

    from .progress import Progress
    from .runner import run_total, run_workload
    from .variants import VariantError
    bar = Progress(run_total(w, args.engine, DEFAULT_ORDER, args.repeat, args.warmup),
                   f"run {w.name}", "accesses")
    try:
        return run_workload(w, host=args.host, variant=args.variant, seed=args.seed,
                            engine=args.engine, repeat=args.repeat, warmup=args.warmup,
                            progress=bar)
    except VariantError as e:
        raise RunInputError(str(e)) from None
    finally:
        bar.close()


def cmd_run(args) -> int:
    import pandas as pd

    from workloads.base import WorkloadError

    from . import report
    from .catalog import build
    from .cost import CostModel
    from .runner import COLUMNS, csv_text
    from .verdict import answer, verdict_table
    knobs = _check_run_args(args)
    try:
        w = build(args.workload, knobs, args.host,
                  _host_kv(args.host_knob, args.host), args.seed, args.seconds, args.until)
    except (WorkloadError, ImportError) as e:
        raise RunInputError(str(e)) from None
    if w.meta.get("aging_warning"):
        print(f"ptwbench run: warning: {w.meta['aging_warning']}", file=sys.stderr)
    run = _run_with_progress(w, args)
    df = pd.DataFrame(run.rows, columns=list(COLUMNS))
    v = verdict_table(df, CostModel())
    show = df[["policy", "s2_faults", "double_faults", "uffd_events", "uffd_false_write",
               "dirty_marked_pt", "dirty_false_positive", "guest_aborts"]]
    md = "\n".join([f"# {w.name} / {args.host} / {args.variant} (seed {args.seed})", "",
                    report.md_table(show), "", f"**{answer(v)}**" if len(v) else "", "",
                    q_line(run.rows[0]), ""])
    if args.format == "text":
        # one metric a line, one policy a column: the metrics keep their names (those of
        # metrics.csv and the md table) within 72 columns
        per_metric = show.set_index("policy").T.rename_axis("metric").reset_index()
        sys.stdout.write(report.text_table(per_metric) + "\n" + (
            report.wrap(answer(v)) + "\n" if len(v) else "")
            + report.wrap(q_line(run.rows[0])) + "\n")
    elif args.format == "csv":
        sys.stdout.write(csv_text(run.rows, COLUMNS))
    else:
        sys.stdout.write(md)
    if not args.no_save:
        print(f"results: {_save_run(args, w, run, md)}", file=sys.stderr)
    return 0


def _save_run(args, w, run, md: str) -> Path:
    """The run's result directory (after its result was printed: a failure says so)."""
    from .runner import (COLUMNS, TIMING_COLUMNS, csv_text, meta_json, short_name,
                         write_dir_atomic)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = short_name(f"{w.name}-{args.host}-{args.variant}-s{args.seed}-{stamp}")
    try:
        return write_dir_atomic(Path(args.out) / name, unique=True, files={
            "metrics.csv": csv_text(run.rows, COLUMNS),
            "timings.csv": csv_text(run.timings, TIMING_COLUMNS),
            "meta.json": meta_json(run_meta(args, run)), "report.md": md})
    except OSError as e:                     # the result is on stdout already: say so
        if e.errno not in OUTPUT_ERRNOS:
            raise
        raise RunInputError(f"{os_error_line(e)}: the result printed above was not "
                            f"saved (--out {args.out})") from None


def run_meta(args, run) -> dict:
    """meta.json of `ptwbench run` (bench/meta.py's shape): the parameters as the spec."""
    from .cost import CostModel
    from .meta import envelope
    spec = {"workload": args.workload, "knobs": _kv(args.knob, "--knob"), "host": args.host,
            "host_knobs": _host_kv(args.host_knob, args.host), "variant": args.variant,
            "seed": args.seed, "engine": args.engine, "repeat": args.repeat,
            "warmup": args.warmup, "seconds": args.seconds, "until": args.until}
    wall = sum(run.meta["samples_seconds"]) + run.meta["workload_meta"].get("build_seconds", 0)
    return envelope("run", spec=spec, runs=[run.meta], seconds=wall,
                    cost_model=CostModel().as_dict())


def cmd_beer(args) -> int:
    from workloads.base import WorkloadError

    from .beer import SpecError, default_spec_text, load_spec, run_beer
    from .runner import OutputError, check_name
    out = _out_root(args.out)
    if args.stamp is not None:
        try:
            check_name(f"beer-{args.stamp}", "--stamp")
        except OutputError as e:
            raise RunInputError(str(e)) from None
        if (out / f"beer-{args.stamp}").exists():
            raise RunInputError(f"--stamp: {out / f'beer-{args.stamp}'} exists already")
    try:
        if args.spec:
            try:
                text = Path(args.spec).read_bytes().decode("utf-8")
            except OSError as e:
                raise RunInputError(f"{args.spec}: {e.strerror}") from None
            except UnicodeDecodeError:
                raise RunInputError(f"{args.spec}: not a text file (UTF-8 TOML expected)") from None
            spec = load_spec(text, args.spec)
        else:
            spec = load_spec(default_spec_text(), "embedded default")
        d = run_beer(spec, Path(args.out), stamp=args.stamp, workers=args.workers or None,
                     hunt_line=_hunt_line(args.hunt))
    except (SpecError, WorkloadError) as e:
        raise RunInputError(str(e)) from None
    text = (d / "verdict.txt").read_text() if args.format == "text" else (
        d / "report.md").read_text()
    sys.stdout.write(text)
    print(f"results: {d}", file=sys.stderr)
    return 0


def _hunt_line(d: str | None) -> str | None:
    """`beer --hunt DIR`: the finished hunt's summary line, read before the beer runs."""
    if d is None:
        return None
    from .hunt import hunt_summary_line
    try:
        return hunt_summary_line(d)
    except (OSError, ValueError, KeyError) as e:
        raise RunInputError(f"--hunt: {d} holds no finished hunt (summary.json: "
                            f"{getattr(e, 'strerror', None) or e})") from None


def cmd_compare(args) -> int:
    from .compare import CompareError, check_threshold, compare
    try:
        check_threshold(args.threshold / 100)
        status, text = compare(Path(args.a), Path(args.b), args.threshold / 100,
                               throughput=not args.no_throughput)
    except CompareError as e:
        raise RunInputError(str(e)) from None
    print(text)
    return status


def register(sub) -> None:
    r = sub.add_parser("run", help="one workload x host scenario x variant, all policies")
    r.add_argument("workload", help="what to run: a generator name (list: ptwbench workloads), "
                   "micro:NAME (a shipped micro-scenario), micro:PATH (your scenario file, "
                   "docs/scenario-format.md), import:PATH (a lackey/CSV/NPZ trace), "
                   "trace:DIR (a converted trace directory), compact:FILE (a compact "
                   "trace) or catalogue:NAME (a shipped real program; docs/real-programs.md)")
    r.add_argument("--knob", action="append", metavar="K=V",
                   help="a generator or linux-profile knob (repeatable; ptwbench workloads)")
    r.add_argument("--host", default="none",
                   help="host scenario, or several joined by + (default: none)")
    r.add_argument("--host-knob", action="append", metavar="K=V",
                   help="a host scenario knob (repeatable); with chained hosts "
                        "HOST.K=V, e.g. pressure.target=pt")
    r.add_argument("--variant", default="default",
                   help="hardware variant (default: default; list: ptwbench workloads)")
    r.add_argument("--seconds", type=float, default=None, metavar="S",
                   help="simulate S seconds of guest time: the workload's accesses repeated "
                        "or cut to S / access_ns (workloads/clock.py); default: the trace as "
                        "generated")
    r.add_argument("--until", choices=("migrated", "snapshotted"), default=None,
                   help="instead of --seconds: a window of one whole pre-copy migration "
                        "(host migration, chained or not), ending at its switch-over, whose "
                        "last sync ends every dirty round; or of one whole background "
                        "snapshot (host bg_snapshot), ending when its last page is saved")
    r.add_argument("--seed", type=int, default=1,
                   help="seed of the generator and host scenario, >= 0 (default 1): the same "
                   "seed gives a byte-identical metrics.csv")
    r.add_argument("--engine", choices=("numpy", "reference"), default="numpy",
                   help="numpy (default, vectorised) or reference (one access at a time)")
    r.add_argument("--format", choices=("md", "text", "csv"), default="md",
                   help="what to print: md (default), text or csv")
    r.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="timed runs of the engine (default 1); ptwbench compare judges "
                   "throughput only with >= 3")
    r.add_argument("--warmup", type=nonneg_int, default=0, metavar="N",
                   help="untimed runs before the timed ones (default 0)")
    r.add_argument("--out", default=str(DEFAULT_RESULTS), help="results root (default: results)")
    r.add_argument("--no-save", action="store_true", help="print only, write nothing")
    r.set_defaults(func=cmd_run)
    b = sub.add_parser("beer", help="the beer verdict over the built-in workloads (main job)")
    b.add_argument("--spec", help="a beer spec TOML (default: the embedded one)")
    b.add_argument("--out", default=str(DEFAULT_RESULTS), help="results root")
    b.add_argument("--stamp", help="name the result directory beer-STAMP (default: UTC time)")
    b.add_argument("--format", choices=("md", "text"), default="text",
                   help="what to print: text (72 columns, for a mailing-list reply) or md")
    b.add_argument("--workers", type=nonneg_int, default=0,
                   help="worker processes (0: one per core); the results do not depend on it")
    b.add_argument("--hunt", metavar="DIR", default=None,
                   help="a finished `ptwbench hunt` result directory: verdict.txt adds its "
                        "one-line summary (what the search of the calibrated space found)")
    b.set_defaults(func=cmd_beer)
    c = sub.add_parser("compare", help="per-metric deltas between two result directories")
    c.add_argument("a", help="baseline result directory (run, beer or sweep)")
    c.add_argument("b", help="result directory to compare with the baseline")
    c.add_argument("--threshold", type=float, default=10.0,
                   help="throughput regression threshold, percent (default 10)")
    c.add_argument("--no-throughput", action="store_true",
                   help="compare accuracy metrics only")
    c.set_defaults(func=cmd_compare)
