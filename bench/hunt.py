"""`ptwbench hunt`: an Optuna search of the calibrated configuration space for the
configuration where ha-promote pays (issue 24).

One trial is one configuration of the realistic map's shape — a warm guest
(`demand = false`, `warm_stage2 = true`) of `ram_mb` MB under one whole pre-copy migration
with NUMA balancing at the kernel's rate (`host = "migration+numa"`, `until = "migrated"`) —
run as `ptwbench run ... --until migrated` runs it: `bench.catalog.build`, then
`bench.runner.run_workload`, then `bench.verdict.verdict_table`.  The objective is the case's
`vcpu_share` (ha-promote's net saving over fix in the whole migration, as a share of all the
guest's vCPUs' time); q, q*, exits saved, false dirty pages and the net ms per migration are
recorded per trial (trial user attributes).

The space (`KNOBS`): every knob a challenger could turn, each with the range its source
supports (docs/calibration.md rows, kernel defaults; ASSUMPTION where nothing was
published) and, apart, the wider range the `stress` space allows.  docs/hunt.md lists them.
A TOML space file narrows or replaces it (`load_space_text`); a range beyond the calibrated
one needs `stress = true` and the whole hunt is then labelled stress.

The search (`run_hunt`): ask-and-tell on an Optuna study (TPE, seeded) kept in a relational
database (SQLite in the hunt's directory by default): the process that runs the hunt asks
for every trial and tells every result, so `trials` is the study's exact total, a resumed
hunt runs only the missing ones, and the evaluations (`evaluate`, a plain dict in, a plain
dict out) run in-process, on a local process pool or on a dask.distributed cluster.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import socket
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

HOST = "migration+numa"             # the realistic map's host: a migration with NUMA
UNTIL = "migrated"                  # one whole migration (bench.catalog.build)
CASE_SEED = 1                       # the beer's seed: every trial's workload seed
BASE_KNOBS = {"demand": False, "warm_stage2": True}      # a warm guest (the realistic map)
GUESTS = ("zipf", "sparse", "shared_db", "gc")            # the realistic map's generators
# ... and its real programs (workloads/catalogue/: recorded traces, no size knobs)
PROGRAMS = ("catalogue:sqlite-tpcc", "catalogue:python-json", "catalogue:gcc-compile")
DEFAULT_TRIAL_FN = "bench.hunt:evaluate"
OBJECTIVE = "vcpu_share"
METRICS = ("vcpu_share", "net_ms_per_migration", "q_measured", "q_break_even",
           "exits_saved", "false_dirty_extra", "matters", "net_us", "run_share",
           "rounds_complete", "link_mb_s", "migration_seconds", "pt_share")


class HuntError(ValueError):
    """A bad space file, storage or study: one line, exit 2, nothing written."""


# ---- the knobs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One knob of the space: `name` is a guest profile knob (`ram_mb`), a generator's
    knob (`sparse.regions`: only when that generator runs), a host knob
    (`migration.link_gbit_s`, `numa.scan_rate`) or `workload` / `variant`.  `lo`..`hi` or
    `choices`: the calibrated range (realistic); `stress_*`: the widest the hunt accepts."""
    name: str
    kind: str                           # "int", "float" or "cat"
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    source: str = ""
    log: bool = False
    stress_lo: float | None = None
    stress_hi: float | None = None
    stress_choices: tuple = ()
    when: tuple = ()                    # (knob, value): sampled only when knob == value
    default_space: bool = True          # in the shipped realistic/stress spaces

    def calibrated(self) -> tuple:
        return self.choices if self.kind == "cat" else (self.lo, self.hi)

    def widest(self) -> tuple:
        if self.kind == "cat":
            return self.stress_choices or self.choices
        return (self.lo if self.stress_lo is None else self.stress_lo,
                self.hi if self.stress_hi is None else self.stress_hi)


def _k(name, kind, rng, source, stress=None, **kw) -> Knob:
    if kind == "cat":
        return Knob(name, kind, choices=tuple(rng), source=source,
                    stress_choices=tuple(stress or ()), **kw)
    lo, hi = rng
    slo, shi = stress if stress else (None, None)
    return Knob(name, kind, lo, hi, source=source, stress_lo=slo, stress_hi=shi, **kw)


