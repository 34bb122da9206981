"""Hypothesis strategies: random valid machines, memslots, mappings and step sequences.

Built directly as model.scenario objects (no file round trip); only scenarios the table
builder accepts are kept.  Used by the engine differential tests.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from model.arch import make_leaf_desc
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm, ACCESS_KINDS
from model.stage1 import TableLayoutError, build_tables

VA_BITS = {4096: (39, 48, 30), 16384: (47, 36), 65536: (42, 48)}
REGIONS = (0x0, 0x200000, 0x40000000, 0x8000000000 >> 2, 0x3FE00000)


@st.composite
def slot_flags(draw, name, ipa, pages, backings=("anon", "anon_thp", "hugetlb", "shmem"),
               readonly=None, populated=None):
    backing = draw(st.sampled_from(backings))
    uffds = ["none", "missing", "wp"] + (["minor"] if backing in ("shmem", "hugetlb") else [])
    return Memslot(name=name, ipa=ipa, pages=pages,
                   readonly=draw(st.booleans()) if readonly is None else readonly,
                   log_dirty=draw(st.booleans()), backing=backing,
                   populated=draw(st.booleans()) if populated is None else populated,
                   uffd=draw(st.sampled_from(uffds)),
                   uffd_resolve=draw(st.sampled_from(("page", "slot"))))


OPS = ("access",) * 10 + ("clear_af", "set_tcr", "punch_hole", "zap", "swap_out", "uffd_wp",
                          "enable_dirty_log", "harvest", "flush_tlb")
# Focused variants (issue 11's corrections at high density): swap_out of part of THP and
# hugetlb blocks; clear_af on a read-only page-table slot whose MMIO stores the VMM writes back
FOCUS = {
    "blocks_swap": dict(ops=("access",) * 5 + ("swap_out",) * 3 + (
        "zap", "enable_dirty_log", "harvest", "punch_hole")),
    # issue 10 item 5: faults that map whole 2 MiB blocks (THP/hugetlb, present, mostly
    # not logging and without uffd), among zaps that unmap them and ops that make the
    # engine leave a block to the reference code (swap_out, logging, punch_hole)
    "blocks_map": dict(ops=("access",) * 8 + ("zap",) * 2 + (
        "swap_out", "enable_dirty_log", "harvest", "punch_hole", "flush_tlb")),
    "clear_af_ro": dict(ops=("access",) * 4 + ("clear_af",) * 3 + (
        "set_tcr", "zap", "swap_out", "enable_dirty_log", "harvest")),
    # issue 10: host operations on page sets (model/host_ops.py) and aging passes, at one
    # event per one to two accesses: every op, blocks included
    "host_bulk": dict(ops=("access",) * 6 + ("zap", "swap_out", "uffd_wp", "numa_hint",
                                             "ksm_merge", "thp_collapse", "uffd_unprotect")
                      + ("guest_age",) * 2
                      + ("enable_dirty_log", "harvest", "punch_hole", "warm_stage2")),
    # issue 10 item 4: the guest kernel's page-table work (munmap's and writeback's PTE
    # stores, free_pgtables, fork's table copies, aging, context switches) at about one event
    # per access, among accesses and host ops; page-table slot mostly present and 4K-backed so
    # the engine's bulk path (engine_guest.GUEST_BULK) applies, sometimes not (fallbacks)
    "guest_bulk": dict(ops=("access",) * 7 + ("guest_pte",) * 4 + ("guest_free",) * 2 + (
        "guest_fork",) * 2 + ("guest_switch", "guest_age", "zap", "swap_out", "uffd_wp",
                              "enable_dirty_log", "harvest", "warm_stage2", "flush_tlb")),
}
# issue 20: dirty rounds — page-table pages zapped under logging and walked again (S1PTW
# translation faults inside rounds), written or not before the harvest (aging, clear_af,
# walker updates), whole and chunked harvests, rounds left open at the end
FOCUS["rounds"] = dict(ops=("access",) * 6 + ("zap",) * 3 + ("harvest",) * 2 + (
    "clear_af",) * 2 + ("guest_age", "enable_dirty_log", "swap_out", "flush_tlb"))
PAGE_SET_OPS = ("numa_hint", "ksm_merge", "thp_collapse", "uffd_unprotect")


class GuestSpaces:
    """What the strategy knows of the guest's address spaces, to draw guest-kernel ops the
    reference accepts (model.reference.Vm.guest_*): per space the granule VAs with a valid
    leaf and the last-level tables that exist (by VA >> level_shift(2)); fresh page-table
    granules for forks (those build_tables left free, each used once).  Unknown to it:
    content the host replaces (a uffd MISSING fill restores the start's tables); an op drawn
    on a wrong belief makes the reference raise, which the test accepts when the engine
    raises too."""

    def __init__(self, geo, tables, pt: Memslot, maps):
        self.geo = geo
        self.l2 = geo.level_shift(2)
        ipas = {m.va + i * geo.granule: m.ipa + i * geo.granule
                for m in maps for i in range(m.pages)}
        self.ipa = ipas
        self.valid = {0: set(ipas)}
        self.tabled = {0: {va >> self.l2 for va in ipas}}
        # every granule that holds no table (the layout rule's tables are not all at the
        # start of the slot: they skip mapped granules, and "spread" scatters them)
        used = set(tables.table_ipas.tolist())
        self.fresh = [a for a in range(pt.ipa, pt.end - geo.granule + 1, geo.granule)
                      if a not in used]
        self.root = {0: tables.root}

    def pte(self, draw, asid: int, vas: list[int], data: Memslot) -> Step:
        """munmap (descs 0: zap_pte_range) or writeback (folio_mkclean: read-only clean, or
        clean-writable) of some VAs; valid descriptors only where the leaf's table exists."""
        munmap = draw(st.booleans())
        out, descs = [], []
        for va in vas:
            if munmap:
                out.append(va)
                descs.append(0)
                self.valid[asid].discard(va)
            elif va >> self.l2 in self.tabled[asid]:
                ipa = self.ipa.get(va, data.ipa)
                out.append(va)
                descs.append(make_leaf_desc(ipa, self.geo, af=draw(st.booleans()),
                                            writable=draw(st.booleans()), dirty=False))
                self.valid[asid].add(va)
        return Step("guest_pte", vcpu=draw(st.integers(0, 2)), asid=asid, vas=tuple(out),
                    descs=tuple(descs))

    def free(self, asid: int, vas: list[int]) -> Step:
        """free_pgtables: the last-level tables of `vas` unlinked."""
        for va in vas:
            pre = va >> self.l2
            self.tabled[asid].discard(pre)
            self.valid[asid] -= {v for v in self.valid[asid] if v >> self.l2 == pre}
        return Step("guest_free", asid=asid, vas=tuple(vas))

    def fork(self, draw, asid: int, vas: list[int]) -> Step | None:
        """copy_page_range of `vas` into a new space; its tables (root first, then one per
        new (level, VA prefix) in the walk's order) from the fresh granules — or, rarely, the
        parent's own root as the child's: zeroed first, it leaves nothing to copy and both
        spaces share it (the engine must fall back).  A granule is only ever a table of one
        level: one used at two would let a walk take a leaf for a table and store outside the
        page-table slot (the engine's layout rule)."""
        geo = self.geo
        child = max(self.valid) + 1
        if draw(st.integers(0, 9)) == 0:
            self.valid[asid].clear()
            self.tabled[asid].clear()
            tables = [self.root[asid]]
            self.valid[child], self.tabled[child] = self.valid[asid], self.tabled[asid]
        else:
            copied = [va for va in vas if va in self.valid[asid]]
            need = 1 + len({(lv, va >> sh) for va in copied
                            for lv, sh, _m in geo.walk_steps[:-1]})
            if len(self.fresh) < need:
                return None
            tables, self.fresh = self.fresh[:need], self.fresh[need:]
            self.valid[child] = set(copied)
            self.tabled[child] = {va >> self.l2 for va in copied}
        self.root[child] = tables[0]
        return Step("guest_fork", vcpu=draw(st.integers(0, 2)), asid=asid, child=child,
                    vas=tuple(vas), tables=tuple(tables))


def guest_op(draw, op: str, spaces: GuestSpaces, vas: list[int], data: Memslot) -> list[Step]:
    """One guest-kernel op (focus "guest_bulk") on some of `vas` (mapped granules and a few
    never-mapped ones) of a drawn address space; a fork is often followed by a switch to the
    child, whose accesses then go through the copied tables."""
    asid = draw(st.sampled_from(sorted(spaces.valid)))
    some = sorted(draw(st.sets(st.sampled_from(vas), min_size=1, max_size=10)))
    if op == "guest_pte":
        return [spaces.pte(draw, asid, some, data)]
    if op == "guest_free":
        return [spaces.free(asid, some)]
    if op == "guest_fork":
        fork = spaces.fork(draw, asid, some) if len(spaces.valid) < 4 else None
        if fork is None:
            return []
        out = [fork]
        copied = sorted(spaces.valid[fork.child])
        if draw(st.booleans()):
            out.append(Step("guest_switch", asid=fork.child))
            if copied and draw(st.booleans()):    # through the copy: old, write-protected
                out.append(Step("access", vcpu=draw(st.integers(0, 2)),
                                va=draw(st.sampled_from(copied)),
                                kind=draw(st.sampled_from(("read64", "write64")))))
        return out
    if op == "guest_switch":
        return [Step("guest_switch", asid=asid)]
    return [Step("guest_age", asid=asid, vas=tuple(some))]


@st.composite
def scenarios(draw, max_steps: int = 40, focus: str | None = None,
              isas=("arm64",)) -> Scenario:
    """`focus`: one of FOCUS (issue 11's corrections at high density); `isas`: the machines
    drawn from (model/x86.py; arm64 alone by default)."""
    granule = draw(st.sampled_from((4096, 4096, 4096, 16384, 65536)))
    va_bits = draw(st.sampled_from(VA_BITS[granule]))
    gp = granule // 4096
    machine = Machine(granule=granule, va_bits=va_bits, hafdbs=draw(st.integers(0, 2)),
                      haft=draw(st.booleans()),
                      hw_update=draw(st.sampled_from(("on-change", "always"))),
                      at_sets_af=draw(st.booleans()), isa=draw(st.sampled_from(isas)))
    guest = Guest(tcr_ha=draw(st.booleans()), tcr_hd=draw(st.booleans()),
                  tcr2_haft=draw(st.booleans()), pt_slot="pt",
                  vm_protected=draw(st.booleans()),
                  pt_order=draw(st.sampled_from(("address", "address", "spread"))))
    big = draw(st.booleans()) or focus in ("blocks_swap", "blocks_map")  # 512+ page slots
    pt_pages = 512 if big else gp * draw(st.integers(4, 10))
    data_pages = 1024 if big else gp * draw(st.integers(1, 8))
    if focus == "blocks_swap":
        guest = Guest(tcr_ha=True, tcr_hd=guest.tcr_hd, tcr2_haft=guest.tcr2_haft, pt_slot="pt")
        slots = [draw(slot_flags("pt", 0x40000000, pt_pages)),
                 draw(slot_flags("data", 0x80000000, data_pages, ("anon_thp", "hugetlb"),
                                 readonly=False, populated=True))]
    elif focus == "blocks_map":
        blocks = ("anon_thp", "hugetlb")
        slots = [replace(draw(slot_flags(name, ipa, n, blocks + (("anon",) if name == "pt"
                                                                  else ()),
                                         readonly=False, populated=True)),
                         log_dirty=draw(st.sampled_from((False, False, False, True))),
                         uffd=draw(st.sampled_from(("none",) * 5 + ("missing",))))
                 for name, ipa, n in (("pt", 0x40000000, pt_pages),
                                      ("data", 0x80000000, data_pages))]
    elif focus == "clear_af_ro":
        guest = Guest(tcr_ha=True, tcr_hd=guest.tcr_hd, tcr2_haft=guest.tcr2_haft, pt_slot="pt")
        slots = [draw(slot_flags("pt", 0x40000000, pt_pages, readonly=True)),
                 draw(slot_flags("data", 0x80000000, data_pages))]
    elif focus == "rounds":              # HA set, tables present, logging mostly from the start
        guest = Guest(tcr_ha=True, tcr_hd=guest.tcr_hd, tcr2_haft=guest.tcr2_haft, pt_slot="pt")
        slots = [replace(draw(slot_flags(name, ipa, n, ("anon",), readonly=False,
                                         populated=True)),
                         log_dirty=draw(st.sampled_from((True, True, True, False))),
                         uffd="none")
                 for name, ipa, n in (("pt", 0x40000000, pt_pages),
                                      ("data", 0x80000000, data_pages))]
    elif focus == "guest_bulk":          # room for forks' tables; present, 4K-backed mostly
        pt_pages = 512 if big else gp * draw(st.integers(16, 32))
        slots = [draw(slot_flags("pt", 0x40000000, pt_pages, ("anon", "anon", "shmem",
                                                              "anon_thp"), readonly=False,
                                 populated=draw(st.sampled_from((True, True, True, False))))),
                 draw(slot_flags("data", 0x80000000, data_pages))]
    elif focus == "host_bulk":           # tables where aging runs in bulk, most of the time
        slots = [draw(slot_flags("pt", 0x40000000, pt_pages, ("anon", "anon", "shmem",
                                                              "anon_thp"), readonly=False)),
                 draw(slot_flags("data", 0x80000000, data_pages))]
    else:
        slots = [draw(slot_flags("pt", 0x40000000, pt_pages)),
                 draw(slot_flags("data", 0x80000000, data_pages))]
    if draw(st.booleans()):
        slots.append(draw(slot_flags("rom", 0xC0000000, gp * 2)))
    # mappings into data slots (and sometimes onto the page-table slot itself)
    maps = []
    used_va = set()
    for _ in range(draw(st.integers(1, 4))):
        s = draw(st.sampled_from(slots))
        npg = s.pages // gp
        first = draw(st.integers(0, npg - 1))
        pages = draw(st.integers(1, min(3, npg - first)))
        region = draw(st.sampled_from(REGIONS)) % (1 << va_bits)
        region &= ~(granule - 1)
        va = region + draw(st.integers(0, 3)) * granule
        if va + pages * granule > (1 << va_bits):
            continue
        span = {va + i * granule for i in range(pages)}
        if span & used_va:
            continue
        used_va |= span
        maps.append(Mapping(va=va, ipa=s.ipa + first * granule, pages=pages,
                            af=draw(st.booleans()), writable=draw(st.booleans()),
                            dirty=draw(st.booleans()), executable=draw(st.booleans())))
    assume(maps)
    scn0 = Scenario("gen", machine, guest, tuple(slots), Vmm(), tuple(maps), ())
    try:
        tables = build_tables(scn0)
    except TableLayoutError:
        assume(False)
    vas = sorted(used_va)
    if focus == "guest_bulk":
        spaces = GuestSpaces(scn0.machine.geometry, tables, slots[0], maps)
        # never-mapped granules next to the mapped ones: walks that end at a missing table
        gvas = vas + [v for v in (vas[0] + 4 * granule, vas[-1] + (1 << spaces.l2))
                      if v + granule <= (1 << va_bits) and v not in used_va]
    pool = [v + draw(st.integers(0, granule - 1)) // 8 * 8 for v in vas]
    logging = {s.name: s.log_dirty for s in slots}
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        op = draw(st.sampled_from(FOCUS[focus]["ops"] if focus else OPS))
        vcpu = draw(st.integers(0, 2))
        s = draw(st.sampled_from(slots))
        if op == "access":
            steps.append(Step("access", vcpu=vcpu, va=draw(st.sampled_from(pool)),
                              kind=draw(st.sampled_from(ACCESS_KINDS))))
        elif op == "clear_af":
            steps.append(Step("clear_af", vcpu=vcpu, va=draw(st.sampled_from(vas))))
        elif op == "set_tcr":
            steps.append(Step("set_tcr", ha=draw(st.booleans()), hd=draw(st.booleans()),
                              haft=draw(st.none() | st.booleans())))
        elif op == "punch_hole":
            steps.append(Step("punch_hole", slot=s.name))
        elif op.startswith("guest_") and focus == "guest_bulk":
            steps.extend(guest_op(draw, op, spaces, gvas, slots[1]))
        elif (op in ("zap", "swap_out") + PAGE_SET_OPS
              or (op == "uffd_wp" and s.uffd == "wp")) and (
                focus == "host_bulk" or op not in PAGE_SET_OPS):
            if focus == "host_bulk" and (op in PAGE_SET_OPS or draw(st.booleans())):
                # a page set (Step.pages): scattered pages, or a 2 MiB range (thp_collapse)
                if op == "thp_collapse" and s.pages >= 512:
                    b = draw(st.integers(0, s.pages // 512 - 1)) * 512
                    pages = np.arange(b, b + 512, dtype=np.int64)
                else:
                    pages = np.array(sorted(draw(st.sets(st.integers(0, s.pages - 1),
                                                         min_size=1, max_size=12))),
                                     dtype=np.int64)
                steps.append(Step(op, slot=s.name, pages=pages))
            else:
                first = draw(st.integers(0, s.pages - 1))
                count = draw(st.integers(1, min(8, s.pages - first)))
                steps.append(Step(op, slot=s.name, first=first, count=count))
        elif op == "guest_age":
            # an aging pass (MGLRU walk_pte_range) over some mapped granules, ascending
            ages = sorted(draw(st.sets(st.sampled_from(vas), min_size=1, max_size=8)))
            steps.append(Step("guest_age", vas=tuple(v & ~(granule - 1) for v in ages),
                              nonleaf=draw(st.booleans()) and draw(st.booleans())))
        elif op == "enable_dirty_log" and not logging[s.name]:
            logging[s.name] = True
            steps.append(Step(op, slot=s.name, initially_set=draw(st.booleans()),
                              eager_split=draw(st.booleans())))
        elif op == "harvest" and logging[s.name]:
            if focus in ("host_bulk", "rounds") and draw(st.booleans()):
                # KVM_CLEAR_DIRTY_LOG of one range (a QEMU clear-bitmap chunk)
                first = draw(st.integers(0, s.pages - 1))
                count = draw(st.integers(1, s.pages - first))
                steps.append(Step("harvest", slot=s.name,
                                  pages=np.arange(first, first + count, dtype=np.int64)))
            else:
                steps.append(Step("harvest", slot=s.name))
        elif op == "warm_stage2":
            # the window starts in a VM that has run: stage 2 maps a page set
            pages = np.array(sorted(draw(st.sets(st.integers(0, s.pages - 1), min_size=1,
                                                 max_size=s.pages))), dtype=np.int64)
            steps.append(Step("warm_stage2", slot=s.name, pages=pages))
        elif op == "flush_tlb":
            steps.append(Step("flush_tlb"))
    vmm = Vmm("write_backing" if focus == "clear_af_ro"
              else draw(st.sampled_from(("ignore", "write_backing"))))
    return Scenario("gen", machine, guest, tuple(slots), vmm, tuple(maps), tuple(steps))


# ---- issue 20: warm workloads with aging on the clock over repeated windows ---------------
AGED_SMALL = {
    "zipf": dict(keys=512, operations=150),
    "sparse": dict(regions=40, accesses=300, write_percent=30),
    "shared_db": dict(processes=3, buffer_mb=4, pages_per_process=24, accesses=300,
                      private_kb=8),
}


@st.composite
def aged_workloads(draw) -> dict:
    """Arguments of workloads.registry.build: a small generator, warm or not, split or
    shared (interleaved, spread when ram_mb is given) layout, an aging regime whose period
    falls inside or outside the base trace, a --seconds window of 1-6 base traces (aging
    continued over the repeats), sometimes a timed host scenario."""
    gen = draw(st.sampled_from(sorted(AGED_SMALL)))
    knobs = dict(AGED_SMALL[gen], access_ns=1000.0, demand=draw(st.booleans()),
                 layout=draw(st.sampled_from(("split", "shared"))),
                 aging=draw(st.sampled_from(("", "damon", "mglru"))),
                 age_period_ms=draw(st.sampled_from((0.05, 0.2, 1.0))))
    knobs["warm_stage2"] = not knobs["demand"] and draw(st.booleans())
    if knobs["layout"] == "shared" and draw(st.booleans()):
        knobs["ram_mb"] = 16
    if knobs["aging"] == "damon":
        knobs["damon_regions"] = draw(st.integers(1, 40))
    elif not knobs["aging"]:
        knobs["age_fraction"] = draw(st.sampled_from((0.1, 0.5, 1.0)))
    host = draw(st.sampled_from((None, None, "numa", "migration")))
    hk = {"numa": {"first_s": 0.0, "scan_size_mb": 1, "scan_period_s": 0.0003},
          "migration": {"link_gbit_s": 100.0, "downtime_limit_ms": 0.0}}.get(host, {})
    return dict(name=gen, seed=draw(st.integers(0, 3)), host_name=host, host_knobs=hk,
                seconds=draw(st.sampled_from((0.001, 0.002, 0.004))), **knobs)

@st.composite
def repeated_windows(draw, focus: str | None = None, max_repeats: int = 6):
    """(scenario, TiledTrace, expanded Trace): a generated scenario's accesses as a base
    window served again 2..max_repeats times (the last repetition maybe cut short, as
    workloads/clock.py with_seconds does), its other steps as events at random offsets:
    inside repetitions, on their boundaries, at the start and the end.  The expanded trace
    holds the same accesses as plain arrays (what the reference engine runs)."""
    from model.trace import KIND_CODE, Trace
    from model.trace_stream import TiledColumn, TiledTrace
    scn = draw(scenarios(max_steps=30, focus=focus))
    if draw(st.booleans()):
        # a steady guest (hardware AF and dirty state, pages young, writable, executable; no
        # AT): its repetitions settle once its pages are in the TLBs and mapped
        scn = replace(
            scn, machine=replace(scn.machine, hafdbs=2),
            guest=replace(scn.guest, tcr_ha=True, tcr_hd=True),
            mappings=tuple(replace(m, af=True, writable=True, executable=True)
                           for m in scn.mappings),
            steps=tuple(replace(s, kind="read64") if s.op == "access" and s.kind == "at"
                        else s for s in scn.steps))
    acc = [s for s in scn.steps if s.op == "access"]
    assume(acc)
    P = len(acc)
    reps = draw(st.integers(2, max_repeats))
    n = reps * P - draw(st.integers(0, P - 1))
    base = (np.array([s.vcpu for s in acc], dtype=np.uint16),
            np.array([s.va for s in acc], dtype=np.uint64),
            np.array([KIND_CODE[s.kind] for s in acc], dtype=np.uint8))
    boundary = st.integers(0, -(-n // P)).map(lambda k: min(k * P, n))
    others = [i for i, s in enumerate(scn.steps) if s.op != "access"]
    # a few events (long quiet stretches: repetitions that settle) or all of them
    keep = sorted(draw(st.one_of(st.sets(st.sampled_from(others), max_size=3) if others
                                 else st.just(set()), st.just(set(others)))))
    events = []
    for i in keep:
        pos = draw(st.one_of(boundary, st.integers(0, n)))
        events.append((pos, i, scn.steps[i]))
    events.sort(key=lambda e: e[0])                       # stable: step order at one position
    tiled = TiledTrace(*(TiledColumn(c, n) for c in base), events, None)
    expanded = Trace(*(np.resize(c, n) for c in base), list(events), None)
    return scn, tiled, expanded
