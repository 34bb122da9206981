"""Bad scenario files are rejected with one line naming the file and the key (docs/scenario-format.md).

Table-driven, in the style of the kernel selftests: a small valid base scenario, one mutation
per case, written as TOML and as JSON, and each must raise ScenarioError whose message is one
line starting "{path}: {key}: ".
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.scenario import ScenarioError
from model.scenario_io import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "version": 1,
    "name": "base",
    "machine": {"granule": "4k", "va_bits": 48, "hafdbs": 2, "haft": False,
                "hw_update": "on-change", "at_sets_af": False},
    "guest": {"tcr_ha": True, "tcr_hd": True, "pt_slot": "pt"},
    "memslots": [
        {"name": "pt", "ipa": 0x40000000, "pages": 8},
        {"name": "data", "ipa": 0x80000000, "pages": 16, "backing": "anon", "uffd": "wp"},
    ],
    "vmm": {"mmio_store": "ignore"},
    "mappings": [
        {"va": 0xc0000000, "ipa": 0x80000000, "pages": 4, "writable": True, "dirty": False},
    ],
    "steps": [
        {"op": "access", "vcpu": 0, "va": 0xc0000000, "kind": "read64"},       # 0
        {"op": "enable_dirty_log", "slot": "pt"},                                # 1
        {"op": "access", "vcpu": 1, "va": 0xc0001008, "kind": "write64"},       # 2
        {"op": "harvest", "slot": "pt"},                                         # 3
        {"op": "zap", "slot": "data", "first": 0, "count": 4},                   # 4
        {"op": "uffd_wp", "slot": "data", "first": 2, "count": 2},               # 5
        {"op": "set_tcr", "ha": True},                                           # 6
        {"op": "clear_af", "va": 0xc0000000},                                    # 7
        {"op": "flush_tlb"},                                                     # 8
    ],
}


# --- writers -----------------------------------------------------------------------------------

def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:#x}" if v > 255 else str(v)    # hex literals exercise TOML ints too
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)                       # ASCII basic strings are the same in TOML
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"TOML cannot express {v!r}")


def to_toml(doc: dict) -> str:
    """Tiny TOML writer: scalars first, then [tables], then [[arrays of tables]]."""
    head, tables, arrays = [], [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            head.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = head
    for k, v in tables:
        out.append(f"\n[{_toml_key(k)}]")
        out += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    for k, items in arrays:
        for item in items:
            out.append(f"\n[[{_toml_key(k)}]]")
            out += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(out) + "\n"


def write(tmp_path: Path, doc: dict, fmt: str, stem: str = "case") -> Path:
    p = tmp_path / f"{stem}.{fmt}"
    p.write_text(to_toml(doc) if fmt == "toml" else json.dumps(doc, indent=1))
    return p


def check_error(path: Path, key: str, excinfo, what: str | None = None) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert len(msg) > len(f"{path}: {key}: "), msg
    if what is not None:
        assert what in msg, msg
    return msg


# --- mutation helpers ------------------------------------------------------------------------

def _walk(doc, path):
    for p in path[:-1]:
        doc = doc[p]
    return doc, path[-1]


def set_(*path_and_value):
    *path, value = path_and_value

    def f(doc):
        d, last = _walk(doc, path)
        d[last] = value
    return f


def del_(*path):
    def f(doc):
        d, last = _walk(doc, path)
        del d[last]
    return f


def append(*path_and_value):
    *path, value = path_and_value

    def f(doc):
        d = doc
        for p in path:
            d = d[p]
        d.append(value)
    return f


def all_(*fs):
    def f(doc):
        for g in fs:
            g(doc)
    return f


def swap_steps(i, j):
    def f(doc):
        s = doc["steps"]
        s[i], s[j] = s[j], s[i]
    return f


# Base scenario made valid for 64K/42 (pt slot = 2 granules, mapping = 1 granule) and 16K/47.
G64_42 = all_(set_("machine", "granule", "64k"), set_("machine", "va_bits", 42),
              set_("memslots", 0, "pages", 32), set_("mappings", 0, "pages", 1))
G16_47 = all_(set_("machine", "granule", "16k"), set_("machine", "va_bits", 47),
              set_("memslots", 0, "pages", 12))

# (id, mutation, expected key, substring of the message or None)
CASES = [
    # version
    ("version-missing", del_("version"), "version", "missing"),
    ("version-2", set_("version", 2), "version", "2"),
    ("version-bool", set_("version", True), "version", "boolean"),
    ("version-string", set_("version", "1"), "version", "string"),
    ("name-not-string", set_("name", 7), "name", "string"),
    # unknown keys at every level
    ("unknown-top", set_("colour", "red"), "colour", "unknown key"),
    ("unknown-machine", set_("machine", "granularity", "4k"), "machine.granularity", "unknown"),
    ("unknown-guest", set_("guest", "tcr_hx", True), "guest.tcr_hx", "unknown"),
    ("unknown-memslot", set_("memslots", 1, "size", 4), "memslots[1].size", "unknown"),
    ("unknown-vmm", set_("vmm", "store", "ignore"), "vmm.store", "unknown"),
    ("unknown-mapping", set_("mappings", 0, "read_only", True), "mappings[0].read_only",
     "unknown"),
    ("step-key-of-other-op", set_("steps", 0, "slot", "pt"), "steps[0].slot", "access"),
    ("flush-tlb-vcpu", set_("steps", 8, "vcpu", 0), "steps[8].vcpu", "unknown"),
    ("punch-hole-first", set_("steps", 4, {"op": "punch_hole", "slot": "data", "first": 0}),
     "steps[4].first", "unknown"),
    # sections of the wrong shape
    ("machine-not-table", set_("machine", 5), "machine", "table"),
    ("memslots-not-array", set_("memslots", {"name": "pt"}), "memslots", "array"),
    ("memslot-not-table", set_("memslots", 1, 3), "memslots[1]", "table"),
    ("mappings-not-array", set_("mappings", 1), "mappings", "array"),
    ("steps-not-array", set_("steps", "flush_tlb"), "steps", "array"),
    ("step-not-table", set_("steps", 8, "flush_tlb"), "steps[8]", "table"),
    # machine
    ("granule-8k", set_("machine", "granule", "8k"), "machine.granule", "8k"),
    ("granule-bytes", set_("machine", "granule", 4096), "machine.granule", "integer"),
    ("va-bits-52", set_("machine", "va_bits", 52), "machine.va_bits", "52"),
    ("va-bits-1-level-4k", set_("machine", "va_bits", 20), "machine.va_bits", "1 levels"),
    ("va-bits-1-level-64k", all_(G64_42, set_("machine", "va_bits", 29)), "machine.va_bits",
     "64K"),
    ("va-bits-bool", set_("machine", "va_bits", True), "machine.va_bits", "boolean"),
    ("va-bits-float", set_("machine", "va_bits", 48.0), "machine.va_bits", "float"),
    ("hafdbs-3", set_("machine", "hafdbs", 3), "machine.hafdbs", "3"),
    ("hafdbs-bool", set_("machine", "hafdbs", True), "machine.hafdbs", "boolean"),
    ("haft-int", set_("machine", "haft", 1), "machine.haft", "integer"),
    ("hw-update-never", set_("machine", "hw_update", "never"), "machine.hw_update", "never"),
    ("isa-unknown", set_("machine", "isa", "riscv"), "machine.isa", "riscv"),
    ("at-sets-af-string", set_("machine", "at_sets_af", "no"), "machine.at_sets_af", "string"),
    # guest
    ("guest-missing", del_("guest"), "guest.pt_slot", "missing"),
    ("pt-slot-missing", del_("guest", "pt_slot"), "guest.pt_slot", "missing"),
    ("pt-slot-unknown", set_("guest", "pt_slot", "tables"), "guest.pt_slot", "tables"),
    ("tcr-ha-int", set_("guest", "tcr_ha", 1), "guest.tcr_ha", "boolean"),
    ("pt-slot-unaligned-16k", all_(G16_47, set_("memslots", 0, "ipa", 0x40001000)),
     "memslots[0].ipa", "16K"),
    ("pt-slot-below-granule-64k", all_(G64_42, set_("memslots", 0, "pages", 8)),
     "guest.pt_slot", "granule"),
    # memslots
    ("memslots-missing", del_("memslots"), "memslots", "missing"),
    ("memslots-empty", set_("memslots", []), "memslots", "at least one"),
    ("slot-name-missing", del_("memslots", 1, "name"), "memslots[1].name", "missing"),
    ("slot-name-empty", set_("memslots", 1, "name", ""), "memslots[1].name", "empty"),
    ("slot-ipa-missing", del_("memslots", 0, "ipa"), "memslots[0].ipa", "missing"),
    ("slot-pages-missing", del_("memslots", 1, "pages"), "memslots[1].pages", "missing"),
    ("slot-pages-0", set_("memslots", 1, "pages", 0), "memslots[1].pages", "0"),
    ("slot-ipa-unaligned", set_("memslots", 1, "ipa", 0x80000800), "memslots[1].ipa",
     "0x80000800"),
    ("slot-ipa-negative", set_("memslots", 1, "ipa", -4096), "memslots[1].ipa", None),
    ("slot-ipa-float", set_("memslots", 1, "ipa", 2147483648.0), "memslots[1].ipa", "float"),
    ("slot-ipa-string", set_("memslots", 1, "ipa", "0x80000000"), "memslots[1].ipa", "string"),
    ("slot-beyond-48-bit", set_("memslots", 1, "ipa", (1 << 48) - 4096), "memslots[1].pages",
     "48-bit"),
    ("slot-name-duplicate", set_("memslots", 1, "name", "pt"), "memslots[1].name", "duplicate"),
    ("slots-overlap", set_("memslots", 1, "ipa", 0x40004000), "memslots[1]", "overlaps"),
    ("backing-file", set_("memslots", 1, "backing", "file"), "memslots[1].backing", "file"),
    ("uffd-maybe", set_("memslots", 1, "uffd", "maybe"), "memslots[1].uffd", "maybe"),
    ("uffd-minor-anon", set_("memslots", 1, "uffd", "minor"), "memslots[1].uffd", "minor"),
    ("uffd-minor-anon-thp", all_(set_("memslots", 1, "uffd", "minor"),
                                 set_("memslots", 1, "backing", "anon_thp")),
     "memslots[1].uffd", "anon_thp"),
    ("uffd-resolve-all", set_("memslots", 1, "uffd_resolve", "all"), "memslots[1].uffd_resolve",
     "all"),
    ("readonly-string", set_("memslots", 0, "readonly", "yes"), "memslots[0].readonly", "string"),
    ("log-dirty-int", set_("memslots", 1, "log_dirty", 0), "memslots[1].log_dirty", "integer"),
    # vmm
    ("mmio-store-write", set_("vmm", "mmio_store", "write"), "vmm.mmio_store", "write"),
    # mappings
    ("mapping-va-missing", del_("mappings", 0, "va"), "mappings[0].va", "missing"),
    ("mapping-ipa-missing", del_("mappings", 0, "ipa"), "mappings[0].ipa", "missing"),
    ("mapping-va-unaligned", set_("mappings", 0, "va", 0xc0000800), "mappings[0].va",
     "0xc0000800"),
    ("mapping-ipa-unaligned", set_("mappings", 0, "ipa", 0x80000010), "mappings[0].ipa",
     "aligned"),
    ("mapping-ipa-unaligned-64k", all_(G64_42, set_("mappings", 0, "ipa", 0x80001000)),
     "mappings[0].ipa", "64K"),
    ("mapping-pages-0", set_("mappings", 0, "pages", 0), "mappings[0].pages", "0"),
    ("mapping-beyond-va-bits", all_(set_("machine", "va_bits", 39),
                                    set_("mappings", 0, "va", (1 << 39) - 0x2000)),
     "mappings[0].va", "39-bit"),
    ("mapping-ttbr1-va", set_("mappings", 0, "va", 1 << 48), "mappings[0].va", "48-bit"),
    ("mapping-outside-slots", set_("mappings", 0, "ipa", 0x90000000), "mappings[0].ipa",
     "outside every memslot"),
    ("mapping-past-slot-end", set_("mappings", 0, "ipa", 0x80000000 + 14 * 4096),
     "mappings[0].ipa", "data"),
    ("mapping-spans-two-slots", all_(
        append("memslots", {"name": "data2", "ipa": 0x80010000, "pages": 16}),
        set_("mappings", 0, "ipa", 0x8000e000)), "mappings[0].ipa", "past the end"),
    ("mapping-writable-string", set_("mappings", 0, "writable", "true"), "mappings[0].writable",
     "string"),
    ("mappings-overlap", append("mappings", {"va": 0xc0002000, "ipa": 0x80008000, "pages": 2}),
     "mappings[1]", "overlaps"),
    ("pt-slot-too-small", set_("memslots", 0, "pages", 3), "mappings[0]", "too small"),
    # steps
    ("op-missing", del_("steps", 0, "op"), "steps[0].op", "missing"),
    ("op-unknown", set_("steps", 0, "op", "read"), "steps[0].op", "read"),
    ("op-int", set_("steps", 8, "op", 1), "steps[8].op", "integer"),
    ("vcpu-negative", set_("steps", 0, "vcpu", -1), "steps[0].vcpu", "-1"),
    ("vcpu-bool", set_("steps", 2, "vcpu", True), "steps[2].vcpu", "boolean"),
    ("vcpu-string", set_("steps", 0, "vcpu", "0"), "steps[0].vcpu", "string"),
    ("kind-unknown", set_("steps", 0, "kind", "read32"), "steps[0].kind", "read32"),
    ("kind-missing", del_("steps", 0, "kind"), "steps[0].kind", "missing"),
    ("access-va-missing", del_("steps", 2, "va"), "steps[2].va", "missing"),
    ("access-unmapped-va", set_("steps", 2, "va", 0xc0004000), "steps[2].va", "unmapped"),
    ("clear-af-unmapped-va", set_("steps", 7, "va", 0xbffff000), "steps[7].va", "unmapped"),
    ("slot-unknown", set_("steps", 4, "slot", "dat"), "steps[4].slot", "dat"),
    ("zap-first-negative", set_("steps", 4, "first", -1), "steps[4].first", "-1"),
    ("zap-first-past-end", set_("steps", 4, "first", 16), "steps[4].first", "16"),
    ("zap-count-0", set_("steps", 4, "count", 0), "steps[4].count", "0"),
    ("zap-range-past-end", all_(set_("steps", 4, "first", 14), set_("steps", 4, "count", 4)),
     "steps[4].count", "16 pages"),
    ("swap-out-count-missing", set_("steps", 4, {"op": "swap_out", "slot": "data", "first": 1}),
     "steps[4].count", "missing"),
    ("uffd-wp-not-wp-slot", set_("memslots", 1, "uffd", "missing"), "steps[5].slot", "'wp'"),
    ("set-tcr-empty", set_("steps", 6, {"op": "set_tcr"}), "steps[6]", "at least one"),
    ("set-tcr-int", set_("steps", 6, "ha", 1), "steps[6].ha", "boolean"),
    ("harvest-not-logging", set_("steps", 1, {"op": "flush_tlb"}), "steps[3].slot",
     "not on"),
    ("harvest-before-enable", swap_steps(1, 3), "steps[1].slot", "not on"),
    ("enable-log-already-log-dirty", set_("memslots", 0, "log_dirty", True), "steps[1].slot",
     "already"),
    ("enable-log-twice", append("steps", {"op": "enable_dirty_log", "slot": "pt"}),
     "steps[9].slot", "already"),
    ("enable-log-initially-set-string", set_("steps", 1, "initially_set", "yes"),
     "steps[1].initially_set", "string"),
]

# JSON only: TOML cannot express null.
JSON_ONLY_CASES = [
    ("null-granule", set_("machine", "granule", None), "machine.granule", "null"),
    ("null-step", set_("steps", 8, None), "steps[8]", "null"),
]


def test_base_is_valid(tmp_path):
    for fmt in ("toml", "json"):
        scn = load_scenario(write(tmp_path, BASE, fmt))
        assert scn.name == "base"
        assert len(scn.memslots) == 2 and len(scn.steps) == 9


@pytest.mark.parametrize("variant", [G64_42, G16_47], ids=["64k-42", "16k-47"])
def test_base_variants_are_valid(tmp_path, variant):
    # The granule variants used by some cases must be valid on their own.
    doc = copy.deepcopy(BASE)
    variant(doc)
    load_scenario(write(tmp_path, doc, "toml"))


def test_at_least_25_kinds():
    assert len({c[0] for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("case_id,mutate,key,what", CASES, ids=[c[0] for c in CASES])
def test_bad_scenario(tmp_path, fmt, case_id, mutate, key, what):
    doc = copy.deepcopy(BASE)
    mutate(doc)
    path = write(tmp_path, doc, fmt)
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    check_error(path, key, excinfo, what)


@pytest.mark.parametrize("case_id,mutate,key,what", JSON_ONLY_CASES,
                         ids=[c[0] for c in JSON_ONLY_CASES])
def test_bad_scenario_json_only(tmp_path, case_id, mutate, key, what):
    doc = copy.deepcopy(BASE)
    mutate(doc)
    path = write(tmp_path, doc, "json")
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    check_error(path, key, excinfo, what)


# Files that are bad before any key can be looked at: (id, file name, bytes, message part).
RAW_CASES = [
    ("wrong-extension", "s.yaml", to_toml(BASE).encode(), ".yaml"),
    ("no-extension", "scenario", to_toml(BASE).encode(), "extension"),
    ("toml-syntax", "s.toml", b"version = 1\nname = \n", "not valid TOML"),
    ("toml-duplicate-key", "s.toml", b"version = 1\nversion = 1\n", "not valid TOML"),
    ("json-syntax", "s.json", b'{"version": 1,', "not valid JSON"),
    ("json-duplicate-key", "s.json", b'{"version": 1, "version": 1}', "duplicate key"),
    ("json-top-array", "s.json", b"[1, 2]", "top level"),
    ("json-top-string", "s.json", b'"version = 1"', "top level"),
    ("not-utf8", "s.toml", b"version = 1\nname = \"\xff\xfe\"\n", "UTF-8"),
    ("empty-toml", "s.toml", b"", "missing"),        # empty TOML is {}: version missing
    ("toml-date", "s.toml", to_toml(BASE).replace("version = 1", "version = 2024-01-01")
     .encode(), "date"),
]


@pytest.mark.parametrize("case_id,fname,content,what", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_file(tmp_path, case_id, fname, content, what):
    path = tmp_path / fname
    path.write_bytes(content)
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert what in msg, msg


def test_unreadable_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    check_error(path, "<file>", excinfo, "cannot read")


def test_unreadable_directory(tmp_path):
    path = tmp_path / "dir.json"
    path.mkdir()
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    check_error(path, "<file>", excinfo, "cannot read")


def test_parse_scenario_rejects_non_dict():
    with pytest.raises(ScenarioError) as excinfo:
        parse_scenario([BASE], source="x.json")
    assert str(excinfo.value).startswith("x.json: <file>: top level")


def test_values_with_newlines_stay_on_one_line(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["machine"]["granule"] = "4k\nsecond line"
    path = write(tmp_path, doc, "json")
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    check_error(path, "machine.granule", excinfo)


# --- the CLI contract (bench/cli.py belongs to someone else) ------------------------------------

CLI_EXISTS = (REPO / "bench" / "cli.py").exists()


def _tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.xfail(not CLI_EXISTS, strict=False, reason="cli not yet written")
def test_cli_bad_scenario_exit_2_one_line(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["memslots"][1]["uffd"] = "minor"
    bad = write(tmp_path, doc, "toml", stem="bad")
    before = _tree(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "bench.cli", "scenario", str(bad)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], r.stderr
    assert "memslots[1].uffd" in lines[0]
    assert _tree(tmp_path) == before
