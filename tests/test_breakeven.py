"""Break-even share, false-positive costs, the envelope rate and the sensitivity helper
(bench/breakeven.py), against hand derivations and against bench/verdict.py's own rule."""
import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import breakeven as be
from bench.cost import CostModel
from bench.runner import COLUMNS
from bench.verdict import MATTERS_SHARE, MIN_EXITS_SAVED, verdict_table

# round constants for hand derivations (not the calibrated defaults)
HAND_CM = CostModel(exit_us=3.0, uffd_local_us=20.0, uffd_postcopy_us=100.0, link_gbit_s=10.0,
                    resend_overhead_us=1.0, guest_access_ns=10.0)


# ---- p* ----------------------------------------------------------------------------------
def test_p_break_even_by_hand():
    assert be.p_break_even(2.0, 4.0) == pytest.approx(2 / 3)       # 2p = 4(1-p)
    assert be.p_break_even(1.77, 4.2768) == pytest.approx(4.2768 / 6.0468)
    assert be.p_break_even(3.0, 0.0) == 0.0                          # nothing to lose
    assert be.p_break_even(3.0, math.inf) == 1.0                     # breaks the guest
    # at p*, saving and cost per event are equal
    p = be.p_break_even(1.5, 31.5)
    assert p * 1.5 == pytest.approx((1 - p) * 31.5)


@pytest.mark.parametrize("t_exit, t_false", [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0),
                                             (1.0, -0.5), (1.0, math.nan)])
def test_p_break_even_refuses_bad_costs(t_exit, t_false):
    with pytest.raises(ValueError):
        be.p_break_even(t_exit, t_false)


# ---- t_false per host --------------------------------------------------------------------
def test_t_false_by_host():
    # pre-copy: 4096 B at 10 Gbit/s = 32768 bits / 10^4 bits per us = 3.2768 us, + 1 us
    assert be.t_false_us("precopy", HAND_CM) == pytest.approx(4.2768)
    # ... at QEMU's default 128 MiB/s: 4096 B / 134.217728 B per us = 30.52 us, + 1 us
    slow = CostModel(link_gbit_s=128 * 2**20 * 8 / 1e9, resend_overhead_us=1.0)
    assert be.t_false_us("precopy", slow) == pytest.approx(30.517578125 + 1.0)
    # snapshot: a uffd-wp round trip (20); the page is copied once per snapshot whoever
    # resolves it, so the copy is no extra cost
    assert be.t_false_us("snapshot", HAND_CM) == pytest.approx(20.0)
    # migration: the case's own link, 4096 B over 3125 MB/s (25 Gbit/s) = 1.31072 us, + 1 us
    assert be.t_false_us("migration", HAND_CM, 3125.0) == pytest.approx(2.31072)
    assert be.t_false_us("postcopy", HAND_CM) == 0.0
    assert be.t_false_us("pressure", HAND_CM) == 0.0 and be.t_false_us("none") == 0.0
    assert be.t_false_us("firmware") == math.inf
    with pytest.raises(ValueError, match="unknown host scenario 'moon'"):
        be.t_false_us("moon")


def test_every_host_scenario_has_a_false_positive_cost():
    import workloads.host  # noqa: F401  (registers the host scenarios)
    from workloads.base import HOST_SCENARIOS
    assert set(HOST_SCENARIOS) | {"none"} <= set(be.FALSE_POSITIVE)


# ---- the envelope by hand ----------------------------------------------------------------
def test_envelope_share_binding_by_hand():
    # t_exit 2, t_false 4, p 0.9: s = 1.8 - 0.4 = 1.4 us; c = 1.9 * 2 = 3.8 us per event.
    # 1 s of guest time (U0 = 10^6 us): N = 0.01 * 10^6 / (1.4 - 0.038) = 7342.14
    e = be.envelope_detail(0.9, 2.0, 4.0, 1.0)
    assert e.binding == "run_share" and e.pages_s == pytest.approx(1e4 / 1.362)
    assert e.mb_s == pytest.approx(1e4 / 1.362 * 4096 / 1e6)           # 30.07 MB/s
    assert be.envelope(0.9, 2.0, 4.0, 1.0) == (pytest.approx(7342.1439), "pages/s")
    # over 10 s of guest time (U0 = 10^7 us) the count is 10x, the rate the same
    assert be.envelope(0.9, 2.0, 4.0, 10.0)[0] == pytest.approx(e.pages_s)


