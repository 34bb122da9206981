"""The trace: a scenario's accesses as flat numpy columns, its other steps as events.

An access costs 11 bytes (vcpu uint16, va uint64, kind uint8), plus 4 for the optional
`step_of_access` (int32; the scenario step index, for uffd event `step` numbers).
Every step that is not an `access` (clear_af, set_tcr, punch_hole, zap, swap_out, uffd_wp,
enable_dirty_log, harvest, flush_tlb) is an event `(pos, step_index, Step)` that applies
BEFORE access `pos`; events at the same position apply in list order, and `pos == len(trace)`
means after every access.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .scenario import ACCESS_KINDS, Scenario, Step

KINDS = ACCESS_KINDS                       # kind code = index into KINDS
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
READ64, WRITE64, LD_PREIDX, ST_PREIDX, CAS, DC_ZVA, EXEC, AT = range(len(KINDS))

# Stores (docs/semantics.md §3.1 WnR): STR, STR pre-index, CAS (atomic RMW), DC ZVA.  Same set as
# model.reference.STORES.
STORE_KINDS = frozenset(KIND_CODE[k] for k in ("write64", "st_preidx", "cas", "dc_zva"))
# ISV = 1 only for plain single-register LDR/STR (model.reference.ISV_KINDS).
ISV_KINDS = frozenset(KIND_CODE[k] for k in ("read64", "write64"))

# Lookup masks for vectorised use: STORE_MASK[kind_array] -> bool array.
STORE_MASK = np.zeros(len(KINDS), dtype=bool)
STORE_MASK[list(STORE_KINDS)] = True
ISV_MASK = np.zeros(len(KINDS), dtype=bool)
ISV_MASK[list(ISV_KINDS)] = True

Event = tuple[int, int, Step]              # (position, scenario step index, step)


@dataclass
class Trace:
    vcpu: np.ndarray                       # uint16, one per access
    va: np.ndarray                         # uint64
    kind: np.ndarray                       # uint8, index into KINDS
    events: list[Event] = field(default_factory=list)
    step_of_access: np.ndarray | None = None   # int32 scenario step index, or None

    def __post_init__(self) -> None:
        self.vcpu = np.ascontiguousarray(self.vcpu, dtype=np.uint16)
        self.va = np.ascontiguousarray(self.va, dtype=np.uint64)
        self.kind = np.ascontiguousarray(self.kind, dtype=np.uint8)
        n = len(self.va)
        if len(self.vcpu) != n or len(self.kind) != n:
            raise ValueError(f"trace columns differ in length: vcpu {len(self.vcpu)}, "
                             f"va {n}, kind {len(self.kind)}")
        if n and int(self.kind.max()) >= len(KINDS):
            raise ValueError(f"kind code {int(self.kind.max())} is not in KINDS")
        if self.step_of_access is not None:
            self.step_of_access = np.ascontiguousarray(self.step_of_access, dtype=np.int32)
            if len(self.step_of_access) != n:
                raise ValueError("step_of_access length differs from the trace")
        last = 0
        for pos, _idx, st in self.events:
            if not last <= pos <= n:
                raise ValueError(f"event {st.op!r} at position {pos}: positions must be "
                                 f"non-decreasing and within 0..{n}")
            if st.op == "access":
                raise ValueError("an access step cannot be an event")
            last = pos

    def __len__(self) -> int:
        return len(self.va)

    @property
    def nbytes(self) -> int:
        """Bytes held by the access columns (events not counted)."""
        n = self.vcpu.nbytes + self.va.nbytes + self.kind.nbytes
        if self.step_of_access is not None:
            n += self.step_of_access.nbytes
        return n

    def intervals(self) -> Iterator[tuple[int, int, list[Event]]]:
        """Yield (start, end, events): `events` apply before access `start`, then accesses
        [start, end) run with no event between them.  The last interval may be empty
        (events after every access); an empty trace with no events yields nothing."""
        n = len(self)
        i = 0
        ev = self.events
        start = 0
        while i < len(ev) or start < n:
            here = []
            while i < len(ev) and ev[i][0] == start:
                here.append(ev[i])
                i += 1
            end = ev[i][0] if i < len(ev) else n
            yield start, end, here
            if end == start and i >= len(ev):
                break
            start = end


def trace_from_scenario(scn: Scenario) -> Trace:
    """Accesses of `scn.steps` in order; every other step becomes an event."""
    vcpu, va, kind, sidx = [], [], [], []
    events: list[Event] = []
    for i, st in enumerate(scn.steps):
        if st.op == "access":
            vcpu.append(st.vcpu)
            va.append(st.va)
            kind.append(KIND_CODE[st.kind])
            sidx.append(i)
        else:
            events.append((len(va), i, st))
    return Trace(np.array(vcpu, dtype=np.uint16), np.array(va, dtype=np.uint64),
                 np.array(kind, dtype=np.uint8), events, np.array(sidx, dtype=np.int32))
