"""Helpers for the workload tests: the program's own accesses, a reference replay that keeps
the VM, and a memory walk that reports the tables a VA goes through."""
from __future__ import annotations

import numpy as np

from model.arch import DESC_SIZE, desc_oa, is_table, is_valid
from model.reference import Vm
from model.trace import KINDS


def program(wl):
    """The program's accesses: the trace without the guest's fault attempts."""
    a = wl.meta.get("attempts", np.zeros(0, dtype=np.int64))
    t = wl.trace
    return np.delete(t.vcpu, a), np.delete(t.va, a), np.delete(t.kind, a)


def replay(wl, policy: str = "fix") -> Vm:
    """model.reference_trace.run_reference_trace for one policy, returning the VM."""
    tr = wl.trace
    vm = Vm(wl.scenario, policy)
    vc, va, kd = tr.vcpu.tolist(), tr.va.tolist(), [KINDS[k] for k in tr.kind.tolist()]
    for start, end, events in tr.intervals():
        for _p, si, st in events:
            vm.run_step(si, st)
        for i in range(start, end):
            vm.begin_step(i)
            if vc[i] not in vm.stopped:
                vm.access(vc[i], va[i], kd[i])
            vm.end_step()
    return vm


def walk(vm: Vm, va: int, root: int | None = None):
    """(leaf descriptor or None, [IPA of the table read at each level]) from guest memory."""
    geo = vm.geo
    table = vm.tables.root if root is None else root
    tables = []
    for level in range(geo.start_level, 4):
        tables.append(table)
        d = vm.host.read_desc(table + geo.index(va, level) * DESC_SIZE)
        if not is_valid(d):
            return None, tables
        if level < 3 and is_table(d, level):
            table = desc_oa(d, geo)
            continue
        return d, tables
    return None, tables


def facts(results):
    return {p: (r.as_json(), r.metrics(), [e.written for e in r.uffd_events])
            for p, r in results.items()}
