"""Differential harness for the stages of the engine's tier 2 (model/engine_chunk.py).

One *case*: a scenario whose last interval (accesses with no event between them) is the
chunk under test, plus descriptor changes made just before it (`Mut`: any AF / DBM / AP[2] /
PXN / valid combination of a leaf, the AF of a table descriptor, optionally followed by a
TLBI of the VA or a full flush).

* Engine side: the prefix (events and accesses before the chunk) runs as model/engine.py runs
  events and fallbacks — the reference's own code on the engine's state (Group.scalar,
  Group.host_event), groups splitting where policies diverge — then each group runs
  engine_chunk.chunk once, with the stage functions wrapped so that their outputs are kept
  (`StageRecord`).  With mode "all", tier 1's selection is replaced by every access of the
  chunk (stopped vCPUs excepted), so the TLB-history stage sees repeated accesses too.
* Reference side: model.reference.Vm per policy runs the same steps; during the chunk a
  TracingVm records, per access and per attempt (an access restarts after each stage-2
  fault, Vm.access), the TLB entry it found, whether it walked, every stage-2 check it made
  (descriptor reads, hardware-update writes, the data access: Vm.s2_fault) and the hardware
  updates it computed (Vm.s1_updates).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from model import engine_chunk
from model.arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_VALID, HOST_PAGE
from model.engine import Group, _apply_events
from model.engine_chunk import T_DATA, T_PATH, T_UPD, Tier1
from model.engine_state import Base, FastVm, Shared
from model.host import S2_UNMAPPED
from model.reference import Vm
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm
from model.semantics import S2_OK, s2_check
from model.stage1 import TableLayoutError, build_tables
from model.trace import Trace, trace_from_scenario
from tests.strategies import REGIONS, VA_BITS, scenarios


@dataclass(frozen=True)
class Mut:
    """Before the chunk: the descriptor at IPA `addr` gets bits `set_bits` set and
    `clear_bits` cleared (a guest store to its page table, made without a fault: test set-up),
    then `tlbi`: "" nothing, "va" TLBI VAE1IS of `va`, "all" every TLB flushed."""
    addr: int
    set_bits: int
    clear_bits: int
    tlbi: str = ""
    va: int = 0


def apply_mut(vm, m: Mut) -> None:
    page = m.addr & ~(HOST_PAGE - 1)
    old = vm.host.read_desc(m.addr)
    vm.host.write_desc(page, m.addr, (old | m.set_bits) & ~m.clear_bits)
    if m.tlbi == "va":
        vm.tlb_invalidate_va(m.va & ~(vm.geo.granule - 1))
    elif m.tlbi == "all":
        vm.flush_all()


# ---- reference side ----------------------------------------------------------------------
@dataclass
class Attempt:
    """One try of an access (Vm._attempt)."""
    state: int                    # TLB entry found: 0 none, 1 clean (AP[2] set), 2 dirty
    walked: bool = False
    s1fault: bool = False
    data: bool = False            # reached the data access (Vm._data_access)
    leaf_addr: int | None = None
    updates: list = field(default_factory=list)   # (addr, old, new, order) of s1_updates
    checks: list = field(default_factory=list)    # (type, order, page, write, fault)

    def done_updates(self) -> list:
        """The updates written: those before the first whose stage-2 write faulted."""
        ok = [c for c in self.checks if c[0] == T_UPD]
        n = 0
        while n < len(ok) and ok[n][4] is None:
            n += 1
        return self.updates[:n]


@dataclass
class AccessRec:
    vcpu: int
    va: int
    kind: str
    attempts: list = field(default_factory=list)
    stage1_faults: int = 0


class TracingVm(Vm):
    """model.reference.Vm that records each access of the chunk (attributes set by run)."""

    def __init__(self, scn: Scenario, policy: str):
        super().__init__(scn, policy)
        self.recs: dict[int, AccessRec] | None = None
        self.pos = -1
        self._rec = self._att = None
        self._phase = None
        self.L = len(self.geo.walk_steps)

    def access(self, vcpu, va, kind):
        if self.recs is None:
            return super().access(vcpu, va, kind)
        rec = self._rec = self.recs[self.pos] = AccessRec(vcpu, va, kind)
        s1 = self.r.stage1_faults
        try:
            return super().access(vcpu, va, kind)
        finally:
            rec.stage1_faults = self.r.stage1_faults - s1
            self._rec = None

    def _attempt(self, vcpu, va, kind, translated):
        if self._rec is None:
            return super()._attempt(vcpu, va, kind, translated)
        e = self.vcpu_tlb(vcpu).get(va & ~(self.geo.granule - 1))
        att = self._att = Attempt(0 if e is None else 1 if e.leaf & DESC_AP2 else 2)
        self._rec.attempts.append(att)
        s1 = self.r.stage1_faults
        try:
            return super()._attempt(vcpu, va, kind, translated)
        finally:
            att.s1fault = self.r.stage1_faults > s1
            self._att, self._phase = None, None

    def _walk(self, va, kind, translated):
        if self._att is not None:
            self._att.walked = True
            self._phase, self._k = "path", 0
        return super()._walk(va, kind, translated)

    def s1_walk(self, va, read_desc):
        w, f = super().s1_walk(va, read_desc)
        if self._att is not None and self._phase == "path":
            self._phase = "post"
            if w is not None:
                self._att.leaf_addr = w.leaf_addr
        return w, f

    def s1_updates(self, walk, kind):
        ups = super().s1_updates(walk, kind)
        if self._att is not None and self._phase == "post":
            L = self.L
            row = {addr: k for k, (_l, addr, _d) in enumerate(walk.path)}
            old = {addr: d for _l, addr, d in walk.path}
            self._att.updates = [(a, old[a], new, 2 * L if a == walk.leaf_addr else L + row[a])
                                 for a, new in ups]
            self._phase, self._j = "upd", 0
        return ups

    def s2_fault(self, page, write):
        f = super().s2_fault(page, write)
        att = self._att
        if att is not None:
            if self._phase == "path":
                att.checks.append((T_PATH, self._k, page, write, f))
                self._k += 1
            elif self._phase == "upd":
                att.checks.append((T_UPD, att.updates[self._j][3], page, True, f))
                self._j += 1
            elif self._phase == "data":
                att.checks.append((T_DATA, 2 * self.L + 1, page, write, f))
        return f

    def s1ptw_fault(self, *args):
        self._phase = "fault"              # the oracle's lookahead walks: not the access's
        return super().s1ptw_fault(*args)

    def _data_access(self, *args):
        if self._att is not None:
            self._att.data = True
            self._phase = "data"
        return super()._data_access(*args)


# ---- engine side -------------------------------------------------------------------------
@dataclass
class StageRecord:
    """The stage outputs of one engine_chunk.chunk call (None: the stage did not run)."""
    I: np.ndarray | None = None
    a: object = None
    tlb: object = None
    hw: object = None
    needs: list | None = None
    rq: int | None = None
    plan: object = None
    tier1_ran: bool = False

    def check_complete(self) -> None:
        """The wrapped stages ran as chunk() calls them (a stage inlined or renamed would
        leave the comparisons empty: fail instead)."""
        assert self.tier1_ran, "engine_chunk.chunk no longer calls _tier1"
        if self.I is not None:
            missing = [k for k in ("a", "tlb", "hw", "needs", "rq") if getattr(self, k) is None]
            assert not missing, f"tier 2 ran without calling the stages {missing}"

    @property
    def cut(self) -> int:
        """Tier-2 accesses [0, cut) are the vectorised path's (FaultPlan.cut, or _first_odd)."""
        if self.a is None:
            return 0
        return self.plan.cut if self.plan is not None else self.rq


