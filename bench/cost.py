"""The cost model: what each counted event costs the host, in microseconds.

Every constant is a parameter whose default is read from the calibration table
(bench/calibration.py, docs/calibration.md): there it names its primary source or is labelled
an assumption, with a sensitivity range (lo, hi).  The report shows each constant's
sensitivity and the break-even point, so no conclusion rests on one guess.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from .calibration import COST_DEFAULTS, constant, value

PAGE_BYTES = 4096          # a re-sent page (4 KiB granule)


@dataclass(frozen=True)
class CostModel:
    # A stage-2 fault handled in the host kernel (kvm_handle_guest_abort/user_mem_abort and
    # the world switch): the measured dirty-logging write-protect fault on Ampere Altra,
    # 1.77 us (row s2_wp_fault_altra_us; range 0.85-8.6 us).
    exit_us: float = value(COST_DEFAULTS["exit_us"])
    # A userfaultfd round trip with a local handler; in the built-in host scenarios only
    # uffd-wp (snapshot) uses it.  ASSUMPTION: no uffd-wp figure is published; taken equal to
    # the measured MINOR + UFFDIO_CONTINUE round trip, 6.7 us (row uffd_wp_round_trip_us).
    uffd_local_us: float = value(COST_DEFAULTS["uffd_local_us"])
    # A post-copy remote fault: 250 us, the midpoint of the 233-268 us averages published for
    # QEMU post-copy (row postcopy_fault_avg_us; range up to 10.68 ms, vanilla post-copy).
    uffd_postcopy_us: float = value(COST_DEFAULTS["uffd_postcopy_us"])
    # Re-sending one falsely dirty 4 KiB page in a pre-copy round: 4096 B over the migration
    # link plus a per-page overhead.  ASSUMPTIONS: a 10 Gbit/s link (libvirt leaves the
    # bandwidth unlimited; QEMU alone caps it at 128 MiB/s, the range's lo) and 1 us per page
    # (rows migration_link_gbit_s, migration_page_overhead_us): 4.3 us per page.
    link_gbit_s: float = value(COST_DEFAULTS["link_gbit_s"])
    resend_overhead_us: float = value(COST_DEFAULTS["resend_overhead_us"])
    # (No copy cost: a background snapshot copies every page of guest memory once, whichever
    # policy resolved its uffd-wp fault first — the copies cancel in every comparison.  A
    # false WRITE event costs its round trip, counted in uffd_events.)
    # Guest time one traced memory access stands for (the work around it included), to put
    # a saving in proportion to the run.  ASSUMPTION: 10 ns (row guest_access_ns).
    guest_access_ns: float = value(COST_DEFAULTS["guest_access_ns"])

    @property
    def resend_us(self) -> float:
        """Re-sending one page over the default link (cases that name no link of their own)."""
        return self.resend_us_at(self.link_gbit_s * 1e3 / 8)

    def resend_us_at(self, link_mb_s: float | None) -> float:
        """Re-sending one falsely dirty 4 KiB page over a `link_mb_s` MB/s migration link
        (1 MB/s = 1 byte/us): 4096 / link_mb_s + the per-page overhead.  The case's own link
        when it has one (a migration's bandwidth: 31.5 us at QEMU's 128 MiB/s, 4.3 us at
        10 Gbit/s, 2.3 us at 25 Gbit/s with the default 1 us overhead); None or 0: the
        default link."""
        if not (link_mb_s and math.isfinite(link_mb_s) and link_mb_s > 0):
            link_mb_s = self.link_gbit_s * 1e3 / 8
        return PAGE_BYTES / link_mb_s + self.resend_overhead_us

    def uffd_rt_us(self, host: str) -> float:
        return self.uffd_postcopy_us if host.startswith("postcopy") else self.uffd_local_us

    def as_dict(self) -> dict:
        return asdict(self)

    def scaled(self, name: str, factor: float) -> "CostModel":
        return replace(self, **{name: getattr(self, name) * factor})


PARAMS = tuple(f.name for f in fields(CostModel))


def param_range(name: str) -> tuple[float, float]:
    """The sensitivity range (lo, hi) of a CostModel knob, from the calibration table."""
    c = constant(COST_DEFAULTS[name])
    return c.lo, c.hi


def overhead_us(m: dict, host: str, cm: CostModel) -> float:
    """Modelled host overhead of one policy's run: exits, uffd round trips (a false uffd-wp
    WRITE event of a snapshot is one more round trip; the page is copied once per snapshot
    either way) and false-dirty re-sends (pre-copy, at the case's link)."""
    t = m["s2_faults"] * cm.exit_us + m["uffd_events"] * cm.uffd_rt_us(host)
    t += m["dirty_false_positive"] * cm.resend_us_at(m.get("link_mb_s"))
    return t


def vcpu_time_us(m: dict, cm: CostModel) -> float:
    """The guest's own work in vCPU time: guest seconds on the modelled clock times its
    vCPUs (every vCPU runs the whole window); without a clock, the accesses of all vCPUs
    times the time per access."""
    gs = m.get("guest_seconds")
    if gs:
        return gs * 1e6 * max(1, int(m.get("vcpus") or 1))
    return m["accesses"] * cm.guest_access_ns / 1000


def run_time_us(m: dict, host: str, cm: CostModel) -> float:
    """Modelled run time of one policy's run, over all its vCPUs: the guest's own work plus
    the host overhead."""
    guest_us = vcpu_time_us(m, cm)
    return guest_us + overhead_us(m, host, cm)


def net_saving_us(fix: dict, hap: dict, host: str, cm: CostModel) -> float:
    """What ha-promote saves over fix (positive: ha-promote is cheaper)."""
    return overhead_us(fix, host, cm) - overhead_us(hap, host, cm)
