"""meta.json: one self-describing shape for every result directory (`run`, `beer`, `sweep`).

    {"schema_version": 1, "job": "run" | "beer" | "sweep",
     "ptwbench": {"version": "0.1.0", "git_revision": "<sha>[+dirty]" | null},
     "created_utc": "2026-01-02T03:04:05Z", "seconds": <wall time>,
     "environment": {"python", "numpy", "pandas", "platform", "machine", "cpu_count",
                     "hostname"},
     "cost_model_us": {<bench/cost.py's constants>},
     "spec": {<what was asked: the run's parameters, the beer or sweep spec>},
     "runs": [<one object per run: RUN_KEYS>],       (a sweep: [], see points/ID.json)
     "details": {<the job's own facts: a sweep's executor and point counts>}}

`ptwbench.version` comes from the installed distribution (importlib.metadata);
`git_revision` only when the package's own folder is the top of a git checkout (never the
revision of a user's repository that happens to hold an installation).  `validate` is the
schema, written out: tests/test_meta.py checks the three jobs against it.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
JOBS = ("run", "beer", "sweep")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent     # the folder holding bench/, model/
TOP = {"schema_version": int, "job": str, "ptwbench": dict, "created_utc": str,
       "seconds": (int, float), "environment": dict, "cost_model_us": dict, "spec": dict,
       "runs": list, "details": dict}
ENVIRONMENT = {"python": str, "numpy": str, "pandas": str, "platform": str, "machine": str,
               "cpu_count": (int, type(None)), "hostname": str}
RUN_KEYS = {"workload": str, "workload_meta": dict, "host": str, "variant": str, "seed": int,
            "engine": str, "policies": list, "machine": dict, "guest": dict, "accesses": int,
            "events": int, "seconds": (int, float), "samples_seconds": list,
            "warmups": int, "clock": dict, "cost_model_us": dict}


def ptwbench_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("ptwbench")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=5).stdout.strip()


def source_revision(root: Path = PACKAGE_ROOT) -> str | None:
    """HEAD (+dirty) of `root` when `root` is itself the top of a git checkout; None for an
    installed copy, even one inside somebody's repository."""
    if not (root / ".git").exists():                 # a checkout's top has .git (a worktree:
        return None                                  # a file); site-packages never does
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != root.resolve():
            return None
        rev = _git(root, "rev-parse", "HEAD")
        if rev and _git(root, "status", "--porcelain", "--untracked-files=no"):
            rev += "+dirty"
        return rev or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import numpy
    import pandas
    return {"python": sys.version.split()[0], "numpy": numpy.__version__,
            "pandas": pandas.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "hostname": platform.node()}


def envelope(job: str, *, spec: dict, runs: list, seconds: float, cost_model: dict,
             details: dict | None = None) -> dict:
    """The meta.json of a result directory (the shape above)."""
    assert job in JOBS
    return {"schema_version": SCHEMA_VERSION, "job": job,
            "ptwbench": {"version": ptwbench_version(), "git_revision": source_revision()},
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(float(seconds), 6), "environment": environment(),
            "cost_model_us": cost_model, "spec": spec, "runs": runs, "details": details or {}}


def _check(obj: dict, want: dict, at: str) -> list[str]:
    out = [f"{at}: missing {k!r}" for k in want if k not in obj]
    out += [f"{at}: unknown key {k!r}" for k in obj if k not in want]
    for k, t in want.items():
        if k in obj and (not isinstance(obj[k], t) or (t is int and isinstance(obj[k], bool))):
            out.append(f"{at}.{k}: {type(obj[k]).__name__} is not {t}")
    return out


def validate(meta) -> list[str]:
    """What is wrong with `meta` against the schema (empty: valid)."""
    if not isinstance(meta, dict):
        return ["meta.json: not an object"]
    bad = _check(meta, TOP, "meta")
    if bad:
        return bad
    if meta["schema_version"] != SCHEMA_VERSION:
        bad.append(f"meta.schema_version: {meta['schema_version']} is not {SCHEMA_VERSION}")
    if meta["job"] not in JOBS:
        bad.append(f"meta.job: {meta['job']!r} is not one of {', '.join(JOBS)}")
    bad += _check(meta["ptwbench"], {"version": str, "git_revision": (str, type(None))},
                  "meta.ptwbench")
    bad += _check(meta["environment"], ENVIRONMENT, "meta.environment")
    for i, r in enumerate(meta["runs"]):
        bad += (_check(r, RUN_KEYS, f"meta.runs[{i}]") if isinstance(r, dict)
                else [f"meta.runs[{i}]: not an object"])
    if meta["job"] != "sweep" and not meta["runs"]:
        bad.append("meta.runs: empty (a run or beer records every run)")
    return bad
