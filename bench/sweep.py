"""`ptwbench sweep SPEC.toml`: a grid of runs (workloads x knobs x host scenarios x hardware
variants x seeds; every policy each), run on a local process pool or a dask.distributed
cluster, one result file per point, resumable, aggregated at the end.

Spec format (TOML)::

    [sweep]
    name = "tiny"                  # [A-Za-z0-9._-]+; default: the spec file's stem
    out = "results/sweep-tiny"     # result directory; default results/sweep-<name>
    seeds = [1, 2]                 # a list of ints, or N (seeds 0 .. N-1); default [1]
    engine = "numpy"               # numpy (default) or reference

    [[grid]]                       # one or more grid tables; their points are concatenated
    workloads = ["sparse", "memstress"]   # generator names, "micro:NAME", or "*" (every
                                          # generator); default "*"
    hosts = ["none", "precopy"]    # host scenarios, "none" (default ["none"]), "scenario"
                                   # (micro-scenarios only: they carry their own host events)
    variants = ["default", "haft"] # hardware variants (bench/variants.py); default ["default"]
    seeds = 2                      # optional: overrides [sweep] seeds for this grid
    engine = "reference"           # optional: overrides [sweep] engine for this grid

    [grid.knobs.sparse]            # generator and linux-profile knobs of one workload of
    regions = [8, 16]              # this grid: a list is swept (cartesian product over the
    accesses = 64                  # knobs, in the order written), a scalar is fixed

    [grid.host_knobs.precopy]      # host-scenario knobs of one host of this grid, likewise
    rounds = [1, 4]

The spec is checked strictly before anything is written (unknown keys, wrong types, unknown
workload/host/variant names, knobs for a workload or host the grid does not run, bad knob
values: every knob combination goes through the registry's `Entry.resolve` and
`make_profile`, as `ptwbench beer` checks its spec); an error is one line, "FILE: key: what"
(`SweepError`), and the CLI exits with status 2 without creating the result directory.
Workload x host pairs the registry calls incompatible (page-table-storing guests under
read-only firmware tables) are skipped.

Points.  The grid expands in a fixed order: grid tables in order, then workload, workload
knobs, host, host knobs, variant, seed.  A point is the plain dict (workload, knobs, host,
host_knobs, variant, seed, engine) with knob values coerced to the knobs' types; its id is
the first 16 hex digits of the SHA-256 of its canonical JSON (sorted keys, no spaces), so the
same point has the same id in any spec; a point appearing twice in a spec runs once.

Results (OUT/):

* `points/<id>.json` -- one per finished point, written atomically (temporary name, then
  rename) by the parent process as results arrive: the point, its metrics rows (one per
  policy; deterministic: byte-identical whatever the worker count or executor), timings and
  run metadata; or, for a point the registry rejects (a knob combination a generator refuses,
  `WorkloadError`), the error.  A rerun skips every point whose file exists and parses, so a
  killed sweep loses at most the points in flight and duplicates nothing.
* `metrics.csv` -- `point` + bench.runner's COLUMNS, rows in point order (policy order
  within a point); `workload` and `host` carry the point's knobs, e.g.
  `sparse[accesses=64,regions=8]`, `precopy[rounds=1]`, so (workload, host, variant, seed,
  policy) stays a unique key (`ptwbench compare` works on sweeps).  No timings: the file is
  byte-identical whatever the worker count or executor, fresh or resumed.
* `timings.csv` (`point` + TIMING_COLUMNS), `verdict.csv` (bench.verdict's verdict_table),
  `points.csv` (id and parameters of every point, with its status), `report.md` (the answer
  and a summary per workload/host/variant over seeds: ha-promote against fix), `meta.json`
  (bench/meta.py's shape: versions, environment, the spec; `details`: the executor and the
  point counts).

Executors: a local `concurrent.futures.ProcessPoolExecutor` (spawn start method; the task is
the top-level `run_point(point: dict) -> dict`), in-process when there is one worker; or a
dask.distributed cluster (`Client(address)`, `client.map`, `as_completed`): its workers need
ptwbench importable (the same installation as the client).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEEDS = [1]
NAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
SWEEP_KEYS = {"name", "out", "seeds", "engine"}
GRID_KEYS = {"workloads", "hosts", "variants", "seeds", "engine", "knobs", "host_knobs"}


from .spec_checks import (SpecError, check_engine, check_host, check_host_knobs, check_knobs,
                          check_seeds, check_str_list, check_variant, check_workload,
                          type_name)
from .variants import contradiction

SweepError = SpecError          # one error class for every spec format


# ---- the spec ------------------------------------------------------------------------------
def _axes(table, at: str) -> list[tuple[str, list]]:
    """A knob table -> [(knob, [values ...])] in the order written."""
    if not isinstance(table, dict):
        raise SweepError(f"{at}: expected a table")
    out = []
    for k, v in table.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise SweepError(f"{at}.{k}: empty list")
        for x in vals:
            if isinstance(x, (dict, list)):
                raise SweepError(f"{at}.{k}: {type_name(x)} is not a knob value")
        out.append((k, vals))
    return out


def _combos(axes: list[tuple[str, list]]) -> list[dict]:
    names = [k for k, _ in axes]
    return [dict(zip(names, vals)) for vals in itertools.product(*(v for _, v in axes))]


def load_sweep(text: str, source: str) -> dict:
    """Parse and check a sweep spec.  Returns {"name", "out", "seeds", "engine", "grids":
    [{"workloads", "hosts", "variants", "seeds", "engine", "knobs": {w: [combo ...]},
    "host_knobs": {h: [combo ...]}}]} with every knob combination coerced; raises SweepError
    (one line naming the file and the key)."""
    from workloads import registry as reg

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{source}: not valid TOML: {e}") from None
    for k in raw:
        if k not in ("sweep", "grid"):
            raise SweepError(f"{source}: {k}: unknown key (expected [sweep] and [[grid]])")
    sw = raw.get("sweep", {})
    if not isinstance(sw, dict):
        raise SweepError(f"{source}: sweep: expected a table")
    for k, v in sw.items():
        if k not in SWEEP_KEYS:
            raise SweepError(f"{source}: sweep.{k}: unknown key "
                             f"(known: {', '.join(sorted(SWEEP_KEYS))})")
    for k in ("name", "out"):
        if k in sw and not isinstance(sw[k], str):
            raise SweepError(f"{source}: sweep.{k}: expected a string, not "
                             f"{type_name(sw[k])}")
    name = sw.get("name", Path(source).stem)
    if not NAME_RE.match(name):
        raise SweepError(f"{source}: sweep.name: {name!r} is not a simple name "
                         f"(letters, digits, '.', '_', '-')")
    if "out" in sw and not sw["out"].strip():
        raise SweepError(f"{source}: sweep.out: empty path")
    seeds = check_seeds(sw["seeds"], f"{source}: sweep.seeds") if "seeds" in sw else DEFAULT_SEEDS
    engine = check_engine(sw.get("engine", "numpy"), f"{source}: sweep.engine")
    grids_raw = raw.get("grid")
    if grids_raw is None:
        raise SweepError(f"{source}: grid: no [[grid]] table")
    if not isinstance(grids_raw, list):
        raise SweepError(f"{source}: grid: expected [[grid]] tables (an array of tables)")
    grids = []
    for i, g in enumerate(grids_raw):
        at = f"{source}: grid[{i}]"
        if not isinstance(g, dict):
            raise SweepError(f"{at}: expected a table")
        for k in g:
            if k not in GRID_KEYS:
                raise SweepError(f"{at}.{k}: unknown key (known: {', '.join(sorted(GRID_KEYS))})")
        ws = g.get("workloads", "*")
        if ws == "*":
            ws = list(reg.GENERATORS)
        elif isinstance(ws, str):
            raise SweepError(f"{at}.workloads: expected a list of names or \"*\", not {ws!r}")
        else:
            ws = check_str_list(ws, f"{at}.workloads", [])
        for w in ws:
            check_workload(w, f"{at}.workloads")
        hosts = check_str_list(g.get("hosts"), f"{at}.hosts", ["none"])
        for h in hosts:
            check_host(h, f"{at}.hosts", extra=("none", "scenario"))
        gen = [w for w in ws if not w.startswith("micro:")]
        if "scenario" in hosts and gen:
            raise SweepError(f"{at}.hosts: host 'scenario' is for micro: workloads only "
                             f"(not {gen[0]!r})")
        if any(w.startswith("micro:") for w in ws) and any(h != "scenario" for h in hosts):
            raise SweepError(f"{at}.hosts: micro-scenarios carry their own host events: "
                             f"hosts must be [\"scenario\"]")
        variants = check_str_list(g.get("variants"), f"{at}.variants", ["default"])
        for v in variants:
            check_variant(v, f"{at}.variants")
        gseeds = check_seeds(g["seeds"], f"{at}.seeds") if "seeds" in g else seeds
        gengine = check_engine(g["engine"], f"{at}.engine") if "engine" in g else engine
        knobs_raw = g.get("knobs", {})
        if not isinstance(knobs_raw, dict):
            raise SweepError(f"{at}.knobs: expected a table of [grid.knobs.WORKLOAD] tables")
        knobs = {}
        for w, table in knobs_raw.items():
            kat = f"{at}.knobs.{w}"
            if w not in ws:
                raise SweepError(f"{kat}: workload {w!r} is not in this grid's workloads")
            if w.startswith("micro:"):
                raise SweepError(f"{kat}: micro-scenarios take no knobs")
            axes = _axes(table, kat)
            for k, vals in axes:             # each value on its own first: the error names it
                for x in vals:
                    check_knobs(w, {k: x}, f"{kat}.{k}")
            knobs[w] = [check_knobs(w, c, kat) for c in _combos(axes)]
            for v in variants:                # a variant the guest profile contradicts
                why = next(filter(None, (contradiction(v, c.get("cpu")) for c in knobs[w])),
                           None)
                if why:
                    raise SweepError(f"{kat}: {why}")
        hk_raw = g.get("host_knobs", {})
        if not isinstance(hk_raw, dict):
            raise SweepError(f"{at}.host_knobs: expected a table of [grid.host_knobs.HOST] "
                             f"tables")
        host_knobs = {}
        for h, table in hk_raw.items():
            hat = f"{at}.host_knobs.{h}"
            if h not in reg.HOST_SCENARIOS:
                raise SweepError(f"{hat}: unknown host scenario {h!r}")
            if h not in hosts:
                raise SweepError(f"{hat}: host {h!r} is not in this grid's hosts")
            axes = _axes(table, hat)
            for k, vals in axes:
                for x in vals:
                    check_host_knobs(h, {k: x}, f"{hat}.{k}")
            host_knobs[h] = [check_host_knobs(h, c, hat) for c in _combos(axes)]
        grids.append({"workloads": ws, "hosts": hosts, "variants": variants, "seeds": gseeds,
                      "engine": gengine, "knobs": knobs, "host_knobs": host_knobs})
    if not grids:
        raise SweepError(f"{source}: grid: no [[grid]] table")
    spec = {"name": name, "out": sw.get("out", f"results/sweep-{name}"), "seeds": seeds,
            "engine": engine, "grids": grids, "source": source}
    if not count_points(spec):
        raise SweepError(f"{source}: grid: no points (every workload x host pair is "
                         f"incompatible)")
    return spec


def load_sweep_file(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not UTF-8 text") from None
    return load_sweep(text, str(path))


# ---- points --------------------------------------------------------------------------------
POINT_KEYS = ("workload", "knobs", "host", "host_knobs", "variant", "seed", "engine")


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def point_id(point: dict) -> str:
    return hashlib.sha256(canonical({k: point[k] for k in POINT_KEYS}).encode()
                          ).hexdigest()[:16]


# A sweep larger than this is refused unless the user confirms it (`ptwbench sweep --yes`):
# at ~0.3 s per point of default size on a 2-core machine (measured: 200 points, 58 s on one
# worker) it is about an hour of one core.
POINT_LIMIT = 10_000


def _grid_pairs(g: dict):
    """(workload, host) pairs of a grid that the registry calls compatible, in grid order."""
    from workloads import registry as reg
    for w in g["workloads"]:
        for host in g["hosts"]:
            if w.startswith("micro:") or reg.compatible(w, None if host == "none" else host):
                yield w, host


def count_points(spec: dict) -> int:
    """How many points the grids expand to (before removing a point repeated across grids),
    by multiplication: nothing is enumerated."""
    n = 0
    for g in spec["grids"]:
        per = len(g["variants"]) * len(g["seeds"])
        for w, host in _grid_pairs(g):
            n += len(g["knobs"].get(w, [{}])) * len(g["host_knobs"].get(host, [{}])) * per
    return n


def iter_points(spec: dict):
    """Every point of the spec, lazily, in the spec's order: dicts of POINT_KEYS + id.  A point
    repeated across grids comes once per grid; `points` removes repeats."""
    for g in spec["grids"]:
        hosts = {}
        for w, host in _grid_pairs(g):
            hosts.setdefault(w, []).append(host)
        for w in g["workloads"]:                   # the spec's order: workload, knobs, host
            for knobs, host in itertools.product(g["knobs"].get(w, [{}]), hosts.get(w, [])):
                for hk in g["host_knobs"].get(host, [{}]):
                    for v in g["variants"]:
                        for s in g["seeds"]:
                            p = {"workload": w, "knobs": knobs, "host": host,
                                 "host_knobs": hk, "variant": v, "seed": s,
                                 "engine": g["engine"]}
                            p["id"] = point_id(p)
                            yield p


def check_generators(spec: dict) -> None:
    """Build every distinct (workload, knobs) of the grids once, with no host, before anything
    is written: a value only the generator rejects (`regions = -8`) is a bad spec, one line."""
    from workloads import registry as reg
    from workloads.base import WorkloadError

    from .catalog import build
    seen = set()
    for i, g in enumerate(spec["grids"]):
        for w in g["workloads"]:
            if w not in reg.GENERATORS:            # micro:, trace:, import: take no knobs
                continue
            for knobs in g["knobs"].get(w, [{}]):
                key = (w, canonical(knobs))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    build(w, dict(knobs), "none", {}, g["seeds"][0])
                except WorkloadError as e:
                    at = f"{spec['source']}: grid[{i}].knobs.{w}"
                    raise SweepError(f"{at}: {label(w, knobs)}: {e}") from None


def points(spec: dict) -> list[dict]:
    """Every point of the spec, in the spec's order, each once (a list: for sweeps that run)."""
    out, seen = [], set()
    for p in iter_points(spec):
        if p["id"] not in seen:
            seen.add(p["id"])
            out.append(p)
    return out


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def label(name: str, knobs: dict) -> str:
    """`sparse[accesses=64,regions=8]`: a name with its knobs (sorted), or just the name."""
    if not knobs:
        return name
    return f"{name}[{','.join(f'{k}={_fmt(knobs[k])}' for k in sorted(knobs))}]"


