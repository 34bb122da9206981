"""The stage-1 table layout rule written as docs/scenario-format.md states it, one granule at a
time: the oracle for model.stage1.build_tables (which lays out every granule at once)."""
from __future__ import annotations

import numpy as np

from model.arch import DESC_SIZE, desc_oa, is_table, is_valid, make_leaf_desc, make_table_desc
from model.scenario import Scenario
from model.stage1 import GuestTables, TableLayoutError, allocation_order


def layout_rule_tables(scn: Scenario) -> GuestTables:
    """docs/scenario-format.md's layout rule, one granule and one level at a time."""
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
    # the slot's pages in allocation order, each free unless a mapping maps it
    mapped = {m.ipa + i * g for m in scn.mappings for i in range(m.pages)}
    order = [k for k in allocation_order(capacity, scn.guest.pt_order).tolist()
             if pt.ipa + k * g not in mapped]
    tables = [root]
    for mi, m in enumerate(scn.mappings):
        for i in range(m.pages):
            va = m.va + i * g
            table = root
            for level in range(geo.start_level, 3):
                addr = table + geo.index(va, level) * DESC_SIZE
                desc = mem.get(addr, 0)
                if not is_valid(desc):
                    if used - 1 >= len(order):
                        raise TableLayoutError(
                            f"mappings[{mi}]",
                            f"page-table slot '{pt.name}' ({capacity} granules) is too small "
                            f"for the tables of this mapping")
                    new = pt.ipa + order[used - 1] * g
                    used += 1
                    tables.append(new)
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
    return GuestTables(geo, root, mem, used, leaf_addr, np.array(sorted(tables), np.int64))
