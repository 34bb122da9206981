"""`ptwbench workloads` (the registry: generators, host scenarios, knobs and defaults) and
`ptwbench import-check FILE` (parse and lay out a trace file, print a summary).

Bad input — an unknown name, a malformed trace — prints one line naming the file and line,
exits with status 2 and writes nothing (bench.errors.BadInput).
"""
from __future__ import annotations

import json
import sys
import textwrap

from tabulate import tabulate
from bench.errors import BadInput, nonneg_int


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) and v >= 1 << 16 and v & (v - 1) == 0:
        for unit, sh in (("G", 30), ("M", 20), ("K", 10)):
            if v >= 1 << sh and v % (1 << sh) == 0:
                return f"{v >> sh}{unit}i"
    return repr(v) if isinstance(v, str) else str(v)


# a knob's unit is in its name (issue 9); knobs without one count things (pages, accesses)
UNITS = {"_s": "s", "_ms": "ms", "_ns": "ns", "_us": "us", "_mb": "MB", "_mb_s": "MB/s",
         "_gbit_s": "Gbit/s", "_percent": "%", "_bytes": "B", "_accesses": "accesses",
         "_pages": "pages", "_frac": "fraction of the trace"}


def knob_unit(name: str) -> str:
    for suffix in sorted(UNITS, key=len, reverse=True):
        if name.endswith(suffix):
            return UNITS[suffix]
    return ""


def _knob_rows(knobs, width: int = 70):
    rows = []
    for k in knobs:
        h = k.help + (f" [{'|'.join(map(str, k.choices))}]" if k.choices else "")
        rows.append([k.name, _fmt(k.default), "\n".join(textwrap.wrap(h, width))])
    return rows


def registry_json() -> dict:
    from bench.catalog import scenario_files
    from bench.variants import VARIANTS
    from workloads.registry import GENERATORS, HOST_SCENARIOS, IMPORT_KNOBS, PROFILE_KNOBS

    from workloads.catalogue import RECIPES, index
    idx = index()

    def knobs(ks):
        return [{"name": k.name, "default": k.default, "unit": k.unit or knob_unit(k.name),
                 "source": k.source, "help": k.help, "choices": list(k.choices)} for k in ks]
    return {
        "generators": [{"name": e.name, "group": e.group, "stands_for": e.stands_for,
                        "knobs": knobs(e.knobs)} for e in GENERATORS.values()],
        "profile_knobs": knobs(PROFILE_KNOBS),
        "import": {"name": "import:PATH", "knobs": knobs(IMPORT_KNOBS)},
        "host_scenarios": [{"name": e.name, "stands_for": e.stands_for,
                            "knobs": knobs(e.knobs)} for e in HOST_SCENARIOS.values()],
        "variants": [{"name": n, "description": d} for n, (d, _f) in VARIANTS.items()],
        "micro_scenarios": [f"micro:{p.stem}" for p in scenario_files()],
        "compact": {"name": "compact:FILE", "knobs": knobs(PROFILE_KNOBS)},
        "catalogue": [{"name": f"catalogue:{n}", "stands_for": r.stands_for,
                       "recording": {k: idx.get(n, {}).get(k) for k in (
                           "accesses", "ns_per_access", "guest_ms", "bytes")}}
                      for n, r in RECIPES.items()],
    }