# ---- one point (runs in a worker) --------------------------------------------------------
def _json_default(o):
    if hasattr(o, "item"):                       # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def result_text(result: dict) -> str:
    return json.dumps(result, sort_keys=True, indent=1, default=_json_default) + "\n"


def run_point(point: dict) -> dict:
    """Run one point (all policies); a plain dict in, a plain JSON-able dict out.  A point the
    registry rejects (WorkloadError) gives {"error": ...}: a property of the point, recorded
    like a result.  Anything else raises."""
    from workloads.base import WorkloadError

    from .catalog import build
    from .runner import run_workload
    p = {k: point[k] for k in POINT_KEYS}
    try:
        w = build(p["workload"], dict(p["knobs"]), p["host"], dict(p["host_knobs"]), p["seed"])
    except WorkloadError as e:
        return {"id": point["id"], "point": p, "error": str(e), "rows": [], "timings": [],
                "meta": {}}
    run = run_workload(w, host=p["host"], variant=p["variant"], seed=p["seed"],
                       engine=p["engine"])
    # through JSON once, so a result is the same object whether it crossed a process
    # boundary or not
    return json.loads(json.dumps({"id": point["id"], "point": p, "error": None,
                                  "rows": run.rows, "timings": run.timings,
                                  "meta": run.meta}, default=_json_default))


