"""Break-even and envelope: at what share q, and at what host rate, would ha-promote's saving
over fix matter?  Pure functions of the cost model (bench/cost.py), the calibration table
(bench/calibration.py) and the "matters" rule of bench/verdict.py; docs/calibration.md
derives every formula.

The event: a (page-table page, dirty round) pair.  The host unmaps a guest page-table page at
stage 2 (NUMA hinting, swap-out, MMU-notifier zap, post-copy, ...) and the guest's walker then
reads it: an S1PTW stage-2 translation fault (docs/semantics.md).  Under dirty logging (or
uffd-wp) fix, which calls the fault a read, maps it read-only for the rest of the round;
ha-promote, which calls it a write, maps it writable and marks it dirty at once.  With
probability q the guest writes the page later in the round (an AF or dirty update of the
walker, a guest PTE store, aging): fix takes one more fault, ha-promote none.  With
probability 1 - q nothing writes it before the harvest: ha-promote's mark is a false positive
(a falsely dirty page re-sent, a needless uffd-wp WRITE event).  Per event, then, ha-promote
saves q * t_exit and costs (1 - q) * t_false (the formulas name the share p; a case passes its
measured q, docs/time-and-hosts.md).

* p_break_even(t_exit, t_false): p* = t_false / (t_exit + t_false), where both are equal.
* t_false_us(host, cm): what one false positive costs under each host scenario.
* envelope(...): the rate R of such events (pages/s of page-table pages unmapped and then
  walked) at which ha-promote's net saving starts to "matter" under bench/verdict.py's
  rule; (inf, "never") where p <= p*.
* sensitivity_table(metric): a verdict metric at lo and hi of each cost constant's range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from .calibration import COST_DEFAULTS, constant, value
from .cost import PARAMS, CostModel, run_time_us
from .verdict import MATTERS_SHARE, MIN_EXITS_SAVED, verdict_table

PAGE_BYTES = 4096          # a 4 KiB granule's page-table page
NEVER = "never"


def p_break_even(t_exit_us: float, t_false_us: float) -> float:
    """The share p of unmapped-then-walked page-table pages whose first walk must write, above
    which calling the translation fault a write pays:

        p * t_exit > (1 - p) * t_false   <=>   p > p* = t_false / (t_exit + t_false).

    t_exit_us > 0 is the saved fault, t_false_us >= 0 one false positive (inf: a false
    positive breaks the guest, p* = 1)."""
    if not (math.isfinite(t_exit_us) and t_exit_us > 0):
        raise ValueError(f"p_break_even: t_exit_us must be a finite cost > 0, not {t_exit_us}")
    if not t_false_us >= 0:
        raise ValueError(f"p_break_even: t_false_us must be >= 0, not {t_false_us}")
    if math.isinf(t_false_us):
        return 1.0
    return t_false_us / (t_exit_us + t_false_us)


# What one false positive costs per host scenario (workloads/host.py), as cost.overhead_us
# charges it.  "broken": the write is refused, the guest breaks (no rate makes it pay).
FALSE_POSITIVE = {
    # a falsely dirty page is re-sent in the next pre-copy round (cost.overhead_us:
    # dirty_false_positive x resend_us): 4096 B over the link + the per-page overhead
    "precopy": "resend",
    # a needless uffd-wp WRITE fault: the handler's round trip and the page copy
    # (uffd_events x round trip; the page is copied once per snapshot whoever resolves it)
    "snapshot": "uffd_wp", "bg_snapshot": "uffd_wp",
    # the page is missing either way and arrives by the same UFFDIO_COPY/CONTINUE; the W flag
    # costs nothing more in the cost model
    "postcopy": "free",
    # no dirty tracking and no uffd: nothing is charged (a swapped-in page made dirty costs a
    # later write-back, which the cost model does not charge)
    "pressure": "free",
    "none": "free",
    # calibrated scenarios (workloads/host_timed.py): migration re-sends like precopy; NUMA
    # hinting, KSM and khugepaged track no dirty state
    "migration": "resend",
    "numa": "free", "ksm": "free", "khugepaged": "free",
    # reclaim and far memory (workloads/host_reclaim.py): as pressure, the later write-back
    # of a page a false write made dirty is not charged (ASSUMPTION: it favours ha-promote)
    "reclaim": "free", "far_memory": "free",
    # the page-table slot is KVM_MEM_READONLY (EFI): the write is an injected abort or a
    # failed KVM_RUN (kvm_handle_guest_abort on a read-only memslot)
    "firmware": "broken",
}


def t_false_us(host: str, cm: CostModel | None = None, link_mb_s: float | None = None
               ) -> float:
    """The cost of one false positive of ha-promote under `host`, in us (inf: breaks the
    guest).  Pre-copy: a 4 KiB page re-sent over the case's own link (`link_mb_s`; None:
    the cost model's default link) + the per-page overhead (cost.CostModel.resend_us_at:
    31.5 us at QEMU's 128 MiB/s, 4.3 us at 10 Gbit/s, 2.3 us at 25 Gbit/s); snapshot: a
    uffd-wp round trip + one page copy."""
    cm = cm or CostModel()
    if "+" in host:                 # chained scenarios: the dearest false positive counts
        return max(t_false_us(h, cm, link_mb_s) for h in host.split("+"))
    kind = FALSE_POSITIVE.get(host)
    if kind is None:
        raise ValueError(f"t_false_us: unknown host scenario {host!r} (known: "
                         f"{', '.join(FALSE_POSITIVE)})")
    return {"resend": cm.resend_us_at(link_mb_s),
            "uffd_wp": cm.uffd_rt_us(host),
            "free": 0.0, "broken": math.inf}[kind]


def q_break_even(host: str, cm: CostModel | None = None, link_mb_s: float | None = None
                 ) -> float:
    """q* of a case: t_false / (t_exit + t_false), t_false at the case's own link."""
    cm = cm or CostModel()
    return p_break_even(cm.exit_us, t_false_us(host, cm, link_mb_s))


