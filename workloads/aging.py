"""Guest aging on the clock (issue 20 items 4 and 5): which PTEs an aging pass tests and
clears, the regimes a profile names, passes over the whole window of a repeated trace, and
the access flags a warm guest starts with.

Regimes (the `linux` profile's knob `aging`, docs/time-and-hosts.md):

* `damon` -- DAMON's virtual-address monitoring (mm/damon/vaddr.c damon_va_prepare_access_checks
  -> damon_va_mkold): every sampling interval (mm/damon/core.c damon_new_ctx: 5 ms) one
  random address of each monitoring region has its PTE made old.  Regions: `damon_regions`
  equal slices of each address space's mapped pages in VA order (ASSUMPTION: DAMON adapts
  the count between min_nr_regions = 10 and max_nr_regions = 1000 every aggregation
  interval, 100 ms, splitting and merging by access pattern; the default 1000 is the most
  aging DAMON does, the upper end for the walker's AF writes).
* `mglru` -- MGLRU aging under sustained reclaim (mm/vmscan.c lru_gen_age_node ->
  walk_mm -> walk_pte_range): each pass walks every PTE of every address space and
  test-and-clears the young ones.  ASSUMPTION: one pass per 0.1-10 s (`age_period_ms`,
  default 1000 ms): MGLRU ages when a generation is needed, i.e. at the pace of reclaim.
* `` (empty: the knobs say) -- a clock hand over each address space's mapped PTEs, the next
  `age_fraction` of them every `age_period` accesses (`age_period_ms` of guest time).
* `none` -- no aging.

A pass names the VAs it visits; the guest model (model.reference.Vm.guest_age) stores only
to young entries, as walk_pte_range and __ptep_test_and_clear_young do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.scenario import Step

REGIMES = ("", "none", "damon", "mglru")
DAMON_SAMPLE_MS = 5.0          # mm/damon/core.c damon_new_ctx: sample_interval = 5000 us
DAMON_REGIONS = 1000           # mm/damon/core.c: max_nr_regions = 1000 (min_nr_regions = 10)
MGLRU_PERIOD_MS = 1000.0       # ASSUMPTION: one full walk per 0.1-10 s under sustained reclaim
MGLRU_PERIOD_RANGE_MS = (100.0, 10000.0)
_SEED = 0xA6E                  # DAMON's random address per region: a fixed stream per pass


def regime_period_ms(regime: str) -> float:
    """The period a regime ages at when `age_period_ms` does not say."""
    return {"damon": DAMON_SAMPLE_MS, "mglru": MGLRU_PERIOD_MS}.get(regime, 0.0)


@dataclass(frozen=True)
class AgingRule:
    regime: str = ""               # "", "damon" or "mglru" (module doc)
    fraction: float = 0.25         # clock hand: share of the PTEs per pass
    regions: int = DAMON_REGIONS   # damon: regions (one sampled page each) per pass
    nonleaf: bool = False          # FEAT_HAFT active and age_nonleaf: table AF too

    def select(self, pages: np.ndarray, hand: int, pass_no: int) -> tuple[np.ndarray, int]:
        """The VA pages (sorted) pass `pass_no` visits among `pages` (sorted, unique), and
        the clock hand after it (the last page visited)."""
        n = len(pages)
        if n == 0:
            return pages, hand
        if self.regime == "damon":
            r = min(n, self.regions)
            lo = (np.arange(r, dtype=np.int64) * n) // r            # region bounds
            hi = (np.arange(1, r + 1, dtype=np.int64) * n) // r
            rng = np.random.default_rng([_SEED, pass_no])
            pick = lo + (rng.random(r) * (hi - lo)).astype(np.int64)
            return pages[pick], hand
        frac = 1.0 if self.regime == "mglru" else self.fraction
        k = min(n, max(1, math.ceil(frac * n)))
        i = int(np.searchsorted(pages, hand, side="right"))
        idx = (i + np.arange(k, dtype=np.int64)) % n
        return np.sort(pages[idx]), int(pages[idx[-1]])

    def young_at_start(self, pages: np.ndarray, age: np.ndarray, period: int) -> np.ndarray:
        """Item 5, the steady state a warm window starts in: which of `pages` (sorted VA
        pages) are young, given `age` (accesses since each page's last access in the base
        window, repeated: a service serving the same mix) and the pass period in accesses.
        Clock hand (`mglru`: every PTE per pass): the window's first pass, one period in,
        takes chunk 0; going back, chunk c was last cleared (C - c) periods before the
        start (C chunks of k pages): young iff accessed since.  damon: each pass samples a
        page with probability regions / n, so a page is old with probability
        1 - (1 - regions/n)^(passes since its last access); drawn from a fixed stream."""
        n = len(pages)
        if n == 0 or period <= 0:
            return np.ones(n, dtype=bool)
        if self.regime == "damon":
            p = min(1.0, self.regions / n)
            passes = np.floor(age / period)
            old = np.random.default_rng([_SEED + 1]).random(n) < 1 - (1 - p) ** passes
            return ~old
        frac = 1.0 if self.regime == "mglru" else self.fraction
        k = min(n, max(1, math.ceil(frac * n)))
        chunks = -(-n // k)
        c = np.arange(n, dtype=np.int64) // k
        return age < (chunks - c) * period


@dataclass
class AgingState:
    """What continues aging past the base trace: the rule, the period in accesses, each
    address space's mapped VA pages (sorted) and clock hand at the base trace's end, the
    positions of the base trace's passes."""
    rule: AgingRule
    period: int                                     # accesses between passes
    granule_shift: int
    spaces: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)
    pass_pos: list[int] = field(default_factory=list)
    base_len: int = 0                               # the base trace's length

    def __repr__(self) -> str:                      # meta.json: a summary, not the pages
        return (f"AgingState({self.rule.regime or 'clock'}, period {self.period} accesses, "
                f"{sum(len(p) for p, _ in self.spaces.values())} PTEs)")

    def passes_in(self, n: int) -> list[int]:
        """Positions of every pass in a window of `n` accesses: the k-th pass is due at k
        periods; the base trace holds its own (workloads/linux.py: late by the fault
        attempts of a chunk at most), the rest follow on the clock after it (a pass due
        before the base trace's end but not taken in it comes at that end)."""
        base = [p for p in self.pass_pos if p < n]
        if self.period <= 0 or n <= self.base_len:
            return base
        k = len(self.pass_pos) + 1
        first = k * self.period
        return base + [max(t, self.base_len) for t in range(first, n, self.period)]

    def events_after(self, start: int, n: int) -> list:
        """guest_age events (pos, pos, Step) of the passes at positions in [start, n), the
        clock hand going on from where the base trace left it."""
        out = []
        hands = {a: h for a, (_, h) in self.spaces.items()}
        k = len(self.pass_pos)
        for pos in self.passes_in(n):
            if pos < start:
                continue
            for asid in sorted(self.spaces):
                pages = self.spaces[asid][0]
                win, hands[asid] = self.rule.select(pages, hands[asid], k)
                if len(win):
                    vas = tuple((win << self.granule_shift).tolist())
                    out.append((pos, pos, Step("guest_age", asid=asid, vas=vas,
                                               nonleaf=self.rule.nonleaf)))
            k += 1
        return out


def window_summary(state: AgingState | None, n: int, ns: float, period_ms: float) -> dict:
    """meta fields for a window of `n` accesses at `ns` each: passes in it, and a warning
    when the aging period does not fit in the window (no pass at all)."""
    if state is None or state.period <= 0:
        return {}
    passes = len(state.passes_in(n))
    out = {"aging_passes": passes,
           "aging": {"regime": state.rule.regime or "clock", "period_accesses": state.period,
                     "period_ms": period_ms or round(state.period * ns * 1e-6, 6),
                     "window_ms": round(n * ns * 1e-6, 6), "passes": passes}}
    if passes == 0:
        out["aging_warning"] = (f"aging period {out['aging']['period_ms']} ms is longer than "
                                f"the window ({out['aging']['window_ms']} ms): no aging pass "
                                f"in it (give --seconds)")
    return out