_G = "workload"
KNOBS: dict[str, Knob] = {k.name: k for k in (
    _k("workload", "cat", GUESTS + PROGRAMS, "the realistic map's guests "
       "(bench/beer_default.toml): key-value store, sparse database, shared-buffer database, "
       "JVM heap, and the catalogue's recorded programs (SQLite TPC-C-like, CPython JSON, "
       "gcc)"),
    _k("variant", "cat", ("default",), "default hardware only in the realistic space; "
       "stress adds the seed thread's readings (bench/variants.py)",
       ("default", "hw-always", "haft", "af-only")),
    _k("cpu", "cat", ("neoverse-n1",), "the default guest CPU (Armv8.2 server core with "
       "HAFDBS); stress adds the other profiles of workloads/linux.py",
       ("neoverse-n1", "haft", "ampere1", "cortex-a72", "cortex-a55", "cortex-a510")),
    _k("ram_mb", "int", (4096, 8192), "ASSUMPTION: 4-8 GiB VMs (the map's 4 GiB and twice "
       "it; calibration numa_vm_ram_mb 1024-65536), bounded by trial time", (1024, 16384)),
    _k("layout", "cat", ("split", "shared"), "workloads/linux.py layout: tables in their own "
       "slot, or interleaved with data in one slot as in a real guest's RAM"),
    _k("backing", "cat", ("anon", "anon_thp", "hugetlb", "shmem"), "QEMU memory backends "
       "(KVM selftests -s): anonymous, THP, hugetlbfs, shared memory"),
    _k("aging", "cat", ("none", "damon", "mglru"), "workloads/aging.py regimes: none, DAMON "
       "(mm/damon/core.c defaults), MGLRU under sustained reclaim (mm/vmscan.c)"),
    _k("age_period_ms", "float", (100.0, 10000.0), "ASSUMPTION: one MGLRU walk per "
       "0.1-10 s under sustained reclaim (workloads/aging.py MGLRU_PERIOD_RANGE_MS)",
       (20.0, 60000.0), log=True, when=("aging", "mglru")),
    _k("damon_regions", "int", (10, 1000), "mm/damon/core.c damon_new_ctx: min_nr_regions "
       "10 .. max_nr_regions 1000", log=True, when=("aging", "damon")),
    _k("zipf.keys", "int", (65536, 1048576), "ASSUMPTION: 64 Ki-1 Mi keys (the map's "
       "1 Mi), bounded by trial time", (4096, 4194304), log=True, when=(_G, "zipf")),
    _k("zipf.value_bytes", "cat", (256, 512, 1024), "YCSB's 1 KB record (10 fields x "
       "100 B) and smaller memcached values; ASSUMPTION 256-1024 B (multiples of 8: the "
       "generator's rule)", (64, 128, 256, 512, 1024, 2048, 4096), when=(_G, "zipf")),
    _k("zipf.operations", "int", (20000, 100000), "ASSUMPTION: operations per repeated "
       "trace (the window repeats it), bounded by trial time", (2048, 400000), log=True,
       when=(_G, "zipf")),
    _k("zipf.s", "float", (0.5, 0.99), "YCSB's Zipfian constant 0.99; less skewed below "
       "(ASSUMPTION 0.5)", (0.1, 1.5), when=(_G, "zipf")),
    _k("zipf.read_percent", "int", (50, 95), "YCSB workloads A (50 % reads) to B (95 %)",
       (0, 100), when=(_G, "zipf")),
    _k("zipf.mapping", "cat", ("anon", "shmem", "file"), "malloc heap, shared memory, "
       "LMDB-like MAP_SHARED file (workloads/generators)", when=(_G, "zipf")),
    _k("sparse.regions", "int", (1024, 54000), "page tables from 0.1 % of a 4 GiB VM to the "
       "map's 5.2 % (one table page per 2 MiB region); the published 18.6 % (calibration "
       "pt_sparse_server_share) only in stress: trial time", (128, 190000), log=True,
       when=(_G, "sparse")),
    _k("sparse.accesses", "int", (50000, 200000), "ASSUMPTION: accesses per repeated trace, "
       "bounded by trial time", (2048, 800000), log=True, when=(_G, "sparse")),
    _k("sparse.write_percent", "int", (0, 50), "ASSUMPTION: 0-50 % writes (the map's 30)",
       (0, 100), when=(_G, "sparse")),
    _k("shared_db.processes", "int", (16, 200), "PostgreSQL max_connections (default 100); "
       "ASSUMPTION 16-200 backends", (1, 1500), log=True, when=(_G, "shared_db")),
    _k("shared_db.buffer_mb", "int", (512, 2048), "PostgreSQL shared_buffers: 25 % of RAM "
       "is the documented start; ASSUMPTION 512-2048 MB in a 4-8 GiB VM", (64, 8192),
       log=True, when=(_G, "shared_db")),
    _k("shared_db.pages_per_process", "int", (256, 4096), "ASSUMPTION: buffer pages a "
       "backend has touched (page tables 5-20 % of RAM at the map's size)", (16, 16384),
       log=True, when=(_G, "shared_db")),
    _k("shared_db.accesses", "int", (50000, 200000), "ASSUMPTION: accesses per repeated "
       "trace, bounded by trial time", (2048, 800000), log=True, when=(_G, "shared_db")),
    _k("shared_db.write_percent", "int", (5, 50), "ASSUMPTION: updates and hint bits, "
       "5-50 % of buffer accesses", (0, 100), when=(_G, "shared_db")),
    _k("gc.heap_bytes", "int", (67108864, 536870912), "ASSUMPTION: 64-512 MiB heaps (the "
       "map's 256 MiB), bounded by trial time", (4194304, 2147483648), log=True,
       when=(_G, "gc")),
    _k("gc.live_percent", "int", (10, 90), "ASSUMPTION: 10-90 % of objects survive a "
       "collection", (1, 100), when=(_G, "gc")),
    _k("numa.scan_rate", "cat", ("fast", "slow"), "kernel/sched/fair.c task_scan_min / "
       "task_scan_max for the VM's RSS"),
    _k("migration.link_gbit_s", "cat", (10.0, 25.0), "IEEE 802.3ae/by: 10 and 25 GbE "
       "links (calibration link_10g/link_25g)", (10.0, 25.0, 100.0)),
    _k("migration.bandwidth_mb_s", "float", (134.2, 3125.0), "QEMU's max-bandwidth default "
       "128 MiB/s (migration/options.c) up to a 25 Gbit/s link; not in the default space "
       "(a slow link makes a trial ~20x longer)", (134.2, 12500.0), log=True,
       default_space=False),
    _k("migration.downtime_limit_ms", "float", (100.0, 1000.0), "QEMU's default 300 ms "
       "(DEFAULT_MIGRATE_SET_DOWNTIME); ASSUMPTION: operators set 100-1000 ms",
       (10.0, 5000.0), log=True),
)}
EXCLUSIVE = ("migration.link_gbit_s", "migration.bandwidth_mb_s")


