"""The calibration table: every published figure and every assumption the cost model and the
host clock start from, as data.

One `Constant` per figure: its name (the unit is the name's suffix: `_us`, `_ms`, `_s`,
`_ns`, `_mb`, `_mib`, `_mb_s`, `_mib_s`, `_gbit_s`, `_pages`, `_pages_s`, `_b`, `_share`,
`_ratio`, `_count`), value, unit, primary source (kernel/QEMU file + function or constant,
mailing-list thread by subject and date, paper), confidence (how directly the source measures
the thing: high / medium / low, or `assumption` where nothing was published) and a
sensitivity range (lo, hi) that every report can sweep.

Kernel and QEMU defaults were read in the source named (the files and constants are given so a
reader can check them against any tree); figures from mailing-list threads and papers are as
their authors published them and were not re-measured here.

`value(name)` and `constant(name)` read the table, `table()` gives plain rows for reports and
JSON, `check_table()` refuses a row without unit, source or confidence, a name whose suffix
disagrees with its unit, or a range that does not contain the value.  docs/calibration.md is
generated from this table (`python -m bench.calibration --markdown`) and a test fails when the
two disagree.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

CONFIDENCE = ("high", "medium", "low", "assumption")

# The unit a name's suffix stands for; the longest matching suffix wins (`_mb_s` before `_s`).
SUFFIX_UNITS = {
    "_ns": "ns", "_us": "us", "_ms": "ms", "_s": "s",
    "_b": "B", "_mb": "MB", "_mib": "MiB",
    "_mb_s": "MB/s", "_mib_s": "MiB/s", "_gbit_s": "Gbit/s",
    "_pages": "pages", "_pages_s": "pages/s",
    "_share": "share", "_share_min": "share/min", "_ratio": "ratio", "_count": "count",
}


@dataclass(frozen=True)
class Constant:
    name: str
    value: float
    unit: str
    source: str
    confidence: str
    lo: float
    hi: float
    note: str = ""

    def row(self) -> dict:
        return asdict(self)


def _c(name, value, unit, source, confidence, lo=None, hi=None, note=""):
    return Constant(name, float(value), unit, source, confidence,
                    float(value if lo is None else lo), float(value if hi is None else hi), note)


_ALTRA_2022 = ('kvmarm list, 2022-01-10, RFC "ARM64: Guest performance improvement during '
               'dirty logging": 926 ms for the write-protect faults of 2 GiB (524 288 4 KiB '
               'pages), 1 vCPU, 3 GHz Ampere Altra')
_ALTRA_2024 = ('kvm list, 2024-10-29, reply in "KVM: arm64: Get rid of '
               'userspace_irqchip_in_use" v2 (kvm-unit-tests arm64 micro-bench, Ampere Altra, '
               'Linux 6.12-rc1)')
_MICROBENCH_2023 = 'kvm list, 2023-11-01, kvm-unit-tests "arm64: microbench" thread'
_UFFD_2023 = ('kvm list, 2023, "KVM: Improve scalability of KVM + userfaultfd live migration '
              'via annotated memory faults", cover letters v3-v7')
_PREEMPT_2022 = ('qemu-devel, 2022-05-24, "migration: Postcopy Preemption" v7 cover letter '
                 '(4 KiB pages, 10 GbE)')
_FAR_MEMORY = ('Lagar-Cavilla et al., "Software-Defined Far Memory in Warehouse-Scale '
               'Computers", ASPLOS 2019')

TABLE: tuple[Constant, ...] = (
    # ---- one stage-2 fault or exit on arm64 -----------------------------------------------
    _c("s2_wp_fault_altra_us", 1.77, "us", _ALTRA_2022 + " (926 ms / 524 288)", "high",
       0.85, 8.6, "lo: the THP-backed figure below; hi: scaled by the slowest published "
       "core's HVC round trip (Phytium S2500 1.5 us / Altra 0.31 us)"),
    _c("s2_wp_fault_altra_fastpath_us", 1.53, "us",
       _ALTRA_2022 + ", with the read-lock fast path", "high", 0.85, 1.77),
    _c("s2_fault_thp_altra_us", 0.85, "us", '"KVM: arm64: Parallel stage-2 fault handling" '
       "cover letter, 2022-08-30 (4 GiB THP-backed guest, Ampere Altra)", "medium",
       0.85, 1.77),
    _c("hvc_round_trip_altra_us", 0.31, "us", _ALTRA_2024, "high", 0.31, 1.5,
       "hi: Phytium S2500"),
    _c("mmio_exit_user_altra_us", 1.68, "us", _ALTRA_2024 + "; exit to the VMM", "high",
       1.68, 7.2, "hi: Phytium S2500"),
    _c("mmio_exit_kernel_altra_us", 0.45, "us", _ALTRA_2024 + "; in-kernel vGIC MMIO",
       "high"),
    _c("hvc_round_trip_kunpeng920_us", 0.41, "us", _MICROBENCH_2023, "high"),
    _c("mmio_exit_user_kunpeng920_us", 2.3, "us", _MICROBENCH_2023, "high"),
    _c("hvc_round_trip_phytium_s2500_us", 1.5, "us", _MICROBENCH_2023, "high"),
    _c("mmio_exit_user_phytium_s2500_us", 7.2, "us", _MICROBENCH_2023, "high"),
    # ---- userfaultfd and post-copy --------------------------------------------------------
    _c("uffd_minor_round_trip_us", 6.7, "us", _UFFD_2023 + ": MINOR fault + UFFDIO_CONTINUE, "
       "1 vCPU, 150-180 k pages/s", "high", 5.6, 6.7, "1 / 150 k/s = 6.7 us; 1 / 180 k/s = "
       "5.6 us"),
    _c("uffd_minor_contended_us", 1000.0, "us", _UFFD_2023 + ": many vCPUs on one uffd, "
       "~1 ms per vCPU", "high", 1000.0, 1000.0),
    _c("uffd_wp_round_trip_us", 6.7, "us", "none published: taken equal to the MINOR round "
       "trip above (same path: fault, handler read(), one ioctl, wake-up)", "assumption",
       5.6, 1000.0, "hi: the contended MINOR figure (QEMU's background snapshot serves every "
       "vCPU from one thread)"),
    _c("postcopy_fault_preempt_us", 570.0, "us", _PREEMPT_2022 + ", with postcopy-preempt",
       "high"),
    _c("postcopy_fault_vanilla_us", 10680.0, "us", _PREEMPT_2022 + ", without preemption",
       "high"),
    _c("postcopy_fault_avg_us", 250.0, "us", "qemu-devel, 2025-06-13, Peter Xu's post-copy "
       'blocktime series ("migration/postcopy: Report fault latencies in blocktime"): '
       "233-268 us average remote-fault latency, 16 GB guest, 80 vCPUs", "medium", 233.0,
       10680.0, "value: the midpoint of 233-268; hi: vanilla post-copy, 4 KiB pages"),
    # ---- live migration: QEMU and libvirt defaults ----------------------------------------
    _c("qemu_max_bandwidth_mib_s", 128.0, "MiB/s", "QEMU migration/options.c: MAX_THROTTLE "
       "(128 << 20), the default of max-bandwidth", "high", 128.0, 128.0,
       "libvirt lifts it: qemuDomainObjPrivateAlloc sets migMaxBandwidth = "
       "QEMU_DOMAIN_MIG_BANDWIDTH_MAX (src/qemu/qemu_domain.c)"),
    _c("qemu_downtime_limit_ms", 300.0, "ms", "QEMU migration/options.c: "
       "DEFAULT_MIGRATE_SET_DOWNTIME", "high"),
    _c("qemu_clear_chunk_pages", 2.0 ** 18, "pages", "QEMU migration/migration.h: "
       "CLEAR_BITMAP_SHIFT_DEFAULT 18 (x-clear-bitmap-shift): dirty bits re-armed with "
       "KVM_CLEAR_DIRTY_LOG per 2^18 pages = 1 GiB of 4 KiB pages", "high", 2.0 ** 6,
       2.0 ** 31, "range: CLEAR_BITMAP_SHIFT_MIN 6 .. CLEAR_BITMAP_SHIFT_MAX 31"),
    _c("qemu_dirty_ring_reap_period_s", 1.0, "s", "QEMU accel/kvm/kvm-all.c: "
       "kvm_dirty_ring_reaper_thread sleeps 1 s between reaps", "high"),
    _c("migration_link_gbit_s", 10.0, "Gbit/s", "a 10 GbE migration link (libvirt's default "
       "leaves the bandwidth unlimited, so the link is the cap)", "assumption",
       128 * 2 ** 20 * 8 / 1e9, 100.0, "lo: QEMU's own default cap, 128 MiB/s = 1.07 Gbit/s; "
       "hi: 100 GbE"),
    _c("migration_page_overhead_us", 1.0, "us", "none published: per-page bookkeeping of the "
       "migration thread (bitmap scan, header, copy into the socket buffer)", "assumption",
       0.1, 5.0),
    _c("link_10g_gbit_s", 10.0, "Gbit/s", "IEEE 802.3ae (10GBASE-*) nominal data rate",
       "high"),
    _c("link_25g_gbit_s", 25.0, "Gbit/s", "IEEE 802.3by (25GBASE-*) nominal data rate",
       "high"),
    _c("link_100g_gbit_s", 100.0, "Gbit/s", "IEEE 802.3ba/bj (100GBASE-*) nominal data rate",
       "high"),
    # ---- host activity that unmaps stage 2 (through the MMU notifiers) --------------------
    _c("numa_scan_size_mib", 256.0, "MiB", "Linux kernel/sched/fair.c: "
       "sysctl_numa_balancing_scan_size (task_numa_work shifts it by 20 - PAGE_SHIFT)", "high"),
    _c("numa_scan_period_min_ms", 1000.0, "ms", "Linux kernel/sched/fair.c: "
       "sysctl_numa_balancing_scan_period_min (divided by the RSS's scan windows: "
       "task_scan_min)", "high"),
    _c("numa_scan_period_max_ms", 60000.0, "ms", "Linux kernel/sched/fair.c: "
       "sysctl_numa_balancing_scan_period_max (divided by the RSS's scan windows: "
       "task_scan_max)", "high"),
    _c("numa_max_scan_window_mb", 2560.0, "MB", "Linux kernel/sched/fair.c: MAX_SCAN_WINDOW "
       "(task_scan_min's floor: never more than 2560 MB scanned per second)", "high"),
    _c("numa_vm_ram_mb", 4096.0, "MB", "ASSUMPTION: the VM whose RSS scales the NUMA scan "
       "period (task_nr_scan_windows): the realistic cases' 4 GiB guest", "assumption",
       1024.0, 65536.0),
    _c("numa_scan_delay_ms", 1000.0, "ms", "Linux kernel/sched/fair.c: "
       "sysctl_numa_balancing_scan_delay (first scan)", "high"),
    _c("khugepaged_pages_to_scan_pages", 4096.0, "pages", "Linux mm/khugepaged.c: "
       "khugepaged_init sets khugepaged_pages_to_scan = HPAGE_PMD_NR * 8 (4 KiB pages)",
       "high"),
    _c("khugepaged_scan_sleep_ms", 10000.0, "ms", "Linux mm/khugepaged.c: "
       "khugepaged_scan_sleep_millisecs", "high"),
    _c("khugepaged_alloc_sleep_ms", 60000.0, "ms", "Linux mm/khugepaged.c: "
       "khugepaged_alloc_sleep_millisecs", "high"),
    _c("ksm_pages_to_scan_pages", 100.0, "pages", "Linux mm/ksm.c: ksm_thread_pages_to_scan "
       "(ksmd is off by default: ksm_run = KSM_RUN_STOP)", "high"),
    _c("ksm_sleep_ms", 20.0, "ms", "Linux mm/ksm.c: ksm_thread_sleep_millisecs", "high"),
    _c("far_memory_cold_age_s", 120.0, "s", _FAR_MEMORY + ": pages idle this long are "
       "compressed (zswap)", "high"),
    _c("far_memory_swapin_share_min", 0.002, "share/min", _FAR_MEMORY + ": promotion (swap-in)"
       " rate kept at or below 0.2 % of the working set per minute", "high", 0.0, 0.002),
    _c("far_memory_compressed_share", 0.2, "share", _FAR_MEMORY + ": ~20 % of memory held "
       "cold and compressed", "high"),
    # ---- guest (Linux) aging and monitoring -----------------------------------------------
    _c("mglru_min_ttl_ms", 0.0, "ms", "Linux mm/vmscan.c: lru_gen_min_ttl (0: MGLRU ages only "
       "under reclaim); Documentation/admin-guide/mm/multigen_lru.rst", "high", 0.0, 1000.0,
       "hi: the 1000 ms the MGLRU documentation gives as a thrashing-prevention example"),
    _c("damon_sample_interval_ms", 5.0, "ms", "Linux mm/damon/core.c: damon_new_ctx "
       "(attrs.sample_interval = 5 ms)", "high"),
    _c("damon_aggr_interval_ms", 100.0, "ms", "Linux mm/damon/core.c: damon_new_ctx "
       "(attrs.aggr_interval = 100 ms)", "high"),
    _c("damon_min_regions_count", 10.0, "count", "Linux mm/damon/core.c: damon_new_ctx "
       "(attrs.min_nr_regions)", "high"),
    _c("damon_max_regions_count", 1000.0, "count", "Linux mm/damon/core.c: damon_new_ctx "
       "(attrs.max_nr_regions)", "high"),
    # ---- page tables as a share of memory -------------------------------------------------
    _c("pte_per_4k_page_b", 8.0, "B", "Arm ARM (DDI 0487), VMSAv8-64 translation table "
       "descriptor formats: descriptors are 64-bit, so one 8 B leaf descriptor maps one "
       "4 KiB page: 8 / 4096 = 0.195 % of mapped memory", "high"),
    _c("pt_sparse_server_share", 110 / 590, "share", 'linux-mm, "free user PTE page table '
       'pages" series (ByteDance): VmPTE 110 GB at RES 590 GB, mostly empty tables', "high",
       8 / 4096, 110 / 590, "lo: fully populated leaf tables"),
    _c("pt_shared_db_ratio", 878 / 300, "ratio", "linux-mm, mshare patch series cover letter "
       "(Oracle): 878 GB of PTEs for a 300 GB SGA mapped by 1 500 processes (bytes of page "
       "tables per byte of data)", "high"),
    # ---- guest time per traced access -----------------------------------------------------
    _c("guest_access_ns", 10.0, "ns", "none published: a few instructions per memory access "
       "at ~3 GHz plus some misses (a trace records the accesses only)", "assumption",
       1.0, 100.0, "lo: an L1 hit; hi: a DRAM miss on every access"),
    _c("stream_access_ns", 5.0, "ns", "none published here: one 64 B line of a streaming "
       "access at ~13 GB/s of one core's bandwidth", "assumption", 2.0, 20.0),
    _c("cache_hit_access_ns", 1.0, "ns", "none published here: an L1/L2 hit, 3-12 cycles at "
       "3 GHz", "assumption", 0.3, 4.0),
    _c("pointer_hop_ns", 100.0, "ns", "none published here: a dependent load that misses to "
       "DRAM (server load-to-use latency)", "assumption", 80.0, 150.0),
    _c("snapshot_page_copy_us", 1.0, "us", "none published: memcpy of one 4 KiB page at "
       "~4 GB/s before it is unprotected", "assumption", 0.4, 4.0,
       "lo: ~10 GB/s; hi: ~1 GB/s"),
)

# CostModel knob -> the row its default (and sensitivity range) comes from.
COST_DEFAULTS = {
    "exit_us": "s2_wp_fault_altra_us",
    "uffd_local_us": "uffd_wp_round_trip_us",
    "uffd_postcopy_us": "postcopy_fault_avg_us",
    "link_gbit_s": "migration_link_gbit_s",
    "resend_overhead_us": "migration_page_overhead_us",
    "guest_access_ns": "guest_access_ns",
}


def unit_of(name: str) -> str | None:
    """The unit a name's suffix stands for (None: no known suffix)."""
    best = max((s for s in SUFFIX_UNITS if name.endswith(s)), key=len, default=None)
    return SUFFIX_UNITS[best] if best else None


