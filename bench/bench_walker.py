"""Walker throughput (model.walker): walk_leaf and walk_batch on 10^6 and 10^7 VAs, 4K
granule, 48-bit VA (4 levels).

* sparse (page-table heavy): one page per 2 MiB over 64 GiB of VA (32768 leaf tables, each
  with one valid entry at a random index); every access lands in one of them at random, so
  each touches its own leaf table (cache misses on the leaf level).
* sparse0: the same with every page at the start of its 2 MiB (leaf index 0 everywhere: the
  worst case for cache-set aliasing, see model.walker ROW_PAD).
* dense (data heavy): 384 MiB mapped contiguously; random VAs inside (192 leaf tables).

Run: .venv/bin/python -m pytest bench/bench_walker.py --benchmark-enable -q
extra_info["walks_per_s"] = n / median (and min_walks_per_s = n / min).
"""
from __future__ import annotations

import numpy as np
import pytest

from model.arch import Geometry
from model.walker import FlatTables, LeafBatch, leaf_descs, walk_batch, walk_leaf

GEO = Geometry(4096, 48)
N_BIG = 10_000_000
SIZES = (1_000_000, N_BIG)
OA_BASE = 0x1_0000_0000


def _sparse(rng, aligned=False):
    n_pages = (64 << 30) // (2 << 20)                  # 32768: one page per 2 MiB
    va_base = 0x10_0000_0000
    pages = va_base + np.arange(n_pages, dtype=np.int64) * (2 << 20)
    if not aligned:
        pages += rng.integers(0, 512, n_pages) * 4096
    ft = FlatTables.from_leaves(GEO, 0x4000_0000, pages,
                                leaf_descs(GEO, OA_BASE + np.arange(n_pages) * 4096))
    pick = rng.integers(0, n_pages, N_BIG)
    va = (pages[pick] + rng.integers(0, 4096, N_BIG)).astype(np.uint64)
    oa = OA_BASE + pick * 4096 + (va.astype(np.int64) & 4095)
    return ft, va, oa


def _dense(rng):
    n_pages = (384 << 20) // 4096                      # 98304 pages, 192 leaf tables
    va_base = 0x7f00_0000_0000
    ft = FlatTables.dense(GEO, va_base, n_pages, OA_BASE)
    off = rng.integers(0, n_pages * 4096, N_BIG)
    va = (va_base + off).astype(np.uint64)
    return ft, va, OA_BASE + off


SHAPES = {"sparse": _sparse, "sparse0": lambda rng: _sparse(rng, aligned=True),
          "dense": _dense}


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request):
    rng = np.random.default_rng(2023)
    ft, va, oa = SHAPES[request.param](rng)
    return request.param, ft, va, oa


def _run(benchmark, fn, ft, va, rounds):
    result = benchmark.pedantic(fn, args=(ft, va), rounds=rounds, iterations=1,
                                warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        med = stats.stats.median
        benchmark.extra_info["walks_per_s"] = len(va) / med
        benchmark.extra_info["min_walks_per_s"] = len(va) / stats.stats.min
    benchmark.extra_info["n"] = len(va)
    benchmark.extra_info["tables"] = ft.n_tables
    return result


@pytest.mark.parametrize("n", SIZES)
def test_walk_leaf(benchmark, shape, n):
    name, ft, va, oa = shape
    benchmark.group = f"walk_leaf {name}"
    lb = _run(benchmark, walk_leaf, ft, va[:n], rounds=10 if n < N_BIG else 5)
    np.testing.assert_array_equal(lb.oa, oa[:n])


@pytest.mark.parametrize("n", SIZES)
def test_walk_leaf_reuse(benchmark, shape, n):
    """walk_leaf into preallocated outputs (out=): what an engine walking batch after batch
    pays; fresh 10^7-element outputs cost their page faults (kernel zeroing) each call."""
    name, ft, va, oa = shape
    benchmark.group = f"walk_leaf(out=) {name}"
    buf = LeafBatch(np.empty(n, np.int64), np.empty(n, np.int64), ft.row)
    lb = _run(benchmark, lambda ft, va: walk_leaf(ft, va, out=buf), ft, va[:n],
              rounds=10 if n < N_BIG else 5)
    np.testing.assert_array_equal(lb.oa, oa[:n])


@pytest.mark.parametrize("n", SIZES)
def test_walk_batch(benchmark, shape, n):
    name, ft, va, oa = shape
    benchmark.group = f"walk_batch {name}"
    wb = _run(benchmark, walk_batch, ft, va[:n], rounds=5 if n < N_BIG else 3)
    np.testing.assert_array_equal(wb.oa, oa[:n])
    assert (wb.leaf_level == 3).all()
