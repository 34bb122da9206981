"""The `ptwbench` command line."""
from __future__ import annotations

import argparse
import sys

from model.policies import DEFAULT_ORDER, POLICIES
from bench.cli_runs import RunInputError
from bench.errors import BadInput
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
    from bench.kvm_cmd import register as register_kvm; register_kvm(sub)  # noqa: E702
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:                    # Ctrl-C: nothing half-written (atomic
        print("ptwbench: interrupted", file=sys.stderr)   # renames), the shell's status
        return 130
    except BrokenPipeError:                      # output piped into head & co.
        sys.stderr.close()
        return 0
    except (ScenarioError, BadInput, RunInputError) as e:
        print(f"ptwbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