def check_table(rows=TABLE) -> None:
    """Raise ValueError naming the first bad row: a missing unit/source/confidence, a suffix
    that disagrees with the unit, a duplicate name, a non-finite value, or lo <= value <= hi
    not holding."""
    seen = set()
    for c in rows:
        if c.name in seen:
            raise ValueError(f"calibration: {c.name}: duplicate name")
        seen.add(c.name)
        for field in ("unit", "source", "confidence"):
            if not str(getattr(c, field)).strip():
                raise ValueError(f"calibration: {c.name}: no {field}")
        if c.confidence not in CONFIDENCE:
            raise ValueError(f"calibration: {c.name}: confidence {c.confidence!r} is not one "
                             f"of {', '.join(CONFIDENCE)}")
        if unit_of(c.name) != c.unit:
            raise ValueError(f"calibration: {c.name}: the name's suffix says "
                             f"{unit_of(c.name)!r}, the unit is {c.unit!r}")
        if not all(math.isfinite(x) for x in (c.value, c.lo, c.hi)):
            raise ValueError(f"calibration: {c.name}: value and range must be finite")
        if not c.lo <= c.value <= c.hi:
            raise ValueError(f"calibration: {c.name}: range [{c.lo:g}, {c.hi:g}] does not "
                             f"contain the value {c.value:g}")