@contextlib.contextmanager
def recording(rec: StageRecord, mode: str):
    """Wrap the stages of engine_chunk so that their outputs land in `rec`."""
    saved = {n: getattr(engine_chunk, n) for n in
             ("_tier1", "_accesses", "_tlb_history", "_hw_needs", "_unmet_needs", "_first_odd",
              "_faults")}

    def tier1(g, wc, i, C):
        t1 = saved["_tier1"](g, wc, i, C)
        if mode == "all":
            I = np.flatnonzero(~g.stopped[g.base.trace.vcpu[i:i + C]])
            t1 = Tier1(t1.firsts, I if len(I) else None,
                       g.base.prep.ci(i, i + C)[I] if len(I) else None)
        rec.I, rec.tier1_ran = t1.I, True
        return t1

    def keep(name, attr):
        def f(*args):
            out = saved[name](*args)
            setattr(rec, attr, out)
            return out
        return f
    patches = {"_tier1": tier1, "_accesses": keep("_accesses", "a"),
               "_tlb_history": keep("_tlb_history", "tlb"), "_hw_needs": keep("_hw_needs", "hw"),
               "_unmet_needs": keep("_unmet_needs", "needs"),
               "_first_odd": keep("_first_odd", "rq"), "_faults": keep("_faults", "plan")}
    for n, f in patches.items():
        setattr(engine_chunk, n, f)
    try:
        yield rec
    finally:
        for n, f in saved.items():
            setattr(engine_chunk, n, f)