@dataclass(frozen=True)
class Envelope:
    pages_s: float                # page-table pages unmapped at stage 2 and walked, per s
    mb_s: float                   # the same in MB/s (10^6 B) of page-table pages
    binding: str                  # which condition of the rule sets the rate (or why never)
    p_star: float                 # the break-even share
    saving_per_event_us: float    # p * t_exit - (1 - p) * t_false
    events: float                 # events in the window at that rate (pages_s * seconds)

    def as_tuple(self) -> tuple[float, str]:
        return (self.pages_s, "pages/s") if math.isfinite(self.pages_s) else (math.inf, NEVER)


def _check_inputs(p, t_exit_us, t_false, guest_seconds, run_us, fix_faults, share, min_exits):
    if not 0 <= p <= 1:
        raise ValueError(f"envelope: p must be in [0, 1], not {p}")
    if not (math.isfinite(guest_seconds) and guest_seconds > 0):
        raise ValueError(f"envelope: guest_seconds must be > 0, not {guest_seconds}")
    if not (run_us >= 0 and fix_faults >= 0 and min_exits >= 0 and 0 < share < 1):
        raise ValueError("envelope: run_us, fix_faults and min_exits_saved must be >= 0 and "
                         "matters_share in (0, 1)")
    p_break_even(t_exit_us, t_false)            # checks the two costs