check_table()
_BY_NAME = {c.name: c for c in TABLE}
if not set(COST_DEFAULTS.values()) <= set(_BY_NAME):      # pragma: no cover (import check)
    raise ValueError("calibration: COST_DEFAULTS names a row that is not in the table")


def constant(name: str) -> Constant:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"calibration: no constant {name!r}") from None


def value(name: str) -> float:
    return constant(name).value


def table() -> list[dict]:
    """Every row as a plain dict (name, value, unit, source, confidence, lo, hi, note)."""
    return [c.row() for c in TABLE]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def markdown_table(rows=TABLE) -> str:
    """The table as docs/calibration.md shows it (generated; a test compares the two)."""
    out = ["| constant | value | unit | range (lo – hi) | confidence | source |",
           "|---|---|---|---|---|---|"]
    for c in rows:
        rng = _fmt(c.lo) if c.lo == c.hi else f"{_fmt(c.lo)} – {_fmt(c.hi)}"
        src = c.source + (f". {c.note}" if c.note else "")
        out.append(f"| `{c.name}` | {_fmt(c.value)} | {c.unit} | {rng} | {c.confidence} | "
                   f"{src.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--markdown"]):
        print("usage: python -m bench.calibration [--markdown]", file=sys.stderr)
        return 2
    if argv:
        sys.stdout.write(markdown_table())
    else:
        for c in TABLE:
            print(f"{c.name:34} {_fmt(c.value):>10} {c.unit:9} {c.confidence}")
    return 0


if __name__ == "__main__":                                    # pragma: no cover
    sys.exit(main())