@dataclass
class GroupRun:
    """One group's chunk: its policies, the engine's stage outputs and state after the chunk,
    the reference Vms (run to the same access), their records and stage 2 at chunk start."""
    g: Group
    rec: StageRecord
    end: int                      # first trace position the chunk left (chunk's return)
    refs: dict                    # policy -> TracingVm
    s2min0: dict                  # page IPA -> min over the group's policies at chunk start


def chunk_start(trace: Trace) -> int:
    start = 0
    for s, _e, _ev in trace.intervals():
        start = s
    return start


def run_case(scn: Scenario, muts: tuple[Mut, ...], policies, mode: str = "tier1"
             ) -> tuple[int, list[GroupRun]]:
    """Run the case on both sides: (chunk start position, one GroupRun per group)."""
    trace = trace_from_scenario(scn)
    n = len(trace)
    i0 = chunk_start(trace)
    assert 0 <= i0 < n, "the scenario must end with accesses"
    # engine: the prefix as model.engine._run_trace runs events and fallbacks
    base = Base(scn, trace)
    shared = Shared(base, populated_pt=base.pt.populated)
    vms = [FastVm(base, p, shared) for p in policies]
    groups = [Group(base, vms, shared)]
    for start, end, events in trace.intervals():
        groups = _apply_events(base, groups, events)
        if start == i0:
            break
        for pos in range(start, end):
            groups = [h for g in groups for h in g.scalar(lambda vm, p=pos: vm.scalar(p))]
    for m in muts:
        groups = [h for g in groups for h in g.scalar(lambda vm, m=m: apply_mut(vm, m))]
    # reference: every step before the chunk, the same descriptor changes
    first_step = int(trace.step_of_access[i0])
    refs = {p: TracingVm(scn, p) for p in policies}
    for vm in refs.values():
        for si, step in enumerate(scn.steps[:first_step]):
            vm.run_step(si, step)
        for m in muts:
            apply_mut(vm, m)
    runs = []
    for g in groups:
        g.prepare()
        rec = StageRecord()
        with recording(rec, mode):
            end = engine_chunk.chunk(g, i0, n)
        rec.check_complete()
        gref = {vm.r.policy: refs[vm.r.policy] for vm in g.vms}
        s2min0 = {}
        for vm in gref.values():
            for s in scn.memslots:
                for p in range(s.ipa, s.end, HOST_PAGE):
                    v = vm.host.s2.get(p, S2_UNMAPPED)
                    s2min0[p] = min(s2min0.get(p, v), v)
        for vm in gref.values():
            vm.recs = {}
            for pos in range(i0, end):
                si = int(trace.step_of_access[pos])
                vm.pos = pos
                vm.run_step(si, scn.steps[si])
        runs.append(GroupRun(g, rec, end, gref, s2min0))
    return i0, runs


def unmet_at_start(run: GroupRun, page: int, write: bool) -> bool:
    """Does some policy of the group not allow this stage-2 check at chunk start?"""
    return s2_check(run.s2min0.get(page, S2_UNMAPPED), write) != S2_OK


def ref_needs(run: GroupRun, recs: AccessRec) -> set:
    """The access's stage-2 checks over all its attempts whose need was unmet at chunk start
    by some policy: {(type, order, page IPA, write)} (engine_chunk.Needs' rows)."""
    out = set()
    for att in recs.attempts:
        for typ, order, page, write, _f in att.checks:
            if unmet_at_start(run, page, write):
                out.add((typ, order, page, write))
    return out


