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


# --until: the host scenario whose whole run the window covers, its window bound
# (workloads/host_timed.py) and the meta key of the time the run completes
UNTIL = {"migrated": ("migration", "migration_bound_s", "switchover_s",
                      "the migration did not converge within {s:.3g} s of guest time (three "
                      "first passes): the guest dirties memory faster than the link sends it"),
         "snapshotted": ("bg_snapshot", "snapshot_bound_s", "snapshot_done_s",
                         "the snapshot did not complete within {s:.3g} s of guest time")}


def build(workload: str, knobs: dict | None = None, host: str = "none",
          host_knobs: dict | None = None, seed: int = 0, seconds: float | None = None,
          until: str | None = None) -> Workload:
    """One workload under one host scenario.  Raises WorkloadError on bad names/knobs.
    `until = "migrated"`: the window is one whole pre-copy migration (it ends at the
    switch-over, whose last sync ends every dirty round) instead of `seconds`;
    "snapshotted": one whole background snapshot (it ends when the last page is saved).
    `meta["build_seconds"]`: the time spent generating, importing or parsing it."""
    t0 = time.perf_counter()
    if until is not None:
        if until not in UNTIL:
            raise WorkloadError(f"--until: {until!r} is not one of {', '.join(UNTIL)}")
        if seconds is not None:
            raise WorkloadError("--until and --seconds: give one of them, not both")
    w = _build(workload, knobs, host, host_knobs, seed, seconds, until)
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


def _build(workload, knobs, host, host_knobs, seed, seconds=None, until=None) -> Workload:
    if workload.startswith("micro:") and (seconds is not None or until is not None):
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
    if until is not None:
        seconds = _until_window(until, hosts, per, workload)
    w = reg.build(workload, seed=seed, host_name=hosts[0] if hosts else None,
                  host_knobs=per(hosts[0]) if hosts else {}, seconds=seconds,
                  **(knobs or {}))
    for h in hosts[1:]:
        w = reg.apply_host(w, h, **per(h))
    return _cut_at_end(w, until) if until is not None else w


def _until_window(until: str, hosts: list[str], per, workload: str):
    """The window `--until` builds first: long enough for the host's whole run (its bound,
    workloads/host_timed.py), cut where the run completes later."""
    import workloads.host_timed as timed
    host, bound, _key, _why = UNTIL[until]
    if host not in hosts:
        raise WorkloadError(f"{workload}: --until {until} needs the {host} host scenario "
                            f"(e.g. --host {host}+numa)")
    knobs = registry().host_entry(host).resolve(per(host))
    return lambda wl: getattr(timed, bound)(wl, **knobs)


def _cut_at_end(w: Workload, until: str) -> Workload:
    """`w` up to the moment its host's run completes (the events at that position, e.g. a
    migration's final sync, included)."""
    from workloads.clock import access_time, cut
    host, _bound, key, why = UNTIL[until]
    run = next(h for h in w.meta["host"] if h["scenario"] == host)
    if run.get(key) is None:
        raise WorkloadError(f"{w.name}: " + why.format(s=w.meta.get("seconds", 0)))
    n = round(run[key] * 1e9 / access_time(w).ns)
    w = cut(w, n, run[key])
    w.meta["until"] = until
    return w
