"""A micro-scenario -> the line-based replay script that bench/kvm/ptw_replay.c reads.

The script is the scenario with everything the guest program needs precomputed here, from
the model's own table builder (model/stage1.py, docs/scenario-format.md's layout), so that
the C program stays a plain interpreter:

* every IPA moves up by IPA_SHIFT (1 GiB-aligned, so 2 MiB blocks and table indices are
  unchanged) to keep the scenario's memslots clear of the selftests library's memslot 0;
* the stage-1 tables are written as `desc IPA VALUE` lines: the model's descriptors with
  their output addresses shifted and, for leaves, the attributes a real walk needs
  (AttrIndx = the library's MT_NORMAL, inner shareable; the model leaves them 0);
* the guest reaches the scenario's VAs through TTBR1_EL1: VA | ~(2^va_bits - 1) walks the
  same table indices (the walk uses VA bits below va_bits only; Arm ARM D8.2), so the
  library's TTBR0 tables (code, stack, ucalls) never touch the scenario's slots.

What the replay cannot express raises Unsupported (a reason, one line): the run skips the
scenario and the report lists it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from model.arch import DESC_VALID, HOST_PAGE
from model.host_ops import step_pages
from model.scenario import Scenario
from model.stage1 import build_tables

IPA_SHIFT = 0x10_0000_0000          # 64 GiB: above the library's memslot 0 and ucall MMIO page
IPA_LIMIT = 1 << 40                 # VM_MODE_P40V48_4K: 40-bit IPA space
MAX_VCPUS = 8                       # ptw_replay.c MAX_VCPUS
MAX_SLOTS = 16                      # ptw_replay.c MAX_SLOTS
ATTR_NORMAL = 4 << 2                # AttrIndx = MT_NORMAL (selftests processor.h DEFAULT_MAIR_EL1)
SH_INNER = 3 << 8                   # SH[1:0] = inner shareable
TG1 = {4096: 2, 16384: 1, 65536: 3}  # TCR_EL1.TG1 encodings (Arm ARM D19 TCR_EL1)
HOST_OPS = ("punch_hole", "zap", "uffd_wp")
GUEST_OPS = ("access", "clear_af", "flush_tlb")
HUGE = 512                          # 4 KiB pages per 2 MiB hugetlb page


class Unsupported(ValueError):
    """The replay cannot run this scenario (the reason is the message)."""


@dataclass(frozen=True)
class Export:
    script: str
    slot_names: tuple[str, ...]      # slot index in the script -> scenario slot name
    slot_ipas: tuple[int, ...]       # shifted base IPA per slot index


def ttbr1_va(va: int, va_bits: int) -> int:
    """The TTBR1 alias of a TTBR0 VA: the same walk indices (bits below va_bits)."""
    return va | ((1 << 64) - (1 << va_bits))


def shift_desc(desc: int, oa_mask: int, leaf: bool) -> int:
    """A model descriptor as the real walk needs it: output address + IPA_SHIFT, and
    Normal inner-shareable attributes on leaves."""
    if not desc & DESC_VALID:
        return desc
    oa = (desc & oa_mask) + IPA_SHIFT
    out = (desc & ~oa_mask) | (oa & oa_mask)
    return out | ATTR_NORMAL | SH_INNER if leaf else out


def check_supported(scn: Scenario) -> None:
    """Raise Unsupported naming the first thing the replay cannot express."""
    m, g = scn.machine, scn.guest
    reasons = [
        (m.isa != "arm64", f"isa {m.isa}: not an arm64 machine"),
        (m.haft or g.tcr2_haft, "FEAT_HAFT: QEMU 7.2's -cpu max does not implement it"),
        (m.hw_update != "on-change", "hw_update 'always': QEMU updates only on change"),
        (g.vm_protected, "vm_protected: no pKVM protected VMs here"),
        (len(scn.memslots) > MAX_SLOTS, f"more than {MAX_SLOTS} memslots"),
    ]
    for bad, why in reasons:
        if bad:
            raise Unsupported(why)
    for s in scn.memslots:
        if s.end + IPA_SHIFT > IPA_LIMIT:
            raise Unsupported(f"slot {s.name}: IPA beyond 40 bits after the shift")
        if s.backing == "hugetlb" and (s.pages % HUGE or (s.ipa // HOST_PAGE) % HUGE):
            raise Unsupported(f"slot {s.name}: hugetlb slot not 2 MiB-aligned/sized")
        if s.uffd == "minor" and s.backing != "shmem":
            raise Unsupported(f"slot {s.name}: uffd minor is replayed on shmem only")
    _check_steps(scn)


def _check_steps(scn: Scenario) -> None:
    log_at_start = any(s.log_dirty for s in scn.memslots)
    init_set = {st.initially_set for st in scn.steps if st.op == "enable_dirty_log"}
    if True in init_set and (False in init_set or log_at_start):
        raise Unsupported("initially_set mixed with other dirty logging (one VM-wide cap)")
    for i, st in enumerate(scn.steps):
        if st.op not in GUEST_OPS + HOST_OPS + ("set_tcr", "enable_dirty_log", "harvest"):
            raise Unsupported(f"step {i}: op {st.op} is not replayed")
        if st.op == "enable_dirty_log" and st.eager_split:
            raise Unsupported(f"step {i}: eager_split is not replayed")
        if st.op == "set_tcr" and st.haft:
            raise Unsupported(f"step {i}: set_tcr haft (no FEAT_HAFT in QEMU 7.2)")
        if st.op == "harvest" and st.pages is not None:
            raise Unsupported(f"step {i}: partial harvest is not replayed")
        if st.vcpu >= MAX_VCPUS:
            raise Unsupported(f"step {i}: vCPU {st.vcpu} (at most {MAX_VCPUS})")


def _slot_lines(scn: Scenario) -> list[str]:
    out = []
    for s in scn.memslots:
        out.append(f"slot {s.ipa + IPA_SHIFT:#x} {s.pages} {int(s.readonly)} "
                   f"{int(s.log_dirty)} {s.backing} {int(s.populated)} {s.uffd} "
                   f"{int(s.uffd_resolve == 'slot')}")
    return out


def _effective_tcr(scn: Scenario, ha: bool, hd: bool) -> tuple[int, int]:
    """TCR_EL1.HA/HD as the model's machine makes them effective (docs/semantics.md §2):
    QEMU's -cpu max has HAFDBS = 2, so a smaller hafdbs is emulated by clearing the bits."""
    eff_ha = ha and scn.machine.hafdbs >= 1
    return int(eff_ha), int(eff_ha and hd and scn.machine.hafdbs >= 2)