def ref_updates(recs: AccessRec) -> tuple[set, bool, bool]:
    """The hardware updates an access wrote over all its attempts: (descriptor IPAs, set a
    leaf's AF, cleared a leaf's AP[2])."""
    addrs, set_af, clear_ap2 = set(), False, False
    for att in recs.attempts:
        for addr, old, new, _order in att.done_updates():
            addrs.add(addr)
            if addr == att.leaf_addr:
                set_af |= bool(new & DESC_AF) and not old & DESC_AF
                clear_ap2 |= bool(old & DESC_AP2) and not new & DESC_AP2
    return addrs, set_af, clear_ap2


# ---- cases ----------------------------------------------------------------------------------
LEAF_BITS = (DESC_AF, DESC_DBM, DESC_AP2, DESC_PXN, DESC_VALID)


def rarely(draw) -> bool:
    """True about one time in four; False is the simplest (shrinking's) choice."""
    return draw(st.booleans()) and draw(st.booleans())


CHUNK_KINDS = ("read64", "write64", "read64", "write64", "ld_preidx", "st_preidx", "cas",
               "dc_zva", "exec", "at")


@st.composite
def _warm_scenarios(draw, max_prefix: int):
    """A VM that has run: slots whose faults stay in the vectorised path (anon / shmem,
    writable, uffd resolving one page), stage 2 warmed (warm_stage2) in part, dirty logging
    on some slots (stage 2 write-protected: KVM_MEM_LOG_DIRTY_PAGES), hardware updates on
    mostly (HA, HA+HD, FEAT_HAFT), a few earlier accesses, harvests, flushes, clear_af."""
    granule = draw(st.sampled_from((4096, 4096, 16384, 65536)))
    va_bits = draw(st.sampled_from(VA_BITS[granule]))
    gp = granule // 4096
    # (ID_AA64MMFR1_EL1.HAFDBS, TCR_EL1.HA, TCR_EL1.HD): AF and dirty state, AF only, none
    hafdbs, ha, hd = draw(st.sampled_from(((2, True, True), (2, True, True), (1, True, True),
                                           (2, True, False), (0, True, True),
                                           (2, False, True))))
    machine = Machine(granule=granule, va_bits=va_bits, hafdbs=hafdbs, haft=not rarely(draw),
                      hw_update=draw(st.sampled_from(("on-change", "always"))),
                      at_sets_af=draw(st.booleans()))
    guest = Guest(tcr_ha=ha, tcr_hd=hd, tcr2_haft=not rarely(draw), pt_slot="pt",
                  vm_protected=rarely(draw))

    def slot(name, ipa, pages):
        backing = draw(st.sampled_from(("anon", "shmem")))
        uffd = draw(st.sampled_from(("none", "none", "missing", "wp")
                                    + (("minor",) if backing == "shmem" else ())))
        # an unpopulated page-table slot reads as zeros (no walk completes) unless uffd
        # fills it with the tables (UFFDIO_COPY / CONTINUE of the snapshot)
        if name == "data":
            populated = draw(st.booleans())
        else:
            populated = not rarely(draw) if uffd in ("missing", "minor") else True
        return Memslot(name, ipa, pages, log_dirty=rarely(draw), backing=backing,
                       populated=populated, uffd=uffd)
    slots = (slot("pt", 0x4000_0000, gp * draw(st.integers(4, 10))),
             slot("data", 0x8000_0000, gp * draw(st.integers(1, 8))))
    maps, used = [], set()
    for _ in range(draw(st.integers(1, 4))):
        s = slots[1] if not rarely(draw) else slots[0]
        npg = s.pages // gp
        first = draw(st.integers(0, npg - 1))
        pages = draw(st.integers(1, min(3, npg - first)))
        va = (draw(st.sampled_from(REGIONS)) % (1 << va_bits)) & ~(granule - 1)
        va += draw(st.integers(0, 3)) * granule
        span = {va + i * granule for i in range(pages)}
        if va + pages * granule > (1 << va_bits) or span & used:
            continue
        used |= span
        maps.append(Mapping(va=va, ipa=s.ipa + first * granule, pages=pages,
                            af=draw(st.booleans()), writable=not rarely(draw),
                            dirty=draw(st.booleans()), executable=draw(st.booleans())))
    assume(maps)
    vas = sorted(used)
    steps = []
    for s in slots:
        if not rarely(draw):
            pages = np.arange(s.pages, dtype=np.int64)
            if draw(st.booleans()):
                keep = np.array([draw(st.booleans()) for _ in range(s.pages)], dtype=bool)
                pages = pages[keep]
            if len(pages):
                steps.append(Step("warm_stage2", slot=s.name, pages=pages))
    logging = {s.name: s.log_dirty for s in slots}
    for _ in range(draw(st.integers(0, max_prefix))):
        op = draw(st.sampled_from(("access", "access", "access", "enable_dirty_log", "harvest",
                                   "flush_tlb", "clear_af", "uffd_wp", "zap", "set_tcr")))
        s = draw(st.sampled_from(slots))
        if op == "access":
            steps.append(Step("access", vcpu=draw(st.integers(0, 2)),
                              va=draw(st.sampled_from(vas)),
                              kind=draw(st.sampled_from(CHUNK_KINDS))))
        elif op == "enable_dirty_log" and not logging[s.name]:
            logging[s.name] = True
            steps.append(Step(op, slot=s.name, initially_set=draw(st.booleans()),
                              eager_split=draw(st.booleans())))
        elif op == "harvest" and logging[s.name]:
            steps.append(Step(op, slot=s.name))
        elif op == "flush_tlb":
            steps.append(Step(op))
        elif op == "clear_af":
            steps.append(Step(op, vcpu=draw(st.integers(0, 2)), va=draw(st.sampled_from(vas))))
        elif op == "set_tcr" and rarely(draw):
            steps.append(Step(op, ha=not rarely(draw), hd=not rarely(draw),
                              haft=draw(st.none() | st.booleans())))
        elif op == "uffd_wp" and s.uffd == "wp" or op == "zap":
            first = draw(st.integers(0, s.pages - 1))
            steps.append(Step(op, slot=s.name, first=first,
                              count=draw(st.integers(1, min(4, s.pages - first)))))
    scn = Scenario("stages", machine, guest, slots, Vmm(), tuple(maps), tuple(steps))
    try:
        build_tables(scn)
    except TableLayoutError:
        assume(False)
    return scn