def envelope_detail(p: float, t_exit_us: float, t_false_us: float, guest_seconds: float,
                    run_us: float | None = None, fix_faults: float = 0.0,
                    matters_share: float = MATTERS_SHARE,
                    min_exits_saved: float = MIN_EXITS_SAVED,
                    page_bytes: int = PAGE_BYTES) -> Envelope:
    """The smallest rate R (pages/s) of page-table pages unmapped at stage 2 and then walked,
    over a guest window of `guest_seconds` T, at which ha-promote's saving over fix matters.

    N = R * T events.  Per event ha-promote saves s = p * t_exit - (1 - p) * t_false, and fix
    spends c = (1 + p) * t_exit (one fault, a second one with probability p).  With U0 =
    `run_us` (fix's modelled run time apart from these events; default T in us) and F0 =
    `fix_faults` (fix's other stage-2 faults), bench/verdict.py's rule (sigma =
    MATTERS_SHARE, E = MIN_EXITS_SAVED) needs:

      (a) net > 0:                         s > 0, i.e. p > p*;
      (b) net >= sigma * fix's run time:   N * s >= sigma * (U0 + N * c)
                                           => N >= sigma * U0 / (s - sigma * c), s > sigma*c;
      (c) exits saved >= E:                N * p >= E  => N >= E / p;
      (d) exits saved >= sigma * fix's faults: N * p >= sigma * (F0 + N * (1 + p))
                                           => N >= sigma * F0 / (p - sigma * (1 + p)).

    N* = max of (b), (c), (d); R* = N* / T.  Where (a), or the premise of (b) or (d), fails,
    no rate is enough: more unmapping only adds events that do not pay (R* = inf)."""
    u0 = guest_seconds * 1e6 if run_us is None else run_us
    _check_inputs(p, t_exit_us, t_false_us, guest_seconds, u0, fix_faults, matters_share,
                  min_exits_saved)
    sigma = matters_share
    p_star = p_break_even(t_exit_us, t_false_us)
    s = p * t_exit_us - (1 - p) * t_false_us if p < 1 else t_exit_us
    c = (1 + p) * t_exit_us

    def never(why: str) -> Envelope:
        return Envelope(math.inf, math.inf, why, p_star, s, math.inf)

    if math.isinf(t_false_us):
        return never("never: a false positive breaks the guest")
    if s <= 0:
        return never("never: p <= p*")
    if s <= sigma * c:
        return never("never: the saving per event is below sigma of fix's cost per event")
    if p <= sigma * (1 + p):
        return never("never: the exits saved stay below sigma of fix's stage-2 faults")
    bounds = {"run_share": sigma * u0 / (s - sigma * c),
              "min_exits": min_exits_saved / p,
              "exit_share": sigma * fix_faults / (p - sigma * (1 + p))}
    binding = max(bounds, key=bounds.get)
    n = bounds[binding]
    rate = n / guest_seconds
    return Envelope(rate, rate * page_bytes / 1e6, binding, p_star, s, n)


def envelope(p: float, t_exit_us: float, t_false_us: float, guest_seconds: float,
             **kw) -> tuple[float, str]:
    """(rate, "pages/s") at which ha-promote's saving matters, or (inf, "never"); see
    envelope_detail for the derivation and the keyword arguments."""
    return envelope_detail(p, t_exit_us, t_false_us, guest_seconds, **kw).as_tuple()


def p_same_access(fix: dict) -> float | None:
    """The part of q a window of one access sees: of fix's S1PTW translation faults, the
    share followed by a second fault on the same page-table page within the same access
    (docs/semantics.md §5 double_faults); None when no page-table page was found unmapped.
    A detail: the measure is q (measured_q)."""
    n = fix["s2_s1ptw_translation"]
    return fix["double_faults"] / n if n else None


def measured_q(fix: dict) -> float | None:
    """q as a run measures it, over its complete dirty rounds: of the (page-table page,
    round) pairs in which the page took an S1PTW translation fault under fix (each page once
    per round), the share in which the guest wrote the page after that fault and before the
    round's harvest (model/results.py dirty_metrics).  Under fix such a page stays read-only for the rest of
    the round, so any write to it in the round costs the exit ha-promote avoids; an unwritten
    one is ha-promote's false positive at the harvest.  Pairs written in the round only
    before the fault are neither (fix's page was writable then; ha-promote's mark is true)
    and are left out.  None: no pair where the policies differ."""
    n = (fix.get("s1ptw_tf_round_pages") or 0) - (fix.get("s1ptw_tf_round_neutral") or 0)
    return fix["s1ptw_tf_round_written"] / n if n > 0 else None


