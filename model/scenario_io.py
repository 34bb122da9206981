"""Reading and strictly validating scenario files (docs/scenario-format.md, version 1).

`load_scenario(path)` reads a .toml or .json file; `parse_scenario(data, source)` validates the
decoded dict and returns a `model.scenario.Scenario`.  Any problem raises `ScenarioError` with a
single line `"{source}: {key}: {what is wrong}"`, where `key` is a dotted path such as
`machine.granule`, `memslots[1].uffd`, `mappings[0].va` or `steps[3].slot` (the step number is
the 0-based index into `steps`).  File-level problems (unreadable, wrong extension, unparsable,
top level not a table) use the pseudo-key `<file>`.

Decisions where docs/scenario-format.md is silent:
  * `vcpu` defaults to 0 when a step omits it; it is accepted only on the ops whose fields list
    it (`access`, `clear_af`).
  * Step fields listed without a default in docs/scenario-format.md are required (access: va, kind;
    clear_af: va; punch_hole/harvest/enable_dirty_log: slot; zap/swap_out/uffd_wp: slot, first,
    count).  set_tcr's ha/hd/haft are each optional but at least one must be given.
  * Keys left out elsewhere take the defaults of the dataclasses in model/scenario.py (which
    are not always the example values shown in docs/scenario-format.md); `name` defaults to the file stem.
  * Addresses (va, ipa) must be >= 0; a memslot must end at or below 2**48 (48-bit output
    addresses, model/arch.py OA_TOP_BIT).
  * Slot names must be non-empty strings.
  * JSON objects with a repeated key are rejected (TOML already rejects them).
  * `dirty` is accepted with any `writable`; on a read-only leaf it has no effect.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .arch import GRANULES, HOST_PAGE, OA_TOP_BIT, Geometry, GeometryError
from .scenario import (ACCESS_KINDS, BACKINGS, HW_UPDATE, MMIO_STORE, OPS, UFFD_MODES,
                       UFFD_RESOLVE, Guest, Machine, Mapping, Memslot, Scenario,
                       ScenarioError, Step, Vmm)
from .stage1 import TableLayoutError, build_tables
from .x86 import ISAS

_MISSING = object()

TOP_KEYS = {"version", "name", "machine", "guest", "memslots", "vmm", "mappings", "steps"}
MACHINE_KEYS = {"granule", "va_bits", "hafdbs", "haft", "hw_update", "at_sets_af", "isa"}
GUEST_KEYS = {"tcr_ha", "tcr_hd", "tcr2_haft", "pt_slot", "vm_protected", "pt_order"}
MEMSLOT_KEYS = {"name", "ipa", "pages", "readonly", "log_dirty", "backing", "populated", "uffd",
                "uffd_resolve"}
VMM_KEYS = {"mmio_store"}
MAPPING_KEYS = {"va", "ipa", "pages", "af", "writable", "dirty", "executable"}

MAX_VCPUS = 512                     # arm64 KVM_MAX_VCPUS = VGIC_V3_MAX_CPUS
# docs/scenario-format.md "Steps": the fields of each op (besides "op" itself).
STEP_FIELDS = {
    "access": {"vcpu", "va", "kind"},
    "clear_af": {"vcpu", "va"},
    "set_tcr": {"ha", "hd", "haft"},
    "punch_hole": {"slot"},
    "zap": {"slot", "first", "count"},
    "swap_out": {"slot", "first", "count"},
    "uffd_wp": {"slot", "first", "count"},
    "enable_dirty_log": {"slot", "initially_set", "eager_split"},
    "harvest": {"slot"},
    "flush_tlb": set(),
}
assert set(STEP_FIELDS) == set(OPS)

MAX_IPA = 1 << (OA_TOP_BIT + 1)


def _one_line(text: str) -> str:
    # Messages must be one line: fold any line break (parser messages, odd paths) into a space.
    return " ".join(str(text).splitlines())


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"float {v!r}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    if v is None:
        return "null"
    return type(v).__name__


class _Ctx:
    """Carries the source name so every error has the same shape."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, what: str) -> ScenarioError:
        return ScenarioError(_one_line(f"{self.source}: {key}: {what}"))

    # -- structural helpers --------------------------------------------------------------

    def table(self, value: Any, key: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table/object, got {_type_name(value)}")
        for k in value:
            if k not in allowed:
                raise self.error(f"{key}.{k}" if key else str(k), "unknown key")
        return value

    def array(self, value: Any, key: str) -> list:
        if not isinstance(value, list):
            raise self.error(key, f"must be an array, got {_type_name(value)}")
        return value

    def get(self, tbl: dict, name: str, key: str, kind: str, default: Any = _MISSING) -> Any:
        """Fetch `name` from `tbl` and check its type; `kind` is int | bool | str."""
        if name not in tbl:
            if default is _MISSING:
                raise self.error(key, "missing required key")
            return default
        v = tbl[name]
        if kind == "int":
            # bool is a subclass of int in Python: reject it explicitly.
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.error(key, f"must be an integer, got {_type_name(v)}")
        elif kind == "bool":
            if not isinstance(v, bool):
                raise self.error(key, f"must be a boolean, got {_type_name(v)}")
        elif kind == "str":
            if not isinstance(v, str):
                raise self.error(key, f"must be a string, got {_type_name(v)}")
        else:  # pragma: no cover - programming error
            raise AssertionError(kind)
        return v

    def choice(self, tbl: dict, name: str, key: str, allowed: tuple, default: Any) -> str:
        v = self.get(tbl, name, key, "str", default)
        if v not in allowed:
            raise self.error(key, f"{v!r} is not one of {', '.join(allowed)}")
        return v


# ---------------------------------------------------------------------------------------------
# Reading files


def load_scenario(path: str | Path) -> Scenario:
    source = str(path)
    ctx = _Ctx(source)
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".toml", ".json"):
        raise ctx.error("<file>", f"extension {p.suffix!r} is neither .toml nor .json")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ctx.error("<file>", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ctx.error("<file>", f"not UTF-8 text: {e.reason} at byte {e.start}") from None
    if ext == ".toml":
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as e:
            raise ctx.error("<file>", f"not valid TOML: {e}") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateKey as e:
            raise ctx.error("<file>", f"not valid JSON: duplicate key {e.args[0]!r}") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise ctx.error("<file>", f"not valid JSON: {e}") from None
    return parse_scenario(data, source=source)


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise ctx.error("<file>", f"top level must be a table/object, got {_type_name(data)}")
    ctx.table(data, "", TOP_KEYS)

    version = ctx.get(data, "version", "version", "int")
    if version != 1:
        raise ctx.error("version", f"unsupported version {version} (only 1 is supported)")
    name = ctx.get(data, "name", "name", "str", Path(source).stem)

    machine = _parse_machine(ctx, data.get("machine", {}))
    geo = machine.geometry
    memslots = _parse_memslots(ctx, data.get("memslots", _MISSING))
    guest = _parse_guest(ctx, data.get("guest", _MISSING), memslots, machine)
    vmm_t = ctx.table(data.get("vmm", {}), "vmm", VMM_KEYS)
    vmm = Vmm(mmio_store=ctx.choice(vmm_t, "mmio_store", "vmm.mmio_store", MMIO_STORE, "ignore"))
    mappings = _parse_mappings(ctx, data.get("mappings", []), memslots, geo)
    steps = _parse_steps(ctx, data.get("steps", []), memslots, mappings, geo.granule)

    scn = Scenario(name=name, machine=machine, guest=guest, memslots=memslots, vmm=vmm,
                   mappings=mappings, steps=steps, source=source)
    # Overlapping mappings and a page-table slot too small for the tables are found by the
    # builder itself (docs/scenario-format.md "Stage-1 table layout": running out of pt_slot is an error).
    try:
        build_tables(scn)
    except TableLayoutError as e:
        raise ctx.error(e.key, str(e)) from None
    return scn


def _parse_machine(ctx: _Ctx, value: Any) -> Machine:
    t = ctx.table(value, "machine", MACHINE_KEYS)
    gname = ctx.choice(t, "granule", "machine.granule", tuple(GRANULES), "4k")
    granule = GRANULES[gname]
    va_bits = ctx.get(t, "va_bits", "machine.va_bits", "int", Machine.va_bits)
    try:
        Geometry(granule, va_bits)  # "must give 2..4 levels for the granule"
    except GeometryError as e:
        raise ctx.error("machine.va_bits", str(e)) from None
    hafdbs = ctx.get(t, "hafdbs", "machine.hafdbs", "int", Machine.hafdbs)
    if hafdbs not in (0, 1, 2):
        raise ctx.error("machine.hafdbs", f"{hafdbs} is not 0, 1 or 2")
    return Machine(
        granule=granule,
        va_bits=va_bits,
        hafdbs=hafdbs,
        haft=ctx.get(t, "haft", "machine.haft", "bool", Machine.haft),
        hw_update=ctx.choice(t, "hw_update", "machine.hw_update", HW_UPDATE, Machine.hw_update),
        at_sets_af=ctx.get(t, "at_sets_af", "machine.at_sets_af", "bool", Machine.at_sets_af),
        # optional, arm64 by default: the x86 comparison machines (docs/x86.md)
        isa=ctx.choice(t, "isa", "machine.isa", ISAS, Machine.isa),
    )


def _parse_memslots(ctx: _Ctx, value: Any) -> tuple[Memslot, ...]:
    if value is _MISSING:
        raise ctx.error("memslots", "missing required key (at least one memslot is needed)")
    items = ctx.array(value, "memslots")
    if not items:
        raise ctx.error("memslots", "at least one memslot is needed")
    slots: list[Memslot] = []
    for i, item in enumerate(items):
        k = f"memslots[{i}]"
        t = ctx.table(item, k, MEMSLOT_KEYS)
        name = ctx.get(t, "name", f"{k}.name", "str")
        if not name:
            raise ctx.error(f"{k}.name", "must not be empty")
        if any(s.name == name for s in slots):
            raise ctx.error(f"{k}.name", f"duplicate slot name {name!r}")
        ipa = ctx.get(t, "ipa", f"{k}.ipa", "int")
        if ipa < 0 or ipa % HOST_PAGE:  # "page-aligned" (4 KiB host pages)
            raise ctx.error(f"{k}.ipa", f"{ipa:#x} is not a 4K-aligned IPA")
        pages = ctx.get(t, "pages", f"{k}.pages", "int")
        if pages < 1:
            raise ctx.error(f"{k}.pages", f"{pages} is less than 1")
        if ipa + pages * HOST_PAGE > MAX_IPA:
            raise ctx.error(f"{k}.pages", f"slot ends at {ipa + pages * HOST_PAGE:#x}, beyond "
                                          f"the 48-bit IPA space")
        backing = ctx.choice(t, "backing", f"{k}.backing", BACKINGS, Memslot.backing)
        uffd = ctx.choice(t, "uffd", f"{k}.uffd", UFFD_MODES, Memslot.uffd)
        if uffd == "minor" and backing not in ("shmem", "hugetlb"):
            # "minor (shmem/hugetlb only)"
            raise ctx.error(f"{k}.uffd", f"'minor' needs shmem or hugetlb backing, not {backing!r}")
        slot = Memslot(
            name=name, ipa=ipa, pages=pages,
            readonly=ctx.get(t, "readonly", f"{k}.readonly", "bool", Memslot.readonly),
            log_dirty=ctx.get(t, "log_dirty", f"{k}.log_dirty", "bool", Memslot.log_dirty),
            backing=backing,
            populated=ctx.get(t, "populated", f"{k}.populated", "bool", Memslot.populated),
            uffd=uffd,
            uffd_resolve=ctx.choice(t, "uffd_resolve", f"{k}.uffd_resolve", UFFD_RESOLVE,
                                    Memslot.uffd_resolve),
        )
        for j, other in enumerate(slots):
            if slot.ipa < other.end and other.ipa < slot.end:
                raise ctx.error(k, f"slot {name!r} [{slot.ipa:#x}, {slot.end:#x}) overlaps "
                                   f"memslots[{j}] {other.name!r} [{other.ipa:#x}, {other.end:#x})")
        slots.append(slot)
    return tuple(slots)


def _parse_guest(ctx: _Ctx, value: Any, slots: tuple[Memslot, ...], machine: Machine) -> Guest:
    if value is _MISSING:
        raise ctx.error("guest.pt_slot", "missing required key")
    t = ctx.table(value, "guest", GUEST_KEYS)
    pt_slot = ctx.get(t, "pt_slot", "guest.pt_slot", "str")
    idx = next((i for i, s in enumerate(slots) if s.name == pt_slot), None)
    if idx is None:
        raise ctx.error("guest.pt_slot", f"no memslot is named {pt_slot!r}")
    g = machine.granule
    if slots[idx].ipa % g:
        # Tables are allocated in granules of pt_slot, so it must be granule-aligned.
        raise ctx.error(f"memslots[{idx}].ipa",
                        f"page-table slot {pt_slot!r} at {slots[idx].ipa:#x} is not "
                        f"{g // 1024}K-aligned (the granule)")
    return Guest(
        tcr_ha=ctx.get(t, "tcr_ha", "guest.tcr_ha", "bool", Guest.tcr_ha),
        tcr_hd=ctx.get(t, "tcr_hd", "guest.tcr_hd", "bool", Guest.tcr_hd),
        tcr2_haft=ctx.get(t, "tcr2_haft", "guest.tcr2_haft", "bool", Guest.tcr2_haft),
        pt_slot=pt_slot,
        vm_protected=ctx.get(t, "vm_protected", "guest.vm_protected", "bool",
                             Guest.vm_protected),
        pt_order=_pt_order(ctx, t),
    )


def _pt_order(ctx: _Ctx, t: dict) -> str:
    from .stage1 import PT_ORDERS
    v = ctx.get(t, "pt_order", "guest.pt_order", "str", Guest.pt_order)
    if v not in PT_ORDERS:
        raise ctx.error("guest.pt_order", f"{v!r} is not one of {', '.join(PT_ORDERS)}")
    return v


def _parse_mappings(ctx: _Ctx, value: Any, slots: tuple[Memslot, ...],
                    geo: Geometry) -> tuple[Mapping, ...]:
    g = geo.granule
    out: list[Mapping] = []
    for i, item in enumerate(ctx.array(value, "mappings")):
        k = f"mappings[{i}]"
        t = ctx.table(item, k, MAPPING_KEYS)
        va = ctx.get(t, "va", f"{k}.va", "int")
        if va < 0 or va % g:
            raise ctx.error(f"{k}.va", f"{va:#x} is not a {g // 1024}K-aligned VA")
        ipa = ctx.get(t, "ipa", f"{k}.ipa", "int")
        if ipa < 0 or ipa % g:
            raise ctx.error(f"{k}.ipa", f"{ipa:#x} is not a {g // 1024}K-aligned IPA")
        pages = ctx.get(t, "pages", f"{k}.pages", "int", Mapping.pages)
        if pages < 1:
            raise ctx.error(f"{k}.pages", f"{pages} is less than 1")
        size = pages * g
        # Only TTBR0 (low) VAs are modelled: the whole range must lie below 2**va_bits.
        if va + size > 1 << geo.va_bits:
            raise ctx.error(f"{k}.va", f"range [{va:#x}, {va + size:#x}) exceeds the "
                                       f"{geo.va_bits}-bit VA space")
        # "inside a memslot": the whole IPA range within one slot.
        slot = next((s for s in slots if s.contains(ipa)), None)
        if slot is None:
            raise ctx.error(f"{k}.ipa", f"{ipa:#x} is outside every memslot")
        if ipa + size > slot.end:
            raise ctx.error(f"{k}.ipa", f"range [{ipa:#x}, {ipa + size:#x}) runs past the end "
                                        f"of slot {slot.name!r} at {slot.end:#x}")
        out.append(Mapping(
            va=va, ipa=ipa, pages=pages,
            af=ctx.get(t, "af", f"{k}.af", "bool", Mapping.af),
            writable=ctx.get(t, "writable", f"{k}.writable", "bool", Mapping.writable),
            dirty=ctx.get(t, "dirty", f"{k}.dirty", "bool", Mapping.dirty),
            executable=ctx.get(t, "executable", f"{k}.executable", "bool", Mapping.executable),
        ))
    return tuple(out)


def _parse_steps(ctx: _Ctx, value: Any, slots: tuple[Memslot, ...],
                 mappings: tuple[Mapping, ...], granule: int) -> tuple[Step, ...]:
    by_name = {s.name: s for s in slots}
    logging = {s.name for s in slots if s.log_dirty}   # slots whose dirty logging is on
    out: list[Step] = []
    for i, item in enumerate(ctx.array(value, "steps")):
        k = f"steps[{i}]"
        if not isinstance(item, dict):
            raise ctx.error(k, f"must be a table/object, got {_type_name(item)}")
        op = ctx.get(item, "op", f"{k}.op", "str")
        if op not in STEP_FIELDS:
            raise ctx.error(f"{k}.op", f"unknown op {op!r} (one of {', '.join(OPS)})")
        for f in item:
            if f != "op" and f not in STEP_FIELDS[op]:
                raise ctx.error(f"{k}.{f}", f"unknown key for op {op!r}")
        fields: dict[str, Any] = {"op": op}
        _parse_step_access(ctx, item, k, op, mappings, granule, fields)
        if "slot" in STEP_FIELDS[op]:
            _parse_step_slot(ctx, item, k, op, by_name, logging, fields)
        out.append(Step(**fields))
    return tuple(out)


def _parse_step_access(ctx: _Ctx, item: dict, k: str, op: str, mappings: tuple[Mapping, ...],
                       granule: int, fields: dict[str, Any]) -> None:
    """A step's vCPU, VA and access kind; set_tcr's controls."""
    if "vcpu" in STEP_FIELDS[op]:
        vcpu = ctx.get(item, "vcpu", f"{k}.vcpu", "int", 0)
        if vcpu < 0:
            raise ctx.error(f"{k}.vcpu", f"{vcpu} is negative")
        if vcpu >= MAX_VCPUS:      # KVM_MAX_VCPUS (arch/arm64/include/asm/kvm_host.h)
            raise ctx.error(f"{k}.vcpu", f"{vcpu} is not below {MAX_VCPUS} (KVM_MAX_VCPUS)")
        fields["vcpu"] = vcpu
    if "va" in STEP_FIELDS[op]:
        va = ctx.get(item, "va", f"{k}.va", "int")
        if not any(m.va <= va < m.va + m.pages * granule for m in mappings):
            raise ctx.error(f"{k}.va", f"unmapped VA {va:#x} (inside no mapping)")
        fields["va"] = va
    if op == "access":
        fields["kind"] = ctx.choice(item, "kind", f"{k}.kind", ACCESS_KINDS, _MISSING)
    if op == "set_tcr":
        for f in ("ha", "hd", "haft"):
            fields[f] = ctx.get(item, f, f"{k}.{f}", "bool", None)
        if fields["ha"] is None and fields["hd"] is None and fields["haft"] is None:
            raise ctx.error(k, "set_tcr needs at least one of ha, hd, haft")


def _parse_step_slot(ctx: _Ctx, item: dict, k: str, op: str, by_name: dict[str, Memslot],
                     logging: set[str], fields: dict[str, Any]) -> None:
    """A host step's slot, page range and dirty-log knobs; `logging` tracks the slots whose
    dirty logging is on so far."""
    name = ctx.get(item, "slot", f"{k}.slot", "str")
    if name not in by_name:
        raise ctx.error(f"{k}.slot", f"unknown slot {name!r}")
    slot = by_name[name]
    fields["slot"] = name
    if "first" in STEP_FIELDS[op]:
        first = ctx.get(item, "first", f"{k}.first", "int")
        if not 0 <= first < slot.pages:
            raise ctx.error(f"{k}.first", f"{first} is outside slot {name!r} "
                                          f"(pages 0..{slot.pages - 1})")
        count = ctx.get(item, "count", f"{k}.count", "int")
        if count < 1:
            raise ctx.error(f"{k}.count", f"{count} is less than 1")
        if first + count > slot.pages:
            raise ctx.error(f"{k}.count", f"pages {first}..{first + count - 1} run past "
                                          f"the end of slot {name!r} ({slot.pages} pages)")
        fields["first"], fields["count"] = first, count
    if op == "uffd_wp" and slot.uffd != "wp":
        raise ctx.error(f"{k}.slot", f"slot {name!r} is registered with uffd = "
                                     f"{slot.uffd!r}, not 'wp'")
    if op == "enable_dirty_log":
        if name in logging:
            raise ctx.error(f"{k}.slot", f"dirty logging is already on for slot {name!r}")
        logging.add(name)
        fields["initially_set"] = ctx.get(item, "initially_set", f"{k}.initially_set",
                                          "bool", False)
        fields["eager_split"] = ctx.get(item, "eager_split", f"{k}.eager_split", "bool", False)
    if op == "harvest" and name not in logging:
        raise ctx.error(f"{k}.slot", f"dirty logging is not on for slot {name!r} "
                                     f"(log_dirty is false and no earlier enable_dirty_log)")
