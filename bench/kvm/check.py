"""`ptwbench kvm check`: replay scenarios on the real kernels and compare with the model.

One QEMU boot per kernel runs every scenario under each of its policies (the stock kernel:
fix; the policy kernel: legacy and ha-promote through /sys/module/kvm/parameters/
s1ptw_policy, and fix again as a cross-check when asked), both boots at once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from model.reference import Vm
from model.results import S2_CLASSES
from model.scenario import Scenario

from .boot import BootResult, boot, initramfs
from .export import Export, Unsupported, export_script
from .parse import RunLog, disagreements, observed, parse_console
from .stack import Stack

POLICY_PARAM = {"fix": 0, "legacy": 1, "ha-promote": 2}   # bench/kvm/s1ptw_policy.patch
BOOT_S = 180                     # ASSUMPTION: boot + KVM init under TCG on a loaded host
PER_REPLAY_S = 25                # ptw_replay's own per-step alarm is 20 s


@dataclass
class Case:
    ident: str                   # scenario file, conformance row or generated id
    scn: Scenario
    export: Export | None = None
    unsupported: str = ""


@dataclass
class KernelRun:
    name: str                    # "stock" | "policy"
    kernel: Path
    policies: tuple[str, ...]
    facts: dict[str, str] = field(default_factory=dict)
    logs: dict[tuple[int, str], RunLog] = field(default_factory=dict)
    pft: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    boot: BootResult | None = None
    reuse: Path | None = None    # an earlier run's console to parse instead of booting


def prepare(cases: list[Case]) -> None:
    for c in cases:
        try:
            c.export = export_script(c.scn)
        except Unsupported as e:
            c.unsupported = str(e)


def job_files(cases: list[Case], policies, param: bool, pft: bool) -> dict[str, str]:
    """run.sh and one replay script per case, for /job in the initramfs."""
    files, run = {}, []
    for k, c in enumerate(cases):
        if c.export is not None:
            files[f"{k}.txt"] = c.export.script
    for p in policies:
        if param:
            run.append(f"echo {POLICY_PARAM[p]} > /sys/module/kvm/parameters/s1ptw_policy")
        for k, c in enumerate(cases):
            if c.export is not None:
                run.append(f'echo "@R begin {k} {p}"; /bin/ptw_replay /job/{k}.txt; '
                           f'echo "@R exit $?"')
        if pft:
            run.append(f'echo "@R pft_begin {p}"; /bin/pft_cases -m 6 2>&1; '
                       f'echo "@R pft_exit $?"')
    files["run.sh"] = "\n".join(run) + "\n"
    return files


def run_kernel(stack: Stack, kr: KernelRun, cases: list[Case], param: bool, pft: bool,
               workdir: Path) -> None:
    if kr.reuse is not None:                      # --from: an earlier run's console
        kr.boot = BootResult(kr.reuse.read_text(), 0.0, False, 0)
        _parse_boot(kr)
        return
    progs = {"ptw_replay": stack.replay}
    if pft and stack.pft_cases.exists():
        progs["pft_cases"] = stack.pft_cases
    initrd = workdir / f"initrd-{kr.name}.gz"
    initrd.write_bytes(initramfs(stack.busybox, progs, job_files(cases, kr.policies, param,
                                                                   "pft_cases" in progs)))
    n = sum(c.export is not None for c in cases) * len(kr.policies)
    console = workdir / f"console-{kr.name}.log"
    print(f"kvm check: booting the {kr.name} kernel ({n} replays; console: {console})",
          flush=True)
    kr.boot = boot(kr.kernel, initrd, BOOT_S + n * PER_REPLAY_S + (600 if pft else 0),
                   console)
    _parse_boot(kr)


def _parse_boot(kr: KernelRun) -> None:
    kr.facts, logs = parse_console(kr.boot.output)
    kr.logs = {(int(lg.ident), lg.policy): lg for lg in logs}
    kr.pft = parse_pft(kr.boot.output)


def parse_pft(text: str) -> dict[str, list[tuple[str, str]]]:
    """page_fault_test cases per policy: (case, pass|fail|skip) from pft_cases' lines."""
    out: dict[str, list[tuple[str, str]]] = {}
    cur = None
    for line in text.splitlines():
        i = line.find("@R ")
        if i < 0:
            continue
        w = line[i + 3:].split()
        if w[:1] == ["pft_begin"]:
            cur = out.setdefault(w[1], [])
        elif w[:1] == ["pft"] and cur is not None and len(w) >= 3:
            cur.append((" ".join(w[1:-1]), w[-1]))     # the case names hold spaces
    return out


def run_all(stack: Stack, runs: list[KernelRun], cases: list[Case], pft: bool,
            workdir: Path) -> None:
    """Both kernels' QEMUs at once (one per host core)."""
    threads = [threading.Thread(target=run_kernel,
                                args=(stack, kr, cases, kr.name == "policy", pft, workdir))
               for kr in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- the model's side -------------------------------------------------------------------

def model_step_classes(scn: Scenario, policy: str) -> list[dict[str, int]]:
    """Stage-2 faults by class per step, from the reference simulator run step by step."""
    vm = Vm(scn, policy)
    out, prev = [], dict.fromkeys(S2_CLASSES, 0)
    for i, st in enumerate(scn.steps):
        vm.run_step(i, st)
        now = dict(vm.r.s2_faults)
        out.append({c: now[c] - prev[c] for c in S2_CLASSES if now[c] != prev[c]})
        prev = now
    return out
