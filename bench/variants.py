"""Hardware variants: what the machine implements (FEAT_HAFDBS level, FEAT_HAFT, how the
walker writes descriptors back) and what that makes a Linux guest set (docs/semantics.md §2, §4).

A variant changes the machine only, except where Linux turns a feature on when it is present
(TCR2_EL1.HAFT with FEAT_HAFT, v6.13+) or the VM type changes (pKVM).  The guest's own TCR
choices (e.g. firmware running with HA clear) are kept: effective HA/HD follow from them and
the machine's HAFDBS level (docs/semantics.md §2).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from model.scenario import Scenario


def _set(scn: Scenario, machine: dict | None = None, guest: dict | None = None) -> Scenario:
    return replace(scn, machine=replace(scn.machine, **(machine or {})),
                   guest=replace(scn.guest, **(guest or {})))


VARIANTS: dict[str, tuple[str, Callable[[Scenario], Scenario]]] = {
    "default": ("the workload's machine as built (Linux profile: HAFDBS = 2, HA = HD = 1)",
                lambda s: s),
    "af-only": ("HAFDBS = 1: hardware AF, no hardware dirty state (like HD off on the "
                "A55 #1024718 / A510 #2051678 errata)",
                lambda s: _set(s, {"hafdbs": 1})),
    "no-hafdbs": ("no FEAT_HAFDBS (or KVM forcing HA/HD off, Ampere1 AC03_CPU_38): "
                  "ha-promote acts as fix", lambda s: _set(s, {"hafdbs": 0})),
    "haft": ("FEAT_HAFT, enabled by Linux v6.13+ (TCR2_EL1.HAFT): table AF updated too",
             lambda s: _set(s, {"haft": True}, {"tcr2_haft": True})),
    "hw-always": ("hw_update = always: the walker writes the descriptor back on every walk "
                  "with HA (the atomic-OR reading in the seed thread)",
                  lambda s: _set(s, {"hw_update": "always"})),
    "pkvm": ("protected VM: the host cannot read TCR_EL1, ha-promote acts as fix",
             lambda s: _set(s, None, {"vm_protected": True})),
    # comparison machines, not arm64 policies (model/x86.py, docs/x86.md): every policy row
    # of a run is the same x86 machine
    "x86-ept-ad": ("x86 comparison: EPT with A/D flags + PML; walk accesses are writes at "
                   "stage 2 (SDM Vol. 3C 'Accessed and Dirty Flags for EPT')",
                   lambda s: _set(s, {"isa": "x86-ept-ad"})),
    "x86-ept": ("x86 comparison: EPT without A/D flags, write-protect dirty logging; walk "
                "reads are reads, the walker's A/D updates writes",
                lambda s: _set(s, {"isa": "x86-ept"})),
}


def apply_variant(scn: Scenario, name: str) -> Scenario:
    if name not in VARIANTS:
        raise KeyError(name)
    return VARIANTS[name][1](scn)
