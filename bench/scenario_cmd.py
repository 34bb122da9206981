"""`ptwbench scenario FILE`: what every policy does with a micro-scenario (docs/scenario-format.md)."""
from __future__ import annotations

import json

from tabulate import tabulate

from model.policies import DEFAULT_ORDER
from model.engine import run_engine
from model.reference import run_reference
from model.results import S2_CLASSES, PolicyResult
from model.scenario import Scenario


def _pages(pages) -> str:
    return "[" + ",".join(str(p) for p in pages) + "]"


def scenario_json(scn: Scenario, results: dict[str, PolicyResult]) -> dict:
    return {"scenario": scn.name, "policies": {p: r.as_json() for p, r in results.items()}}


def scenario_table(scn: Scenario, results: dict[str, PolicyResult]) -> str:
    pols = list(results)
    rows: list[list] = []

    def row(label, f):
        rows.append([label] + [f(results[p]) for p in pols])
    for c in S2_CLASSES:
        row(f"s2 {c}", lambda r, c=c: r.s2_faults[c])
    row("double_faults", lambda r: r.double_faults)
    row("uffd events", lambda r: " ".join(
        f"{e.step}:{e.slot}[{e.page}]{e.mode[0]}{'W' if e.write else 'R'}"
        for e in r.uffd_events) or "-")
    for k in ("mmio_exits", "vcpu_run_failures", "guest_aborts", "stage1_faults"):
        row(k, lambda r, k=k: getattr(r, k))
    nh = max((len(r.harvests) for r in results.values()), default=0)
    for i in range(nh):
        row(f"harvest #{i}", lambda r, i=i: (
            f"{r.harvests[i].step}:{r.harvests[i].slot}{_pages(r.harvests[i].dirty_pages)}"
            if i < len(r.harvests) else "-"))
    for s in scn.memslots:
        row(f"dirty {s.name}", lambda r, s=s: _pages(r.dirty_pages[s.name]))
    for s in scn.memslots:
        row(f"written {s.name}", lambda r, s=s: _pages(r.written_pages[s.name]))
    m = {p: r.dirty_metrics() for p, r in results.items()}
    row("dirty false +", lambda r: m[r.policy]["dirty_false_positive"])
    row("uffd false WRITE", lambda r: r.uffd_counts()["uffd_false_write"])
    title = f"scenario: {scn.name}  ({scn.source})"
    return title + "\n" + tabulate(rows, headers=["", *pols], tablefmt="simple")


def run(scn: Scenario, policies=DEFAULT_ORDER, as_json: bool = False,
        engine: str = "numpy") -> str:
    results = (run_reference if engine == "reference" else run_engine)(scn, policies)
    if as_json:
        return json.dumps(scenario_json(scn, results))
    return scenario_table(scn, results)