# ---- the space ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dim:
    """One knob as a space has it: a fixed value, a (lo, hi) range or choices."""
    knob: Knob
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    fixed: object = None

    @property
    def name(self) -> str:
        return self.knob.name

    def active(self, params: dict) -> bool:
        k, v = self.knob.when or (None, None)
        return k is None or params.get(k) == v

    def value(self, trial):
        """This dimension's value for `trial` (an Optuna trial: suggest_*)."""
        if self.fixed is not None:
            return self.fixed
        if self.knob.kind == "cat":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.knob.kind == "int":
            return trial.suggest_int(self.name, int(self.lo), int(self.hi), log=self.knob.log)
        return trial.suggest_float(self.name, float(self.lo), float(self.hi), log=self.knob.log)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"= {self.fixed!r}"
        if self.knob.kind == "cat":
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        return f"{self.lo:.10g} .. {self.hi:.10g}{' (log)' if self.knob.log else ''}"


@dataclass(frozen=True)
class Space:
    name: str                         # "realistic", "stress" or the file's name
    dims: tuple                       # Dim, in KNOBS order (conditions come after their knob)
    stress: bool = False

    def as_json(self) -> dict:
        return {"stress": self.stress, "dims": {d.name: d.describe() for d in self.dims}}

    def suggest(self, trial) -> dict:
        """The params of one trial (only the active knobs), sampled in KNOBS order."""
        params: dict = {}
        for d in self.dims:
            if d.active(params):
                params[d.name] = d.value(trial)
        return params


def builtin_space(name: str) -> Space:
    stress = name == "stress"
    dims = []
    for k in KNOBS.values():
        if not k.default_space:
            continue
        if k.kind == "cat":
            ch = k.widest() if stress else k.choices
            dims.append(Dim(k, choices=ch) if len(ch) > 1 else Dim(k, fixed=ch[0]))
        else:
            lo, hi = k.widest() if stress else (k.lo, k.hi)
            dims.append(Dim(k, lo, hi))
    return Space(name, tuple(dims), stress)


