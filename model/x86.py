"""x86 comparison machines: the stage-2 (EPT) rules that differ from KVM/arm64, written once
and called by the reference simulator (model/reference.py, model/host.py); the numpy engine
runs x86 machines through that same reference code (model/engine.py), see docs/x86.md.

`machine.isa` selects the machine:
* "arm64" (default): everything in docs/semantics.md.
* "x86-ept-ad": Intel EPT with accessed/dirty flags (EPTP bit 6) and Page Modification
  Logging (PML).  Intel SDM Vol. 3C §28.3.5 (§28.2.4 in older editions) "Accessed and Dirty
  Flags for EPT": with EPT A/D enabled, processor accesses to guest paging-structure entries
  are treated as writes for EPT purposes (they need write permission, set the EPT dirty flag,
  and an EPT violation on them reports a write in the exit qualification).  KVM commit
  ae1e2d1082ae "kvm: nVMX: support EPT accessed/dirty bits" states the same.
* "x86-ept": EPT without A/D flags; dirty logging write-protects (no PML, KVM's
  kvm_mmu_slot_remove_write_access).  Walk reads are reads; the guest walker's own A/D
  updates of its paging-structure entries are writes.

On both x86 machines the guest walker always sets the accessed flag of every paging-structure
entry it uses and the dirty flag of the leaf on a write (SDM Vol. 3A §4.8 "Accessed and Dirty
Flags"); the model maps this onto its hardware-update rules as HA = HD = 1 with table AF
updates (HAFT) on, on-change (an x86 walker writes an entry only to set a clear flag).  There
is no guest "access flag fault" and no KVM policy choice: the EPT violation's exit
qualification reports the access type (handle_ept_violation(), arch/x86/kvm/vmx/vmx.c:
EPT_VIOLATION_ACC_WRITE -> PFERR_WRITE_MASK), so the four arm64 policies are the same machine.
"""
from __future__ import annotations

ISAS = ("arm64", "x86-ept-ad", "x86-ept")
X86_ISAS = ISAS[1:]

# PML buffer: 512 8-byte entries (arch/x86/kvm/vmx/vmx.h PML_LOG_NR_ENTRIES, formerly
# PML_ENTITY_NUM = 512; SDM Vol. 3C §29.3.6 "Page-Modification Logging").  The 513th logged
# write since the buffer was last emptied takes a "page-modification log full" VM exit.
PML_ENTRIES = 512


def is_x86(machine) -> bool:
    return getattr(machine, "isa", "arm64") in X86_ISAS


def walk_access_is_write(machine) -> bool:
    """A descriptor access by the guest's page walk is a write at stage 2 (EPT A/D on)."""
    return getattr(machine, "isa", "arm64") == "x86-ept-ad"


def pml_logs(machine) -> bool:
    """Dirty logging by clearing EPT dirty flags and logging 0->1 transitions in the PML
    buffer (vmx_slot_enable_log_dirty -> kvm_mmu_slot_leaf_clear_dirty; in later kernels
    kvm_mmu_slot_apply_flags with kvm_x86_ops.cpu_dirty_log_size), instead of
    write-protecting 4 KiB mappings.  Huge mappings are still write-protected
    (kvm_mmu_slot_largepage_remove_write_access / kvm_mmu_slot_remove_write_access(PG_LEVEL_2M))."""
    return getattr(machine, "isa", "arm64") == "x86-ept-ad"


def hardware_write(s1ptw: bool, permission: bool, instruction: bool, wnr: bool) -> bool:
    """KVM/x86's "is this fault a write": the exit qualification's access type
    (handle_ept_violation(): EPT_VIOLATION_ACC_WRITE -> PFERR_WRITE_MASK).  A walk access
    reports a write only when EPT A/D made it one; the caller passes that as `wnr`."""
    if instruction and not s1ptw:
        return False
    return wnr


class PmlBuffers:
    """One PML buffer per vCPU (the VMCS's PML address/index are per vCPU).  KVM empties a
    vCPU's buffer on every VM exit (vmx_handle_exit -> vmx_flush_pml_buffer) and all of them
    when it kicks every vCPU (kvm_flush_remote_tlbs, and dirty-log harvest:
    kvm_arch_sync_dirty_log / vmx_flush_pml_buffers).  ASSUMPTION: every vCPU is running, so
    every kick makes an exit that empties its buffer."""

    def __init__(self, result) -> None:
        self.used: dict[int, int] = {}
        self.r = result                   # PolicyResult: pml_full_exits

    def log(self, vcpu: int) -> None:
        """One guest-physical address logged (an EPT dirty flag set from 0 to 1)."""
        n = self.used.get(vcpu, 0)
        if n >= PML_ENTRIES:              # handle_pml_full(): an exit, then the write logs
            self.r.pml_full_exits += 1
            n = 0
        self.used[vcpu] = n + 1

    def exit(self, vcpu: int) -> None:
        self.used[vcpu] = 0

    def kick_all(self) -> None:
        self.used.clear()


def one_machine(scn, policies, run):
    """Under an x86 machine the arm64 policies are one machine (hardware reports the access
    type): run the first policy only and give every policy row the same result (docs/x86.md).
    `run(policies)` runs the given policies and returns {policy: PolicyResult}."""
    policies = list(dict.fromkeys(policies))
    if not is_x86(scn.machine) or len(policies) < 2:
        return run(policies)
    import copy
    first = run(policies[:1])[policies[0]]
    out = {}
    for p in policies:
        r = copy.deepcopy(first)
        r.policy = p
        out[p] = r
    return out
