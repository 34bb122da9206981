"""A trace directory's scenario and events as JSON (issue 23: no pickle in trace directories).

* `scenario.json`: the workload's scenario (no steps) in the scenario file format
  (docs/scenario-format.md, version 1), read back through `model.scenario_io.parse_scenario`,
  which validates it strictly.
* `events.json`: {"version": 1, "events": [[pos, step_index, {"op": OP, field: value, ...}],
  ...]}: the trace's events (`model.trace.Event`), each Step with only the fields that differ
  from the dataclass defaults; `pages` (host ops) as a list of page indices.  Read back
  strictly: known ops and fields, JSON types checked, positions in order within the trace.

JSON holds numbers, strings and lists only: reading a crafted directory cannot run code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from model.arch import GRANULES
from model.scenario import INTERNAL_OPS, OPS, Scenario, Step

from .base import WorkloadError

EVENTS_VERSION = 1
_GRANULE_NAME = {v: k for k, v in GRANULES.items()}
_STEP_DEFAULTS = {f.name: f.default for f in fields(Step) if f.name not in ("op", "pages")}
_INT = ("vcpu", "va", "first", "count", "asid", "child")
_STR = ("kind", "slot")
_BOOL = ("initially_set", "eager_split", "nonleaf")
_OPT_BOOL = ("ha", "hd", "haft")
_INTS = ("vas", "descs", "tables", "fill")
assert set(_INT + _STR + _BOOL + _OPT_BOOL + _INTS) == set(_STEP_DEFAULTS)


# ---- the scenario ------------------------------------------------------------------------
def scenario_dict(scn: Scenario) -> dict:
    """`scn` (its steps left out) in the scenario file format, version 1."""
    m = asdict(scn.machine)
    m["granule"] = _GRANULE_NAME[scn.machine.granule]
    return {"version": 1, "name": scn.name, "machine": m, "guest": asdict(scn.guest),
            "memslots": [asdict(s) for s in scn.memslots], "vmm": asdict(scn.vmm),
            "mappings": [asdict(x) for x in scn.mappings]}


def read_scenario(path: Path) -> Scenario:
    from model.scenario import ScenarioError
    from model.scenario_io import load_scenario
    try:
        return load_scenario(path)
    except ScenarioError as e:
        raise WorkloadError(str(e)) from None


# ---- the events --------------------------------------------------------------------------
def _step_json(st: Step) -> dict:
    out = {"op": st.op}
    for k, default in _STEP_DEFAULTS.items():
        v = getattr(st, k)
        if v != default:
            out[k] = [int(x) for x in v] if k in _INTS else v
    if st.pages is not None:
        out["pages"] = np.asarray(st.pages, dtype=np.int64).tolist()
    return out


def events_text(events) -> str:
    body = ",\n".join(json.dumps([int(pos), int(i), _step_json(st)], separators=(",", ":"))
                      for pos, i, st in events)
    return f'{{"version": {EVENTS_VERSION}, "events": [\n{body}\n]}}\n'


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(k: str, v, at: str):
    """One Step field from JSON, type-checked."""
    ok = ((k in _INT and _is_int(v)) or (k in _STR and isinstance(v, str))
          or (k in _BOOL and isinstance(v, bool))
          or (k in _OPT_BOOL and (v is None or isinstance(v, bool)))
          or (k in _INTS + ("pages",) and isinstance(v, list) and all(map(_is_int, v))))
    if not ok:
        raise WorkloadError(f"{at}.{k}: {type(v).__name__} is not this field's type")
    if k == "pages":
        return np.asarray(v, dtype=np.int64)
    return tuple(v) if k in _INTS else v


def _step(item, at: str) -> Step:
    if not isinstance(item, dict) or item.get("op") not in OPS + INTERNAL_OPS:
        raise WorkloadError(f"{at}: not a step (an object with a known op)")
    kw = {}
    for k, v in item.items():
        if k == "op":
            continue
        if k not in _STEP_DEFAULTS and k != "pages":
            raise WorkloadError(f"{at}.{k}: unknown step field")
        kw[k] = _field(k, v, at)
    return Step(item["op"], **kw)


def parse_events(data, source: str, n: int) -> list:
    """The events of a trace of `n` accesses, strictly checked (one line naming the event)."""
    if not isinstance(data, dict) or data.get("version") != EVENTS_VERSION \
            or not isinstance(data.get("events"), list):
        raise WorkloadError(f"{source}: not a version-{EVENTS_VERSION} events file")
    out, last = [], 0
    for j, e in enumerate(data["events"]):
        at = f"{source}: events[{j}]"
        if not (isinstance(e, list) and len(e) == 3 and _is_int(e[0]) and _is_int(e[1])):
            raise WorkloadError(f"{at}: not [position, step index, step]")
        if not last <= e[0] <= n:
            raise WorkloadError(f"{at}: position {e[0]} is outside {last}..{n} (events are "
                                f"in trace order)")
        last = e[0]
        out.append((e[0], e[1], _step(e[2], at)))
    return out


def read_json(path: Path):
    """A JSON file of a trace directory (one line on any problem)."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise WorkloadError(f"{path}: missing (not a converted trace directory)") from None
    except OSError as e:
        raise WorkloadError(f"{path}: unreadable: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise WorkloadError(f"{path}: not valid JSON: {str(e).splitlines()[0]}") from None


# ---- the aging state (workloads/aging.py AgingState: aging past the recorded window) --------
def aging_text(state) -> str:
    from dataclasses import asdict as _asdict
    return json.dumps({"version": 1, "rule": _asdict(state.rule), "period": int(state.period),
                       "granule_shift": int(state.granule_shift),
                       "spaces": [[int(a), np.asarray(p, dtype=np.int64).tolist(), int(h)]
                                  for a, (p, h) in sorted(state.spaces.items())],
                       "pass_pos": [int(x) for x in state.pass_pos]},
                      separators=(",", ":")) + "\n"


def parse_aging(data, source: str):
    """An AgingState from aging.json, strictly checked."""
    from .aging import AgingRule, AgingState
    want = {"version", "rule", "period", "granule_shift", "spaces", "pass_pos"}
    if not isinstance(data, dict) or set(data) != want or data["version"] != 1:
        raise WorkloadError(f"{source}: not a version-1 aging state")
    rule = data["rule"]
    kinds = {f.name: f.type for f in fields(AgingRule)}
    if not isinstance(rule, dict) or set(rule) - set(kinds) or not all(
            isinstance(v, (str, int, float, bool)) for v in rule.values()):
        raise WorkloadError(f"{source}: rule: not an aging rule")
    ok = (_is_int(data["period"]) and _is_int(data["granule_shift"])
          and isinstance(data["pass_pos"], list) and all(map(_is_int, data["pass_pos"]))
          and isinstance(data["spaces"], list) and all(
              isinstance(s, list) and len(s) == 3 and _is_int(s[0]) and _is_int(s[2])
              and isinstance(s[1], list) and all(map(_is_int, s[1])) for s in data["spaces"]))
    if not ok:
        raise WorkloadError(f"{source}: period, granule_shift, spaces or pass_pos malformed")
    spaces = {a: (np.asarray(p, dtype=np.int64), h) for a, p, h in data["spaces"]}
    return AgingState(AgingRule(**rule), data["period"], data["granule_shift"], spaces,
                      list(data["pass_pos"]))
