"""The reference simulator over a Trace: events and accesses replayed one at a time, in order.

`run_reference_trace(scn, trace, policies)` is the executable specification for traces made by
workload generators (workloads/), the counterpart of model.engine.run_trace: each event
`(pos, step_index, Step)` runs through `Vm.run_step(step_index, step)` before access `pos`;
access i runs as scenario step `trace.step_of_access[i]`, or `i` when the trace has no step
numbers (the numbering model.engine uses for its scalar path).  `scn.steps` is ignored.
"""
from __future__ import annotations

from .policies import DEFAULT_ORDER
from .reference import Vm
from .results import PolicyResult
from .scenario import Scenario
from .trace import KINDS, Trace
from .x86 import one_machine


def run_reference_trace(scn: Scenario, trace: Trace,
                        policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    return one_machine(scn, policies, lambda ps: _run(scn, trace, ps))


def _run(scn: Scenario, trace: Trace, policies) -> dict[str, PolicyResult]:
    vcpu = trace.vcpu.tolist()
    va = trace.va.tolist()
    kind = [KINDS[k] for k in trace.kind.tolist()]
    steps = trace.step_of_access.tolist() if trace.step_of_access is not None else None
    out = {}
    for p in policies:
        vm = Vm(scn, p)
        for start, end, events in trace.intervals():
            for _pos, si, st in events:
                vm.run_step(si, st)
            for i in range(start, end):
                vm.begin_step(steps[i] if steps is not None else i)
                if vcpu[i] not in vm.stopped:          # KVM_RUN failed: vCPU stopped
                    vm.access(vcpu[i], va[i], kind[i])
                vm.end_step()
        out[p] = vm.finish()
    return out
