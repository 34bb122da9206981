"""Geometry and descriptor encodings against docs/semantics.md §2 (values written out by hand)."""
import pytest

from model import arch
from model.arch import Geometry, GeometryError


@pytest.mark.parametrize("granule,va_bits,levels,start", [
    # docs/semantics.md §2 "Common" list
    (4096, 39, 3, 1), (4096, 48, 4, 0), (16384, 47, 3, 1), (65536, 42, 2, 2), (65536, 48, 3, 1),
    # levels = ceil((va_bits - log2 G) / stride)
    (4096, 30, 2, 2), (4096, 40, 4, 0), (16384, 36, 2, 2), (16384, 48, 4, 0), (65536, 30, 2, 2),
])
def test_levels_and_start_level(granule, va_bits, levels, start):
    g = Geometry(granule, va_bits)
    assert g.levels == levels
    assert g.start_level == start


@pytest.mark.parametrize("granule,stride", [(4096, 9), (16384, 11), (65536, 13)])
def test_stride(granule, stride):
    assert Geometry(granule, 48).stride == stride


@pytest.mark.parametrize("granule,va_bits", [
    (4096, 21),    # 1 level
    (4096, 12),    # nothing to translate
    (4096, 52),    # 5 levels / LVA not modelled
    (16384, 25),   # 1 level
    (65536, 52),   # beyond 48-bit VA
    (65536, 16),
])
def test_impossible_va_bits(granule, va_bits):
    with pytest.raises(GeometryError):
        Geometry(granule, va_bits)


@pytest.mark.parametrize("granule,va_bits,level,size", [
    (4096, 48, 1, 1 << 30), (4096, 48, 2, 2 << 20), (4096, 48, 0, None), (4096, 48, 3, None),
    (16384, 47, 2, 32 << 20), (16384, 47, 1, None),
    (65536, 48, 2, 512 << 20), (65536, 48, 1, None),
    (4096, 30, 1, None),   # level 1 is above the start level (2) here
])
def test_block_sizes(granule, va_bits, level, size):
    assert Geometry(granule, va_bits).block_size(level) == size


def test_index_bits_of_start_level():
    # 4K/39: start level 1 resolves VA[38:30] = 9 bits; 64K/42: start level 2 resolves
    # VA[41:29] = 13 bits; 4K/40: start level 0 resolves VA[39:39] = 1 bit.
    assert Geometry(4096, 39).index_bits(1) == 9
    assert Geometry(65536, 42).index_bits(2) == 13
    assert Geometry(4096, 40).index_bits(0) == 1
    g = Geometry(4096, 48)
    va = (0x1AB << 39) | (0x0CD << 30) | (0x1EF << 21) | (0x012 << 12) | 0x345
    assert [g.index(va, lvl) for lvl in range(4)] == [0x1AB, 0x0CD, 0x1EF, 0x012]


def test_descriptor_bit_positions():
    # docs/semantics.md §2: bit 0 valid, bit 1 table/page, bit 7 AP[2], bit 10 AF, bit 51 DBM
    assert (arch.DESC_VALID, arch.DESC_TABLE, arch.DESC_AP2, arch.DESC_AF, arch.DESC_DBM) == (
        1 << 0, 1 << 1, 1 << 7, 1 << 10, 1 << 51)
    g = Geometry(4096, 48)
    d = arch.make_leaf_desc(0x8000_1000, g, af=True, writable=True, dirty=False)
    assert d == 0x8000_1000 | 0b11 | (1 << 10) | (1 << 51) | (1 << 7)   # clean writable
    d = arch.make_leaf_desc(0x8000_1000, g, af=False, writable=False)
    assert d == 0x8000_1000 | 0b11 | (1 << 7)                            # read-only, old
    t = arch.make_table_desc(0x4000_3000, g)
    assert t == 0x4000_3000 | 0b11 | (1 << 10)                          # PMD_TABLE_AF
    blk = arch.make_leaf_desc(0x8020_0000, g, level=2)
    assert blk & 0b11 == 0b01 and arch.desc_oa(blk, g) == 0x8020_0000


def test_output_address_bits():
    # OA bits [47:log2(G)]
    assert Geometry(4096, 48).oa_mask == ((1 << 48) - 1) & ~0xFFF
    assert Geometry(65536, 42).oa_mask == ((1 << 48) - 1) & ~0xFFFF
    g = Geometry(16384, 47)
    assert arch.desc_oa((1 << 51) | 0x1234_4000 | 0x3, g) == 0x1234_4000
