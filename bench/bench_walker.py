"""Throughput of the engine's stage-1 walker (model.engine_walk.walk_vas, the walk the numpy
engine's walk cache runs) on 10^6 and 10^7 VAs, 4K granule, 48-bit VA (4 levels), alone and
followed by the shared leaf rules (model.semantics: permission check and hardware-update
needs, on every walk's leaf).

* sparse (page-table heavy): one page per 2 MiB over 64 GiB of VA (32768 leaf tables, each
  with one valid entry at a random index); every access lands in one of them at random, so
  each touches its own leaf table (cache misses on the leaf level).
* sparse0: the same with every page at the start of its 2 MiB (leaf index 0 everywhere: the
  worst case for cache-set aliasing).
* dense (data heavy): 384 MiB mapped contiguously; random VAs inside (192 leaf tables).

Run: .venv/bin/python -m pytest bench/bench_walker.py --benchmark-enable -q
extra_info["walks_per_s"] = n / median (and min_walks_per_s = n / min).
"""
from __future__ import annotations

import numpy as np
import pytest

from model.engine_state import DescMemory, SlotIndex
from model.stage1 import build_tables
from model.engine_walk import walk_vas
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario
from model.semantics import leaf_bits, leaf_hw_update, s1_leaf_fault

N_BIG = 10_000_000
SIZES = (1_000_000, N_BIG)
OA_BASE = 0x1_0000_0000
PT_IPA = 0x4000_0000
PT_PAGES = 40_000                                      # > 32768 leaf tables + the rest


class Tables:
    """Built tables and what walk_vas needs to read them."""

    def __init__(self, mappings, data_pages: int):
        scn = Scenario("bench-walker", Machine(4096, 48, 2, False, "on-change", False),
                       Guest(True, True, False, "pt"),
                       (Memslot("pt", PT_IPA, PT_PAGES), Memslot("data", OA_BASE, data_pages)),
                       mappings=tuple(mappings))
        gt = build_tables(scn)
        self.geo, self.root, self.n_tables = gt.geometry, gt.root, gt.tables_used
        addr = np.array(sorted(gt.descriptors), dtype=np.int64)
        vals = np.array([gt.descriptors[a] for a in addr.tolist()], dtype=np.uint64)
        # the engine's page-table memory (engine_state.DescMemory: O(1) descriptor reads)
        self.mem = DescMemory(PT_PAGES, (addr - PT_IPA) >> 3, vals, PT_IPA, self.geo.oa_mask)
        self.idx = SlotIndex(scn.memslots)

    def walk(self, va: np.ndarray):
        return walk_vas(self.geo, self.idx, PT_IPA, PT_PAGES * 512, self.mem.read_v,
                        self.root, va, self.mem)


def _sparse(rng, aligned=False):
    n_pages = (64 << 30) // (2 << 20)                  # 32768: one page per 2 MiB
    va_base = 0x10_0000_0000
    pages = va_base + np.arange(n_pages, dtype=np.int64) * (2 << 20)
    if not aligned:
        pages += rng.integers(0, 512, n_pages) * 4096
    t = Tables([Mapping(int(p), OA_BASE + k * 4096, 1) for k, p in enumerate(pages.tolist())],
               n_pages)
    pick = rng.integers(0, n_pages, N_BIG)
    va = pages[pick] + rng.integers(0, 4096, N_BIG)
    return t, va, pick                                 # output page: data slot index `pick`


def _dense(rng):
    n_pages = (384 << 20) // 4096                      # 98304 pages, 192 leaf tables
    va_base = 0x7f00_0000_0000
    t = Tables([Mapping(va_base, OA_BASE, n_pages)], n_pages)
    off = rng.integers(0, n_pages * 4096, N_BIG)
    return t, va_base + off, off >> 12


SHAPES = {"sparse": _sparse, "sparse0": lambda rng: _sparse(rng, aligned=True),
          "dense": _dense}


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request):
    rng = np.random.default_rng(2023)
    t, va, page = SHAPES[request.param](rng)
    # the data slot comes after the page-table slot in the slot index
    return request.param, t, va, page + t.idx.start_of["data"]


def _run(benchmark, fn, t, va, rounds):
    result = benchmark.pedantic(fn, args=(va,), rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["walks_per_s"] = len(va) / stats.stats.median
        benchmark.extra_info["min_walks_per_s"] = len(va) / stats.stats.min
    benchmark.extra_info["n"] = len(va)
    benchmark.extra_info["tables"] = t.n_tables
    return result


@pytest.mark.parametrize("n", SIZES)
def test_walk(benchmark, shape, n):
    name, t, va, page = shape
    benchmark.group = f"walk_vas {name}"
    w = _run(benchmark, t.walk, t, va[:n], rounds=5 if n < N_BIG else 3)
    np.testing.assert_array_equal(w.dp, page[:n])
    assert (w.level == 3).all()


@pytest.mark.parametrize("n", SIZES)
def test_walk_and_leaf_rules(benchmark, shape, n):
    """The walk, then the permission check and the hardware-update needs of a store through
    every leaf (what the engine derives per walk)."""
    name, t, va, page = shape
    benchmark.group = f"walk_vas + leaf rules {name}"

    def run(va):
        w = t.walk(va)
        af, ap2, dbm, pxn = leaf_bits(w.leaf)
        fault = s1_leaf_fault(af, ap2, dbm, pxn, False, True, True, True)
        return w, fault, leaf_hw_update(af, ap2, dbm, True, True)
    w, fault, (set_af, clear_ap2) = _run(benchmark, run, t, va[:n],
                                          rounds=5 if n < N_BIG else 3)
    np.testing.assert_array_equal(w.dp, page[:n])
    assert not fault.any() and not set_af.any() and not clear_ap2.any()   # dirty writable