def test_envelope_other_bindings_by_hand():
    # no run time at all: only the 10 exits count: N = 10 / 0.9
    e = be.envelope_detail(0.9, 2.0, 4.0, 1.0, run_us=0.0)
    assert e.binding == "min_exits" and e.pages_s == pytest.approx(10 / 0.9)
    # 10^6 other faults of fix: N * 0.9 >= 0.01 * (10^6 + 1.9 N) -> N = 10^4 / 0.881
    e = be.envelope_detail(0.9, 2.0, 4.0, 1.0, fix_faults=1e6)
    assert e.binding == "exit_share" and e.pages_s == pytest.approx(1e4 / 0.881)
    # a window of 0.5 s with U0 = 10^6 us: twice the rate for the same count
    e = be.envelope_detail(0.9, 2.0, 4.0, 0.5, run_us=1e6)
    assert e.pages_s == pytest.approx(2e4 / 1.362)


def test_envelope_never():
    assert be.envelope(0.5, 2.0, 4.0, 1.0) == (math.inf, "never")          # p < p* = 2/3
    assert be.envelope(2 / 3, 2.0, 4.0, 1.0) == (math.inf, "never")        # p = p*
    # just above p*: s = 0.67*2 - 0.33*4 = 0.02 us < 1 % of c = 3.34 us
    e = be.envelope_detail(0.67, 2.0, 4.0, 1.0)
    assert math.isinf(e.pages_s) and "below sigma" in e.binding
    assert be.envelope(0.99, 2.0, math.inf, 1.0) == (math.inf, "never")    # firmware
    assert be.envelope(0.0, 2.0, 0.0, 1.0) == (math.inf, "never")          # nothing saved


@pytest.mark.parametrize("kw", [dict(p=1.5), dict(p=-0.1), dict(guest_seconds=0.0),
                                dict(run_us=-1.0), dict(matters_share=0.0),
                                dict(t_exit_us=0.0)])
def test_envelope_refuses_bad_input(kw):
    args = dict(p=0.9, t_exit_us=2.0, t_false_us=4.0, guest_seconds=1.0) | kw
    with pytest.raises(ValueError):
        be.envelope_detail(**args)


# ---- the envelope against the rule, for any input ----------------------------------------
def _state(p, t_exit, t_false, n, u0, f0, sigma):
    """Net saving, fix's run time, exits saved and fix's faults after n events."""
    s = p * t_exit - (1 - p) * t_false
    return n * s, u0 + n * (1 + p) * t_exit, n * p, f0 + n * (1 + p)


def _matters(p, t_exit, t_false, n, u0, f0, sigma, e_min, tol=0.0):
    net, run, saved, faults = _state(p, t_exit, t_false, n, u0, f0, sigma)
    return (net > 0 and net >= sigma * run * (1 - tol) and saved >= e_min * (1 - tol)
            and saved >= sigma * faults * (1 - tol))


@settings(max_examples=300, deadline=None)
@given(p=st.floats(0.0, 1.0), t_exit=st.floats(0.1, 20.0), t_false=st.floats(0.0, 100.0),
       seconds=st.floats(1e-3, 100.0), u0=st.floats(0.0, 1e9), f0=st.floats(0.0, 1e6),
       sigma=st.floats(1e-4, 0.2), e_min=st.floats(0.0, 1000.0))
def test_envelope_is_the_threshold(p, t_exit, t_false, seconds, u0, f0, sigma, e_min):
    e = be.envelope_detail(p, t_exit, t_false, seconds, run_us=u0, fix_faults=f0,
                           matters_share=sigma, min_exits_saved=e_min)
    if math.isinf(e.pages_s):
        # never: no count of events makes it matter (checked far out)
        assert not any(_matters(p, t_exit, t_false, n, u0, f0, sigma, e_min)
                       for n in (1.0, 1e3, 1e6, 1e9, 1e12, 1e15))
        return
    n = e.pages_s * seconds
    assert n == pytest.approx(e.events)
    net, run, saved, faults = _state(p, t_exit, t_false, n, u0, f0, sigma)
    # at the solved rate every condition holds, the binding one with equality
    assert _matters(p, t_exit, t_false, n, u0, f0, sigma, e_min, tol=1e-9) or n == 0
    lhs, rhs = {"run_share": (net, sigma * run), "min_exits": (saved, e_min),
                "exit_share": (saved, sigma * faults)}[e.binding]
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)
    # and a little less is not enough
    if n > 1e-6:
        assert not _matters(p, t_exit, t_false, n * (1 - 1e-6), u0, f0, sigma, e_min)


def _rows(n, p, f0, accesses, host="precopy"):
    """fix and ha-promote rows after n unmapped-then-walked page-table pages."""
    def row(policy, **m):
        r = {c: 0 for c in COLUMNS}
        r.update(workload="w", host=host, variant="default", seed=1, policy=policy,
                 accesses=accesses, **m)
        return r
    return pd.DataFrame([
        row("fix", s2_faults=f0 + n * (1 + p), s2_s1ptw_translation=n,
            double_faults=n * p, s1ptw_tf_round_pages=n, s1ptw_tf_round_written=n * p),
        row("ha-promote", s2_faults=f0 + n, s2_s1ptw_translation=n,
            dirty_false_positive=n * (1 - p))])


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.3, 1.0), exit_us=st.floats(0.5, 10.0), link=st.floats(1.0, 100.0),
       accesses=st.integers(0, 10**7), f0=st.integers(0, 10**5),
       seconds=st.floats(1e-3, 10.0))