def _table_lines(scn: Scenario) -> tuple[list[str], dict[int, int]]:
    tables = build_tables(scn)
    geo = tables.geometry
    leaves = set(tables.leaf_addr.values())
    lines = [f"ttbr1 {tables.root + IPA_SHIFT:#x} {64 - geo.va_bits} {TG1[geo.granule]}"]
    pt = scn.slot(scn.guest.pt_slot)
    lines.append(f"window {pt.ipa + IPA_SHIFT:#x} {pt.pages}")
    for addr in sorted(tables.descriptors):
        d = shift_desc(tables.descriptors[addr], geo.oa_mask, addr in leaves)
        lines.append(f"desc {addr + IPA_SHIFT:#x} {d:#x}")
    return lines, tables.leaf_addr


def _ipa_of(scn: Scenario, va: int) -> int:
    g = scn.machine.granule
    for m in scn.mappings:
        if m.va <= va < m.va + m.pages * g:
            return m.ipa + (va - m.va)
    raise Unsupported(f"VA {va:#x} is not mapped")


def _exec_lines(scn: Scenario) -> list[str]:
    pages = sorted({_ipa_of(scn, st.va) & ~(HOST_PAGE - 1) for st in scn.steps
                    if st.op == "access" and st.kind == "exec"})
    return [f"exec {p + IPA_SHIFT:#x}" for p in pages]


