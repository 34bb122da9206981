"""The README's regression workflow (`pytest bench/ --benchmark-enable ...`) must collect every
benchmark: bench_*.py files are test modules by the pyproject's `python_files`, and the README
promises at least 20 benchmarks.  Fails if the pattern or a benchmark module's import breaks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_benchmark_command_collects_every_benchmark():
    out = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--benchmark-enable"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line for line in out.stdout.splitlines() if line.startswith("bench/") and "::" in line]
    per_file = {}
    for i in ids:
        f = i.split("::", 1)[0]
        per_file[f] = per_file.get(f, 0) + 1
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("bench_*.py"))
    assert sorted(per_file) == modules, out.stdout          # every benchmark module collected
    assert len(ids) >= 20, out.stdout
