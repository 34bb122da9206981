"""A background snapshot in time (workloads/host_timed.py bg_snapshot) and windows that end
when it completes (--until snapshotted): every page protected at the start and released once,
in address order, at the bandwidth; both engines agree on it."""
from __future__ import annotations

import numpy as np
import pytest

from bench.catalog import build
from model.engine import run_trace
from model.reference_trace import run_reference_trace
from workloads.base import WorkloadError

GUEST = dict(keys=4096, operations=3000, demand=False, warm_stage2=True, ram_mb=64)


def _snapshot(bandwidth_mb_s=100.0, **kw):
    return build("zipf", GUEST, "bg_snapshot", {"bandwidth_mb_s": bandwidth_mb_s}, 1,
                 None, "snapshotted", **kw)


def test_every_page_saved_once_at_the_bandwidth():
    w = _snapshot()
    slots = {s.name: s.pages for s in w.scenario.memslots}
    released = {name: [] for name in slots}
    for _p, _i, st in w.trace.events:
        if st.op == "uffd_unprotect":
            released[st.slot].append(np.asarray(st.pages))
    for name, parts in released.items():
        pages = np.concatenate(parts)
        # each page of each slot released exactly once, in address order
        assert np.array_equal(pages, np.arange(slots[name])), name
    total_mb = sum(slots.values()) * 4096 / 1e6
    snap = w.meta["host"][-1]
    # the last release is the first 10 ms step at or after total / bandwidth
    assert total_mb / 100.0 <= snap["snapshot_s"] < total_mb / 100.0 + 0.010 + 1e-9
    # the window ends there (--until snapshotted)
    assert w.meta["seconds"] == pytest.approx(snap["snapshot_done_s"])
    assert max(p for p, _i, _st in w.trace.events) == len(w.trace)


def test_engines_agree_on_a_whole_snapshot():
    w = _snapshot(bandwidth_mb_s=400.0)
    ref = {p: r.metrics() for p, r in run_reference_trace(w.scenario, w.trace).items()}
    fast = {p: r.metrics() for p, r in run_trace(w.scenario, w.trace).items()}
    assert fast == ref
    assert ref["fix"]["uffd_wp_write"] > 0          # the guest's stores met protected pages


def test_until_needs_its_host():
    with pytest.raises(WorkloadError, match="needs the bg_snapshot host"):
        build("zipf", GUEST, "migration", {}, 1, None, "snapshotted")
    with pytest.raises(WorkloadError, match="not both"):
        build("zipf", GUEST, "bg_snapshot", {}, 1, 1.0, "snapshotted")