def test_envelope_agrees_with_the_verdict(p, exit_us, link, accesses, f0, seconds):
    # bench/verdict.py itself says "matters" just above the solved rate and not just below
    cm = CostModel(exit_us=exit_us, link_gbit_s=link)
    u0 = accesses * cm.guest_access_ns / 1000 + f0 * exit_us
    e = be.envelope_detail(p, exit_us, be.t_false_us("precopy", cm), seconds, run_us=u0,
                           fix_faults=f0)
    if math.isinf(e.pages_s):
        big = verdict_table(_rows(1e9, p, f0, accesses), cm).iloc[0]
        assert not big["matters"]
        return
    n = e.events
    above = verdict_table(_rows(n * (1 + 1e-6), p, f0, accesses), cm).iloc[0]
    below = verdict_table(_rows(n * (1 - 1e-6), p, f0, accesses), cm).iloc[0]
    assert above["matters"] and not below["matters"]


def test_case_envelope_from_a_metrics_row():
    # 1000 (page-table page, round) pairs with a translation fault, 900 written later in
    # their round (a second fault each under fix): q = 0.9.
    # fix: 2000 other faults; 10^8 accesses of 10 ns = 10^6 us of guest work.
    fix = _rows(1000, 0.9, 2000, 10**8).iloc[0].to_dict()
    assert be.measured_q(fix) == pytest.approx(0.9)
    assert be.p_same_access(fix) == pytest.approx(0.9)
    e = be.case_envelope(fix, "precopy", HAND_CM, guest_seconds=1.0)
    # U0 = 10^6 + 2000 * 3 (the other faults; the measured events' 1900 faults removed)
    want = be.envelope_detail(0.9, 3.0, 4.2768, 1.0, run_us=1e6 + 6000, fix_faults=2000)
    assert e == want
    assert be.p_same_access({"s2_s1ptw_translation": 0, "double_faults": 0}) is None
    assert be.measured_q({"s1ptw_tf_round_pages": 0, "s1ptw_tf_round_written": 0}) is None


def test_host_unmap_rates_from_the_table():
    r = be.host_unmap_rates_pages_s()
    # the kernel scales the NUMA scan period by the RSS (kernel/sched/fair.c task_scan_min /
    # task_scan_max): a 4 GiB VM is 16 windows of 256 MiB, so 1000 / 16 = 62 ms, raised to
    # the floor 1000 / (2560 / 256) = 100 ms, and 60000 / 16 = 3750 ms; 65536 pages per scan
    assert r["numa_balancing_fastest"] == pytest.approx(65536 / 0.1)
    assert r["numa_balancing_slowest"] == pytest.approx(65536 / 3.75)
    small = be.host_unmap_rates_pages_s(ram_mb=1024)            # 4 windows: 250 ms, 15 s
    assert small["numa_balancing_fastest"] == pytest.approx(65536 / 0.25)
    assert small["numa_balancing_slowest"] == pytest.approx(65536 / 15)
    assert r["khugepaged"] == pytest.approx(409.6)                # 4096 pages per 10 s
    assert r["ksm"] == pytest.approx(5000)                        # 100 pages per 20 ms


# ---- sensitivity -------------------------------------------------------------------------
def test_sensitivity_table_wiring():
    from bench.calibration import COST_DEFAULTS, constant
    t = be.sensitivity_table(lambda cm: cm.exit_us)
    r = t.set_index("param").loc["exit_us"]
    c = constant(COST_DEFAULTS["exit_us"])
    assert (r["metric_lo"], r["metric"], r["metric_hi"]) == (c.lo, c.value, c.hi)
    # other knobs stay at their defaults while one moves
    assert (t.set_index("param").loc["link_gbit_s", ["metric_lo", "metric_hi"]]
            == c.value).all()
    assert list(t["param"]) == list(COST_DEFAULTS)


def test_verdict_sensitivity_moves_with_exit_cost():
    # 10 exits saved against 2 falsely dirty pages: net = 10 * exit - 2 * 4.2768
    df = _rows(10, 1.0, 0, 0)
    df.loc[1, "dirty_false_positive"] = 2
    t = be.verdict_sensitivity(df).set_index("param")
    r = t.loc["exit_us"]
    assert r["best_net_us_lo"] == pytest.approx(10 * 0.85 - 2 * 4.2768)
    assert r["best_net_us_hi"] == pytest.approx(10 * 8.6 - 2 * 4.2768)
    assert r["cases_that_matter_lo"] <= r["cases_that_matter_hi"] == 1
    assert MATTERS_SHARE > 0 and MIN_EXITS_SAVED >= 0
