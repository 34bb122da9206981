"""Synthetic trial functions for tests/test_hunt.py (bench.hunt's `trial_fn` hook): the
space, sampler, storage, executors and outputs are the real ones; only the evaluation of a
configuration is replaced by a formula whose maximum is known by construction."""
from __future__ import annotations

import math
import os
import time

PLANT_KNOB = "age_period_ms"
PLANT_OPTIMUM = 700.0           # ms: inside the calibrated 100 .. 10000


def planted_share(period_ms: float) -> float:
    """A bump in log(period) with its maximum 0.02 at PLANT_OPTIMUM."""
    return 0.02 * math.exp(-(math.log(period_ms / PLANT_OPTIMUM)) ** 2 / 0.5)


def planted(config: dict) -> dict:
    """The measures of a trial as bench.hunt.evaluate returns them, from the formula."""
    v = planted_share(config["knobs"][PLANT_KNOB])
    return {"vcpu_share": v, "net_ms_per_migration": v * 1000.0, "q_measured": 0.9,
            "q_break_even": 0.7, "exits_saved": 100, "false_dirty_extra": 1,
            "matters": v > 0.01, "net_us": v * 1e6, "run_share": v, "rounds_complete": 3,
            "link_mb_s": 1250.0, "migration_seconds": 3.4, "pt_share": 0.05,
            "seconds": 0.0}


def slow_planted(config: dict) -> dict:
    """`planted`, taking HUNT_TEST_SLEEP_S seconds, and appending the configuration it
    evaluated to HUNT_TEST_LOG once it finishes (to count evaluations)."""
    time.sleep(float(os.environ.get("HUNT_TEST_SLEEP_S", "0.3")))
    r = planted(config)
    log = os.environ.get("HUNT_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{config['knobs'][PLANT_KNOB]!r}\n")
    return r
