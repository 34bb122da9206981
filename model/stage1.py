"""Guest stage-1 tables: the builder with docs/scenario-format.md's layout rule.

Layout rule (docs/scenario-format.md "Stage-1 table layout"): the root table is the first granule of
`pt_slot`; mappings are inserted in file order, each from its lowest VA upward; a missing
table is allocated at the next free granule of `pt_slot`; table descriptors are created with
AF = 1 (Linux PMD_TABLE_AF).
"""
from __future__ import annotations

from dataclasses import dataclass

from .arch import (DESC_SIZE, Geometry, desc_oa, is_table, is_valid, make_leaf_desc,
                   make_table_desc)
from .scenario import Scenario


class TableLayoutError(ValueError):
    """The tables cannot be laid out; `key` names the offending scenario key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class GuestTables:
    """Initial guest memory content: descriptors by 8-byte-aligned IPA (non-zero only)."""
    geometry: Geometry
    root: int                        # IPA of the root table
    descriptors: dict[int, int]      # IPA of descriptor -> value
    tables_used: int                 # granules of pt_slot holding tables
    leaf_addr: dict[int, int]        # VA of each mapped granule -> IPA of its leaf descriptor


def build_tables(scn: Scenario) -> GuestTables:
    geo = scn.machine.geometry
    g = geo.granule
    pt = scn.slot(scn.guest.pt_slot)
    capacity = (pt.pages * 4096) // g
    if capacity < 1:
        raise TableLayoutError("guest.pt_slot", f"slot '{pt.name}' is smaller than one "
                               f"{g // 1024}K granule: no room for the root table")
    root = pt.ipa
    mem: dict[int, int] = {}
    leaf_addr: dict[int, int] = {}
    used = 1
    for mi, m in enumerate(scn.mappings):
        for i in range(m.pages):
            va = m.va + i * g
            table = root
            for level in range(geo.start_level, 3):
                addr = table + geo.index(va, level) * DESC_SIZE
                desc = mem.get(addr, 0)
                if not is_valid(desc):
                    if used >= capacity:
                        raise TableLayoutError(
                            f"mappings[{mi}]",
                            f"page-table slot '{pt.name}' ({capacity} granules) is too small "
                            f"for the tables of this mapping")
                    new = pt.ipa + used * g
                    used += 1
                    desc = make_table_desc(new, geo)
                    mem[addr] = desc
                elif not is_table(desc, level):   # the builder makes no blocks
                    raise TableLayoutError(f"mappings[{mi}]", "overlaps an earlier mapping")
                table = desc_oa(desc, geo)
            addr = table + geo.index(va, 3) * DESC_SIZE
            if addr in mem:
                raise TableLayoutError(f"mappings[{mi}]",
                                       f"VA {va:#x} overlaps an earlier mapping")
            mem[addr] = make_leaf_desc(m.ipa + i * g, geo, 3, af=m.af, writable=m.writable,
                                       dirty=m.dirty, executable=m.executable)
            leaf_addr[va] = addr
    return GuestTables(geo, root, mem, used, leaf_addr)
