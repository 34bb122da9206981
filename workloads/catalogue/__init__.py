"""The catalogue of real programs (issue 13 item 5): programs recorded with valgrind lackey on
Debian 12, shipped in the compact form (workloads/compact.py), run as `catalogue:NAME`.

Each entry is a recipe (`RECIPES`: the command, the Debian packages it runs, the window of
the recording kept, what real guest workload it stands for) and a recording
(`NAME.ptwc` beside this file, with `catalogue.json`: the package versions, the size, the
accesses, the guest instructions and the time per access the recording implies for the
calibrated clock, workloads/clock.py).  Re-record with

    python -m workloads.catalogue record [NAME ...]        (or workloads/catalogue/record.sh)

which needs valgrind and the packages; running the catalogue needs neither.

A window (`skip`, `limit`) keeps a program's steady state rather than its start-up (the
dynamic loader, the interpreter's or compiler's initialisation); the clock of a window is its
instruction fetches (one lackey `I` line per guest instruction: workloads/trace_dir.py
LackeyWindow) x ASSUMED_CPI / ASSUMED_GHZ.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..base import Workload, WorkloadError

HERE = Path(__file__).resolve().parent
INDEX = HERE / "catalogue.json"


@dataclass(frozen=True)
class Recipe:
    name: str
    command: tuple[str, ...]         # {here}: this directory; {tmp}: a scratch directory
    packages: tuple[str, ...]        # Debian packages whose versions are recorded
    skip: int                        # accesses left out at the start
    limit: int                       # accesses kept
    stands_for: str
    setup: tuple[str, ...] = ()      # run first (stdout -> {tmp}/input), same placeholders


RECIPES = {r.name: r for r in (
    Recipe("sqlite-tpcc",
           ("/usr/bin/sqlite3", ":memory:", ".read {tmp}/input"),
           ("sqlite3", "libsqlite3-0"), 20_000_000, 4_000_000,
           "an OLTP database server (PostgreSQL/MySQL-like guest): TPC-C-like new-order and "
           "payment transactions on an in-memory SQLite database (B-tree lookups, row "
           "updates, index inserts, journal)",
           setup=("/usr/bin/python3", "-S", "-E", "{here}/tpcc.py")),
    Recipe("python-json",
           ("/usr/bin/python3", "-S", "-E", "{here}/pyjson.py"),
           ("python3.11-minimal", "libpython3.11-stdlib"), 30_000_000, 4_000_000,
           "an interpreted web/API service (a Python or Node backend): CPython encoding and "
           "decoding JSON, building dictionaries and sorting (allocator churn, hash tables, "
           "reference counting)"),
    Recipe("gcc-compile",
           ("/usr/bin/gcc", "-O2", "-S", "{here}/hashmap.c", "-o", "/dev/null"),
           ("gcc-12", "cpp-12", "libc6"), 20_000_000, 4_000_000,
           "a build server / CI guest: gcc -O2 compiling a C module (cc1's parser, GIMPLE "
           "and RTL passes: pointer-heavy trees, obstack allocation)"),
)}


def index() -> dict:
    try:
        return json.loads(INDEX.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise WorkloadError(f"{INDEX}: unreadable: {e}") from None


def names() -> list[str]:
    return sorted(RECIPES)


def parse(spec: str) -> tuple[str, dict]:
    """`NAME` or `NAME,K=V,...` (profile knobs in the name, for specs whose knob tables take
    generators only: `catalogue:sqlite-tpcc,demand=false,ram_mb=4096`)."""
    name, *kvs = spec.split(",")
    knobs = {}
    for kv in kvs:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip() or k.strip() in knobs:
            raise WorkloadError(f"catalogue:{spec}: {kv!r} is not K=V (or K is given twice)")
        knobs[k.strip()] = v.strip()
    return name, knobs


def path_of(name: str) -> Path:
    name = parse(name)[0]
    if name not in RECIPES:
        raise WorkloadError(f"unknown catalogue entry {name!r} (one of {', '.join(names())})")
    p = HERE / f"{name}.ptwc"
    if not p.is_file():
        raise WorkloadError(f"catalogue:{name}: {p} is missing (re-record it: python -m "
                            f"workloads.catalogue record {name})")
    return p


def load(name: str, knobs: dict) -> Workload:
    """`catalogue:NAME[,K=V...]` with the `linux` profile's knobs (as compact:FILE)."""
    from ..registry import _compact
    spec = name
    name, own = parse(spec)
    timed = sorted({"age_period_ms", "aging"} & set(own))
    if timed:
        raise WorkloadError(f"catalogue:{spec}: give {timed[0]} as a knob (a knob table "
                            f"or --knob), not in the name: it is converted on the clock")
    both = set(own) & set(knobs)
    if both:
        raise WorkloadError(f"catalogue:{spec}: knob {sorted(both)[0]} given twice")
    p = path_of(name)
    wl = _compact(str(p), {**own, **knobs}, name=f"catalogue:{spec}")
    r = RECIPES[name]
    wl.meta.update(generator="catalogue", catalogue=name, stands_for=r.stands_for,
                   recipe=index().get(name, {}).get("recipe"))
    return wl


__all__ = ["RECIPES", "Recipe", "index", "load", "names", "path_of"]