@st.composite
def chunk_cases(draw, max_prefix: int = 16, max_chunk: int = 24):
    """(scenario, descriptor changes): a prefix — a warm VM (_warm_scenarios), or
    tests/strategies.scenarios' machine, slots, mappings and steps — then a chunk of accesses
    over the mapped VAs (repeated VAs, vCPUs 0-2, every kind, now and then an unmapped VA),
    with random bit changes of leaves (AF, DBM, AP[2], PXN, rarely valid) and table
    descriptors (AF: FEAT_HAFT; rarely valid) made just before it, each followed by nothing,
    a TLBI of its VA, or a full flush."""
    if rarely(draw):
        scn = draw(scenarios(max_steps=max_prefix))
    else:
        scn = draw(_warm_scenarios(max_prefix))
    geo = scn.machine.geometry
    g = geo.granule
    steps = list(scn.steps)
    vas = sorted({m.va + k * g for m in scn.mappings for k in range(m.pages)})
    pool = [v + draw(st.integers(0, g - 1)) // 8 * 8 for v in vas]
    if rarely(draw):                        # unmapped: an invalid leaf, or a walk that
        far = (1 << (geo.va_bits - 1)) + g  # ends early at an invalid table descriptor
        pool += [max(vas) + 64 * g if max(vas) + 64 * g < (1 << geo.va_bits) else 0, far]
    for _ in range(draw(st.integers(1, max_chunk))):
        steps.append(Step("access", vcpu=draw(st.integers(0, 2)), va=draw(st.sampled_from(pool)),
                          kind=draw(st.sampled_from(CHUNK_KINDS))))
    scn = dataclasses.replace(scn, steps=tuple(steps))
    tables = build_tables(scn)
    muts = []
    leaf_of = {a: va for va, a in tables.leaf_addr.items()}
    for addr in sorted(tables.descriptors):
        if not (rarely(draw) if addr in leaf_of else draw(st.booleans())):
            continue
        if addr in leaf_of:
            bits = [b for b in LEAF_BITS[:4] if draw(st.booleans())]
            if rarely(draw) and draw(st.booleans()):
                bits.append(DESC_VALID)
            va = leaf_of[addr]
        else:                               # a table descriptor: AF (FEAT_HAFT), rarely valid
            bits = [DESC_AF] + ([DESC_VALID] if rarely(draw) and draw(st.booleans()) else [])
            va = vas[0]
        new_set = sum(b for b in bits if draw(st.booleans()))
        clear = sum(bits) & ~new_set
        muts.append(Mut(addr, new_set, clear, draw(st.sampled_from(("", "", "va", "all"))), va))
    return scn, tuple(muts)


# ---- one VA, every bit combination (table-driven) ---------------------------------------------
HW_VA = 0x20_0000                 # 4K granule, 39-bit VAs: three levels (L1, L2, L3)
HW_PT, HW_DATA = 0x4000_0000, 0x8000_0000


def hw_case(af: bool, dbm: bool, ap2: bool, tab_af: bool, ha: bool, hd: bool, haft: bool,
            always: bool, at_sets_af: bool, pt_s2: str, kinds: tuple[str, ...],
            vcpus: tuple[int, ...] | None = None, data_uffd: str = "none",
            data_populated: bool = True, data_logging: bool = False):
    """One mapped page (VA HW_VA -> the data slot's page 0, read-write at stage 2): its leaf
    given AF / DBM / AP[2], both table descriptors of its walk given AF = tab_af; the machine
    with FEAT_HAFDBS = 2 (HA and HD as TCR_EL1 asks) and FEAT_HAFT; the page-table slot at
    stage 2 `pt_s2`: "unmapped", "unmapped-logging" (dirty logging from the start: a read
    fault maps read-only, force_pte / !writable), "rw" (warm_stage2), "ro" (warm, then dirty
    logging enabled: stage2_wp_range); then one access per kind, vCPU 0, 1, ... in turn (a
    store from another vCPU sees the first access's updates) or on `vcpus`.  The data slot:
    userfaultfd mode `data_uffd` (wp: every page write-protected first, UFFDIO_WRITEPROTECT),
    populated or not (missing pages stay unmapped), dirty logging from the start or not."""
    machine = Machine(4096, 39, hafdbs=2, haft=haft,
                      hw_update="always" if always else "on-change", at_sets_af=at_sets_af)
    guest = Guest(tcr_ha=ha, tcr_hd=hd, tcr2_haft=haft, pt_slot="pt")
    slots = (Memslot("pt", HW_PT, 8),
             Memslot("data", HW_DATA, 4, log_dirty=data_logging,
                     backing="shmem" if data_uffd == "minor" else "anon",
                     populated=data_populated, uffd=data_uffd))
    steps = [Step("warm_stage2", slot="data", pages=np.arange(4, dtype=np.int64))]
    if data_uffd == "wp":
        steps.append(Step("uffd_wp", slot="data", first=0, count=4))
    if pt_s2 in ("rw", "ro"):
        steps.append(Step("warm_stage2", slot="pt", pages=np.arange(8, dtype=np.int64)))
    if pt_s2 in ("ro", "unmapped-logging"):
        steps.append(Step("enable_dirty_log", slot="pt"))
    vcpus = vcpus or tuple(range(len(kinds)))
    steps += [Step("access", vcpu=v, va=HW_VA + 8 * i, kind=k)
              for i, (v, k) in enumerate(zip(vcpus, kinds))]
    scn = Scenario("hw", machine, guest, slots, Vmm(), (Mapping(HW_VA, HW_DATA, 1),),
                   tuple(steps))
    tables = build_tables(scn)
    leaf = tables.leaf_addr[HW_VA]
    bits = ((DESC_AF, af), (DESC_DBM, dbm), (DESC_AP2, ap2))
    muts = [Mut(leaf, sum(b for b, v in bits if v), sum(b for b, v in bits if not v))]
    muts += [Mut(a, DESC_AF if tab_af else 0, 0 if tab_af else DESC_AF)
             for a in sorted(tables.descriptors) if a != leaf]
    return scn, tuple(muts), leaf, sorted(a for a in tables.descriptors if a != leaf)
