"""Calibrated host scenarios: host behaviour in seconds, MB and MB/s, placed on the modelled
clock (workloads/clock.py; issue 9).

Each scenario turns published kernel and QEMU defaults into events at guest times t; an event
at time t applies before access round(t / access_ns).  The schedule's rounding: an event
lands on the access nearest its time, so a count over a window [0, S) is exact for event
times t < S (t = S lands after the last access and is not scheduled).  Every event uses the
host-operation interface (model/host_ops.py): one op per memslot per wake-up, on the set of
pages it covers, so both engines apply it in bulk.

Scans walk guest memory in guest-physical address order, memslot after memslot, wrapping
around, from where the previous scan stopped (the kernel keeps a per-mm scan position:
mm->numa_scan_offset, ksm_scan.address, khugepaged_scan.address).  The host cannot tell guest
page-table pages from data: every memslot is scanned.
"""
from __future__ import annotations

import math

import numpy as np

from model.scenario import Step

from .base import Knob, Workload, WorkloadError, host_scenario, seed_knob
from .clock import access_time
from .host import with_events

MB = 1 << 20
PAGE = 4096


def _times(wl: Workload, first_s: float, period_s: float) -> list[tuple[int, float]]:
    """(position, time) of the wake-ups at first_s + k * period_s inside the window."""
    ns = access_time(wl).ns
    n = len(wl.trace)
    window = n * ns * 1e-9
    out = []
    k = 0
    while True:
        t = first_s + k * period_s
        if t >= window or k > 1_000_000:
            break
        out.append((min(n, round(t * 1e9 / ns)), t))
        k += 1
    return out


class Scanner:
    """A scan position over the guest's memslots (address order, wrapping)."""

    def __init__(self, wl: Workload, slots=None):
        self.slots = sorted(slots or wl.scenario.memslots, key=lambda s: s.ipa)
        self.total = sum(s.pages for s in self.slots)
        self.pos = 0

    def next(self, pages: int) -> list[tuple[str, np.ndarray]]:
        """The next `pages` pages, as (slot name, ascending page indices) per memslot."""
        pages = min(pages, self.total)
        g = (self.pos + np.arange(pages, dtype=np.int64)) % self.total
        self.pos = int((self.pos + pages) % self.total) if self.total else 0
        out, start = [], 0
        for s in self.slots:
            sel = g[(g >= start) & (g < start + s.pages)] - start
            if len(sel):
                out.append((s.name, np.sort(sel)))
            start += s.pages
        return out


def _check(owner: str, **vals) -> None:
    for k, v in vals.items():
        if not v > 0:
            raise WorkloadError(f"{owner}: {k} must be > 0 (got {v})")


FIRST = Knob("first_s", 0.0, "guest time of the first wake-up in the window, s (the window "
             "starts at one by default)", lo=0.0,
             source="ASSUMPTION: the window starts at a wake-up; a sensitivity knob")


# NUMA balancing's scan period, as kernel/sched/fair.c scales it by the process's RSS
MAX_SCAN_WINDOW_MB = 2560      # kernel/sched/fair.c MAX_SCAN_WINDOW: never scan > 2560 MB/s
NUMA_SCAN_PERIOD_MIN_MS = 1000  # sysctl_numa_balancing_scan_period_min
NUMA_SCAN_PERIOD_MAX_MS = 60000  # sysctl_numa_balancing_scan_period_max
NUMA_SCAN_DELAY_MS = 1000      # sysctl_numa_balancing_scan_delay: the first scan
NUMA_RATES = ("fast", "slow")


