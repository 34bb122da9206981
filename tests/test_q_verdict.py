"""q against its break-even (issue 20): the false positive's cost at the case's own link,
snapshot copies once per page, and a case's "matters", its q against q* and its envelope
never contradicting each other."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from bench.breakeven import q_break_even, t_false_us
from bench.cost import CostModel
from bench.verdict import verdict_table
from model.reference import run_reference
from model.scenario_io import parse_scenario

MIB = 2 ** 20


@pytest.mark.parametrize("link_mb_s", [128 * MIB / 1e6, 10e3 / 8, 25e3 / 8])
def test_t_false_is_a_page_over_the_case_link_plus_the_per_page_overhead(link_mb_s):
    # a 4 KiB page over a link of B MB/s (= B bytes/us) takes 4096 / B us, plus the
    # migration thread's per-page overhead: 31.5 us at 128 MiB/s, 4.3 us at 10 Gbit/s,
    # 2.3 us at 25 Gbit/s with the default 1 us overhead
    cm = CostModel()
    want = 4096 / link_mb_s + cm.resend_overhead_us
    assert t_false_us("migration", cm, link_mb_s) == pytest.approx(want)
    assert t_false_us("migration+numa", cm, link_mb_s) == pytest.approx(want)
    assert q_break_even("migration", cm, link_mb_s) == pytest.approx(
        want / (cm.exit_us + want))
    assert {round(t_false_us("migration", cm, b), 1) for b in (134.217728, 1250.0, 3125.0)
            } == {31.5, 4.3, 2.3}


def _snapshot(later_store: bool):
    # uffd-wp on the page-table slot (a background snapshot of it, one round); HA set so
    # ha-promote calls the read walk's S1PTW translation fault on the protected L3 page 3 a
    # write: a uffd-wp WRITE event, resolved (the page copied, unprotected).  With
    # `later_store`, the guest writes page 3 afterwards (clear_af: a store through its own
    # mapping), so the snapshot would have copied it anyway: not a false write.
    steps = [{"op": "access", "va": 0xC000_0000, "kind": "read64"},
             {"op": "uffd_wp", "slot": "pt", "first": 3, "count": 1},
             {"op": "access", "va": 0xC000_0000, "kind": "read64"}]
    if later_store:
        steps.append({"op": "clear_af", "va": 0xC000_0000})
    return parse_scenario({
        "version": 1, "name": "snapshot",
        "machine": {"granule": "4k", "va_bits": 48, "hafdbs": 2},
        "guest": {"tcr_ha": True, "tcr_hd": True, "pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": 0x4000_0000, "pages": 8, "uffd": "wp"},
                     {"name": "data", "ipa": 0x8000_0000, "pages": 4}],
        "mappings": [{"va": 0xC000_0000, "ipa": 0x8000_0000, "pages": 1, "af": True,
                      "writable": True, "dirty": True}],
        "steps": steps})


@pytest.mark.parametrize("later_store", [False, True])
def test_snapshot_copies_a_page_once(later_store):
    r = run_reference(_snapshot(later_store), ("ha-promote",))["ha-promote"]
    wp = [e for e in r.uffd_events if e.mode == "wp"]
    assert [(e.page, e.write) for e in wp] == [(3, True)]
    assert r.uffd_counts()["uffd_wp_false_write"] == (0 if later_store else 1)


# ---- matters, q vs q*, envelope: one story -------------------------------------------------
@st.composite
def model_case(draw):
    """fix and ha-promote rows of one migration case that follow the break-even's model
    exactly: N (page-table page, round) pairs with an S1PTW translation fault, W of them
    written later in the round (one more exit each under fix; ha-promote's marks of the
    other N - W are its false positives), F0 other stage-2 faults."""
    n = draw(st.integers(0, 5000))
    w = draw(st.integers(0, n))
    f0 = draw(st.integers(0, 200_000))
    gs = draw(st.floats(1e-3, 40.0))
    link = draw(st.sampled_from([134.2, 1250.0, 3125.0]))
    base = {"workload": "w", "host": "migration", "variant": "default", "seed": 1,
            "accesses": 1000, "guest_seconds": gs, "vcpus": draw(st.integers(1, 8)),
            "link_mb_s": link, "migration_seconds": gs, "uffd_events": 0,
            "uffd_false_write": 0, "uffd_wp_false_write": 0, "guest_aborts": 0,
            "vcpu_run_failures": 0, "double_faults": 0, "s2_s1ptw_translation": n,
            "s1ptw_tf_round_pages": n, "s1ptw_tf_round_written": w, "dirty_rounds": 3}
    fix = dict(base, policy="fix", s2_faults=f0 + n + w, dirty_false_positive=0)
    hap = dict(base, policy="ha-promote", s2_faults=f0 + n, dirty_false_positive=n - w)
    return pd.DataFrame([fix, hap]), n, gs


@settings(max_examples=300, deadline=None)
@given(model_case(), st.floats(0.3, 10.0))
def test_matters_q_and_envelope_agree(case, exit_us):
    df, n, gs = case
    v = verdict_table(df, CostModel(exit_us=exit_us)).iloc[0]
    q, qs = v["q_measured"], v["q_break_even"]
    if q is None:
        assert not v["matters"]
        return
    if q <= qs:                                  # below break-even: never, whatever the rate
        assert not v["matters"] and v["envelope_unit"] == "never"
    if v["matters"]:
        assert q > qs and v["net_us"] > 0
    # the envelope is the rate at which the case would matter: the case matters exactly
    # when its own rate of such pairs reaches it
    rate = n / gs
    if v["envelope_unit"] == "never":
        assert not v["matters"]
    elif not math.isclose(rate, v["envelope"], rel_tol=1e-6):
        assert v["matters"] == (rate >= v["envelope"])
