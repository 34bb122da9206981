"""`ptwbench kvm setup|check`: the model against a real KVM/arm64 (docs/real-kvm.md).

`setup` builds the stack from Debian packages into a cache directory (bench/kvm/stack.py);
`check` boots the stock kernel (fix) and the policy kernel (legacy, ha-promote) under QEMU,
replays micro-scenarios in a guest (bench/kvm/ptw_replay.c) and compares every count with the
model's reference simulator; results go to results/kvm-STAMP/ (metrics.csv with a `source`
column model | kvm, report.md, the consoles, manifest.json).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.errors import BadInput
from bench.runner import check_name, check_out_root, write_dir_atomic

KVM_POLICIES = ("fix", "legacy", "ha-promote")
REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "workloads" / "scenarios"


def _stack(args):
    from bench.kvm.stack import Stack, default_cache
    return Stack(Path(args.cache).resolve() if args.cache else default_cache())


def cmd_setup(args) -> int:
    from bench.kvm.stack import SetupError, setup
    stack = _stack(args)
    t0 = time.monotonic()
    try:
        times = setup(stack, args.policy_kernel)
    except SetupError as e:
        raise BadInput(f"kvm setup: {e}") from None
    times["total"] = round(time.monotonic() - t0, 1)
    (stack.root / "setup-times.json").write_text(json.dumps(times, indent=2) + "\n")
    print(f"kvm setup: ready in {times['total']:.1f} s ({stack.root})")
    return 0


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True,
                             text=True).stdout
    except FileNotFoundError:
        return ""
    return out.splitlines()[0].removeprefix("QEMU emulator version ").strip() if out else ""


def generated_scenarios(n: int, seed: int, max_steps: int = 10) -> list:
    """n scenarios of tests/strategies.py's shapes at a fixed seed (hypothesis, generate
    phase only), with what QEMU 7.2 cannot replay turned off (bench/kvm/export.py)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from tests.strategies import scenarios
    from bench.kvm.export import replayable
    out: list = []

    @hseed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(scenarios(max_steps=max_steps))
    def collect(scn):
        out.append(replayable(scn))
    collect()
    return out[:n]


def collect_cases(args) -> list:
    from bench.kvm.check import Case
    from model.scenario_io import load_scenario
    cases: list = []
    files = args.scenarios or ([] if args.no_shipped else
                               sorted(str(p.relative_to(REPO)) for p in SHIPPED.glob("*.toml")))
    cases += [Case(f, load_scenario(REPO / f if not Path(f).exists() else f)) for f in files]
    if not args.scenarios and not args.no_conformance:
        from tests.conformance import load_rows, parse_row, row_to_scenario
        cases += [Case(f"pft:{r['name']}", row_to_scenario(parse_row(r))) for r in load_rows()]
    if args.generated:
        for k, scn in enumerate(generated_scenarios(args.generated, args.seed)):
            cases.append(Case(f"gen:{args.seed}:{k}", scn))
    return cases


def _kernel_runs(args, stack) -> list:
    from bench.kvm.check import KernelRun
    pols = tuple(dict.fromkeys(args.policy or KVM_POLICIES))
    for p in pols:
        if p not in KVM_POLICIES:
            raise BadInput(f"--policy: {p!r} cannot run on a kernel (known: "
                           f"{', '.join(KVM_POLICIES)})")
    runs = []
    if "fix" in pols:
        runs.append(KernelRun("stock", stack.stock_kernel, ("fix",)))
    other = tuple(p for p in pols if p != "fix") + (("fix",) if args.fix_on_policy_kernel
                                                    else ())
    if other:
        if not stack.policy_kernel.exists():
            if args.policy:
                raise BadInput(f"--policy {' '.join(other)}: no policy kernel at "
                               f"{stack.policy_kernel}: run `ptwbench kvm setup --policy-kernel`")
            print("kvm check: no policy kernel built: fix only "
                  "(`ptwbench kvm setup --policy-kernel` adds legacy and ha-promote)")
        else:
            runs.append(KernelRun("policy", stack.policy_kernel, other))
    return runs


def _fingerprint(cases) -> str:
    """One hash over every case's replay script: --from refuses a different case set (the
    generated scenarios follow tests/strategies.py, which may change)."""
    import hashlib
    h = hashlib.sha256()
    for c in cases:
        h.update((c.export.script if c.export else f"unsupported {c.unsupported}").encode())
    return h.hexdigest()


def _reused_runs(args, cases) -> list:
    """--from DIR: the kernels, policies and consoles of an earlier check (no QEMU)."""
    from bench.kvm.check import KernelRun
    d = Path(args.from_dir)
    try:
        man = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"--from: {d}/manifest.json: {e}") from None
    if man.get("cases") != [c.ident for c in cases] or \
            man.get("scripts_sha256") != _fingerprint(cases):
        raise BadInput(f"--from: the cases differ from {d}'s (give the same SCENARIO, "
                       f"--generated, --seed and --no-* options)")
    return [KernelRun(name, Path(), tuple(pols), reuse=d / f"console-{name}.log")
            for name, pols in man["policies"].items()]


