"""The numpy engine: every policy in lockstep, the trace in vectorised chunks, the rest through
the reference's own code.

docs/semantics.md §6: between two events every page's state only moves one way, so within an interval
the accesses that take no stage-2 fault, and the faults of the common classes, follow from
first-occurrence reductions over the interval's accesses (model/engine_chunk.py), computed once
for all the policies that agree on the guest's memory and TLBs (a *group*,
model/engine_state.py).  Whatever the vectorised path does not cover — events, and accesses
whose fault leaves the common classes (MMIO, aborts, blocks, whole-slot userfaultfd
resolution, page-table content replaced, stale TLB entries) — runs through
model.reference.Vm/model.host.Host on the same state, once per policy, so fault handling stays
the executable spec; policies whose shared state then differs stop sharing it.

Layout: engine_state.py holds the state (Base: per run; Shared: per group; ArrayHost/FastVm:
per policy) and the trace preparation; engine_walk.py the stage-1 walker; engine_chunk.py the
vectorised chunk (walk cache, tier 1 codes, tier 2 TLB history and needs, per-page faults);
engine_guest.py guest-kernel work in bulk; this module the driver (intervals,
chunks, reference code for events and fallbacks, group splits).  Nothing is stored per access
beyond the trace itself when the trace's VA span allows a page-id table (the usual case).

Public API: run_trace(scn, trace, policies), run_engine(scn, policies).
"""
from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np

from .engine_chunk import Scratch, WalkCache, chunk, chunk_codes_settled, first_touches
from .engine_guest import GUEST_BULK
from .engine_state import CLS_S, UFFD_CODES, UFFD_NONE, Base, FastVm, Shared
from .host import S2_UNMAPPED
from .host_ops import HOST_OPS, step_pages
from .policies import DEFAULT_ORDER
from .results import PolicyResult, UffdEvent
from .scenario import Scenario
from .trace import Trace, trace_from_scenario
from .trace_stream import repeat_period
from .x86 import is_x86, one_machine

# chunk length (accesses): starts at START_WINDOW, doubles after a chunk the vectorised path
# ran to its end, and after an access it left to the reference code shrinks towards twice
# the distance to that access (the next one is likely as near); within [MIN, MAX]
MIN_WINDOW, START_WINDOW, MAX_WINDOW = 64, 1 << 13, 1 << 18
# longest stretch run by the reference code alone after dense fallbacks (accesses)
MAX_SCALAR_RUN = 256
# intervals (between events) this short go through the reference code alone: a chunk's fixed
# cost (~0.5 ms) is ~10 accesses of the reference code (~50 us each)
SCALAR_INTERVAL = 8
UFFD_MODE_NAMES = {code: name for name, code in UFFD_CODES.items() if code != UFFD_NONE}
# events that touch only the host side (stage 2, host pages, dirty log): Group.host_event
HOST_EVENT_OPS = frozenset(HOST_OPS) | {"punch_hole", "enable_dirty_log", "harvest",
                                         "warm_stage2"}
# host ops whose transition is page by page and idempotent (model/host_ops.py: f(f(h)) = f(h)
# on each page alone) and whose unmapping is too: a run of them on one slot at one trace
# position, with no access between, equals one op on the union of their page sets.
# thp_collapse is not (it looks at the whole 2 MiB range: collapse_huge_page).
# False: every event through the reference code per policy with a journal (Group.scalar), as
# before issue 10; kept to measure what the bulk paths save (bench/bench_engine.py) and as a
# second path the differential tests compare
BULK_EVENTS = True
# a repeated window's repetitions that would only settle again are counted, not run
# (Group.repeat_settled); False: every access runs (the expanded path, kept to compare)
REPEATS_ONCE = True
# ... and after an event, the next whole repetition runs by its first touches, found by
# index (engine_chunk.first_touches) instead of tier 1's pass over its accesses; False:
# every access of it through tier 1
FIRST_TOUCHES = True
UNION_HOST_OPS = frozenset({"zap", "numa_hint", "swap_out", "uffd_wp", "ksm_merge",
                            "uffd_unprotect"})



