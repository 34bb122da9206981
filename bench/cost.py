"""The cost model: what each counted event costs the host, in microseconds.

Every constant is a parameter; its default names a source or says it is an assumption.  The
report shows each constant's sensitivity (x0.1 and x10) and the break-even point, so no
conclusion rests on one guess.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class CostModel:
    # A stage-2 fault handled in the host kernel: exception entry to EL2, the world switch,
    # kvm_handle_guest_abort()/user_mem_abort() and the return.  ASSUMPTION: 3 us, the order
    # of a VHE stage-2 fault on a current Arm server with the host page present (an HVC round
    # trip is ~1 us on such cores; the fault path adds GUP and the stage-2 map/relax).
    exit_us: float = 3.0
    # A userfaultfd round trip with a local handler (event read, UFFDIO_COPY/CONTINUE/
    # WRITEPROTECT of one 4 KiB page, wake-up).  ASSUMPTION: 20 us (two context switches, a
    # 4 KiB copy, the ioctl; userfaultfd selftest-scale numbers).
    uffd_local_us: float = 20.0
    # The same with the page fetched over the network (post-copy).  ASSUMPTION: 100 us (one
    # request/response RTT on a datacentre network plus the local round trip).
    uffd_postcopy_us: float = 100.0
    # Re-sending one falsely dirty 4 KiB page in a pre-copy round: 4096 B over the migration
    # link.  Derived: 4096 * 8 / 10 Gbit/s = 3.3 us at the DEFAULT 10 Gbit/s (ASSUMPTION),
    # plus per-page overhead 1 us (ASSUMPTION).
    link_gbit_s: float = 10.0
    resend_overhead_us: float = 1.0
    # Copying one 4 KiB page in a uffd-wp snapshot handler before unprotecting it.
    # ASSUMPTION: 1 us (memcpy at ~4 GB/s).
    snapshot_copy_us: float = 1.0
    # Guest time one traced memory access stands for (the work around it included), to put
    # a saving in proportion to the run.  ASSUMPTION: 10 ns (a few instructions per memory
    # access at ~3 GHz, plus cache misses; traces record only the accesses).
    guest_access_ns: float = 10.0

    @property
    def resend_us(self) -> float:
        return 4096 * 8 / (self.link_gbit_s * 1e3) + self.resend_overhead_us

    def uffd_rt_us(self, host: str) -> float:
        return self.uffd_postcopy_us if host.startswith("postcopy") else self.uffd_local_us

    def as_dict(self) -> dict:
        return asdict(self)

    def scaled(self, name: str, factor: float) -> "CostModel":
        return replace(self, **{name: getattr(self, name) * factor})


PARAMS = tuple(f.name for f in fields(CostModel))


def overhead_us(m: dict, host: str, cm: CostModel) -> float:
    """Modelled host overhead of one policy's run: exits, uffd round trips, false-dirty
    re-sends (pre-copy) and needless snapshot copies (false WRITE events under uffd-wp)."""
    t = m["s2_faults"] * cm.exit_us + m["uffd_events"] * cm.uffd_rt_us(host)
    t += m["dirty_false_positive"] * cm.resend_us
    t += m.get("uffd_wp_false_write", 0) * cm.snapshot_copy_us
    return t


def run_time_us(m: dict, host: str, cm: CostModel) -> float:
    """Modelled run time of one policy's run: the guest's own work plus the host overhead."""
    return m["accesses"] * cm.guest_access_ns / 1000 + overhead_us(m, host, cm)


def net_saving_us(fix: dict, hap: dict, host: str, cm: CostModel) -> float:
    """What ha-promote saves over fix (positive: ha-promote is cheaper)."""
    return overhead_us(fix, host, cm) - overhead_us(hap, host, cm)
