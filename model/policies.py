"""Is a stage-2 fault a write?  The policies as a table of pure functions (docs/semantics.md §3.1).

Each policy answers `kvm_is_write_fault()` (arch/arm64/include/asm/kvm_emulate.h) for one
fault.  All engines share this table (POLICY_TABLE); adding a policy is adding one function,
its vectorised twin, and one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class FaultInfo:
    """What KVM (and the oracle) knows about one stage-2 abort."""
    s1ptw: bool                  # ESR_ELx.S1PTW: fault on a stage-1 descriptor access
    permission: bool             # permission fault (else translation fault)
    instruction: bool            # instruction abort (ESR_ELx.EC == IABT_LOW)
    wnr: bool                    # ESR_ELx.WnR as the hardware reports it
    ha: bool                     # HAFDBS >= 1 and TCR_EL1.HA (what ha-promote reads)
    vm_protected: bool           # pKVM: TCR_EL1 cannot be read by the host
    walk_writes_page: bool       # oracle only: this access, run to completion, updates a
                                 # descriptor stored in the faulting page


Policy = Callable[[FaultInfo], bool]


def _not_s1ptw(f: FaultInfo) -> bool:
    # kvm_is_write_fault(): instruction aborts are reads, data aborts use WnR.
    if f.instruction:
        return False
    return f.wnr


def legacy(f: FaultInfo) -> bool:
    """v5.9 .. v6.2-rc (c4ad98e4b72c): every S1PTW fault is a write."""
    return True if f.s1ptw else _not_s1ptw(f)


def fix(f: FaultInfo) -> bool:
    """v6.2+ (406504c7b040): only a permission fault on a S1PTW is a write."""
    return f.permission if f.s1ptw else _not_s1ptw(f)


def ha_promote(f: FaultInfo) -> bool:
    """Dropped patch 2/3: a S1PTW translation fault is a write iff the guest set TCR_EL1.HA
    (and the host can read it: not a protected VM)."""
    if f.s1ptw:
        return f.permission or (f.ha and not f.vm_protected)
    return _not_s1ptw(f)


def oracle(f: FaultInfo) -> bool:
    """Ideal: a S1PTW translation fault is a write iff this walk will write a descriptor in
    that page (needs the guest tables parsed; docs/scenario-format.md "oracle")."""
    if f.s1ptw:
        return f.permission or f.walk_writes_page
    return _not_s1ptw(f)




# ---- vectorised twins (numpy engine) ----------------------------------------------------------
# Each takes the FaultInfo fields as numpy bool arrays (or Python bools, broadcast) and returns
# a bool array: VECTOR_POLICIES[name](f...)[i] == POLICIES[name](FaultInfo(f...[i])) for every
# input combination (tests/test_engine_vector_policies.py checks all of them).
def _v_not_s1ptw(instruction, wnr):
    return np.logical_and(np.logical_not(instruction), wnr)


def v_legacy(s1ptw, permission, instruction, wnr, ha, vm_protected, walk_writes_page):
    return np.logical_or(s1ptw, _v_not_s1ptw(instruction, wnr))


def v_fix(s1ptw, permission, instruction, wnr, ha, vm_protected, walk_writes_page):
    return np.where(s1ptw, permission, _v_not_s1ptw(instruction, wnr))


def v_ha_promote(s1ptw, permission, instruction, wnr, ha, vm_protected, walk_writes_page):
    promote = np.logical_and(ha, np.logical_not(vm_protected))
    return np.where(s1ptw, np.logical_or(permission, promote), _v_not_s1ptw(instruction, wnr))


def v_oracle(s1ptw, permission, instruction, wnr, ha, vm_protected, walk_writes_page):
    return np.where(s1ptw, np.logical_or(permission, walk_writes_page),
                    _v_not_s1ptw(instruction, wnr))


# ---- the policy table -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyRow:
    """One policy: its answer for one fault, the vectorised twin, and whether it reads
    FaultInfo.walk_writes_page (then an engine must run the faulting access's walk ahead on
    the resolved tables, model.reference.Vm.oracle_walk_writes; the others never need it)."""
    name: str
    is_write: Policy
    vector: Callable
    lookahead: bool


POLICY_TABLE: dict[str, PolicyRow] = {row.name: row for row in (
    PolicyRow("fix", fix, v_fix, lookahead=False),
    PolicyRow("legacy", legacy, v_legacy, lookahead=False),
    PolicyRow("ha-promote", ha_promote, v_ha_promote, lookahead=False),
    PolicyRow("oracle", oracle, v_oracle, lookahead=True),
)}
POLICIES: dict[str, Policy] = {name: row.is_write for name, row in POLICY_TABLE.items()}
VECTOR_POLICIES = {name: row.vector for name, row in POLICY_TABLE.items()}
DEFAULT_ORDER = tuple(POLICY_TABLE)


def needs_lookahead(policy: str) -> bool:
    """Does the policy read walk_writes_page (POLICY_TABLE's `lookahead` column)?"""
    return POLICY_TABLE[policy].lookahead
