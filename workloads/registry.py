"""The workload registry: every generator and host scenario by name, with knobs and defaults.

    make(name, seed=0, **knobs)            -> Workload   (generator knobs + linux profile knobs;
                                                          name "import:PATH" imports a trace
                                                          file: knobs format, limit + profile)
    apply_host(workload, name, **knobs)    -> Workload
    build(name, seed=0, host=None, host_knobs=None, **knobs)
                                           -> Workload   (a generator under a host scenario)

Knob values may be given as strings (the CLI's `k=v`); they are checked against the knob's
type and choices.  `ptwbench workloads` prints this registry.
"""
from __future__ import annotations

import os
from dataclasses import asdict

from . import data, host, ptheavy  # noqa: F401  (register the generators and host scenarios)
from . import host_reclaim, host_timed  # noqa: F401  (the calibrated host scenarios)
from .base import GENERATORS, HOST_SCENARIOS, Entry, Knob, Workload, WorkloadError
from .clock import ACCESS_TIME, note_aging, with_seconds
from .footprint import check_footprint
from .importers import FORMATS, import_trace
from .linux import (PROFILE_KNOB_NAMES, PROFILE_KNOBS, aging_period_ms, coerce_profile_knobs,
                    make_profile)

# profile knobs a host scenario needs (firmware tables are built once and never stored to)
HOST_PROFILE = {"firmware": {"demand": False, "age_period": 0}}
# generators whose guest always stores to its page tables (never usable with firmware)
STORES_PAGE_TABLES = frozenset({"mmap_churn", "fork"})


def generator_entry(name: str) -> Entry:
    if name not in GENERATORS:
        raise WorkloadError(f"unknown workload {name!r} (one of {', '.join(GENERATORS)})")
    return GENERATORS[name]


def host_entry(name: str) -> Entry:
    if name not in HOST_SCENARIOS:
        raise WorkloadError(f"unknown host scenario {name!r} "
                            f"(one of {', '.join(HOST_SCENARIOS)})")
    return HOST_SCENARIOS[name]


IMPORT_KNOBS = (Knob("format", "", "trace format: lackey, csv, npz ('': by extension)",
                     ("",) + FORMATS),
                Knob("limit", 0, "import at most this many accesses (0: all)"))


def _import(path: str, knobs: dict) -> Workload:
    own = {k: v for k, v in knobs.items() if k not in PROFILE_KNOB_NAMES}
    prof = {k: v for k, v in knobs.items() if k in PROFILE_KNOB_NAMES}
    e = Entry("import", None, "", IMPORT_KNOBS)
    v = e.resolve(own)
    wl = import_trace(path, v["format"] or None, limit=v["limit"] or None, **prof)
    wl.meta["profile"] = asdict(make_profile(prof, "import"))
    return wl


ACCESS_NS_KNOB = Knob("access_ns", 0.0, "guest time one access stands for, ns (0: the "
                     "generator's own, workloads/clock.py)", lo=0.0, hi=1e9)


def _clock_ns(name: str) -> float:
    """The time per access of a generator, or of a catalogue entry's or compact file's
    recording, or an import's default (workloads/clock.py access_time: the same fallbacks);
    0: not known before the workload is built."""
    if name in ACCESS_TIME:
        return ACCESS_TIME[name].ns
    if name.startswith("catalogue:"):
        from .catalogue import index, parse
        entry = index().get(parse(name.split(":", 1)[1])[0], {})
        return float(entry.get("ns_per_access", 0.0))
    if name.startswith("compact:"):
        from .compact import read_meta
        tpa = read_meta(name.split(":", 1)[1]).get("time_per_access") or {}
        return float(tpa.get("ns_per_access") or ACCESS_TIME["import"].ns)
    if name.startswith("import:"):
        return ACCESS_TIME["import"].ns
    return 0.0


def make(name: str, seed: int = 0, **knobs) -> Workload:
    ns = ACCESS_NS_KNOB.coerce(knobs.pop("access_ns", 0.0), name)
    prof = coerce_profile_knobs({k: v for k, v in knobs.items() if k in PROFILE_KNOB_NAMES},
                                name)
    ms = aging_period_ms(prof) if not name.startswith("trace:") else 0.0
    if ms:
        # aging in guest time (age_period_ms or the regime's, workloads/aging.py): the
        # period in accesses on this workload's clock
        per_ns = ns or _clock_ns(name)
        if not per_ns:
            raise WorkloadError(f"{name}: age_period_ms needs a time per access (knob "
                                f"access_ns)")
        knobs["age_period"] = max(1, round(ms * 1e6 / per_ns))
    wl = _make(name, seed, **knobs)
    if ms:
        wl.meta["aging_period_ms"] = ms
    if ns:
        wl.meta["access_ns"] = ns
        wl.meta["access_ns_basis"] = "set by the knob access_ns"
    return wl