SPACE_KEYS = {"stress", "base", "knobs"}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(k: Knob, v, at: str):
    """One value of knob `k` from a space file, of the knob's type (ints for int knobs)."""
    if k.kind == "cat":
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise HuntError(f"{at}: {v!r} is not one of {', '.join(map(str, k.widest()))}")
        same = [c for c in k.widest() if c == v and _is_num(c) == _is_num(v)]
        if not same:
            raise HuntError(f"{at}: {v!r} is not one of {', '.join(map(str, k.widest()))}")
        return same[0]                          # the knob's own type (25 -> 25.0 Gbit/s)
    if not _is_num(v) or (k.kind == "int" and not isinstance(v, int)):
        raise HuntError(f"{at}: expected {'an integer' if k.kind == 'int' else 'a number'}, "
                        f"not {v!r}")
    return v


def _file_dim(k: Knob, v, at: str) -> tuple[Dim, bool]:
    """A space file's entry for knob `k` -> (Dim, outside the calibrated range?).
    Categorical: a value or a list of choices; numeric: a value or [lo, hi]."""
    if isinstance(v, list) and k.kind != "cat":
        if len(v) != 2:
            raise HuntError(f"{at}: expected [lo, hi] or one value, not a list of {len(v)}")
        lo, hi = (_check_value(k, x, at) for x in v)
        if lo > hi:
            raise HuntError(f"{at}: empty range [{lo}, {hi}] (lo > hi)")
        wlo, whi = k.widest()
        if lo < wlo or hi > whi:
            raise HuntError(f"{at}: [{lo}, {hi}] is outside what the hunt accepts even with "
                            f"stress = true ({wlo:g} .. {whi:g})")
        d = Dim(k, lo, hi) if lo < hi else Dim(k, fixed=lo)
        return d, lo < k.lo or hi > k.hi
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise HuntError(f"{at}: empty list of choices")
    vals = [_check_value(k, x, at) for x in vals]
    if k.kind != "cat":
        wlo, whi = k.widest()
        if not wlo <= vals[0] <= whi:
            raise HuntError(f"{at}: {vals[0]} is outside what the hunt accepts even with "
                            f"stress = true ({wlo:g} .. {whi:g})")
        return Dim(k, fixed=vals[0]), not k.lo <= vals[0] <= k.hi
    vals = list(dict.fromkeys(vals))
    d = Dim(k, choices=tuple(vals)) if len(vals) > 1 else Dim(k, fixed=vals[0])
    return d, any(x not in k.choices for x in vals)


def load_space_text(text: str, source: str) -> Space:
    """A space file: `base` = "realistic" (default), "stress" or "none" (only the knobs
    listed); `[knobs]` narrows or replaces knobs of the base; `stress = true` admits
    values outside the calibrated ranges (and labels the hunt stress).  Raises HuntError."""
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HuntError(f"{source}: not valid TOML: {e}") from None
    for key in spec:
        if key not in SPACE_KEYS:
            raise HuntError(f"{source}: {key}: unknown key (known: "
                            f"{', '.join(sorted(SPACE_KEYS))})")
    stress, base = spec.get("stress", False), spec.get("base", "realistic")
    if not isinstance(stress, bool):
        raise HuntError(f"{source}: stress: expected true or false, not {stress!r}")
    if base not in ("realistic", "stress", "none"):
        raise HuntError(f"{source}: base: {base!r} is not realistic, stress or none")
    if base == "stress" and not stress:
        raise HuntError(f"{source}: base = \"stress\" is outside the calibrated ranges: it "
                        f"needs stress = true")
    knobs = spec.get("knobs", {})
    if not isinstance(knobs, dict):
        raise HuntError(f"{source}: knobs: expected a table")
    dims = {} if base == "none" else {d.name: d for d in builtin_space(base).dims}
    for name, v in knobs.items():
        at = f"{source}: knobs.{name}"
        if name not in KNOBS:
            raise HuntError(f"{at}: unknown knob (known: {', '.join(KNOBS)})")
        d, outside = _file_dim(KNOBS[name], v, at)
        if outside and not stress:
            raise HuntError(f"{at}: {d.describe()} is outside the calibrated range "
                            f"{_calibrated_text(d.knob)} ({d.knob.source}); set stress = "
                            f"true to search it (labelled stress)")
        dims[name] = d
    return _finish_space(dims, knobs, stress or base == "stress", Path(source).stem, source)


