"""Dirty rounds as the unit (issue 20): false positives judged at the harvest that ends their
round, a round open at the end reported apart (pending), and q, the share of (page-table page,
round) pairs with an S1PTW translation fault under fix in which the guest wrote the page
before the round's harvest.  Every expectation is derived by hand below, for both engines.

The scenario: one 4K/48 mapping (tables on pt pages 0..3), HA and HD set, AF set on the leaf.
A first read maps the tables outside logging (read faults map read-write when the host page
is writable: user_mem_abort), then logging starts (every mapping write-protected), an MMU
notifier zaps L3 table page 3, and a read walks through it again: one S1PTW translation
fault on page 3 in the round.  AF is already set and hw_update = on-change, so the walk
writes nothing (R_LFTXR).

* fix calls it a read: page 3 is mapped read-only, not marked.
* ha-promote (HA = 1) calls it a write: mapped read-write and marked dirty at once.

(a) the guest then ages the PTE (clear_af: a store to page 3) and the round is harvested:
    fix takes a data permission fault on page 3 (the store), ha-promote none: 1 exit saved;
    page 3 was written, so ha-promote's mark is no false positive; q = 1/1.
(b) nothing writes page 3 before the harvest: no exit saved, ha-promote's mark of page 3 is
    1 false positive at that harvest; q = 0/1.
(c) as (b), but the window ends before any harvest: the round is open — page 3 is pending
    for ha-promote (marked, unwritten so far), neither saved nor false; no complete round,
    so q has nothing to count.
(d) the guest writes page 3 (clear_af) *before* the zap and the walk fault, and not after:
    the write saves nothing (fix's page was writable then), and ha-promote's mark is no
    false positive either (the page was written in the round): a neutral pair, left out of
    q (nothing to measure).
"""
from __future__ import annotations

import pytest

from bench.breakeven import measured_q
from model.engine import run_engine
from model.reference import run_reference
from model.scenario_io import parse_scenario

ENGINES = {"reference": run_reference, "numpy": run_engine}


def _scenario(write_before_harvest: bool, harvest: bool, write_before_fault: bool = False):
    steps = [{"op": "access", "va": 0xC000_0000, "kind": "read64"},
             {"op": "enable_dirty_log", "slot": "pt"}]
    if write_before_fault:
        steps.append({"op": "clear_af", "va": 0xC000_0000})
        steps.append({"op": "access", "va": 0xC000_0000, "kind": "read64"})   # AF set again
    steps += [{"op": "zap", "slot": "pt", "first": 3, "count": 1},
              {"op": "access", "va": 0xC000_0000, "kind": "read64"}]
    if write_before_harvest:
        steps.append({"op": "clear_af", "va": 0xC000_0000})
    if harvest:
        steps.append({"op": "harvest", "slot": "pt"})
    return parse_scenario({
        "version": 1, "name": "round",
        "machine": {"granule": "4k", "va_bits": 48, "hafdbs": 2, "hw_update": "on-change"},
        "guest": {"tcr_ha": True, "tcr_hd": True, "pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": 0x4000_0000, "pages": 8},
                     {"name": "data", "ipa": 0x8000_0000, "pages": 4}],
        "mappings": [{"va": 0xC000_0000, "ipa": 0x8000_0000, "pages": 1, "af": True,
                      "writable": True, "dirty": True}],
        "steps": steps})


def _metrics(engine, write, harvest, before=False):
    res = ENGINES[engine](_scenario(write, harvest, before), ("fix", "ha-promote"))
    return {p: r.metrics() for p, r in res.items()}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_written_before_harvest_saves_an_exit_and_is_no_false_positive(engine):
    m = _metrics(engine, write=True, harvest=True)
    fix, hap = m["fix"], m["ha-promote"]
    # 4 walk faults of the first read (stage 2 empty, before logging) + 1 in the round
    assert fix["s2_s1ptw_translation"] == hap["s2_s1ptw_translation"] == 5
    assert fix["s2_faults"] - hap["s2_faults"] == 1            # fix's data permission fault
    assert hap["dirty_false_positive"] == fix["dirty_false_positive"] == 0
    assert fix["s1ptw_tf_round_pages"] == 1 and fix["s1ptw_tf_round_written"] == 1   # q = 1
    assert fix["dirty_rounds"] == 1 and fix["s1ptw_tf_pending"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_b_nothing_writes_it_one_false_positive_at_the_harvest(engine):
    m = _metrics(engine, write=False, harvest=True)
    fix, hap = m["fix"], m["ha-promote"]
    assert fix["s2_faults"] == hap["s2_faults"]
    assert hap["dirty_false_positive"] == hap["dirty_false_positive_pt"] == 1
    assert fix["dirty_false_positive"] == 0
    assert fix["s1ptw_tf_round_pages"] == 1 and fix["s1ptw_tf_round_written"] == 0   # q = 0
    assert hap["dirty_pending_marked"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_c_window_ends_before_the_harvest_page_pending(engine):
    m = _metrics(engine, write=False, harvest=False)
    fix, hap = m["fix"], m["ha-promote"]
    assert fix["s2_faults"] == hap["s2_faults"]                # nothing saved
    assert hap["dirty_false_positive"] == 0                    # nothing false yet
    assert hap["dirty_pending_marked"] == hap["dirty_pending_unwritten"] == 1
    assert fix["dirty_pending_marked"] == 0
    assert fix["dirty_rounds"] == 0 and fix["dirty_rounds_open"] == 1
    assert fix["s1ptw_tf_round_pages"] == 0 and fix["s1ptw_tf_pending"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_d_written_only_before_the_walk_fault_saves_nothing(engine):
    m = _metrics(engine, write=False, harvest=True, before=True)
    fix, hap = m["fix"], m["ha-promote"]
    assert fix["s2_faults"] == hap["s2_faults"]                # nothing saved
    assert hap["dirty_false_positive"] == fix["dirty_false_positive"] == 0
    assert fix["s1ptw_tf_round_pages"] == 1 and fix["s1ptw_tf_round_written"] == 0
    assert fix["s1ptw_tf_round_neutral"] == 1
    assert measured_q(fix) is None                             # no pair where they differ
