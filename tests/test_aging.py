"""Guest aging on the clock (issue 20 items 4 and 5, workloads/aging.py): a pass every period
over the whole window whatever builds the trace, the regimes, the warning for a period the
window cannot hold, the access flags a warm guest starts with; both engines agree."""
import numpy as np
import pytest

from bench.cli import main
from model.engine import run_trace
from model.reference_trace import run_reference_trace
from model.trace import READ64, WRITE64
from workloads import registry, trace_dir
from workloads.aging import AgingRule
from workloads.base import WorkloadError
from workloads.clock import access_time, with_seconds
from workloads.linux import LinuxGuest, make_profile

PAGE = 4096
BASE = 0x10_0000_0000


def ages(w):
    return [(p, st) for p, _i, st in w.trace.events if st.op == "guest_age"]


def window_over_period(w) -> float:
    return len(w.trace) * access_time(w).ns * 1e-6 / w.meta["aging"]["period_ms"]


def same_metrics(w):
    ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
    assert {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()} == ref
    return ref


def test_passes_of_a_generator_and_of_its_repeats():
    # zipf: 250 ns per access; 1 ms aging = 4,000 accesses.  The base trace (2 x 3,000
    # operations = 6,000 accesses) holds one pass; over 20 ms (80,000 accesses) the repeats
    # carry the rest: 20 passes (at 4,000, 8,000, ... 76,000), one every period
    knobs = dict(keys=4096, operations=3000, demand=False, age_period_ms=1.0)
    base = registry.build("zipf", 1, **knobs)
    assert base.meta["aging_passes"] == 1 == len({p for p, _ in ages(base)})
    w = registry.build("zipf", 1, seconds=0.02, **knobs)
    assert w.meta["aging_passes"] == 19
    assert abs(w.meta["aging_passes"] - window_over_period(w)) <= 1
    assert sorted({p for p, _ in ages(w)}) == list(range(4000, 80000, 4000))
    # the clock hand goes on: the 19 passes of 25 % of the PTEs cover every PTE ~4.75 times,
    # not the same quarter again
    counts = np.unique(np.concatenate([st.vas for _, st in ages(w)]), return_counts=True)[1]
    assert len(counts) == base.meta["premapped_pages"] and set(counts) <= {4, 5}


def test_a_base_trace_shorter_than_the_period_still_ages_over_the_window():
    # issue 20: aging_passes was 0 when the base trace was shorter than the period
    w = registry.build("zipf", 1, keys=1024, operations=500, demand=False,
                       age_period_ms=5.0, seconds=0.1)
    assert ages(registry.build("zipf", 1, keys=1024, operations=500, demand=False,
                               age_period_ms=5.0)) == []
    assert w.meta["aging_passes"] == 19 and abs(19 - window_over_period(w)) <= 1


def test_a_period_longer_than_the_window_is_named():
    w = registry.build("zipf", 1, keys=1024, operations=500, demand=False, aging="mglru",
                       seconds=0.1)
    assert w.meta["aging_passes"] == 0
    assert "1000.0 ms is longer than the window (100.0 ms)" in w.meta["aging_warning"]


def test_catalogue_program_ages_over_its_served_window():
    w = registry.build("catalogue:python-json", 0, seconds=0.05, demand=False,
                       age_period_ms=5.0)
    assert w.meta["aging_passes"] >= 9 and abs(w.meta["aging_passes"]
                                               - window_over_period(w)) <= 1
    assert len({p for p, _ in ages(w)}) == w.meta["aging_passes"]


def lackey(tmp_path, n=20000):
    r = np.random.default_rng(3)
    lines = []
    for i in range(n):
        lines.append(f"I  {0x400000 + (i * 4) % 0x2000:08x},4")
        lines.append(f" {'S' if r.random() < 0.3 else 'L'} "
                     f"{0x5a0000 + int(r.integers(0, 1 << 16)) * 8:x},8")
    p = tmp_path / "p.lackey"
    p.write_text("\n".join(lines) + "\n==7==   guest instrs:  40,000\n")
    return p


def test_import_and_trace_dir_age_on_their_clock(tmp_path):
    p = lackey(tmp_path)
    # import: 10 ns per access (no recording): 0.05 ms aging = 5,000 accesses; 2 ms window
    w = registry.build(f"import:{p}", 0, seconds=0.002, demand=False, age_period_ms=0.05)
    assert w.meta["profile"]["age_period"] == 5000
    assert abs(w.meta["aging_passes"] - window_over_period(w)) <= 1
    assert w.meta["aging_passes"] == 39
    # trace: converted with the regime's knobs; the clock is the recording's (40,000
    # instructions at 2.5 GHz over 40,000 accesses: 0.4 ns each): 5 ms = 12.5 M accesses
    d = trace_dir.convert_file(str(p), tmp_path / "t", demand=False, aging="damon")
    t = registry.build(f"trace:{d}", 0, seconds=0.1)
    assert t.meta["profile"]["age_period"] == 12_500_000
    assert t.meta["aging_passes"] == 19 and abs(19 - window_over_period(t)) <= 1