class Flags:
    """The guest's and machine's controls the vectorised path reads (equal in a group)."""

    def __init__(self, vm: FastVm):
        m = vm.scn.machine
        self.ha, self.hd, self.haft = vm.ha, vm.hd, vm.haft
        self.at_sets_af = m.at_sets_af
        self.always = m.hw_update == "always"
        self.vm_protected = vm.scn.guest.vm_protected


class Group:
    """Policies that share guest memory and TLBs (one Shared), run in lockstep."""

    def __init__(self, base: Base, vms: list[FastVm], shared: Shared):
        self.base, self.vms, self.shared = base, vms, shared
        for vm in vms:
            vm.shared = shared
        nk = base.prep.nskeys
        self.fo = np.zeros(4 * nk, dtype=np.int32)      # first-occurrence stamps
        self.fo_base = 1
        self.codeT = np.zeros(4 * nk, dtype=np.int8)    # per (sub-key, class), this chunk:
        self.s1T = np.zeros(4 * nk, dtype=bool)         # a walk takes a stage-1 fault
        self.dunT = np.zeros(4 * nk, dtype=bool)        # data need unmet at chunk start
        self.rev = np.arange(max(MAX_WINDOW, 1), 0, -1, dtype=np.int32)
        self.scratch = Scratch()
        self.window = max(MIN_WINDOW, min(START_WINDOW, MAX_WINDOW))
        self.s2min = None
        self._paths_ok = None
        self.head_fallbacks = 0                      # chunks in a row cut at their start
        self.scalar_left = 0                         # accesses left to the reference code
        self.period = repeat_period(base.trace) if REPEATS_ONCE else None
        self.last_settled = False                    # the last chunk: every access settled
        self.repeats_skipped = 0                     # repetitions counted, not run
        self.next_check = 0                          # window_settles: not before
        self.next_touch = 0                          # next_chunk's first touches: not before

    def walkcache(self) -> WalkCache:
        sh = self.shared
        root = self.vms[0].tables.root
        wc = sh.walk
        offs = sh.take_changes()
        if wc is not None and wc.root == root and offs is not None:
            if wc.version != sh.version:             # the tables' shape changed
                sh.sync_tlb()
                self._paths_ok = None
                if not wc.update(sh, offs):
                    wc = None
            if wc is not None:
                wc.refresh(sh, offs)
        if wc is None or wc.root != root:
            sh.sync_tlb()
            wc = sh.walk = WalkCache(self.base, sh, root)
            self._paths_ok = None
        return wc

    def invalidate(self) -> None:
        """Reference code runs: recompute what the vectorised path derives from the state."""
        self.s2min = None
        self._paths_ok = None
        self.shared.sync_tlb()

    def paths_mapped(self, wc: WalkCache) -> bool:
        """Every page a walk reads is mapped by every policy (stays so until reference code
        runs: the vectorised path only adds mappings)."""
        if not self._paths_ok:
            self._paths_ok = bool((np.take(self.s2min, wc.path_pages) != S2_UNMAPPED).all())
        return self._paths_ok

    def prepare(self) -> None:
        vm0 = self.vms[0]
        self.flags = Flags(vm0)
        self.stopped = np.zeros(self.base.prep.n_vcpu, dtype=bool)
        for v in vm0.stopped:
            if v < len(self.stopped):
                self.stopped[v] = True
        self.any_stopped = bool(self.stopped.any())
        for vm in self.vms:
            vm.flags_logact = vm.host.logging_active_v()
        if self.s2min is None:
            self.s2min = self.vms[0].host.s2.a.copy()
            for vm in self.vms[1:]:
                np.minimum(self.s2min, vm.host.s2.a, out=self.s2min)
        if self.fo_base > (1 << 30):
            self.fo[:] = 0
            self.fo_base = 1

    def run(self, pos: int, end: int) -> tuple[list["Group"], int]:
        """Accesses [pos, end) of an interval; stops early when the group splits."""
        if is_x86(self.base.scn.machine):
            # x86 comparison machines (docs/x86.md): every access through the reference code
            # (the same fallback as for the rare classes below); one policy, no splits
            while pos < end:
                self.scalar(lambda vm, p=pos: vm.scalar(p))
                pos += 1
            return [self], pos
        w = self.window
        settled_from = None                          # every access since: settled
        if self.period is not None:                  # the window's state check: after a
            self.next_check = pos + self.period      # repetition's first touches
            self.next_touch = pos
        while pos < end:
            if self.scalar_left > 0 or (w < 4 and MIN_WINDOW > 1) or (
                    end - pos <= SCALAR_INTERVAL < MIN_WINDOW):
                # the reference code alone: after chunks whose very first access it had to
                # take anyway (dense fallbacks: a chunk's fixed cost for nothing), for one or
                # two accesses right at a chunk's start, or for the rest of a short interval
                parts = self.scalar(lambda vm: vm.scalar(pos))
                pos += 1
                settled_from = None
                if self.scalar_left > 0:
                    self.scalar_left -= 1
                elif w < 4:
                    w *= 2
                if len(parts) > 1:
                    for p in parts:
                        p.window, p.scalar_left = w, self.scalar_left
                    return parts, pos
                continue
            self.prepare()
            j, cut = self.next_chunk(pos, end, w)
            settled_from = (settled_from if settled_from is not None else pos) \
                if self.last_settled and cut == j else None
            # a chunk that could not take even its first access: run the reference code for
            # the next 2, 4, ... MAX_SCALAR_RUN accesses before trying a chunk again
            self.head_fallbacks = self.head_fallbacks + 1 if cut == pos else 0
            if self.head_fallbacks > 1:
                self.scalar_left = min(1 << self.head_fallbacks, MAX_SCALAR_RUN)
            if cut < j:
                parts = self.scalar(lambda vm: vm.scalar(cut))
                w = max(MIN_WINDOW, min(w // 2, 2 * (cut - pos) + 1))
                pos = cut + 1
                if len(parts) > 1:
                    for p in parts:
                        p.window = w
                    return parts, pos
            else:
                pos = self.repeat_settled(settled_from, j, end)
                w = min(MAX_WINDOW, w * 2)
        self.window = w
        return [self], pos

    def next_chunk(self, pos: int, end: int, w: int) -> tuple[int, int]:
        """Run the next chunk from pos: a repeated window's next whole repetition by its
        first touches (engine_chunk.first_touches: at most once per period, when one fits
        before the interval's end), else `w` accesses (engine_chunk.chunk).  Returns the
        chunk's end and its cut."""
        P = self.period
        if P is not None and FIRST_TOUCHES and pos >= self.next_touch and end - pos >= P:
            self.next_touch = pos + P
            cut = first_touches(self, pos)
            if cut is not None:
                self.next_check = pos + P                # the window's state check next
                return pos + P, cut
        j = min(end, pos + min(w, MAX_WINDOW, len(self.rev)))
        return j, chunk(self, pos, j)

    def repeat_settled(self, settled_from: int | None, pos: int, end: int) -> int:
        """In a repeated window (period P), when the next P accesses would all settle
        (engine_chunk.chunk: TLB hits on pages that allow them; they change nothing but the
        counts and the written pages), so would every repetition after them, on the same
        state, up to the interval's end: add the counts of every access left (the last
        repetition's part too) and return the end (docs/semantics.md §6).  Known when the P
        accesses before pos all settled (from `settled_from`), or from the state
        (window_settles)."""
        P = self.period
        if P is None or end - pos < P:
            return pos
        if (settled_from is None or pos - settled_from < P) and not self.window_settles(pos):
            return pos
        k, rest = divmod(end - pos, P)
        prep = self.base.prep
        ci = prep.present_ci()
        st = ci[(ci & 3) == CLS_S] >> 2                        # the window's stores
        if self.any_stopped:
            st = st[~self.stopped[prep.sk_vcpu[st]]]
        wpages = self.shared.walk.dp[prep.sk_vp[st]]
        n_acc = k * P + rest          # the rest: part of a repetition, settled too (its
        if self.any_stopped:          # stores are among the whole ones')
            vc = self.base.trace.vcpu
            n_acc = k * int(np.count_nonzero(~self.stopped[vc.base])) + int(
                np.count_nonzero(~self.stopped[vc[end - rest:end]]))
        for vm in self.vms:
            vm.r.accesses += n_acc
            vm.host.written_all[wpages] = True                 # (Host.guest_write)
        self.repeats_skipped += k
        return end

    def window_settles(self, pos: int) -> bool:
        """Does every access of the repeated window settle on the state at `pos`?  The
        tier-1 code of each (sub-key, class) the window holds (engine_chunk.chunk_codes)
        depends on that state only, which settled accesses do not change: then the next P
        accesses settle, and every repetition after them.  Checked at most once per P
        accesses (it costs one code per (sub-key, class))."""
        if pos < self.next_check:
            return False
        self.next_check = pos + self.period
        self.prepare()
        return chunk_codes_settled(self, self.walkcache(), self.base.prep.present_ci())

    def scalar(self, fn) -> list["Group"]:
        """Run `fn(vm)` (reference code) for every policy on the shared state; split the
        group where the policies' changes to it differ."""
        self.invalidate()
        if len(self.vms) == 1:
            fn(self.vms[0])
            return [self]
        sh = self.shared
        runs = []
        for vm in self.vms:
            sh.begin()
            fn(vm)
            j = sh.end()
            sig = (Shared.signature(j), frozenset(vm.stopped), vm.tables.root, vm.cur_as,
                   vm.ha, vm.hd, vm.haft)
            runs.append((sig, j, vm))
            sh.undo(j)
        parts: dict = {}
        for sig, j, vm in runs:
            parts.setdefault(sig, (j, []))[1].append(vm)
        items = list(parts.values())
        copies = [sh.copy() for _ in items[1:]]
        out = []
        for k, (j, vms) in enumerate(items):
            shk = sh if k == 0 else copies[k - 1]
            shk.replay(j)
            if k == 0:
                self.vms = vms
                out.append(self)
            else:
                g = Group(self.base, vms, shk)
                g.window = self.window
                out.append(g)
        return out

    def host_event(self, si: int, st) -> None:
        """A host operation (HOST_EVENT_OPS) for every policy, each as array operations on
        its own host state (ArrayHost): the op reads and writes nothing the policies share
        but the TLBs (every policy flushes them alike) and, for punch_hole, the content of
        the pages it punches (zeroed alike), so the group never splits on one and needs no
        journal."""
        self.invalidate()
        for vm in self.vms:
            vm.run_step(si, st)

    def emit_uffd(self, vm: FastVm, evs: list) -> None:
        """Record userfaultfd events found by the vectorised path, in order:
        (order key, trace position, page index, mode code, write, written)."""
        base = self.base
        tr = base.trace
        for _key, pos, P, mode, write, written in evs:
            step = int(tr.step_of_access[pos]) if tr.step_of_access is not None else pos
            k = int(base.slot_no[P])
            s = base.slots[k]
            vm.r.uffd_events.append(UffdEvent(step, s.name, P - int(base.slot_start[k]),
                                              UFFD_MODE_NAMES[mode], write, written))


def run_trace(scn: Scenario, trace: Trace, policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    """Run a trace under every policy with the numpy engine."""
    # The run makes few reference cycles but many container objects (tables, events,
    # page lists): the cyclic collector's passes over them cost more than they free.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return one_machine(scn, policies, lambda ps: _run_trace(scn, trace, ps))
    finally:
        if enabled:
            gc.enable()


def _run_trace(scn: Scenario, trace: Trace, policies) -> dict[str, PolicyResult]:
    policies = list(dict.fromkeys(policies))
    base = Base(scn, trace)
    shared = Shared(base, populated_pt=base.pt.populated)
    vms = [FastVm(base, p, shared) for p in policies]
    groups = [Group(base, vms, shared)] if vms else []
    for start, end, events in trace.intervals():
        groups = _apply_events(base, groups, events)
        work = [(g, start) for g in groups]
        groups = []
        while work:
            g, pos = work.pop()
            parts, pos = g.run(pos, end)
            if pos >= end:
                groups.extend(parts)
            else:
                work.extend((p, pos) for p in parts)
    return {vm.r.policy: vm.finish() for vm in vms}


def _apply_events(base: Base, groups: list["Group"], events: list) -> list["Group"]:
    """The events before an interval, for every group, in order: host operations in bulk
    (each run of one op on one slot as one op, coalesce_host_ops; then Group.host_event),
    guest-kernel work in bulk where engine_guest.GUEST_BULK shows it equal; the rest, or
    everything when BULK_EVENTS is off, through the reference code once per policy
    (Group.scalar)."""
    if not BULK_EVENTS:
        for _pos, si, st in events:
            groups = [h for g in groups
                      for h in g.scalar(lambda vm, si=si, st=st: vm.run_step(si, st))]
        return groups
    for si, st in coalesce_host_ops(base, events):
        if st.op in HOST_EVENT_OPS:
            for g in groups:
                g.host_event(si, st)
            continue
        bulk = GUEST_BULK.get(st.op)                # guest-kernel work in bulk, or not
        groups = [h for g in groups
                  for h in ([g] if bulk is not None and bulk(g, si, st) else
                            g.scalar(lambda vm, si=si, st=st: vm.run_step(si, st)))]
    return groups


def coalesce_host_ops(base: Base, events: list) -> list:
    """The events at one trace position as (step index, step), each run of UNION_HOST_OPS
    steps with the same op and slot merged into one step over the union of their pages (the
    run's first step index: host ops record no per-step effect and no uffd event)."""
    out: list = []
    i, n = 0, len(events)
    while i < n:
        si, st = events[i][1], events[i][2]
        j = i + 1
        if st.op in UNION_HOST_OPS:
            op, slot = st.op, st.slot
            while j < n and events[j][2].op == op and events[j][2].slot == slot:
                j += 1
        if j - i > 1:
            pages = _run_pages([e[2] for e in events[i:j]], base.scn.slot(slot).pages)
            st = replace(st, first=0, count=0, pages=pages)
        out.append((si, st))
        i = j
    return out


def _run_pages(steps: list, slot_pages: int) -> np.ndarray:
    """The union of the steps' page sets (host_ops.step_pages), the (first, count) ranges
    expanded together as arrays (a pressure pass is hundreds of short ranges)."""
    ranges = [st for st in steps if st.pages is None]
    sets = [step_pages(st, slot_pages) for st in steps if st.pages is not None]
    if ranges:
        first = np.fromiter((st.first for st in ranges), dtype=np.int64, count=len(ranges))
        count = np.fromiter((st.count for st in ranges), dtype=np.int64, count=len(ranges))
        bad = (count != 0) & ((first < 0) | (first + count > slot_pages))
        if bad.any():                    # step_pages' own message for the first bad one
            step_pages(ranges[int(np.argmax(bad))], slot_pages)
        keep = count > 0
        first, count = first[keep], count[keep]
        total = int(count.sum())
        if total * 16 < slot_pages:      # few pages: expand the ranges, sort, drop repeats
            start = np.cumsum(count) - count
            pages = np.sort(np.repeat(first - start, count) + np.arange(total, dtype=np.int64))
            sets.append(pages[np.concatenate(([True], pages[1:] != pages[:-1]))])
        else:                            # many: +1 at each range's start, -1 past its end
            edge = np.zeros(slot_pages + 1, dtype=np.int32)
            np.add.at(edge, first, 1)
            np.add.at(edge, first + count, -1)
            sets.append(np.flatnonzero(np.cumsum(edge[:-1]) > 0))
    return _union(sets)


def _union(sets: list[np.ndarray]) -> np.ndarray:
    """The union of ascending unique page sets, ascending, in time linear in their sizes
    when they follow each other (a scan emitted block by block) or are large."""
    sets = [p for p in sets if len(p)]
    if not sets:
        return np.zeros(0, dtype=np.int64)
    if all(int(a[-1]) < int(b[0]) for a, b in zip(sets, sets[1:])):
        return np.concatenate(sets)
    top = max(int(p[-1]) for p in sets) + 1
    if sum(len(p) for p in sets) * 16 < top:
        return np.unique(np.concatenate(sets))
    mask = np.zeros(top, dtype=bool)
    for p in sets:
        mask[p] = True
    return np.flatnonzero(mask)


def run_engine(scn: Scenario, policies=DEFAULT_ORDER) -> dict[str, PolicyResult]:
    return run_trace(scn, trace_from_scenario(scn), policies)