def _policies() -> tuple[str, ...]:
    from model.policies import DEFAULT_ORDER
    return tuple(DEFAULT_ORDER)


def read_point(path: Path, point: dict) -> dict | None:
    """The stored result of `point`, or None when it is missing, unreadable or not this
    point's."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(r, dict) or r.get("id") != point["id"] or r.get("point") != {
            k: point[k] for k in POINT_KEYS}:
        return None
    if r.get("error"):
        return r if isinstance(r["error"], str) else None
    rows = r.get("rows")
    if not isinstance(rows, list) or tuple(x.get("policy") for x in rows
                                           if isinstance(x, dict)) != _policies():
        return None
    return r


# ---- executors -----------------------------------------------------------------------------
def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                        # not Linux
        return os.cpu_count() or 1


def _outcome(fn, *a):
    try:
        return fn(*a), None
    except Exception as e:                        # noqa: BLE001 (reported per point)
        return None, f"{type(e).__name__}: {e}"


def _watch_parent(parent: int) -> None:
    """Pool worker initializer: exit when the sweep process is gone (killed with SIGKILL, a
    pool worker would otherwise wait for work forever).  Ctrl-C is the sweep process's to
    handle: workers ignore SIGINT (no traceback per worker; the parent stops the pool)."""
    import signal
    import threading
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="ptwbench-parent-watch", daemon=True).start()


def run_local(todo: list[dict], workers: int):
    """Yield (point, result, failure) as points finish: in-process with one worker, else a
    spawn-context process pool with a bounded queue of submitted points."""
    if workers <= 1 or len(todo) <= 1:
        for p in todo:
            yield (p, *_outcome(run_point, p))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    ex = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                             mp_context=mp.get_context("spawn"),
                             initializer=_watch_parent, initargs=(os.getpid(),))
    broken = None
    try:
        it, pending = iter(todo), {}

        def fill():
            while broken is None and len(pending) < 4 * workers:
                p = next(it, None)
                if p is None:
                    return
                pending[ex.submit(run_point, p)] = p
        fill()
        while pending:
            # short waits: Ctrl-C may reach another thread, and Python runs its handler
            # only when the main thread runs (bench/beer.py waits the same way)
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: pending[f]["index"]):
                p = pending.pop(f)
                if isinstance(f.exception(), BrokenProcessPool):
                    broken = "not run: the process pool broke (a worker died: out of memory?)"
                    yield p, None, broken
                else:
                    yield (p, *_outcome(f.result))
            fill()
        if broken is not None:                        # the points never submitted
            for p in it:
                yield p, None, broken
    finally:
        ex.shutdown(wait=broken is None, cancel_futures=True)


def connect(address: str, timeout: float = 20.0):
    """A dask.distributed client of the scheduler at `address` (raises OSError/TimeoutError
    when it cannot connect)."""
    from dask.distributed import Client
    return Client(address, timeout=f"{timeout}s", set_as_default=False)


def run_dask(todo: list[dict], client):
    """Yield (point, result, failure) as points finish on a dask.distributed cluster."""
    from dask.distributed import as_completed
    if not todo:
        return
    futures = client.map(run_point, todo, key=[f"ptwbench-point-{p['id']}" for p in todo],
                         pure=False)
    by_key = {f.key: p for f, p in zip(futures, todo)}
    try:
        for f in as_completed(futures, loop=client.loop):
            yield (by_key[f.key], *_outcome(f.result))
    finally:
        client.cancel(futures)


# ---- the sweep -----------------------------------------------------------------------------
@dataclass
class SweepResult:
    out: Path
    points: int
    ran: int
    resumed: int
    errors: list[tuple[dict, str]] = field(default_factory=list)    # registry-rejected points
    failures: list[tuple[dict, str]] = field(default_factory=list)  # crashed, not written
    answer: str = ""


class _Lock:
    """An exclusive flock on OUT/.lock: two sweeps into one directory would duplicate work
    (never files).  The kernel drops it when the process dies, SIGKILL included."""

    def __init__(self, out: Path):
        import fcntl
        self.f = open(out / ".lock", "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise SweepError(f"{out}: another sweep is running in this directory") from None

    def release(self):
        self.f.close()


def run_sweep(spec: dict, out: Path | None = None, *, workers: int | None = None,
              client=None, progress: bool | None = None, executor: str | None = None
              ) -> SweepResult:
    """Run every point not already finished in OUT/points, then aggregate.  `client`: a
    dask.distributed Client (else the local pool of `workers`)."""
    from .progress import Progress
    from .runner import write_atomic
    out = Path(out if out is not None else spec["out"])
    pts = points(spec)
    for i, p in enumerate(pts):
        p["index"] = i
    t0 = time.perf_counter()
    (out / "points").mkdir(parents=True, exist_ok=True)
    lock = _Lock(out)
    try:
        for tmp in (out / "points").glob(".*.tmp"):      # writes a killed sweep left behind
            tmp.unlink(missing_ok=True)
        done, todo = {}, []
        for p in pts:
            r = read_point(out / "points" / f"{p['id']}.json", p)
            if r is None:
                todo.append(p)
            else:
                done[p["id"]] = r
        resumed = len(done)
        workers = workers or default_workers()
        if client is not None:
            it = run_dask(todo, client)
            executor = executor or f"dask.distributed {client.scheduler.address}"
        else:
            it = run_local(todo, workers)
            executor = executor or f"local pool, {min(workers, max(1, len(todo)))} workers"
        res = SweepResult(out, len(pts), 0, resumed)
        bar = Progress(len(pts), f"sweep {spec['name']}", "point", initial=resumed,
                       show=None if progress is None or progress else False)
        try:
            for p, r, failure in it:
                if failure is not None:
                    res.failures.append((p, failure))
                else:
                    write_atomic(out / "points" / f"{p['id']}.json", result_text(r))
                    done[p["id"]] = r
                    res.ran += 1
                bar.update(1)
        finally:
            bar.close()
        res.errors = [(p, done[p["id"]]["error"]) for p in pts
                      if p["id"] in done and done[p["id"]].get("error")]
        if not res.failures:
            res.answer = aggregate(spec, pts, done, out, {
                "executor": executor, "seconds": time.perf_counter() - t0,
                "points_run": res.ran, "points_resumed": resumed})
        return res
    finally:
        lock.release()


def _rows(pts, done, what: str) -> list[dict]:
    rows = []
    for p in pts:
        r = done.get(p["id"])
        if r is None or r.get("error"):
            continue
        for x in r[what]:
            rows.append({**x, "point": p["id"], "workload": label(p["workload"], p["knobs"]),
                         "host": label(p["host"], p["host_knobs"])})
    return rows


POINT_COLUMNS = ("id", "workload", "knobs", "host", "host_knobs", "variant", "seed",
                 "engine", "status")
SUMMARY_COLUMNS = ["workload", "host", "variant", "seeds", "fix_double_faults",
                   "exits_saved", "false_dirty_extra", "uffd_false_write_extra", "net_us",
                   "net_us_min", "net_us_max", "matters", "breaks_guest"]


def summary(v) -> "pd.DataFrame":  # noqa: F821
    """The verdict table per workload/host/variant over seeds: means, net range, how many
    seeds matter."""
    import pandas as pd
    if v.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    g = v.groupby(["workload", "host", "variant"], sort=False)
    s = g.agg(seeds=("seed", "count"), fix_double_faults=("fix_double_faults", "mean"),
              exits_saved=("exits_saved", "mean"),
              false_dirty_extra=("false_dirty_extra", "mean"),
              uffd_false_write_extra=("uffd_false_write_extra", "mean"),
              net_us=("net_us", "mean"), net_us_min=("net_us", "min"),
              net_us_max=("net_us", "max"), matters=("matters", "sum"),
              breaks_guest=("breaks_guest", "any")).reset_index()
    s["matters"] = [f"{int(m)}/{n}" for m, n in zip(s["matters"], s["seeds"])]
    return s[SUMMARY_COLUMNS]


def aggregate(spec: dict, pts: list[dict], done: dict, out: Path, run_meta: dict) -> str:
    """metrics.csv, timings.csv, verdict.csv, points.csv, report.md, meta.json from the
    point results (read in point order: the same bytes however they were produced)."""
    import pandas as pd

    from . import report
    from .cost import CostModel
    from .meta import envelope
    from .runner import COLUMNS, TIMING_COLUMNS, csv_text, meta_json, write_atomic
    from .verdict import MATTERS_RULE, answer, verdict_table
    rows = _rows(pts, done, "rows")
    timings = _rows(pts, done, "timings")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    cm = CostModel()
    v = verdict_table(df, cm) if len(df) else pd.DataFrame()
    ans = answer(v)
    errors = [p for p in pts if done[p["id"]].get("error")]
    prows = [{"id": p["id"], "workload": p["workload"], "knobs": canonical(p["knobs"]),
              "host": p["host"], "host_knobs": canonical(p["host_knobs"]),
              "variant": p["variant"], "seed": p["seed"], "engine": p["engine"],
              "status": "error" if done[p["id"]].get("error") else "ok"} for p in pts]
    md = [f"# Sweep {spec['name']}", "",
          f"{len(pts)} points ({len(pts) - len(errors)} with results, {len(errors)} "
          f"rejected by the registry), every policy each: {len(rows)} rows in metrics.csv.",
          "",
          f"**{ans}**", "",
          "## Per workload / host / variant (ha-promote against fix, over seeds)", "",
          "Means over seeds. exits_saved: stage-2 faults ha-promote avoids; "
          "false_dirty_extra: pages it marks dirty that nothing wrote; "
          "uffd_false_write_extra: userfaultfd events it flags WRITE that wrote nothing; "
          "net_us: fix's modelled host overhead minus ha-promote's (positive: ha-promote is "
          "cheaper; bench/cost.py); matters: the seeds where the case matters (bench/verdict.py: "
          f"{MATTERS_RULE}).", "",
          report.md_table(summary(v)), ""]
    if errors:
        md += ["## Points the registry rejected", "",
               report.md_table(pd.DataFrame(
                   [{"point": p["id"], "workload": label(p["workload"], p["knobs"]),
                     "host": label(p["host"], p["host_knobs"]), "error": done[p["id"]]["error"]}
                    for p in errors])), ""]
    md += ["## Files", "", "metrics.csv (one row per point and policy; no timings), "
           "timings.csv, verdict.csv (per point), points.csv (the point ids), "
           "points/ID.json (each point's result), meta.json (environment, spec).", ""]
    vcsv = v.to_csv(index=False, lineterminator="\n") if len(v) else ""
    details = {k: v for k, v in run_meta.items() if k != "seconds"}
    details.update(points=len(pts), points_rejected=len(errors),
                   runs_in="points/ID.json (each point's run meta)")
    meta = envelope("sweep", spec=spec, runs=[], seconds=run_meta["seconds"],
                    cost_model=cm.as_dict(), details=details)
    files = {"metrics.csv": csv_text(rows, ("point",) + COLUMNS),
             "timings.csv": csv_text(timings, ("point",) + TIMING_COLUMNS),
             "verdict.csv": vcsv, "points.csv": csv_text(prows, POINT_COLUMNS),
             "report.md": "\n".join(md), "meta.json": meta_json(meta)}
    for name, data in files.items():
        write_atomic(out / name, data)
    return ans
