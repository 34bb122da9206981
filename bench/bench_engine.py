"""pytest-benchmark: full accounting (all four policies) with the numpy engine, and the
reference engine for scale.  Run by hand:

    pytest bench/bench_engine.py --benchmark-enable

extra_info["accesses_per_s"] is the trace's accesses per second of the whole four-policy
run (the issue's "full accounting" rate).
"""
import pytest

from bench.shapes import data_heavy, pt_heavy
from model.engine import run_trace
from model.policies import DEFAULT_ORDER

SHAPES = {"data-heavy": data_heavy, "pt-heavy": pt_heavy}


@pytest.mark.parametrize("n", [10**6, 10**7], ids=["1e6", "1e7"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_full_accounting(benchmark, shape, n):
    scn, tr = SHAPES[shape](n)
    rounds = 3 if n <= 10**6 else 1
    res = benchmark.pedantic(run_trace, args=(scn, tr, DEFAULT_ORDER), rounds=rounds,
                             iterations=1, warmup_rounds=0)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(accesses=n, policies=len(DEFAULT_ORDER),
                                accesses_per_s=n / med,
                                s2_faults_fix=sum(res["fix"].s2_faults.values()))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_reference_engine(benchmark, shape):
    from model.reference_trace import run_reference_trace
    n = 10**4
    scn, tr = SHAPES[shape](n, harvest_every=2500) if shape == "pt-heavy" else SHAPES[shape](n)
    benchmark.pedantic(run_reference_trace, args=(scn, tr, DEFAULT_ORDER), rounds=3,
                       iterations=1)
    benchmark.extra_info.update(accesses=n, accesses_per_s=n / benchmark.stats.stats.median)
