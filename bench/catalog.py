"""Building workloads for runs: the generator registry (workloads/), host scenarios, and
the shipped micro-scenarios as tiny workloads."""
from __future__ import annotations

import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from model.scenario import ScenarioError
from model.scenario_io import load_scenario
from model.trace import trace_from_scenario
from workloads.base import Workload, WorkloadError


def scenario_files() -> list[Path]:
    d = resources.files("workloads") / "scenarios"
    return sorted(Path(str(p)) for p in d.iterdir() if p.name.endswith(".toml"))


def micro_workload(path: Path) -> Workload:
    """A shipped micro-scenario as a workload: its steps become the trace; its host events
    are part of it (host = "scenario")."""
    scn = load_scenario(path)
    return Workload(f"micro:{path.stem}", replace(scn, steps=()), trace_from_scenario(scn),
                    {"generator": "micro", "file": path.name})


def registry():
    from workloads import registry as reg          # imported late: it registers every generator
    return reg


def build(workload: str, knobs: dict | None = None, host: str = "none",
          host_knobs: dict | None = None, seed: int = 0, seconds: float | None = None) -> Workload:
    """One workload under one host scenario.  Raises WorkloadError on bad names/knobs.
    `meta["build_seconds"]`: the time spent generating, importing or parsing it."""
    t0 = time.perf_counter()
    w = _build(workload, knobs, host, host_knobs, seed, seconds)
    w.meta["build_seconds"] = time.perf_counter() - t0
    return w


def micro_path(name: str) -> Path:
    """`micro:NAME` (a shipped scenario) or `micro:PATH` (a scenario file of the user's)."""
    for p in scenario_files():
        if p.stem == name:
            return p
    if name.endswith((".toml", ".json")) or "/" in name:
        if not Path(name).is_file():
            raise WorkloadError(f"micro:{name}: no such scenario file")
        return Path(name)
    raise WorkloadError(f"unknown micro-scenario {name!r} (shipped: "
                        f"{', '.join(p.stem for p in scenario_files())}; or micro:PATH)")


def _build(workload, knobs, host, host_knobs, seed, seconds=None) -> Workload:
    if workload.startswith("micro:") and seconds is not None:
        raise WorkloadError(f"{workload}: micro-scenarios are steps, not guest time; "
                            f"--seconds does not apply")
    if workload.startswith("micro:"):
        p = micro_path(workload.split(":", 1)[1])
        if host not in ("none", "scenario"):
            raise WorkloadError(f"{workload}: micro-scenarios carry their own host "
                                f"events; host must be 'scenario'")
        if knobs:
            raise WorkloadError(f"{workload}: micro-scenarios take no knobs")
        try:
            return micro_workload(p)
        except ScenarioError as e:
            raise WorkloadError(str(e)) from None
    reg = registry()
    hosts = [] if host == "none" else host.split("+")
    hk = host_knobs or {}
    # several host scenarios chain ("precopy+pressure": reclaim during a migration); each
    # takes its own knobs: host_knobs = {"precopy": {...}, "pressure": {...}} when chained
    per = (lambda h: hk.get(h, {})) if len(hosts) > 1 else (lambda h: hk)
    for h, v in hk.items() if len(hosts) > 1 else ():
        if h not in hosts or not isinstance(v, dict):
            raise WorkloadError(f"host knobs {h!r}: with chained hosts ({host}) each host's "
                                f"knobs go under its name")
    w = reg.build(workload, seed=seed, host_name=hosts[0] if hosts else None,
                  host_knobs=per(hosts[0]) if hosts else {}, seconds=seconds,
                  **(knobs or {}))
    for h in hosts[1:]:
        w = reg.apply_host(w, h, **per(h))
    return w
