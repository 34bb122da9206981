"""Converter throughput (workloads/trace_dir.py, `ptwbench convert`): a lackey text of 4·10^6
lines shaped like a real program's (a code loop over text pages, loads over a 8 MiB heap,
stack stores, some modifies), converted streamed into a trace directory — both passes, the
`linux` profile's layout and fault attempts included.  Target (issue 13): >= 3 M lines/s.

Run: .venv/bin/python -m pytest bench/bench_convert.py --benchmark-enable -q
extra_info["lines_per_s"] = lines / median.
"""
from __future__ import annotations

import itertools
import shutil

import numpy as np

from workloads.trace_dir import convert_file

N_INSTR = 2_000_000


def _lackey(path, n: int, seed: int = 1) -> int:
    """Write a program-like lackey text; returns its line count."""
    r = np.random.default_rng(seed)
    pc = 0x400000 + (np.arange(n) * 4) % 0x30000
    u = r.random(n)
    heap = 0x5a0000 + r.integers(0, 1 << 20, n) * 8
    stack = 0x1ffeff0000 + r.integers(0, 0x800, n) * 8
    lines = 0
    with open(path, "w") as f:
        for a in range(0, n, 100_000):
            out = []
            for i in range(a, min(n, a + 100_000)):
                out.append(f"I  {pc[i]:08x},4")
                if u[i] < 0.45:
                    out.append(f" L {heap[i]:x},8")
                elif u[i] < 0.75:
                    out.append(f" S {stack[i]:x},8")
                elif u[i] < 0.8:
                    out.append(f" M {heap[i]:x},4")
            f.write("\n".join(out) + "\n")
            lines += len(out)
    return lines


def test_convert_lackey(benchmark, tmp_path):
    src = tmp_path / "prog.lackey"
    lines = _lackey(src, N_INSTR)
    count = itertools.count()

    def run():
        d = tmp_path / f"t{next(count)}"
        convert_file(str(src), d)
        shutil.rmtree(d)
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["lines"] = lines
    benchmark.extra_info["lines_per_s"] = lines / benchmark.stats.stats.median
