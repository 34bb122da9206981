"""Re-record the catalogue: `python -m workloads.catalogue record [NAME ...]` (all entries
when no name is given); `python -m workloads.catalogue list`.

Each recipe (workloads/catalogue/__init__.py RECIPES) runs under `ptwbench record` (valgrind
lackey, streamed into the compact form), with the program's output thrown away and its
standard input /dev/null; the file replaces NAME.ptwc here, and catalogue.json gets the
recording's facts: package versions, valgrind's version, accesses, guest instructions, the
time per access and the guest time it covers, size and sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import HERE, INDEX, RECIPES, index, names

ROOT = HERE.parent.parent


def _fill(args, tmp: Path):
    return [a.replace("{here}", str(HERE)).replace("{tmp}", str(tmp)) for a in args]


def _version(cmd) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(name: str) -> dict:
    from ..compact import read_meta
    r = RECIPES[name]
    with tempfile.TemporaryDirectory(prefix=f"catalogue-{name}-") as t:
        tmp = Path(t)
        if r.setup:
            with open(tmp / "input", "wb") as f:
                subprocess.run(_fill(r.setup, tmp), stdout=f, check=True)
        out = tmp / f"{name}.ptwc"
        cmd = [sys.executable, "-m", "bench.cli", "record", "--out", str(out), "--skip",
               str(r.skip), "--limit", str(r.limit), "--no-stdin", "--", *_fill(r.command, tmp)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise SystemExit(f"catalogue {name}: {p.stderr.strip()}")
        meta = read_meta(out)
        dest = HERE / f"{name}.ptwc"
        shutil.copyfile(out, dest)
    data = dest.read_bytes()
    tpa = meta["time_per_access"]
    return {
        "file": dest.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "accesses": meta["accesses"], "runs": meta["runs"],
        "guest_instrs": meta["guest_instrs"], "ns_per_access": tpa["ns_per_access"],
        "guest_ms": round(meta["accesses"] * tpa["ns_per_access"] * 1e-6, 3),
        "clock_basis": tpa["basis"], "stands_for": r.stands_for,
        "recipe": {
            "command": list(r.command), "setup": list(r.setup), "skip": r.skip,
            "limit": r.limit, "record": f"ptwbench record --out {name}.ptwc --skip {r.skip} "
            f"--limit {r.limit} --no-stdin -- {' '.join(r.command)}",
            "packages": {p: _version(["dpkg-query", "-W", "-f", "${Version}", p])
                         for p in r.packages},
            "valgrind": _version(["valgrind", "--version"]),
            "os": _version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        },
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("record", "list"):
        print("usage: python -m workloads.catalogue record [NAME ...] | list", file=sys.stderr)
        return 2
    if argv[0] == "list":
        idx = index()
        for n in names():
            e = idx.get(n, {})
            print(f"{n:14} {e.get('accesses', '-'):>9} accesses {e.get('bytes', '-'):>8} B  "
                  f"{e.get('ns_per_access', '-')} ns/access  {RECIPES[n].stands_for[:60]}")
        return 0
    todo = argv[1:] or names()
    bad = [n for n in todo if n not in RECIPES]
    if bad:
        print(f"unknown catalogue entry {bad[0]!r} (one of {', '.join(names())})",
              file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)",
              file=sys.stderr)
        return 2
    idx = index()
    for n in todo:
        idx[n] = record(n)
        print(f"{n}: {idx[n]['accesses']} accesses, {idx[n]['bytes']} bytes", file=sys.stderr)
        tmp = INDEX.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, INDEX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