def _calibrated_text(k: Knob) -> str:
    if k.kind == "cat":
        return "{" + ", ".join(map(str, k.choices)) + "}"
    return f"{k.lo:.10g} .. {k.hi:.10g}"


def _finish_space(dims: dict, named: dict, stress: bool, name: str, source: str) -> Space:
    a, b = EXCLUSIVE
    if a in named and b in named:
        raise HuntError(f"{source}: knobs.{b}: give {a} or {b}, not both")
    if b in named:
        dims.pop(a, None)
    if "workload" not in dims:
        raise HuntError(f"{source}: knobs.workload: a space needs the workload knob")
    for n in list(dims):                     # knobs whose condition never holds
        c, v = dims[n].knob.when or (None, None)
        if c is None:
            continue
        cd = dims.get(c)
        if cd is None or v not in (cd.choices or (cd.fixed,)):
            if n in named:
                raise HuntError(f"{source}: knobs.{n}: the space never has {c} = {v}")
            dims.pop(n)
    order = list(KNOBS)
    return Space(name, tuple(sorted(dims.values(), key=lambda d: order.index(d.name))),
                 stress)


def load_space(arg: str) -> Space:
    """--space: realistic, stress or a TOML file."""
    if arg in ("realistic", "stress"):
        return builtin_space(arg)
    try:
        text = Path(arg).read_bytes().decode("utf-8")
    except OSError as e:
        raise HuntError(f"--space {arg}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise HuntError(f"--space {arg}: not a text file (UTF-8 TOML expected)") from None
    return load_space_text(text, arg)


# ---- one trial ---------------------------------------------------------------------------
def config_of(params: dict, space: Space) -> dict:
    """A trial's params (and the space's fixed values) as the run it names: the plain dict
    (workload, knobs, host, host_knobs, variant, seed, until) bench.catalog.build takes."""
    vals: dict = {}
    for d in space.dims:
        if d.active(vals):
            vals[d.name] = params[d.name] if d.fixed is None else d.fixed
    wl = vals.pop("workload")
    variant = vals.pop("variant", "default")
    knobs, host_knobs = dict(BASE_KNOBS), {"migration": {}, "numa": {}}
    for n, v in vals.items():
        owner, dot, knob = n.partition(".")
        if not dot:
            knobs[n] = v
        elif owner in host_knobs:
            host_knobs[owner][knob] = v
        elif owner == wl:
            knobs[knob] = v
    return {"workload": wl, "knobs": knobs, "host": HOST,
            "host_knobs": {h: v for h, v in host_knobs.items() if v},
            "variant": variant, "seed": CASE_SEED, "until": UNTIL}


def _plain(x):
    """numpy scalars, NaN -> JSON-able Python values."""
    if x is None:
        return None
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def evaluate(config: dict) -> dict:
    """Run one configuration as `ptwbench run ... --until migrated` does; the verdict's
    measures of its one case.  A configuration the registry refuses (a migration that does
    not converge, a variant that contradicts the CPU) gives {"error": why}."""
    import pandas as pd

    from workloads.base import WorkloadError

    from .catalog import build
    from .cost import CostModel
    from .runner import COLUMNS, run_workload
    from .variants import VariantError, contradiction
    from .verdict import verdict_table
    t0 = time.perf_counter()
    why = contradiction(config["variant"], config["knobs"].get("cpu"))
    if why:
        return {"error": why, "seconds": 0.0}
    try:
        w = build(config["workload"], dict(config["knobs"]), config["host"],
                  json.loads(json.dumps(config["host_knobs"])), config["seed"], None,
                  config["until"])
        run = run_workload(w, host=config["host"], variant=config["variant"],
                           seed=config["seed"])
    except (WorkloadError, VariantError) as e:
        return {"error": str(e), "seconds": time.perf_counter() - t0}
    df = pd.DataFrame(run.rows, columns=list(COLUMNS))
    r = verdict_table(df, CostModel()).iloc[0].to_dict()
    fix = next(x for x in run.rows if x["policy"] == "fix")
    vm_pages = (fix.get("guest_gib") or 0) * 2 ** 18
    r["migration_seconds"] = fix.get("migration_seconds")
    r["pt_share"] = fix["pt_pages"] / vm_pages if vm_pages else None
    out = {m: _plain(r.get(m)) for m in METRICS}
    out["matters"] = bool(out["matters"])
    out["seconds"] = time.perf_counter() - t0
    return out


def call_trial_fn(fn_name: str, config: dict) -> dict:
    """`fn_name` ("module:function", importable where the trial runs) on `config`."""
    mod, _, fn = fn_name.partition(":")
    return getattr(importlib.import_module(mod), fn)(config)


def values_of(params: dict, space: Space) -> dict:
    """Every active knob's value in a trial (its params and the space's fixed values)."""
    vals: dict = {}
    for d in space.dims:
        if d.active(vals):
            vals[d.name] = params[d.name] if d.fixed is None else d.fixed
    return vals


# ---- executors ---------------------------------------------------------------------------
class _Inline:
    """One worker: the trial runs in this process when submitted."""
    workers = 1
    name = "in-process"

    def submit(self, fn_name: str, config: dict):
        from concurrent.futures import Future
        f = Future()
        try:
            f.set_result(call_trial_fn(fn_name, config))
        except Exception as e:                     # noqa: BLE001 (a failed trial)
            f.set_exception(e)
        return f

    def wait(self, pending) -> set:
        return set(pending)

    def close(self, cancel: bool = False):
        pass


class _Pool:
    """Local worker processes (spawn), exiting when the hunt is killed (bench.sweep)."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from .sweep import _watch_parent
        self.workers, self.name = workers, f"local pool, {workers} workers"
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                      initializer=_watch_parent, initargs=(os.getpid(),))

    def submit(self, fn_name: str, config: dict):
        return self.ex.submit(call_trial_fn, fn_name, config)

    def wait(self, pending) -> set:
        # short waits: Ctrl-C is handled only when the main thread runs (bench/sweep.py)
        from concurrent.futures import FIRST_COMPLETED, wait
        return wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)[0]

    def close(self, cancel: bool = False):
        self.ex.shutdown(wait=not cancel, cancel_futures=True)


class _Dask:
    """A dask.distributed cluster (`Client`): one task per trial, as sweeps run points."""

    def __init__(self, client):
        self.client = client
        self.workers = max(1, sum(w.get("nthreads", 1) for w in
                                  client.scheduler_info()["workers"].values()))
        self.name = f"dask.distributed {client.scheduler.address}"

    def submit(self, fn_name: str, config: dict):
        return self.client.submit(call_trial_fn, fn_name, config, pure=False)

    def wait(self, pending) -> set:
        # polled: distributed.wait needs a default client, and this one is not (sweep_cmd)
        for _ in range(10):
            done = {f for f in pending if f.done()}
            if done:
                return done
            time.sleep(0.02)
        return set()

    def close(self, cancel: bool = False):
        pass


def executor(workers: int = 1, client=None):
    if client is not None:
        return _Dask(client)
    return _Inline() if workers <= 1 else _Pool(workers)


# ---- the study ---------------------------------------------------------------------------
def _optuna():
    import warnings

    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def sampler(seed: int):
    """TPE, seeded; multivariate over the conditional space, with a constant liar for the
    trials still running (parallel hunts)."""
    optuna = _optuna()
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      constant_liar=True)


def open_study(storage: str, name: str, space: Space, seed: int):
    """Create or load study `name` in `storage` (an SQLAlchemy URL); a loaded study must
    have searched the same space.  Raises HuntError (one line)."""
    optuna = _optuna()
    try:
        st = optuna.storages.RDBStorage(storage)
        study = optuna.create_study(storage=st, study_name=name, direction="maximize",
                                    sampler=sampler(seed), load_if_exists=True)
    except HuntError:
        raise
    except Exception as e:                         # noqa: BLE001 (sqlalchemy's many kinds)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HuntError(f"--storage: cannot open {redact(storage)}: {msg}") from None
    n = len(study.get_trials(deepcopy=False))
    if n:       # resumed: a fresh random stream (the seed's would redraw the first trials)
        study.sampler = sampler(seed + n)
    got = study.user_attrs.get("space")
    want = space.as_json()
    if got is None:
        study.set_user_attr("space", want)
        study.set_user_attr("space_name", space.name)
    elif got != want:
        raise HuntError(f"--study {name}: the stored study searched another space "
                        f"({study.user_attrs.get('space_name')}); resume it with that space "
                        f"or name a new study")
    return study


def redact(url: str) -> str:
    """A storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:                              # noqa: BLE001
        return url.split("@")[-1] if "@" in url else url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ORPHAN_S = 15.0      # a RUNNING trial with no driver this old was asked by a hunt killed
                     # before it could name itself (ask -> set_user_attr takes milliseconds)


def fail_stale(study, driver: str) -> tuple[int, int, int]:
    """Mark FAIL the trials a killed hunt left RUNNING: on this host with its driver process
    gone, or with no driver at all after ORPHAN_S.  They never finished and will be asked
    again.  Returns (failed now, running elsewhere, orphans still young); trials other live
    hunts (other hosts, other processes) are running are left alone."""
    import datetime as dt
    optuna = _optuna()
    host, mine = driver.rsplit(":", 1)
    now = dt.datetime.now()
    failed = others = young = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get("driver", "")).rpartition(":")
        if not pid:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 1e9
            if age < ORPHAN_S:
                young += 1
                continue
        elif pid == mine and h == host:
            continue                                # this hunt's own
        elif h != host or not pid.isdigit() or _alive(int(pid)):
            others += 1
            continue
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        failed += 1
    return failed, others, young