def test_compact_repeated_window_both_engines(tmp_path):
    """A served (tiled) window like the catalogue's, aging on the clock: engines agree."""
    p = lackey(tmp_path, 3000)
    f = trace_dir.convert_file(str(p), tmp_path / "c.ptwc")
    for regime in ("", "damon", "mglru"):
        knobs = dict(demand=False, warm_stage2=True, access_ns=100.0)
        knobs.update(aging=regime, age_period_ms=0.1)
        knobs.update({"damon": dict(damon_regions=7), "mglru": {}}.get(
            regime, dict(age_fraction=0.3)))
        w = registry.build(f"compact:{f}", 0, host_name="migration",
                           host_knobs={"link_gbit_s": 100.0, "downtime_limit_ms": 0.0},
                           seconds=0.003, **knobs)
        assert w.meta["aging_passes"] == 29
        same_metrics(w)


def test_damon_samples_one_pte_per_region_and_mglru_every_pte():
    pages = np.arange(100, 1100, dtype=np.int64)
    d = AgingRule("damon", regions=10)
    a, _ = d.select(pages, -1, 0)
    b, _ = d.select(pages, -1, 1)
    assert len(a) == 10 and np.array_equal((a - 100) // 100, np.arange(10))   # one a region
    assert not np.array_equal(a, b)                                           # random each pass
    m, hand = AgingRule("mglru").select(pages, 555, 0)
    assert np.array_equal(m, pages) and hand == 555                       # the whole walk


def guest(**knobs):
    return LinuxGuest("t", make_profile(dict(demand=False, **knobs)))


def test_warm_guest_starts_with_the_af_that_aging_leaves():
    # 8 pages, period 4 accesses, quarter per pass (k = 2, 4 chunks of the sorted pages).
    # Going back from the start, chunk c (pages 2c, 2c+1) was last aged (4 - c) periods = 
    # 16 - 4c accesses before it.  The base trace reads pages 0..7 then 0, 1, 6: ages since
    # the last access (accesses after it): page 0: 2, 1: 1, 2..5: 8..5 (page 2 read at 2 of
    # 11 -> 8), 6: 0, 7: 3.  Young iff age < 16 - 4c: chunk 0 (<16) 0, 1 young; chunk 1
    # (<12) 2, 3 young (8, 7); chunk 2 (<8) page 4 (6) young, 5 (5) young; chunk 3 (<4) 6
    # young (0), 7 young (3) -- all young; with period 2: thresholds 8, 6, 4, 2: page 2 (8)
    # old, 3 (7) old, 4 (6) old, 5 (5) old, 7 (3) old; 0, 1, 6 young.
    for period, want in ((4, [1] * 8), (2, [1, 1, 0, 0, 0, 0, 1, 0])):
        g = guest(age_period=period, age_fraction=0.25)
        g.vma(BASE, 8 * PAGE, "anon")
        g.run(0, BASE + np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 6], dtype=np.uint64) * PAGE,
              READ64)
        w = g.build()
        af = {}
        for m in w.scenario.mappings:
            for i in range(m.pages):
                af[(m.va - BASE) // PAGE + i] = int(m.af)
        assert [af[q] for q in range(8)] == want
    # no aging: every PTE young (the state demand = false always had)
    g = guest()
    g.vma(BASE, 8 * PAGE, "anon")
    g.run(0, BASE + np.arange(8, dtype=np.uint64) * PAGE, WRITE64)
    assert all(m.af for m in g.build().scenario.mappings)


def test_steady_state_af_with_mglru_marks_the_untouched_half_old():
    # MGLRU walks every PTE each pass: young iff touched within the last period.  zipf's
    # skew leaves most keys untouched within a short period
    w = registry.build("zipf", 1, keys=1 << 14, operations=20000, demand=False,
                       aging="mglru", age_period_ms=0.5)             # 2,000 accesses
    old = w.meta["old_at_start"]
    assert 0 < old < w.meta["premapped_pages"]
    assert sum(m.pages for m in w.scenario.mappings if not m.af) == old


@pytest.mark.parametrize("knobs,msg", [
    (dict(aging="none", age_period_ms=5.0), "aging = none contradicts"),
    (dict(aging="mglru", age_fraction=0.5), "age_fraction does not apply"),
    (dict(damon_regions=10), "damon_regions applies to aging = damon only"),
    (dict(aging="lru"), "is not one of"),
])
def test_contradictory_aging_knobs_are_refused(knobs, msg):
    with pytest.raises(WorkloadError, match=msg):
        registry.build("zipf", 0, keys=64, operations=10, **knobs)


def test_cli_names_a_period_the_window_cannot_hold(capsys, tmp_path):
    rc = main(["run", "zipf", "--knob", "keys=256", "--knob", "operations=200",
               "--knob", "demand=false", "--knob", "aging=mglru", "--seconds", "0.001",
               "--no-save"])
    assert rc == 0
    assert "aging period 1000.0 ms is longer than the window" in capsys.readouterr().err
