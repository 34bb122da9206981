"""The `ptwbench` command line."""
from __future__ import annotations

import argparse
import signal
import sys

from model.policies import DEFAULT_ORDER, POLICIES
from bench.cli_runs import RunInputError
from bench.errors import (OUTPUT_ERRNOS, BadInput, Terminated, interrupted_status,
                          os_error_line)
from model.scenario import ScenarioError


class Parser(argparse.ArgumentParser):
    def error(self, message):                    # one line, exit 2 (argparse's status)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _policies(args) -> tuple[str, ...]:
    if not args.policy:
        return DEFAULT_ORDER
    out = []
    for p in args.policy:
        if p not in POLICIES:
            raise BadInput(f"--policy: unknown policy {p!r} (known: {', '.join(POLICIES)})")
        if p not in out:
            out.append(p)
    return tuple(out)


def cmd_scenario(args) -> int:
    from model.scenario_io import load_scenario
    from bench.scenario_cmd import run
    pols = _policies(args)
    scns = [load_scenario(f) for f in args.files]     # validate every file before output
    outs = [run(s, pols, as_json=args.json, engine=args.engine) for s in scns]
    sys.stdout.write(("\n" if args.json else "\n\n").join(outs) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="ptwbench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    sc = sub.add_parser("scenario", help="run micro-scenario files (docs/scenario-format.md) under every policy")
    sc.add_argument("files", nargs="+", metavar="FILE",
                    help="scenario files, TOML or JSON (docs/scenario-format.md)")
    sc.add_argument("--json", action="store_true", help="docs/scenario-format.md's JSON output")
    sc.add_argument("--policy", action="extend", nargs="+", metavar="P",
                    help=f"policies to run (default: all; {', '.join(POLICIES)})")
    sc.add_argument("--engine", choices=("numpy", "reference"), default="numpy",
                    help="numpy (default, vectorised) or reference (one access at a time)")
    sc.set_defaults(func=cmd_scenario)
    from bench.workloads_cmd import register as register_workloads
    register_workloads(sub)          # `workloads`, `import-check`
    from bench.cli_runs import register
    register(sub)
    from bench.sweep_cmd import register as register_sweep; register_sweep(sub)  # noqa: E702
    from bench.trace_cmd import register as register_trace; register_trace(sub)  # noqa: E702
    from bench.hunt_cmd import register as register_hunt; register_hunt(sub)  # noqa: E702
    from bench.kvm_cmd import register as register_kvm; register_kvm(sub)  # noqa: E702
    return ap


def _sigterm(_signum, _frame):
    """SIGTERM as Ctrl-C: the same cleanup (workers stopped, temporary files removed)."""
    raise Terminated


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    import threading
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _sigterm)
    else:
        old = None
    try:
        return _dispatch(args)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt as e:               # Ctrl-C, SIGTERM: nothing half-written
        print("ptwbench: interrupted", file=sys.stderr)   # (atomic renames)
        return interrupted_status(e)
    except BrokenPipeError:                      # output piped into head & co.
        sys.stderr.close()
        return 0
    except (ScenarioError, BadInput, RunInputError) as e:
        print(f"ptwbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in OUTPUT_ERRNOS:
            raise
        print(f"ptwbench: error: {os_error_line(e)} (nothing half-written is left)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