def numa_scan_windows(rss_mb: float, scan_size_mb: int) -> int:
    """kernel/sched/fair.c task_nr_scan_windows: RSS rounded up to whole scan windows."""
    return max(1, -(-int(math.ceil(rss_mb)) // scan_size_mb))


def numa_scan_period_ms(rss_mb: float, scan_size_mb: int, rate: str) -> int:
    """The scan period at the fast end (kernel/sched/fair.c task_scan_min: max(floor,
    scan_period_min / windows), floor = 1000 ms / (MAX_SCAN_WINDOW / scan_size)) or at the
    slow end (task_scan_max: max(task_scan_min, scan_period_max / windows)) of the kernel's
    adaptive range; integer ms as the kernel computes them (unsigned int division)."""
    windows = numa_scan_windows(rss_mb, scan_size_mb)
    per = MAX_SCAN_WINDOW_MB // scan_size_mb if scan_size_mb < MAX_SCAN_WINDOW_MB else 1
    smin = max(1000 // per, NUMA_SCAN_PERIOD_MIN_MS // windows)
    if rate == "fast":
        return smin
    return max(smin, NUMA_SCAN_PERIOD_MAX_MS // windows)


@host_scenario("numa",
               "automatic NUMA balancing (task_numa_work): every scan period the next "
               "scan_size_mb of guest memory gets PROT_NONE hinting PTEs; the MMU notifier "
               "unmaps stage 2 (kvm_unmap_gfn_range) and the next access refaults; the period "
               "is the kernel's, scaled by the VM's RSS (task_scan_min / task_scan_max)",
               [Knob("scan_size_mb", 256, "MB per scan (kernel.numa_balancing_scan_size_mb = "
                     "256, kernel/sched/fair.c)", lo=1,
                     source="Linux kernel/sched/fair.c: sysctl_numa_balancing_scan_size = 256"),
                Knob("scan_rate", "fast", "which end of the kernel's adaptive scan period: "
                     "fast = task_scan_min, slow = task_scan_max, both scaled by the VM's RSS "
                     "(every memslot: a 4 GiB VM scans 256 MB per 100 ms fast, per 3.75 s "
                     "slow)", NUMA_RATES,
                     source="Linux kernel/sched/fair.c: task_nr_scan_windows, task_scan_min, "
                            "task_scan_max"),
                Knob("scan_period_s", 0.0, "s between scans; 0: the kernel's period at "
                     "scan_rate for this VM's RSS", lo=0.0,
                     source="Linux kernel/sched/fair.c: task_scan_min / task_scan_max"),
                Knob("first_s", -1.0, "guest time of the first scan in the window, s; < 0: "
                     "the kernel's scan delay, 1 s (sysctl_numa_balancing_scan_delay)",
                     source="Linux kernel/sched/fair.c: sysctl_numa_balancing_scan_delay = "
                            "1000 ms")])
def numa(wl: Workload, *, scan_size_mb, scan_rate, scan_period_s, first_s):
    _check("numa", scan_size_mb=scan_size_mb)
    rss_mb = sum(s.pages for s in wl.scenario.memslots) * PAGE / MB
    if not scan_period_s:
        scan_period_s = numa_scan_period_ms(rss_mb, scan_size_mb, scan_rate) / 1000
    if first_s < 0:
        first_s = NUMA_SCAN_DELAY_MS / 1000
    sc = Scanner(wl)
    ev = []
    for pos, _t in _times(wl, first_s, scan_period_s):
        for slot, pages in sc.next(scan_size_mb * MB // PAGE):
            ev.append((pos, Step("numa_hint", slot=slot, pages=pages)))
    return with_events(wl, ev, "numa", dict(scan_size_mb=scan_size_mb, scan_rate=scan_rate,
                                            scan_period_s=scan_period_s, first_s=first_s,
                                            rss_mb=rss_mb))


@host_scenario("ksm",
               "KSM merging (ksmd, scan_get_next_rmap_item/try_to_merge_one_page): every "
               "sleep_ms the next pages_to_scan pages are scanned; the duplicates among them "
               "are merged: read-only on the host, stage 2 unmapped, a write takes a CoW",
               [Knob("pages_to_scan", 100, "pages per wake-up (/sys/kernel/mm/ksm/"
                     "pages_to_scan = 100, mm/ksm.c)", lo=1,
                     unit="pages", source="Linux mm/ksm.c: ksm_thread_pages_to_scan = 100"),
                Knob("sleep_ms", 20.0, "ms between wake-ups (ksm_thread_sleep_millisecs = 20)",
                     lo=1e-3,
                     source="Linux mm/ksm.c: ksm_thread_sleep_millisecs = 20"),
                Knob("merge_percent", 10.0, "share of scanned pages that have a duplicate, % "
                     "(ASSUMPTION: zero and duplicate pages of a VM; range 1-50)", lo=0.0,
                     hi=100.0,
                     source="ASSUMPTION: duplicate/zero pages of a VM, range 1-50 %"),
                FIRST, seed_knob("seed of which scanned pages are duplicates")])
def ksm(wl: Workload, *, pages_to_scan, sleep_ms, merge_percent, first_s, seed):
    _check("ksm", pages_to_scan=pages_to_scan, sleep_ms=sleep_ms)
    sc = Scanner(wl, [s for s in wl.scenario.memslots if s.backing in ("anon", "anon_thp")])
    rng = np.random.default_rng(seed)
    ev = []
    for pos, _t in _times(wl, first_s, sleep_ms / 1000):
        for slot, pages in sc.next(pages_to_scan):
            merged = pages[rng.random(len(pages)) < merge_percent / 100]
            if len(merged):
                ev.append((pos, Step("ksm_merge", slot=slot, pages=merged)))
    return with_events(wl, ev, "ksm", dict(pages_to_scan=pages_to_scan, sleep_ms=sleep_ms,
                                           merge_percent=merge_percent, first_s=first_s,
                                           seed=seed))


@host_scenario("khugepaged",
               "THP collapse (khugepaged_do_scan -> collapse_huge_page): every scan_sleep_ms "
               "the next pages_to_scan pages are scanned and each 2 MiB range of a THP-backed "
               "memslot is collapsed into a huge page (stage 2 unmapped; the next fault may "
               "map a block)",
               [Knob("pages_to_scan", 4096, "pages per wake-up (/sys/kernel/mm/"
                     "transparent_hugepage/khugepaged/pages_to_scan = 4096, mm/khugepaged.c)",
                     lo=512,
                     unit="pages", source="Linux mm/khugepaged.c: khugepaged_pages_to_scan = "
                            "HPAGE_PMD_NR * 8"),
                Knob("scan_sleep_ms", 10000.0, "ms between wake-ups (khugepaged_scan_sleep_"
                     "millisecs = 10000)", lo=1e-3,
                     source="Linux mm/khugepaged.c: khugepaged_scan_sleep_millisecs = 10000"),
                FIRST])
def khugepaged(wl: Workload, *, pages_to_scan, scan_sleep_ms, first_s):
    _check("khugepaged", pages_to_scan=pages_to_scan, scan_sleep_ms=scan_sleep_ms)
    thp = [s for s in wl.scenario.memslots if s.backing == "anon_thp" and s.pages >= 512]
    ev = []
    if thp:
        sc = Scanner(wl, thp)
        for pos, _t in _times(wl, first_s, scan_sleep_ms / 1000):
            for slot, pages in sc.next(pages_to_scan // 512 * 512):
                for r in np.unique(pages // 512):
                    rng = np.arange(r * 512, r * 512 + 512, dtype=np.int64)
                    if rng[-1] < wl.scenario.slot(slot).pages:
                        ev.append((pos, Step("thp_collapse", slot=slot, pages=rng)))
    return with_events(wl, ev, "khugepaged", dict(pages_to_scan=pages_to_scan,
                                                  scan_sleep_ms=scan_sleep_ms,
                                                  first_s=first_s))


def _clear_chunks(slots, chunk_mb: int) -> list[tuple[str, int, int, float]]:
    """(slot, first page, end page, share of guest memory before it) of each clear chunk,
    memslots in address order (QEMU's clear_bmap is per RAMBlock)."""
    if chunk_mb <= 0:
        return []
    per = max(1, chunk_mb * MB // PAGE)
    total = sum(s.pages for s in slots)
    out, before = [], 0
    for s in sorted(slots, key=lambda s: s.ipa):
        for lo in range(0, s.pages, per):
            out.append((s.name, lo, min(s.pages, lo + per), before / total))
            before += min(s.pages, lo + per) - lo
    return out


def _written_pages(wl: Workload, a: int, b: int) -> int:
    """Distinct 4 KiB pages the guest's own stores wrote in accesses [a, b).  A window served
    again (model.trace_stream.TiledColumn) is read through its base: a range that spans a
    whole period writes every page the base writes."""
    from model.trace import STORE_MASK
    tr = wl.trace
    va, kind = tr.va, tr.kind
    period = getattr(va, "period", None)
    if period is not None and getattr(kind, "period", None) == period:
        va, kind = va.base, kind.base
        if b - a >= period:
            a, b = 0, period
        else:
            a, b = a % period, a % period + (b - a)
            if b > period:                     # wraps: [a, period) and [0, b - period)
                return len(np.union1d(_store_pages(va, kind, a, period, STORE_MASK),
                                      _store_pages(va, kind, 0, b - period, STORE_MASK)))
    return int(len(_store_pages(va, kind, a, b, STORE_MASK)))


def _store_pages(va, kind, a: int, b: int, store_mask) -> np.ndarray:
    pages = np.zeros(0, dtype=np.uint64)
    for lo in range(a, b, 1 << 22):            # in blocks: a long window is never held whole
        hi = min(b, lo + (1 << 22))
        st = store_mask[np.asarray(kind[lo:hi])]
        pages = np.union1d(pages, np.asarray(va[lo:hi])[st] >> np.uint64(12))
    return pages


def migration_bound_s(wl: Workload, bandwidth_mb_s: float = 134.2, link_gbit_s: float = 0.0,
                      start_s: float = 0.0, **_knobs) -> float:
    """A window long enough for one whole pre-copy migration of `wl`'s VM that converges:
    the first pass (all memory at the bandwidth) three times over, plus 1 s.  A migration
    whose later passes together take longer than two first passes is refused as not
    converging (QEMU would need auto-converge or post-copy; ASSUMPTION: such a guest is out
    of the realistic scope)."""
    bw = link_gbit_s * 1000 / 8 if link_gbit_s > 0 else bandwidth_mb_s
    total_mb = sum(s.pages for s in wl.scenario.memslots) * PAGE / 1e6
    return start_s + 3 * total_mb / bw + 1.0


@host_scenario("migration",
               "pre-copy live migration in time (QEMU migration_thread, ram_save_iterate): "
               "dirty logging on every memslot, the first iteration sends all guest memory "
               "at the link's bandwidth, each later one the pages dirtied during the previous "
               "one; one dirty-log sync (harvest) per iteration; stops when the rest fits the "
               "downtime limit",
               [Knob("bandwidth_mb_s", 134.2, "migration bandwidth, MB/s (QEMU max-bandwidth "
                     "default 128 MiB/s = 134.2 MB/s, migration/options.c)", lo=1e-3,
                     source="QEMU migration/options.c: MAX_THROTTLE = 128 MiB/s"),
                Knob("link_gbit_s", 0.0, "if > 0, the bandwidth is this link's speed instead, "
                     "Gbit/s (10, 25, 100)", lo=0.0,
                     source="ASSUMPTION: 10/25/100 Gbit/s datacentre links"),
                Knob("downtime_limit_ms", 300.0, "switch-over when the rest takes less, ms "
                     "(QEMU downtime-limit default 300)", lo=0.0,
                     source="QEMU migration/options.c: DEFAULT_MIGRATE_SET_DOWNTIME = 300 ms"),
                Knob("start_s", 0.0, "guest time at which migration starts, s", lo=0.0,
                     source="ASSUMPTION: migration starts at the window's start"),
                Knob("manual_protect", False, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with "
                     "KVM_DIRTY_LOG_INITIALLY_SET (QEMU uses it when the kernel has it; off "
                     "by default here: its first harvest reports every page, which the "
                     "metrics would count as false positives of every policy alike)",
                     source="Linux KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (QEMU "
                            "kvm_dirty_log_manual_caps)"),
                Knob("eager_split", False, "KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE",
                     source="Linux arm64 KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE (default 0: off)"),
                Knob("clear_chunk_mb", 1024, "KVM_CLEAR_DIRTY_LOG chunk, MiB: each iteration "
                     "clears (re-protects) one chunk just before sending it (QEMU "
                     "clear-bitmap-shift default 18: 2^18 pages = 1 GiB, migration_clear_"
                     "memory_region_dirty_bitmap); 0: one GET_DIRTY_LOG that re-protects "
                     "everything at each iteration's end (no manual protect)", lo=0,
                     source="QEMU include/exec/ramblock.h: CLEAR_BITMAP_SHIFT_DEFAULT = 18")])
def migration(wl: Workload, *, bandwidth_mb_s, link_gbit_s, downtime_limit_ms, start_s,
              manual_protect, eager_split, clear_chunk_mb):
    """Decision: iteration lengths come from the guest's own stores (the true dirty set,
    the same for every policy), so every policy sees the same host schedule; what a policy
    adds (false dirty pages) is charged by the cost model as re-sent pages.

    Chunked clears: the sender walks memory in address order, so in the first iteration
    chunk c is cleared when the pages before it have been sent (exact); in later
    iterations at the same fraction of the iteration (ASSUMPTION: the dirty pages are spread
    evenly over the chunks).  The sync at an iteration's start (GET_DIRTY_LOG with manual
    protect) changes no state, so it is not an event."""
    if clear_chunk_mb < 0:
        raise WorkloadError(f"migration: clear_chunk_mb must be >= 0 (got {clear_chunk_mb})")
    bw = link_gbit_s * 1000 / 8 if link_gbit_s > 0 else bandwidth_mb_s      # MB/s
    ns = access_time(wl).ns
    n = len(wl.trace)
    slots = wl.scenario.memslots
    total_mb = sum(s.pages for s in slots) * PAGE / 1e6
    chunks = _clear_chunks(slots, clear_chunk_mb)
    p0 = min(n, round(start_s * 1e9 / ns))
    ev = [(p0, Step("enable_dirty_log", slot=s.name, initially_set=manual_protect,
                    eager_split=eager_split)) for s in slots]
    t, a, send_mb, iterations = start_s, p0, total_mb, 0
    switchover_s = downtime_s = None           # set when the migration completes in the window
    while iterations < 10_000:
        dur = send_mb / bw
        for slot, lo, hi, frac in chunks:
            pc = round((t + dur * frac) * 1e9 / ns)
            if pc >= n:
                break
            ev.append((pc, Step("harvest", slot=slot,
                                pages=np.arange(lo, hi, dtype=np.int64))))
        t += dur
        b = round(t * 1e9 / ns)
        if b >= n:
            break
        if not chunks:
            ev += [(b, Step("harvest", slot=s.name)) for s in slots]
        iterations += 1
        send_mb = _written_pages(wl, a, b) * PAGE / 1e6
        a = b
        if send_mb / bw * 1000 <= downtime_limit_ms:
            # switch-over: the vCPUs stop and the last sync (migration_completion ->
            # migration_bitmap_sync_precopy: KVM_GET_DIRTY_LOG) ends every round; the rest
            # is sent during the downtime
            ev += [(b, Step("harvest", slot=s.name)) for s in slots]
            switchover_s, downtime_s = t, send_mb / bw
            break
    knobs = dict(bandwidth_mb_s=bandwidth_mb_s, link_gbit_s=link_gbit_s,
                 downtime_limit_ms=downtime_limit_ms, start_s=start_s,
                 manual_protect=manual_protect, eager_split=eager_split,
                 clear_chunk_mb=clear_chunk_mb, iterations_in_window=iterations,
                 link_mb_s=bw, switchover_s=switchover_s, downtime_s=downtime_s,
                 migration_s=None if switchover_s is None else switchover_s - start_s)
    from dataclasses import replace
    from .host import _scn
    return with_events(wl, ev, "migration", knobs, _scn(wl, [replace(s) for s in slots],
                                                         "migration"))


@host_scenario("bg_snapshot",
               "a background snapshot in time (QEMU background-snapshot: ram_write_tracking_"
               "start write-protects all guest memory with uffd-wp; the migration thread saves "
               "pages in address order at the bandwidth and releases each saved page, "
               "ram_save_release_protection; a guest write to a page not yet saved is a uffd-"
               "wp fault whose handler saves the page first): every page saved once, one round",
               [Knob("bandwidth_mb_s", 134.2, "snapshot write speed, MB/s (QEMU applies "
                     "max-bandwidth, default 128 MiB/s = 134.2 MB/s, to a background snapshot "
                     "as to a migration; ASSUMPTION range up to ~3000 MB/s, a local NVMe)",
                     lo=1e-3, source="QEMU migration/options.c: MAX_THROTTLE = 128 MiB/s"),
                Knob("release_ms", 10.0, "ms between two releases of saved pages (ASSUMPTION: "
                     "the thread saves continuously; released in 10 ms batches, range 1-100)",
                     lo=1e-3, source="ASSUMPTION: batches of 10 ms of saving, range 1-100 ms"),
                Knob("start_s", 0.0, "guest time at which the snapshot starts, s", lo=0.0,
                     source="ASSUMPTION: the snapshot starts at the window's start")])
def bg_snapshot(wl: Workload, *, bandwidth_mb_s, release_ms, start_s):
    """Decision: the thread's progress is fixed by the bandwidth alone (pages a vCPU fault
    saved early are skipped by the thread, which then moves on no faster: ASSUMPTION, it
    favours neither policy); a page released by the thread is unprotected whatever its
    state (UFFDIO_WRITEPROTECT mode=0 on an already writable page changes nothing)."""
    from dataclasses import replace
    from .host import _scn
    _check("bg_snapshot", bandwidth_mb_s=bandwidth_mb_s, release_ms=release_ms)
    ns = access_time(wl).ns
    n = len(wl.trace)
    slots = sorted(wl.scenario.memslots, key=lambda s: s.ipa)
    p0 = min(n, round(start_s * 1e9 / ns))
    ev = [(p0, Step("uffd_wp", slot=s.name, first=0, count=s.pages)) for s in slots]
    sc = Scanner(wl)
    per = max(1, round(bandwidth_mb_s * 1e6 * release_ms / 1000 / PAGE))
    saved, t, done_s = 0, start_s, None
    while saved < sc.total:
        t += release_ms / 1000
        pos = round(t * 1e9 / ns)
        if pos > n:
            break
        for slot, pages in sc.next(min(per, sc.total - saved)):
            ev.append((pos, Step("uffd_unprotect", slot=slot, pages=pages)))
        saved += per
        if saved >= sc.total:
            done_s = t                          # every page saved: the snapshot is complete
    knobs = dict(bandwidth_mb_s=bandwidth_mb_s, release_ms=release_ms, start_s=start_s,
                 snapshot_done_s=done_s,
                 snapshot_s=None if done_s is None else done_s - start_s)
    return with_events(wl, ev, "bg_snapshot", knobs,
                       _scn(wl, [replace(s, uffd="wp", uffd_resolve="page") for s in slots],
                            "bg_snapshot"))


def snapshot_bound_s(wl: Workload, bandwidth_mb_s: float = 134.2, start_s: float = 0.0,
                     release_ms: float = 10.0, **_knobs) -> float:
    """A window long enough for one whole background snapshot: all memory at the bandwidth,
    plus one release period and 1 s."""
    total_mb = sum(s.pages for s in wl.scenario.memslots) * PAGE / 1e6
    return start_s + total_mb / bandwidth_mb_s + release_ms / 1000 + 1.0
