"""Long windows and large VMs at speed (issue 21): whole pre-copy migrations of warm 4 GiB
VMs, all four policies, with the numpy engine; and a 1 TiB VM over 0.1 s.  Run by hand:

    pytest bench/bench_long_window.py --benchmark-enable

* long_window_real: catalogue:sqlite-tpcc (a real program, its recorded window served again)
  under migration+numa at 25 Gbit/s, one whole migration (`until = "migrated"`, about 1.4 s
  of guest time, ~5e9 accesses).  Target: <= 30 s wall on a 2-core machine.
* long_window_default_bandwidth: the same at QEMU's default 128 MiB/s (>= 32 s of guest
  time, ~1e11 accesses).  Target: <= 120 s wall.
* long_window_synthetic: the realistic map's db case (sparse, 54000 regions) at 10 Gbit/s,
  one whole migration.  Target: <= 20 s.
* repeats: the same real program over 0.05 s with the repetitions that settle counted once
  (engine.REPEATS_ONCE, the default) and with every access run (the expanded path).
* vm_size: a warm zipf guest (1 Mi keys) under migration+numa over 0.1 s in a 4 GiB and a
  1 TiB VM: time and peak RSS of a fresh process (targets: <= 2 GiB, <= 3x the 4 GiB time).

extra_info: `guest_seconds`, `guest_seconds_per_wall_second` (median round), `accesses`,
`accesses_per_s`, `build_seconds` (making the workload: the catalogue's recording read, the
host schedule; not in the timed rounds) and, for vm_size, `peak_rss_bytes`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.catalog import build
from model import engine
from model.engine import run_trace
from model.policies import DEFAULT_ORDER

WARM_4G = {"ram_mb": "4096", "demand": "false", "warm_stage2": "true"}
DB = dict(WARM_4G, regions="54000", accesses="200000", write_percent="30", aging="none")
CASES = {
    "long_window_real": ("catalogue:sqlite-tpcc", WARM_4G, 25.0),
    "long_window_default_bandwidth": ("catalogue:sqlite-tpcc", WARM_4G, 0.0),
    "long_window_synthetic": ("sparse", DB, 10.0),
}


def _workload(name: str):
    wl, knobs, link = CASES[name]
    t = time.perf_counter()
    w = build(wl, dict(knobs), "migration+numa", {"migration": {"link_gbit_s": link}}, 1,
              None, until="migrated")
    return w, time.perf_counter() - t


def _report(benchmark, w, build_s: float) -> None:
    st = benchmark.stats.stats
    gs = float(w.meta["seconds"])
    benchmark.extra_info.update(guest_seconds=gs, accesses=len(w.trace),
                                events=len(w.trace.events), build_seconds=build_s,
                                guest_seconds_per_wall_second=gs / st.median,
                                accesses_per_s=len(w.trace) / st.median,
                                accesses_per_s_best=len(w.trace) / st.min)


@pytest.mark.parametrize("name", list(CASES))
def test_long_window(benchmark, name):
    w, build_s = _workload(name)
    benchmark.group = "long windows (one whole migration, 4 policies)"
    res = benchmark.pedantic(run_trace, args=(w.scenario, w.trace, DEFAULT_ORDER), rounds=3,
                             iterations=1)
    _report(benchmark, w, build_s)
    assert all(r.accesses == len(w.trace) for r in res.values())


@pytest.mark.parametrize("path", ["repeats_once", "expanded"])
def test_repeats(benchmark, path, monkeypatch):
    """The repetitions counted once against every access run, on 0.05 s of the real
    program (1.8e8 accesses) under migration+numa at 25 Gbit/s."""
    t = time.perf_counter()
    w = build("catalogue:sqlite-tpcc", dict(WARM_4G), "migration+numa",
              {"migration": {"link_gbit_s": 25.0}}, 1, 0.05)
    build_s = time.perf_counter() - t
    monkeypatch.setattr(engine, "REPEATS_ONCE", path == "repeats_once")
    benchmark.group = "repeated windows: counted once vs every access"
    benchmark.pedantic(run_trace, args=(w.scenario, w.trace, DEFAULT_ORDER), rounds=3,
                       iterations=1)
    _report(benchmark, w, build_s)


VM_SIZE = """
import json, sys, time
from bench.catalog import build
from model.engine import run_trace
knobs = {"keys": "1048576", "value_bytes": "1024", "operations": "100000", "demand": "false",
         "warm_stage2": "true", "ram_mb": sys.argv[1]}
w = build("zipf", knobs, "migration+numa", {}, 1, 0.1)
t = time.perf_counter()
run_trace(w.scenario, w.trace)
dt = time.perf_counter() - t
with open("/proc/self/status") as f:          # this process's own high-water mark
    hwm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM")]
print(json.dumps({"rss": hwm[0], "seconds": dt, "guest_seconds": w.meta["seconds"]}))
"""


# per guest page of the VM, measured (4 vs 16 GiB VMs, this benchmark): the engine's
# per-page, per-policy arrays (issue 21 item 4 is open: they are not yet ranges or bitmaps)
BYTES_PER_GUEST_PAGE = 85


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("ram_mb", [4096, 16384, 1048576], ids=["4GiB", "16GiB", "1TiB"])
def test_vm_size(benchmark, ram_mb):
    """Peak RSS and run time of a fresh process: a warm zipf guest in a VM of `ram_mb`.
    Skipped where the machine could not hold it (BYTES_PER_GUEST_PAGE)."""
    need = ram_mb * 256 * BYTES_PER_GUEST_PAGE
    if need > _mem_available() // 2:
        pytest.skip(f"a {ram_mb} MiB VM needs ~{need / 2**30:.0f} GiB here (~"
                    f"{BYTES_PER_GUEST_PAGE} bytes per guest page): more than half of the "
                    f"available memory")
    out = {}

    def run():
        p = subprocess.run([sys.executable, "-c", VM_SIZE, str(ram_mb)], capture_output=True,
                           text=True, check=True)
        out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    benchmark.group = "vm_size (warm zipf, migration+numa, 0.1 s)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(ram_mb=ram_mb, peak_rss_bytes=out["rss"],
                                run_seconds=out["seconds"],
                                guest_seconds=out["guest_seconds"],
                                guest_seconds_per_wall_second=out["guest_seconds"]
                                / out["seconds"])