def finished_trials(study) -> list:
    optuna = _optuna()
    S = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))


@dataclass
class HuntRun:
    """What one `run_hunt` call did."""
    ran: int = 0                  # trials finished by this call
    resumed: int = 0              # finished trials the study had already
    stale: int = 0                # trials a killed hunt left running, marked failed
    failures: list = field(default_factory=list)     # (trial number, why): crashed trials
    out_of_time: bool = False     # the time budget stopped asking for trials
    seconds: float = 0.0
    executor: str = ""


def _tell(study, trial, r: dict | None, why: str | None) -> str:
    """Record one evaluation; returns the progress line's middle part."""
    optuna = _optuna()
    if r is None:
        trial.set_user_attr("error", why)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"failed: {why}"
    trial.set_user_attr("seconds", round(float(r.get("seconds", 0.0)), 3))
    if r.get("error"):
        trial.set_user_attr("error", r["error"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"refused: {r['error']}"
    for m in METRICS:
        trial.set_user_attr(m, r.get(m))
    study.tell(trial, float(r[OBJECTIVE]))
    q, qs = r.get("q_measured"), r.get("q_break_even")
    qt = "q -" if q is None else f"q {q:.3f}" + ("" if qs is None else f" / q* {qs:.3f}")
    net = r.get("net_ms_per_migration")
    return (f"{OBJECTIVE} {r[OBJECTIVE]:.3g}, net "
            f"{'-' if net is None else f'{net:.3g} ms'}, {qt}")


def _best_text(study) -> str:
    try:
        b = study.best_trial
    except ValueError:
        return "best: none yet"
    return f"best {b.value:.3g} (trial {b.number})"


def _driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_hunt(study, space: Space, trials: int, *, ex=None, trial_fn: str = DEFAULT_TRIAL_FN,
             minutes: float | None = None, progress=None) -> HuntRun:
    """Ask, evaluate and tell until the study holds `trials` finished trials (COMPLETE, or
    PRUNED: a configuration the registry refuses), or `minutes` have passed (no new trial
    starts after that).  `ex`: an executor (default: in-process); `progress`: a function
    taking one line per finished trial."""
    ex = ex or _Inline()
    say = progress or (lambda _line: None)
    t0 = time.perf_counter()
    res = HuntRun(executor=ex.name, resumed=len(finished_trials(study)))
    deadline = None if not minutes else t0 + 60 * minutes
    pending = {}
    try:
        while True:
            young = _ask_more(study, space, trials, ex, trial_fn, pending, res, deadline)
            if not pending:
                if young and not res.out_of_time:   # a killed hunt's trial, not yet stale
                    time.sleep(1.0)
                    continue
                break
            for f in sorted(ex.wait(pending), key=lambda f: pending[f].number):
                trial = pending.pop(f)
                try:
                    r, why = f.result(), None
                except Exception as e:             # noqa: BLE001 (reported per trial)
                    r, why = None, f"{type(e).__name__}: {e}"
                    res.failures.append((trial.number, why))
                line = _tell(study, trial, r, why)
                res.ran += 1 if r is not None else 0
                say(f"trial {trial.number} ({len(finished_trials(study))}/{trials}): {line}; "
                    f"{_best_text(study)}")
    finally:
        optuna = _optuna()
        for trial in pending.values():              # interrupted: not finished
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        ex.close(cancel=bool(pending))
        res.seconds = time.perf_counter() - t0
    return res


def _ask_more(study, space, trials, ex, trial_fn, pending, res, deadline) -> int:
    """Ask for trials while a worker is free and the study lacks trials (finished, ours
    running, other live hunts' running); returns the young orphans left (fail_stale)."""
    young = 0
    while len(pending) < ex.workers:
        if deadline is not None and time.perf_counter() > deadline:
            res.out_of_time = True
            break
        stale, others, young = fail_stale(study, _driver())
        res.stale += stale
        if len(finished_trials(study)) + others + young + len(pending) >= trials:
            break
        trial = study.ask()
        trial.set_user_attr("driver", _driver())
        if "origin" not in trial.user_attrs:
            trial.set_user_attr("origin", "tpe")
        vals = values_of(space.suggest(trial), space)
        cfg = config_of(vals, space)
        trial.set_user_attr("values", vals)
        trial.set_user_attr("config", cfg)
        pending[ex.submit(trial_fn, cfg)] = trial
    return young


# ---- the realistic map as a warm start --------------------------------------------------
def _default_of(name: str, wl: str, aging: str):
    """A knob's value where a configuration does not set it: the registry's default."""
    from workloads import registry as reg
    from workloads.aging import regime_period_ms
    from workloads.linux import PROFILE_KNOBS
    owner, dot, knob = name.partition(".")
    if name == "age_period_ms":
        return regime_period_ms(aging)
    if not dot:
        return {k.name: k.default for k in PROFILE_KNOBS}.get(name)
    entry = reg.host_entry(owner) if owner in ("migration", "numa") else \
        reg.generator_entry(owner)
    return {k.name: k.default for k in entry.knobs}.get(knob)


def _inside(d: Dim, v) -> bool:
    if d.fixed is not None:
        return v == d.fixed
    if d.knob.kind == "cat":
        return v in d.choices
    return isinstance(v, (int, float)) and d.lo <= v <= d.hi


def map_params(space: Space) -> list[dict]:
    """The default beer's realistic cases (its map) that lie in `space`, as the params of
    a trial each (knobs the case does not set: the registry's defaults), in the map's order:
    enqueued first in a fresh study, so the hunt starts from the cases the beer runs."""
    from .beer import default_spec_text
    out = []
    for c in tomllib.loads(default_spec_text()).get("case", []):
        if c.get("section") != "realistic" or c.get("hosts") != [HOST]:
            continue
        wl = c["workloads"][0]
        given = {"workload": wl, "variant": c.get("variants", ["default"])[0]}
        given.update({(k if k in KNOBS else f"{wl}.{k}"): v
                      for k, v in c.get("knobs", {}).get(wl, {}).items()})
        for h, kv in c.get("host_knobs", {}).items():
            given.update({f"{h}.{k}": v for k, v in kv.items()})
        vals: dict = {}
        for d in space.dims:
            if d.active({**given, **vals}):
                vals[d.name] = given.get(d.name, _default_of(d.name, wl, given.get("aging")))
        if all(_inside(d, vals[d.name]) for d in space.dims if d.name in vals):
            out.append({k: v for k, v in vals.items() if space_dim(space, k).fixed is None})
    return out


def space_dim(space: Space, name: str) -> Dim:
    return next(d for d in space.dims if d.name == name)


def enqueue_map(study, space: Space) -> int:
    """Enqueue the map's cases in a study with no trial yet; returns how many."""
    if study.get_trials(deepcopy=False):
        return 0
    cases = map_params(space)
    for p in cases:
        study.enqueue_trial(p, user_attrs={"origin": "map"})
    return len(cases)


def hunt_summary_line(d) -> str:
    """verdict.txt's line for `ptwbench beer --hunt DIR` (bench/hunt_report.py)."""
    from .hunt_report import hunt_summary_line as line
    return line(d)


def knobs_markdown() -> str:
    """docs/hunt.md's table of the knobs (tests/test_hunt.py keeps the two equal)."""
    def rng(k: Knob, stress: bool) -> str:
        if k.kind == "cat":
            return ", ".join(map(str, k.widest() if stress else k.choices))
        lo, hi = k.widest() if stress else (k.lo, k.hi)
        return f"{lo:.10g} – {hi:.10g}{' (log)' if k.log and not stress else ''}"
    rows = ["| knob | realistic range | stress range | when | source |", "|---|---|---|---|---|"]
    for k in KNOBS.values():
        when = f"{k.when[0]} = {k.when[1]}" if k.when else ""
        name = f"`{k.name}`" + ("" if k.default_space else " (file only)")
        rows.append(f"| {name} | {rng(k, False)} | {rng(k, True)} | {when} | {k.source} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m bench.hunt --markdown")
    sys.stdout.write(knobs_markdown())