def registry_text() -> str:
    from bench.catalog import scenario_files
    from bench.variants import VARIANTS
    from workloads.registry import GENERATORS, HOST_SCENARIOS, IMPORT_KNOBS, PROFILE_KNOBS
    out = []

    def section(title, name, stands_for, knobs):
        out.append(f"{title} {name}")
        out.append(textwrap.indent(textwrap.fill(stands_for, 90), "    "))
        if knobs:
            out.append(textwrap.indent(tabulate(_knob_rows(knobs), headers=["knob", "default",
                                                                            "meaning"],
                                                tablefmt="simple"), "    "))
        out.append("")
    out.append("WORKLOAD GENERATORS  (ptwbench run NAME --knob K=V; every generator also takes "
               "the linux profile knobs)\n")
    for e in GENERATORS.values():
        section(f"[{e.group}]", e.name, e.stands_for, e.knobs)
    section("[import]", "import:PATH", "a trace file (valgrind lackey --trace-mem=yes, CSV "
            "vcpu,va,kind, NPZ), laid out by the linux profile; see workloads/importers.py",
            IMPORT_KNOBS)
    section("[compact]", "compact:FILE", "a trace in the compact form (.ptwc: `ptwbench "
            "record/convert --out F.ptwc`), laid out by the linux profile (its knobs apply); "
            "see docs/real-programs.md", ())
    from workloads.catalogue import RECIPES, index
    idx = index()
    for n, r in RECIPES.items():
        e = idx.get(n, {})
        section("[catalogue]", f"catalogue:{n}", f"{r.stands_for}. Recorded: "
                f"{e.get('accesses', '?')} accesses, {e.get('ns_per_access', '?')} ns an "
                f"access ({e.get('guest_ms', '?')} ms of guest time); takes the linux "
                f"profile knobs", ())
    section("[profile]", "linux", "the Linux/arm64 guest (docs/semantics.md §4), knobs shared "
            "by every generator and import", PROFILE_KNOBS)
    section("[micro]", "micro:NAME | micro:PATH", "a micro-scenario file run as a workload "
            "(docs/scenario-format.md; its host events are its own: --host scenario); shipped: "
            + ", ".join(p.stem for p in scenario_files()), ())
    out.append("HOST SCENARIOS  (ptwbench run NAME --host H --host-knob K=V)\n")
    for e in HOST_SCENARIOS.values():
        section("[host]", e.name, e.stands_for, e.knobs)
    out.append("HARDWARE VARIANTS  (ptwbench run NAME --variant V)\n")
    out.append(textwrap.indent(tabulate(
        [[n, "\n".join(textwrap.wrap(d, 76))] for n, (d, _f) in VARIANTS.items()],
        headers=["variant", "machine"], tablefmt="simple"), "    "))
    return "\n".join(out).rstrip() + "\n"


def cmd_workloads(args) -> int:
    text = (json.dumps(registry_json(), indent=1) + "\n") if args.json else registry_text()
    sys.stdout.write(text)
    return 0


def cmd_import_check(args) -> int:
    from workloads.base import WorkloadError
    from workloads.importers import import_trace
    from model.trace import KINDS
    try:
        wl = import_trace(args.file, args.format, limit=args.limit or None)
    except WorkloadError as e:
        raise BadInput(str(e)) from None
    tr = wl.trace
    import numpy as np
    counts = np.bincount(tr.kind, minlength=len(KINDS))
    m = wl.meta
    rows = [["file", args.file], ["format", m["format"]],
            ["accesses read", m["accesses_read"]],
            ["accesses traced (with fault attempts)", len(tr)],
            ["kinds", ", ".join(f"{k} {int(c)}" for k, c in zip(KINDS, counts) if c)],
            ["vCPUs", int(tr.vcpu.max()) + 1 if len(tr) else 0],
            ["pages touched", m["data_granules"]],
            ["guest page faults", m["guest_faults"]],
            ["fault-around PTEs", m["fault_around_ptes"]],
            ["table granules", m["table_granules"]],
            ["events", len(tr.events)]]
    sys.stdout.write(tabulate(rows, tablefmt="plain") + "\n")
    return 0


def register(sub) -> None:
    w = sub.add_parser("workloads", help="list workload generators and host scenarios with "
                                         "their knobs and defaults")
    w.add_argument("--json", action="store_true", help="the registry as JSON")
    w.set_defaults(func=cmd_workloads)
    from workloads.importers import FORMATS
    ic = sub.add_parser("import-check", help="parse a trace file (lackey, CSV, NPZ), lay it "
                                             "out with the linux profile, print a summary")
    ic.add_argument("file", metavar="FILE", help="a trace: lackey text, CSV vcpu,va,kind or NPZ")
    ic.add_argument("--format", choices=FORMATS, help="default: by extension (.csv, .npz; "
                                                      "anything else is lackey)")
    ic.add_argument("--limit", type=nonneg_int, default=None, help="stop after N accesses (0: all)")
    ic.set_defaults(func=cmd_import_check)