def case_envelope(fix: dict, host: str, cm: CostModel, guest_seconds: float) -> Envelope:
    """The envelope of one case from fix's metrics row, solved on q: the events are the
    (page-table page, round) pairs with an S1PTW translation fault, a share q of them later
    written (one more exit under fix each); t_exit = cm.exit_us, t_false at the case's own
    link; U0 and F0 = fix's run time (all vCPUs) and stage-2 faults less those of the
    measured events (N translation faults, N * q later faults)."""
    q = measured_q(fix)
    if q is None:
        q = 0.0
    n_run = (fix.get("s1ptw_tf_round_pages") or 0) - (fix.get("s1ptw_tf_round_neutral") or 0)
    faults = n_run * (1 + q)
    u0 = max(0.0, run_time_us(fix, host, cm) - faults * cm.exit_us)
    return envelope_detail(q, cm.exit_us, t_false_us(host, cm, fix.get("link_mb_s")),
                           guest_seconds, run_us=u0,
                           fix_faults=max(0.0, fix["s2_faults"] - faults))


def host_unmap_rates_pages_s(ram_mb: float | None = None) -> dict[str, float]:
    """Upper bounds of the rate (4 KiB pages/s of guest memory) at which default host
    activity can unmap stage 2, from the calibration table: each scans this many pages, and
    only what it changes is unmapped.  Multiply by a workload's page-table share to compare
    with an envelope.  NUMA balancing's period is the kernel's for a VM of `ram_mb` (default:
    the calibration's numa_vm_ram_mb): task_scan_min / task_scan_max, kernel/sched/fair.c."""
    from workloads.host_timed import numa_scan_period_ms
    mib_pages = 2 ** 20 / PAGE_BYTES
    size = value("numa_scan_size_mib")
    numa = size * mib_pages
    ram = value("numa_vm_ram_mb") if ram_mb is None else ram_mb
    return {
        "numa_balancing_fastest": numa / (numa_scan_period_ms(ram, int(size), "fast") / 1e3),
        "numa_balancing_slowest": numa / (numa_scan_period_ms(ram, int(size), "slow") / 1e3),
        "khugepaged": value("khugepaged_pages_to_scan_pages")
        / (value("khugepaged_scan_sleep_ms") / 1e3),
        "ksm": value("ksm_pages_to_scan_pages") / (value("ksm_sleep_ms") / 1e3),
    }


def sensitivity_table(metric, cm: CostModel | None = None, params=PARAMS) -> pd.DataFrame:
    """For each cost constant: its calibration row, range and confidence, and `metric(cm)` at
    the default, at lo and at hi (the others at their defaults).  `metric` returns a number or
    a dict of named numbers (one column each, suffixed _lo / _hi)."""
    cm = cm or CostModel()
    rows = []
    for name in params:
        c = constant(COST_DEFAULTS[name])
        row = {"param": name, "constant": c.name, "unit": c.unit, "confidence": c.confidence,
               "lo": c.lo, "value": getattr(cm, name), "hi": c.hi}
        for suffix, v in (("_lo", c.lo), ("", getattr(cm, name)), ("_hi", c.hi)):
            m = metric(replace(cm, **{name: v}))
            for k, x in (m.items() if isinstance(m, dict) else [("metric", m)]):
                row[k + suffix] = x
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_sensitivity(df: pd.DataFrame, cm: CostModel | None = None) -> pd.DataFrame:
    """sensitivity_table of the beer verdict: cases that matter and the best net saving."""
    def metric(m: CostModel) -> dict:
        v = verdict_table(df, m)
        return {"cases_that_matter": int(v["matters"].sum()) if len(v) else 0,
                "best_net_us": float(v["net_us"].max()) if len(v) else 0.0}
    return sensitivity_table(metric, cm)
