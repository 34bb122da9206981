"""The architectural steps of a stage-1 translation, written once for every engine.

Each function works on Python ints/bools (the reference simulator, model/reference.py, one
access at a time) and broadcasts over numpy arrays (the numpy engine, model/engine_walk.py and
model/engine_chunk.py, many accesses at once) — the pattern of model/policies.py's vector
twins.  Only `&`, `|`, `^` and comparisons are used, so a Python bool stays a bool and a numpy
bool array stays one (`x ^ True` is "not x" for both; `~` is not, on a Python bool).

Sources: Arm ARM DDI0487 (AArch64.S1Walk, AArch64.S1CheckPermissions, AArch64.S1Translate's
hardware-update step, AArch64.S2Translate's permission check); QEMU target/arm/ptw.c
`get_phys_addr_lpae`.
"""
from __future__ import annotations

from .arch import (DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_SIZE, DESC_TABLE, DESC_VALID,
                   Geometry)

# stage-2 state of a 4 KiB IPA page (model.host's page tables hold these codes)
S2_UNMAPPED, S2_RO, S2_RW = 0, 1, 2
# stage-2 check of one access (s2_check)
S2_OK, S2_TRANSLATION, S2_PERMISSION = 0, 1, 2

# stage-1 fault codes of a completed walk's leaf check (S1_FAULT_NAMES: Stage1Fault's text)
S1_NONE, S1_ACCESS_FLAG, S1_PERMISSION = 0, 1, 2
S1_FAULT_NAMES = {S1_ACCESS_FLAG: "access flag", S1_PERMISSION: "permission"}


def _bit(desc, bit: int):
    """Is `bit` set in `desc` (an int, or a uint64 array)?"""
    return (desc & bit) != 0


def desc_address(table, va, shift: int, mask: int):
    """IPA of the descriptor a walk reads at one level: the table's address plus the VA's
    index bits for that level (`shift`, `mask`: Geometry.walk_steps) times 8 bytes
    (AArch64.S1Walk's descaddr)."""
    return table + ((va >> shift) & mask) * DESC_SIZE


def kernel_table_step(desc, level: int):
    """One level above the leaf of the guest kernel's software walk (pgd_offset ..
    pmd_offset after the p?d_none / p?d_bad checks): (follow: a table descriptor, whose
    output address the walk goes on to; bad: valid but not a table, a block, which the model's
    kernel never walks through).  Invalid (none): neither, the walk ends (or allocates)."""
    valid = _bit(desc, DESC_VALID)
    table = valid & _bit(desc, DESC_TABLE) & (level < 3)
    return table, valid & (table ^ True)


def s1_descriptor(desc, level: int, geo: Geometry):
    """One level of AArch64.S1Walk: (is a table descriptor to follow, is the walk's leaf).
    Neither: a translation fault (invalid descriptor, reserved encoding at level 3 — valid
    with bit 1 clear — or a block where the granule allows none, D8.3)."""
    valid = _bit(desc, DESC_VALID)
    bit1 = _bit(desc, DESC_TABLE)
    if level < 3:
        table = valid & bit1
        leaf = valid & (bit1 ^ True) & (geo.block_size(level) is not None)
    else:
        table = valid & False
        leaf = valid & bit1
    return table, leaf


def s1_leaf_fault(af, ap2, dbm, pxn, fetch, store, ha, hd):
    """AArch64.S1CheckPermissions of a completed walk's leaf (AF, AP[2], DBM, PXN bits) for
    an instruction fetch or a store (else a load), with the effective TCR_EL1.HA/HD: S1_NONE,
    S1_ACCESS_FLAG (AF = 0 without HA: the AF check comes first, I_DSHLJ) or S1_PERMISSION
    (PXN on a fetch; a store to AP[2] = 1 unless DBM with HD, R_PQJJR)."""
    af_fault = (af ^ True) & (ha ^ True)
    perm = (fetch & pxn) | (store & ap2 & ((dbm & hd) ^ True))
    return af_fault * S1_ACCESS_FLAG + (perm & (af_fault ^ True)) * S1_PERMISSION


def hw_updates_apply(ha, at: bool, at_sets_af: bool):
    """Does a completed walk make hardware updates at all?  Only with HA, and not for an AT
    instruction unless the CPU's AT sets AF (IMPLEMENTATION DEFINED, R_XQSMX)."""
    return ha & ((at & (at_sets_af ^ True)) ^ True)


def leaf_hw_update(af, ap2, dbm, store, hd):
    """AArch64.S1Translate's hardware update of the leaf: (set AF: AF was 0; clear AP[2]: a
    store through a DBM = 1, AP[2] = 1 leaf with HD, the dirty state, R_PQJJR).  The
    descriptor is written back when either holds (`if new_desc != descriptor`, R_LFTXR), or
    on every walk with hw_update = "always"."""
    return af ^ True, store & hd & dbm & ap2


def table_hw_update(table_af, haft):
    """FEAT_HAFT: a walk sets the AF of each table descriptor it used that has AF = 0
    (R_CGKWB)."""
    return haft & (table_af ^ True)


def leaf_bits(leaf):
    """(AF, AP[2], DBM, PXN) of a leaf descriptor (an int, or a uint64 array)."""
    return (_bit(leaf, DESC_AF), _bit(leaf, DESC_AP2), _bit(leaf, DESC_DBM),
            _bit(leaf, DESC_PXN))


def apply_leaf_update(leaf, set_af, clear_ap2):
    """The leaf descriptor after leaf_hw_update's changes (ints only)."""
    if set_af:
        leaf |= DESC_AF
    if clear_ap2:
        leaf &= ~DESC_AP2
    return leaf


def output_address(leaf, size, va, oa_mask):
    """The leaf's output address for `va`: the descriptor's OA bits above the page or block
    size (`size` bytes), the VA's bits below it (AArch64.S1Translate, the walk's result)."""
    return (leaf & oa_mask & ~(size - 1)) | (va & (size - 1))


def s2_check(state, write):
    """AArch64.S2Translate's check of one access to a page in stage-2 state `state` (S2_*):
    S2_OK, S2_TRANSLATION (unmapped) or S2_PERMISSION (a write to a read-only page)."""
    return (state == S2_UNMAPPED) * S2_TRANSLATION + ((state == S2_RO) & write) * S2_PERMISSION