def _runs(pages) -> list[tuple[int, int]]:
    """Contiguous (first, count) runs of an ascending page list."""
    out: list[tuple[int, int]] = []
    for p in (int(x) for x in pages):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def _whole_huge_pages(i: int, op: str, pages):
    """hugetlb: the kernel changes protection in whole 2 MiB pages (mprotect and
    UFFDIO_WRITEPROTECT fail with EINVAL otherwise).  A zap of part of a block unmaps the
    whole block at stage 2 anyway (docs/scenario-format.md, Blocks), so it is widened;
    write-protecting part of a huge page has no kernel equivalent."""
    blocks = sorted({int(p) // HUGE for p in pages})
    whole = [b * HUGE + k for b in blocks for k in range(HUGE)]
    if op == "uffd_wp" and len(whole) != len(pages):
        raise Unsupported(f"step {i}: uffd_wp of part of a 2 MiB hugetlb page")
    return whole


def _step_lines(scn: Scenario, i: int, st, idx: dict[str, int], leaf_addr) -> list[str]:
    vb, g = scn.machine.va_bits, scn.machine.granule
    if st.op == "access":
        return [f"step {i} access {st.vcpu} {ttbr1_va(st.va, vb):#x} {st.kind}"]
    if st.op == "clear_af":
        pte = leaf_addr[st.va & ~(g - 1)] + IPA_SHIFT
        return [f"step {i} clear_af {st.vcpu} {ttbr1_va(st.va, vb):#x} {pte:#x}"]
    if st.op == "set_tcr":
        return [f"step {i} set_tcr {st.ha} {st.hd}"]
    if st.op == "flush_tlb":
        return [f"step {i} flush_tlb {st.vcpu}"]
    if st.op in ("enable_dirty_log", "harvest"):
        return [f"step {i} {st.op} {idx[st.slot]}"]
    slot = scn.slot(st.slot)
    if st.op == "punch_hole":
        return [f"step {i} punch_hole {idx[st.slot]} 0 {slot.pages}"]
    if st.op == "uffd_wp" and slot.uffd != "wp":
        raise Unsupported(f"step {i}: uffd_wp on slot {slot.name} not registered for wp")
    pages = step_pages(st, slot.pages)
    if slot.backing == "hugetlb":
        pages = _whole_huge_pages(i, st.op, pages)
    runs = _runs(pages)
    return [f"step {i} {st.op} {idx[st.slot]} {a} {n}" for a, n in runs]


def export_script(scn: Scenario) -> Export:
    """The replay script of one scenario (Unsupported if it cannot be replayed)."""
    check_supported(scn)
    nvcpus = 1 + max((st.vcpu for st in scn.steps), default=0)
    initially_set = any(st.op == "enable_dirty_log" and st.initially_set for st in scn.steps)
    ha, hd = _effective_tcr(scn, scn.guest.tcr_ha, scn.guest.tcr_hd)
    lines = [f"# {scn.name} ({scn.source})",
             f"vm {nvcpus} {ha} {hd} {int(scn.vmm.mmio_store == 'write_backing')} "
             f"{int(initially_set)}"]
    lines += _slot_lines(scn)
    tlines, leaf_addr = _table_lines(scn)
    lines += tlines + _exec_lines(scn) + ["go"]
    idx = {s.name: k for k, s in enumerate(scn.memslots)}
    cur_ha, cur_hd = scn.guest.tcr_ha, scn.guest.tcr_hd
    for i, st in enumerate(scn.steps):
        if st.op == "set_tcr":              # unset fields keep their value (model.reference)
            cur_ha = cur_ha if st.ha is None else st.ha
            cur_hd = cur_hd if st.hd is None else st.hd
            st = replace(st, **dict(zip(("ha", "hd"), _effective_tcr(scn, cur_ha, cur_hd))))
        lines += _step_lines(scn, i, st, idx, leaf_addr)
    lines.append("end")
    return Export("\n".join(lines) + "\n", tuple(idx),
                  tuple(s.ipa + IPA_SHIFT for s in scn.memslots))



def as_qemu(scn: Scenario) -> Scenario:
    """The scenario on QEMU 7.2's machine: its AT S1E1R updates AF like any walk with HA
    (target/arm/ptw.c get_phys_addr_lpae() makes no exception for AT; the choice is
    IMPLEMENTATION DEFINED, Arm ARM R_XQSMX).  The model is run with at_sets_af = true for
    the comparison; the report says so."""
    if scn.machine.at_sets_af or not any(st.kind == "at" for st in scn.steps):
        return scn
    return replace(scn, machine=replace(scn.machine, at_sets_af=True))


def replayable(scn: Scenario) -> Scenario:
    """A generated scenario with what the replay cannot express turned off (the generated
    set of `ptwbench kvm check --generated`): no FEAT_HAFT, on-change updates,
    no pKVM; steps the replay lacks dropped (swap_out, the guest kernel's internal ops, eager
    split, partial harvests); hugetlb slots that are not 2 MiB-shaped become anon_thp, uffd
    minor stays on shmem only; initially_set only where it is the VM's only logging mode."""
    from model.scenario import Guest, Machine
    m, g = scn.machine, scn.guest
    machine = Machine(m.granule, m.va_bits, m.hafdbs, False, "on-change", m.at_sets_af, "arm64")
    guest = Guest(g.tcr_ha, g.tcr_hd, False, g.pt_slot, False)
    slots = []
    for s in scn.memslots:
        if s.backing == "hugetlb" and (s.pages % HUGE or (s.ipa // HOST_PAGE) % HUGE):
            s = replace(s, backing="anon_thp")
        if s.uffd == "minor" and s.backing != "shmem":
            s = replace(s, uffd="none")
        slots.append(s)
    wp = {s.name for s in slots if s.uffd == "wp"}
    mixed = any(s.log_dirty for s in slots) or len(
        {st.initially_set for st in scn.steps if st.op == "enable_dirty_log"}) > 1
    steps = []
    for st in scn.steps:
        if st.op not in GUEST_OPS + HOST_OPS + ("set_tcr", "enable_dirty_log", "harvest"):
            continue
        if st.op == "uffd_wp" and st.slot not in wp:
            continue
        if st.op == "enable_dirty_log":
            st = replace(st, eager_split=False, initially_set=st.initially_set and not mixed)
        if st.op == "set_tcr":
            st = replace(st, haft=None)
        if st.op == "harvest":
            st = replace(st, pages=None)
        steps.append(st)
    return replace(scn, machine=machine, guest=guest, memslots=tuple(slots),
                   steps=tuple(steps))
