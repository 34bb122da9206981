"""Checks shared by every spec format (the beer spec, bench/beer.py; the sweep spec,
bench/sweep.py): names of workloads, hosts and variants, seeds, engines, knob values through the
registry.  Each raises SpecError with one line naming the key."""
from __future__ import annotations

ENGINES = ("numpy", "reference")
MAX_SEEDS = 100_000             # seeds of one spec: 10x a sweep's point limit (bench/sweep.py)


class SpecError(ValueError):
    """A bad spec: one line, "FILE: key: what"."""


def type_name(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def check_seeds(v, at: str) -> list[int]:
    if isinstance(v, bool) or not isinstance(v, (int, list)):
        raise SpecError(f"{at}: expected a list of integers or a count, not {type_name(v)}")
    if isinstance(v, int):
        if v < 1:
            raise SpecError(f"{at}: a seed count must be >= 1, not {v}")
        if v > MAX_SEEDS:                 # before the list is built (10^8 seeds: 3.9 GB)
            raise SpecError(f"{at}: {v:,} seeds is over the limit of {MAX_SEEDS:,}")
        return list(range(v))
    if not v:
        raise SpecError(f"{at}: empty list")
    for s in v:
        if isinstance(s, bool) or not isinstance(s, int):
            raise SpecError(f"{at}: {s!r} is not an integer")
        if s < 0:
            raise SpecError(f"{at}: seed {s} is negative")
    if len(set(v)) != len(v):
        raise SpecError(f"{at}: duplicate seeds")
    return list(v)


def check_engine(v, at: str) -> str:
    if v not in ENGINES:
        raise SpecError(f"{at}: {v!r} is not numpy or reference")
    return v


def check_str_list(v, at: str, default: list[str]) -> list[str]:
    if v is None:
        return list(default)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SpecError(f"{at}: expected a list of strings")
    if not v:
        raise SpecError(f"{at}: empty list")
    if len(set(v)) != len(v):
        raise SpecError(f"{at}: duplicate entries")
    return list(v)


def check_knobs(workload: str, combo: dict, at: str) -> dict:
    """Coerce one knob combination of a generator (own + profile knobs) through the
    registry; returns the coerced values of the knobs given."""
    from workloads import registry as reg
    from workloads.base import WorkloadError
    from workloads.linux import PROFILE_KNOBS
    own = {k: x for k, x in combo.items() if k not in reg.PROFILE_KNOB_NAMES}
    prof = {k: x for k, x in combo.items() if k in reg.PROFILE_KNOB_NAMES}
    try:
        entry = reg.generator_entry(workload)
        resolved = entry.resolve(own)
        reg.make_profile(prof, workload)
        pk = {k.name: k for k in PROFILE_KNOBS}
        coerced = {k: resolved[k] for k in own}
        coerced.update({k: pk[k].coerce(x, workload) for k, x in prof.items()})
        from workloads.footprint import check_footprint
        check_footprint(workload, resolved, int(coerced.get("ram_mb", 0)))
    except WorkloadError as e:
        raise SpecError(f"{at}: {e}") from None
    return {k: coerced[k] for k in combo}


def check_host_knobs(host: str, combo: dict, at: str) -> dict:
    from workloads import registry as reg
    from workloads.base import WorkloadError
    try:
        resolved = reg.host_entry(host).resolve(combo)
    except WorkloadError as e:
        raise SpecError(f"{at}: {e}") from None
    return {k: resolved[k] for k in combo}

def check_variant(v, at: str) -> str:
    from .variants import VARIANTS
    if v not in VARIANTS:
        raise SpecError(f"{at}: unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    return v


def check_host(h: str, at: str, extra: tuple[str, ...] = ("none",)) -> str:
    """A host scenario name, or several joined by + (a chain), or one of `extra`."""
    from workloads import registry as reg
    if h in extra:
        return h
    for part in h.split("+"):
        if part not in reg.HOST_SCENARIOS:
            raise SpecError(f"{at}: unknown host scenario {part!r} "
                            f"(known: {', '.join(extra + tuple(reg.HOST_SCENARIOS))})")
    return h


def check_workload(w, at: str) -> str:
    """A generator name, `micro:NAME|PATH` (a scenario file), `trace:DIR` (a converted trace
    directory), `import:PATH` (a trace file), `compact:FILE` (a compact trace) or `catalogue:NAME` (a
    shipped real program, workloads/catalogue)."""
    from pathlib import Path

    from workloads import registry as reg
    from workloads.base import WorkloadError
    if not isinstance(w, str):
        raise SpecError(f"{at}: {w!r} is not a workload name")
    if w.startswith("micro:"):
        from .catalog import micro_path
        try:
            micro_path(w.split(":", 1)[1])
        except WorkloadError as e:
            raise SpecError(f"{at}: {e}") from None
    elif w.startswith("trace:"):
        if not Path(w.split(":", 1)[1]).is_dir():
            raise SpecError(f"{at}: {w!r}: no such trace directory")
        from workloads.trace_dir import check_format
        try:
            check_format(Path(w.split(":", 1)[1]))
        except WorkloadError as e:
            raise SpecError(f"{at}: {e}") from None
    elif w.startswith("import:"):
        if not Path(w.split(":", 1)[1]).is_file():
            raise SpecError(f"{at}: {w!r}: no such trace file")
    elif w.startswith("catalogue:"):
        from workloads.catalogue import path_of
        try:
            path_of(w.split(":", 1)[1])
        except WorkloadError as e:
            raise SpecError(f"{at}: {e}") from None
    elif w.startswith("compact:"):
        if not Path(w.split(":", 1)[1]).is_file():
            raise SpecError(f"{at}: {w!r}: no such compact trace file")
    elif w not in reg.GENERATORS:
        raise SpecError(f"{at}: unknown workload {w!r} (known: {', '.join(reg.GENERATORS)}, "
                        f"micro:NAME|PATH, trace:DIR, import:PATH, compact:FILE, catalogue:NAME)")
    return w
