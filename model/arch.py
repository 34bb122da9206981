"""AArch64 stage-1 translation geometry and descriptor encoding (docs/semantics.md §2).

Sources: Arm ARM DDI0487 D8.2 (translation granules, levels), D8.3 (descriptor formats),
D8.5 (hardware updates); QEMU target/arm/ptw.c `get_phys_addr_lpae`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

HOST_PAGE_SHIFT = 12            # host PAGE_SIZE, and stage-2 page granularity (4 KiB)
HOST_PAGE = 1 << HOST_PAGE_SHIFT
DESC_SIZE = 8                   # 64-bit descriptors

GRANULES = {"4k": 4096, "16k": 16384, "64k": 65536}

# Descriptor bits (DDI0487 D8.3 "VMSAv8-64 translation table descriptor formats").
DESC_VALID = 1 << 0             # bit 0: valid
DESC_TABLE = 1 << 1             # bit 1: table (levels < 3) / page (level 3); 0 at levels < 3 = block
DESC_AP2 = 1 << 7               # bit 7: AP[2], 1 = read-only (AP[2:1] = 0b1x)
DESC_AF = 1 << 10               # bit 10: Access Flag; FEAT_HAFT: also on table descriptors
DESC_DBM = 1 << 51              # bit 51: Dirty Bit Modifier (Linux PTE_DBM == PTE_WRITE)
DESC_PXN = 1 << 53              # bit 53: PXN (EL1 execute-never)
DESC_UXN = 1 << 54              # bit 54: UXN/XN
OA_TOP_BIT = 47                 # output address bits [47:log2(G)] (48-bit OA, no FEAT_LPA)

BLOCK_LEVELS = {                # levels at which a block descriptor is allowed (D8.2.x)
    4096: (1, 2),               # 1 GiB at L1, 2 MiB at L2
    16384: (2,),                # 32 MiB at L2
    65536: (2,),                # 512 MiB at L2
}


class GeometryError(ValueError):
    """va_bits impossible for the granule."""


@dataclass(frozen=True)
class Geometry:
    """Stage-1 walk geometry for one granule and VA size (docs/semantics.md §2)."""

    granule: int                # bytes: 4096, 16384, 65536
    va_bits: int

    def __post_init__(self) -> None:
        if self.granule not in BLOCK_LEVELS:
            raise GeometryError(f"granule {self.granule} is not 4K, 16K or 64K")
        levels = self.levels
        if not 2 <= levels <= 4 or self.va_bits > 48 or self.va_bits <= self.granule_shift:
            raise GeometryError(
                f"va_bits {self.va_bits} gives {levels} levels with a "
                f"{self.granule // 1024}K granule (2..4 levels, va_bits <= 48 needed)")

    @cached_property
    def granule_shift(self) -> int:
        return self.granule.bit_length() - 1

    @cached_property
    def stride(self) -> int:
        # stride = log2(G) - 3: bits resolved per level (9, 11, 13)
        return self.granule_shift - 3

    @cached_property
    def levels(self) -> int:
        # levels = ceil((va_bits - log2(G)) / stride)  (AArch64.S1StartLevel)
        return -(-(self.va_bits - self.granule_shift) // self.stride)

    @cached_property
    def start_level(self) -> int:
        return 4 - self.levels

    def level_shift(self, level: int) -> int:
        """Lowest VA bit indexed by `level` (3 = leaf page level)."""
        return self.granule_shift + (3 - level) * self.stride

    def index_bits(self, level: int) -> int:
        """VA bits indexed at `level`: the start level may resolve fewer than `stride`."""
        if level == self.start_level:
            return self.va_bits - self.level_shift(level)
        return self.stride

    @cached_property
    def walk_steps(self) -> tuple[tuple[int, int, int], ...]:
        """(level, VA shift, index mask) for every level of a walk, top-down."""
        return tuple((lv, self.level_shift(lv), (1 << self.index_bits(lv)) - 1)
                     for lv in range(self.start_level, 4))

    def index(self, va: int, level: int) -> int:
        _lv, shift, mask = self.walk_steps[level - self.start_level]
        return (va >> shift) & mask

    def block_size(self, level: int) -> int | None:
        """Bytes mapped by a block at `level`, or None if blocks are not allowed there."""
        if level in BLOCK_LEVELS[self.granule] and level >= self.start_level:
            return 1 << self.level_shift(level)
        return None

    @cached_property
    def oa_mask(self) -> int:
        return ((1 << (OA_TOP_BIT + 1)) - 1) & ~(self.granule - 1)


def make_table_desc(next_table: int, geo: Geometry, af: bool = True) -> int:
    """Table descriptor; Linux creates them with AF = 1 (PMD_TABLE_AF)."""
    return (next_table & geo.oa_mask) | DESC_VALID | DESC_TABLE | (DESC_AF if af else 0)


def make_leaf_desc(oa: int, geo: Geometry, level: int = 3, *, af: bool = True,
                   writable: bool = True, dirty: bool = True, executable: bool = True) -> int:
    """Page (level 3) or block descriptor with Linux's encodings (docs/semantics.md §4):
    writable = DBM (PTE_WRITE == PTE_DBM); clean writable = DBM + AP[2]; dirty = AP[2] clear."""
    mask = geo.oa_mask if level == 3 else ~((geo.block_size(level) or geo.granule) - 1) & geo.oa_mask
    d = (oa & mask) | DESC_VALID | (DESC_TABLE if level == 3 else 0)
    if af:
        d |= DESC_AF
    if writable:
        d |= DESC_DBM
        if not dirty:
            d |= DESC_AP2
    else:
        d |= DESC_AP2
    if not executable:
        d |= DESC_PXN | DESC_UXN
    return d


def is_valid(desc: int) -> bool:
    return bool(desc & DESC_VALID)


def is_table(desc: int, level: int) -> bool:
    return level < 3 and bool(desc & DESC_TABLE)


def desc_oa(desc: int, geo: Geometry) -> int:
    return desc & geo.oa_mask