def _compact(path: str, knobs: dict, name: str | None = None) -> Workload:
    """`compact:FILE` (workloads/compact.py): laid out now with the `linux` profile's knobs;
    its clock is the recording's (meta time_per_access)."""
    from .compact import read_meta
    own = {k: v for k, v in knobs.items() if k not in PROFILE_KNOB_NAMES}
    if own:
        raise WorkloadError(f"compact:{path}: unknown knob(s) {', '.join(sorted(own))} "
                            f"(profile knobs only: {', '.join(sorted(PROFILE_KNOB_NAMES))})")
    cmeta = read_meta(path)
    wl = import_trace(path, "compact", name=name or f"compact:{os.path.basename(path)}",
                      **knobs)
    wl.meta.update(generator="compact", profile=asdict(make_profile(knobs, "compact")),
                   time_per_access=cmeta.get("time_per_access"),
                   recording={k: cmeta.get(k) for k in ("source", "command", "accesses",
                                                        "runs", "guest_instrs")})
    return wl


def _make(name: str, seed: int = 0, **knobs) -> Workload:
    if name.startswith("import:"):
        return _import(name.split(":", 1)[1], knobs)
    if name.startswith("compact:"):                # the compact form (issue 13)
        return _compact(name.split(":", 1)[1], knobs)
    if name.startswith("catalogue:"):              # a shipped real program (issue 13)
        from .catalogue import load as load_entry
        return load_entry(name.split(":", 1)[1], knobs)
    if name.startswith("trace:"):                  # a converted trace directory (issue 13)
        from .trace_dir import load
        if knobs:
            raise WorkloadError(f"{name}: its layout was fixed by convert/record; knobs "
                                f"{', '.join(sorted(knobs))} are not accepted here")
        return load(name.split(":", 1)[1])
    e = generator_entry(name)
    prof = {k: v for k, v in knobs.items() if k in PROFILE_KNOB_NAMES}
    own = {k: v for k, v in knobs.items() if k not in PROFILE_KNOB_NAMES}
    profile = make_profile(prof, name)
    resolved = e.resolve(own)
    check_footprint(name, resolved, profile.ram_mb)     # before anything is built
    wl = e.func(int(seed), profile, **resolved)
    # every run records its generator, seed and knob values; generators add derived facts
    wl.meta = {"generator": name, "seed": int(seed), **resolved, **wl.meta,
               "profile": asdict(profile)}
    return wl


def apply_host(wl: Workload, name: str, **knobs) -> Workload:
    e = host_entry(name)
    return e.func(wl, **e.resolve(knobs))


def compatible(generator: str, host_name: str | None) -> bool:
    return not (host_name == "firmware" and generator in STORES_PAGE_TABLES)


def build(name: str, seed: int = 0, host_name: str | None = None,
          host_knobs: dict | None = None, seconds=None, **knobs) -> Workload:
    """Generator `name` under host scenario `host_name` (None: none), with the profile knobs
    the host scenario requires; `seconds`: sized to that much guest time first
    (workloads/clock.py), so that the host's events cover the whole window — a number, or a
    function of the built workload (a window as long as its migration needs)."""
    if host_name is not None:
        host_entry(host_name)
        if not compatible(name, host_name):
            raise WorkloadError(f"{name}: cannot run under {host_name} (the guest stores to "
                                f"its page tables)")
        knobs = {**knobs, **HOST_PROFILE.get(host_name, {})}
    wl = make(name, seed, **knobs)
    if callable(seconds):
        seconds = seconds(wl)
    if seconds is not None:
        wl = with_seconds(wl, seconds)
    else:
        note_aging(wl)
    if host_name is not None:
        wl = apply_host(wl, host_name, **(host_knobs or {}))
    return wl


__all__ = ["GENERATORS", "HOST_SCENARIOS", "PROFILE_KNOBS", "IMPORT_KNOBS", "make", "apply_host", "build",
           "compatible", "generator_entry", "host_entry"]