def _header(runs, qemu: str, cases, elapsed: float) -> list[str]:
    lines = [f"* QEMU: {qemu or 'unknown'} (TCG, `-M virt,virtualization=on,gic-version=3 "
             f"-cpu max`)"]
    for kr in runs:
        b = kr.boot
        lines.append(f"* {kr.name} kernel: {kr.facts.get('kernel', 'did not boot')}; KVM: "
                     f"{kr.facts.get('kvm_mode', '?')}; policies {', '.join(kr.policies)}; "
                     f"boot+replays {b.seconds:.0f} s" + (" (TIMED OUT)" if b.timed_out else ""))
    lines.append(f"* cases: {len(cases)}; wall time {elapsed:.0f} s")
    return lines


def cmd_check(args) -> int:
    from bench.kvm.check import prepare, run_all
    from bench.kvm.report import compare, metrics_csv, report_md
    stack = _stack(args)
    missing = None if args.from_dir else stack.installed()
    if missing:
        raise BadInput(f"kvm check: {missing}")
    root = check_out_root(Path(args.out))
    stamp = args.stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    final = root / check_name(f"kvm-{stamp}", "--stamp")
    if args.stamp and final.exists():
        raise BadInput(f"--stamp: {final} exists already")
    cases = collect_cases(args)
    prepare(cases)
    runs = _reused_runs(args, cases) if args.from_dir else _kernel_runs(args, stack)
    t0 = time.monotonic()
    qemu = (json.loads((Path(args.from_dir) / "manifest.json").read_text())["qemu"]
            if args.from_dir else qemu_version())
    with tempfile.TemporaryDirectory(prefix="ptwbench-kvm-") as tmp:
        run_all(stack, runs, cases, args.pft, Path(tmp))
        consoles = {f"console-{kr.name}.log": kr.boot.output for kr in runs}
    outcomes, rows = compare(cases, runs, qemu)
    header = _header(runs, qemu, cases, time.monotonic() - t0)
    files = {"metrics.csv": metrics_csv(rows),
             "report.md": report_md(outcomes, cases, runs, header), **consoles,
             "manifest.json": json.dumps({
                 "qemu": qemu, "kernels": {kr.name: kr.facts for kr in runs},
                 "policies": {kr.name: list(kr.policies) for kr in runs},
                 "cases": [c.ident for c in cases],
                 "scripts_sha256": _fingerprint(cases),
                 "page_fault_test": {kr.name: kr.pft for kr in runs}}, indent=2) + "\n"}
    out = write_dir_atomic(final, files, unique=not args.stamp)
    bad = sum(o.status != "agree" for o in outcomes)
    print(f"kvm check: {len(outcomes)} runs, {bad} not agreeing -> {out}/report.md")
    return 0


def register(sub) -> None:
    k = sub.add_parser("kvm", help="the model against a real KVM/arm64 under QEMU "
                       "(docs/real-kvm.md)")
    ks = k.add_subparsers(dest="kvm_command", required=True, parser_class=type(k),
                          help="setup: build the stack; check: replay and compare")
    s = ks.add_parser("setup", help="install and build the stack from Debian packages")
    s.add_argument("--cache", metavar="DIR", help="cache directory (default: $PTWBENCH_KVM_CACHE"
                   " or ~/.cache/ptwbench/kvm)")
    s.add_argument("--policy-kernel", action="store_true",
                   help="also build the kernel with kvm.s1ptw_policy (legacy, ha-promote)")
    s.set_defaults(func=cmd_setup)
    c = ks.add_parser("check", help="replay scenarios on the real kernels, compare with the model")
    c.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario files (default: workloads/scenarios/*.toml and the "
                   "page_fault_test table's cases)")
    c.add_argument("--policy", action="extend", nargs="+", metavar="P",
                   help=f"policies (default: {', '.join(KVM_POLICIES)})")
    c.add_argument("--cache", metavar="DIR", help="the setup's cache directory")
    c.add_argument("--out", default="results", help="results root (default: results)")
    c.add_argument("--stamp", help="name the result directory kvm-STAMP (default: UTC time)")
    c.add_argument("--generated", type=int, default=0, metavar="N",
                   help="also N generated scenarios (tests/strategies.py shapes)")
    c.add_argument("--seed", type=int, default=1, help="seed of the generated scenarios")
    c.add_argument("--no-shipped", action="store_true", help="leave out workloads/scenarios")
    c.add_argument("--no-conformance", action="store_true",
                   help="leave out the page_fault_test table's cases")
    c.add_argument("--pft", action="store_true",
                   help="also run page_fault_test case by case under each policy")
    c.add_argument("--fix-on-policy-kernel", action="store_true",
                   help="also run fix on the policy kernel (cross-check of the patch)")
    c.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="compare an earlier run's consoles again (no QEMU): after a model "
                   "change, with the same case options")
    c.set_defaults(func=cmd_check)
