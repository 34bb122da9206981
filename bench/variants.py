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


class VariantError(ValueError):
    """A variant that contradicts the guest profile it would run with; one line."""


# CPU profiles (workloads/linux.py CPUS) a variant contradicts, and why: a variant that
# would take a feature away that the CPU needs, or add one the guest could not have used
_NO_HA = "the guest runs with TCR_EL1.HA clear: the walker writes nothing back"
CONTRADICTS = {
    "haft": {c: f"cpu={c} has no FEAT_HAFT (--variant haft runs the haft CPU profile)"
             for c in ("cortex-a72", "cortex-a55", "cortex-a510", "ampere1")},
    "af-only": {"haft": "FEAT_HAFT implies HAFDBS = 3, not 1",
                "cortex-a72": "cpu=cortex-a72 has no FEAT_HAFDBS: its guest set no HA"},
    "no-hafdbs": {"haft": "FEAT_HAFT implies FEAT_HAFDBS"},
    "hw-always": {"cortex-a72": _NO_HA, "ampere1": _NO_HA},
}


def contradiction(variant: str, cpu: str | None) -> str | None:
    """Why `variant` cannot run with the guest profile's `cpu` (None: fine)."""
    why = CONTRADICTS.get(variant, {}).get(cpu or "")
    return f"--variant {variant} contradicts cpu={cpu}: {why}" if why else None


def variant_workload(w, name: str):
    """`w` as variant `name` runs it: the machine (apply_variant) and, for `haft`, the
    guest profile's part too.  The haft CPU profile differs from the default only in
    TCR2_EL1.HAFT and in aging's non-leaf pass (workloads/linux.py _age: nonleaf =
    age_nonleaf and HAFT), so the guest_age steps take nonleaf = age_nonleaf: the same
    workload as building it with cpu = haft (tests/test_variants.py).  Raises VariantError
    when the variant contradicts the profile."""
    from dataclasses import replace as rep

    from workloads.base import Workload
    prof = w.meta.get("profile") or {}
    why = contradiction(name, prof.get("cpu"))
    if why:
        raise VariantError(f"{w.name}: {why}")
    scn = apply_variant(w.scenario, name)
    trace = w.trace
    if name == "haft" and prof and prof.get("age_nonleaf", True):
        tr = w.trace
        ev = [(p, i, rep(st, nonleaf=True) if st.op == "guest_age" else st)
              for p, i, st in tr.events]
        trace = type(tr)(tr.vcpu, tr.va, tr.kind, ev, tr.step_of_access)
    return Workload(w.name, scn, trace, w.meta)
