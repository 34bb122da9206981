"""Workload objects shared by generators, host scenarios and importers.

A `Workload` is a scenario without steps (machine, guest, memslots, VMM, the stage-1 mappings
present at start) plus a `model.trace.Trace` (numpy columns vcpu/va/kind and events applied
before access `pos`), plus `meta`: the generator's name, seed and every knob value, and
counts the generator computed (guest page faults, tables, pages).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from model.scenario import Scenario
from model.trace import Trace


class WorkloadError(ValueError):
    """Bad knob value or an impossible combination; one line."""


# binary size suffixes, as `ptwbench workloads` shows sizes (256Ki, 4Mi, 64Gi): Ki = 2**10 ...
SIZE_SUFFIX = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50}


def parse_int(text: str) -> int:
    """An integer knob value as people write it: 4096, 0x1000, 1_000, 256Ki, 1Ti, 4GiB, 1e6
    (a float written for an integer must be a whole number).  ValueError otherwise."""
    t = text.strip()
    if t.endswith("iB"):
        t = t[:-1]
    for suf, sh in SIZE_SUFFIX.items():
        if t.endswith(suf) and t[:-2].strip():
            return parse_int(t[:-2]) << sh
    try:
        return int(t, 0)
    except ValueError:
        f = float(t)                       # 1e6; ValueError when not a number at all
        if not f.is_integer():
            raise ValueError(text) from None
        return int(f)


TYPE_WORDS = {int: "an integer (or a size: 4Ki, 256Mi, 1Ti)", float: "a number",
              bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Knob:
    name: str
    default: Any
    help: str
    choices: tuple = ()
    lo: Any = None                   # inclusive range, checked with the type
    hi: Any = None
    unit: str = ""                   # when the name's suffix does not say it (_s, _mb, ...)
    source: str = ""                 # where the default comes from (kernel, QEMU, ASSUMPTION)

    @property
    def type(self) -> type:
        return type(self.default)

    def coerce(self, value: Any, owner: str) -> Any:
        """Check (and convert CLI strings to) the knob's type and choices."""
        t = self.type
        if isinstance(value, str) and t is not str:
            try:
                if t is bool:
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("1", "true", "yes")
                elif t is int:
                    value = parse_int(value)
                elif t is float:
                    value = float(value)
            except ValueError:
                raise WorkloadError(f"{owner}: knob {self.name}: {value!r} is not "
                                    f"{TYPE_WORDS[t]}") from None
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if t is int and isinstance(value, float) and value.is_integer():
            value = int(value)             # a spec's 1e12 (TOML writes it as a float)
        if not isinstance(value, t) or (t is int and isinstance(value, bool)):
            raise WorkloadError(f"{owner}: knob {self.name}: {value!r} is not {TYPE_WORDS[t]}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            rng = f"{self.lo if self.lo is not None else '-inf'}..{self.hi if self.hi is not None else 'inf'}"
            raise WorkloadError(f"{owner}: knob {self.name}: {value!r} is outside {rng}")
        if self.choices and value not in self.choices:
            raise WorkloadError(f"{owner}: knob {self.name}: {value!r} is not one of "
                                f"{', '.join(map(str, self.choices))}")
        return value


@dataclass
class Workload:
    name: str
    scenario: Scenario
    trace: Trace
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """A registry entry: a generator or a host scenario."""
    name: str
    func: Callable
    stands_for: str
    knobs: tuple[Knob, ...]
    group: str = ""

    def resolve(self, values: dict) -> dict:
        known = {k.name: k for k in self.knobs}
        out = {k.name: k.default for k in self.knobs}
        for name, v in values.items():
            if name not in known:
                raise WorkloadError(f"{self.name}: unknown knob {name!r} "
                                    f"(known: {', '.join(sorted(known))})")
            out[name] = known[name].coerce(v, self.name)
        return out


# KVM_MAX_VCPUS on arm64 = VGIC_V3_MAX_CPUS = 512 (arch/arm64/include/asm/kvm_host.h); the
# trace's vcpu column is uint16, so this also keeps both engines on the same side of overflow.
KVM_MAX_VCPUS = 512


def vcpus_knob(default: int, help: str) -> Knob:
    return Knob("vcpus", default, help, lo=1, hi=KVM_MAX_VCPUS)


def seed_knob(help: str) -> Knob:
    # numpy's SeedSequence takes non-negative integers only
    return Knob("seed", 0, help, lo=0)


def need(cond: bool, owner: str, what: str) -> None:
    if not cond:
        raise WorkloadError(f"{owner}: {what}")


# ---- the registry tables (filled by the generator and host-scenario modules) --------------
GENERATORS: dict[str, Entry] = {}
HOST_SCENARIOS: dict[str, Entry] = {}


def generator(name: str, group: str, stands_for: str, knobs):
    """Register `func(seed, profile, **knobs) -> Workload` as workload generator `name`."""
    def deco(func):
        GENERATORS[name] = Entry(name, func, stands_for, tuple(knobs), group)
        return func
    return deco


def host_scenario(name: str, stands_for: str, knobs):
    """Register `func(workload, **knobs) -> Workload` as host scenario `name`."""
    def deco(func):
        HOST_SCENARIOS[name] = Entry(name, func, stands_for, tuple(knobs), "host")
        return func
    return deco


def interleave(parts: list[tuple], burst: int):
    """Merge per-vCPU access streams [(vcpu, va, kind), ...] as vCPUs running concurrently:
    round-robin turns of `burst` accesses each (vCPU order within a turn)."""
    import numpy as np
    vcs, vas, kds, keys = [], [], [], []
    for v, va, kd in parts:
        n = len(va)
        vcs.append(np.full(n, v, dtype=np.uint16))
        vas.append(np.asarray(va, dtype=np.uint64))
        kds.append(np.broadcast_to(np.asarray(kd, dtype=np.uint8), (n,)))
        keys.append(np.arange(n, dtype=np.int64) // max(1, burst))
    vc, va, kd, key = (np.concatenate(x) for x in (vcs, vas, kds, keys))
    order = np.lexsort((vc, key))          # stable: program order kept within a vCPU
    return vc[order], va[order], kd[order]
