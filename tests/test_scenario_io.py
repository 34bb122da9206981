"""Good scenario files parse to the expected objects; the stage-1 layout matches docs/scenario-format.md."""
from __future__ import annotations

import json

import pytest

from model.arch import DESC_AF, DESC_AP2, DESC_DBM, DESC_PXN, DESC_TABLE, DESC_UXN, DESC_VALID
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Step, Vmm
from model.scenario_io import load_scenario, parse_scenario
from model.stage1 import build_tables

FULL_TOML = """\
version = 1
name = "dirty-log read, HA set, AF clear"

[machine]
granule = "4k"
va_bits = 48
hafdbs = 1
haft = true
hw_update = "always"
at_sets_af = true

[guest]
tcr_ha = true
tcr_hd = false
tcr2_haft = true
pt_slot = "pt"
vm_protected = true

[[memslots]]
name = "pt"
ipa = 0x4000_0000
pages = 8
log_dirty = true
backing = "hugetlb"
uffd = "minor"
uffd_resolve = "slot"

[[memslots]]
name = "data"
ipa = 0x8000_0000
pages = 16
readonly = true
backing = "shmem"
populated = false
uffd = "wp"

[vmm]
mmio_store = "write_backing"

[[mappings]]
va = 0xc000_0000
ipa = 0x8000_0000
pages = 4
af = false
writable = true
dirty = false
executable = true

[[steps]]
op = "access"
vcpu = 1
va = 0xc000_1008
kind = "cas"

[[steps]]
op = "clear_af"
va = 0xc000_0000

[[steps]]
op = "set_tcr"
hd = true

[[steps]]
op = "harvest"
slot = "pt"

[[steps]]
op = "enable_dirty_log"
slot = "data"
initially_set = true

[[steps]]
op = "swap_out"
slot = "data"
first = 0xe
count = 2

[[steps]]
op = "uffd_wp"
slot = "data"
first = 0
count = 16

[[steps]]
op = "punch_hole"
slot = "pt"

[[steps]]
op = "zap"
slot = "pt"
first = 7
count = 1

[[steps]]
op = "flush_tlb"
"""

FULL_EXPECTED = Scenario(
    name="dirty-log read, HA set, AF clear",
    machine=Machine(granule=4096, va_bits=48, hafdbs=1, haft=True, hw_update="always",
                    at_sets_af=True),
    guest=Guest(tcr_ha=True, tcr_hd=False, tcr2_haft=True, pt_slot="pt", vm_protected=True),
    memslots=(
        Memslot("pt", 0x40000000, 8, log_dirty=True, backing="hugetlb", uffd="minor",
                uffd_resolve="slot"),
        Memslot("data", 0x80000000, 16, readonly=True, backing="shmem", populated=False,
                uffd="wp"),
    ),
    vmm=Vmm(mmio_store="write_backing"),
    mappings=(Mapping(0xc0000000, 0x80000000, 4, af=False, writable=True, dirty=False,
                      executable=True),),
    steps=(
        Step("access", vcpu=1, va=0xc0001008, kind="cas"),
        Step("clear_af", vcpu=0, va=0xc0000000),
        Step("set_tcr", hd=True),
        Step("harvest", slot="pt"),
        Step("enable_dirty_log", slot="data", initially_set=True, eager_split=False),
        Step("swap_out", slot="data", first=14, count=2),
        Step("uffd_wp", slot="data", first=0, count=16),
        Step("punch_hole", slot="pt"),
        Step("zap", slot="pt", first=7, count=1),
        Step("flush_tlb"),
    ),
)


def test_full_toml(tmp_path):
    p = tmp_path / "full.toml"
    p.write_text(FULL_TOML)
    scn = load_scenario(p)
    assert scn == Scenario(**{**FULL_EXPECTED.__dict__, "source": str(p)})
    assert scn.steps[2].ha is None and scn.steps[2].haft is None   # set_tcr: only hd given
    assert scn.steps[1].vcpu == 0                                    # vcpu defaults to 0


def test_full_json_same_as_toml(tmp_path):
    import tomllib
    p = tmp_path / "full.json"
    p.write_text(json.dumps(tomllib.loads(FULL_TOML)))
    scn = load_scenario(p)
    assert scn == Scenario(**{**FULL_EXPECTED.__dict__, "source": str(p)})


def test_minimal_defaults(tmp_path):
    p = tmp_path / "tiny-one.toml"
    p.write_text('version = 1\nguest = { pt_slot = "pt" }\n'
                 'memslots = [ { name = "pt", ipa = 0, pages = 1 } ]\n')
    scn = load_scenario(p)
    assert scn.name == "tiny-one"                 # defaults to the file stem
    assert scn.machine == Machine() and scn.machine.granule == 4096
    assert scn.guest == Guest(pt_slot="pt")
    assert scn.memslots == (Memslot("pt", 0, 1),)
    assert scn.vmm == Vmm() and scn.mappings == () and scn.steps == ()
    assert scn.source == str(p)


@pytest.mark.parametrize("granule,va_bits,nbytes", [("4k", 39, 4096), ("16k", 47, 16384),
                                                    ("64k", 42, 65536), ("64k", 48, 65536)])
def test_granule_in_bytes(granule, va_bits, nbytes):
    scn = parse_scenario({"version": 1, "machine": {"granule": granule, "va_bits": va_bits},
                          "guest": {"pt_slot": "pt"},
                          "memslots": [{"name": "pt", "ipa": 0x40000000, "pages": 16}]},
                         source="g.json")
    assert scn.machine.granule == nbytes and scn.machine.va_bits == va_bits


def test_step_defaults_and_edges():
    scn = parse_scenario({
        "version": 1,
        "guest": {"pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": 0x40000000, "pages": 8, "log_dirty": True},
                     # adjacent, not overlapping
                     {"name": "ro", "ipa": 0x40008000, "pages": 4, "readonly": True}],
        # a mapping that ends exactly at 2**48 is inside the TTBR0 range
        "mappings": [{"va": (1 << 48) - 0x2000, "ipa": 0x40008000, "pages": 2}],
        "steps": [
            {"op": "harvest", "slot": "pt"},                 # logging from creation
            {"op": "enable_dirty_log", "slot": "ro"},        # read-only slots may log
            {"op": "harvest", "slot": "ro"},
            {"op": "access", "va": (1 << 48) - 1, "kind": "at"},
        ],
    }, source="edges.json")
    assert scn.name == "edges"
    assert scn.steps[1] == Step("enable_dirty_log", slot="ro", initially_set=False,
                                eager_split=False)
    assert scn.steps[3] == Step("access", vcpu=0, va=(1 << 48) - 1, kind="at")


# --- stage-1 layout, derived by hand from docs/scenario-format.md's rule ---------------------------------
# Root = first granule of pt_slot; mappings inserted in file order, lowest VA first; each
# missing table takes the next free granule of pt_slot.

TABLE = DESC_VALID | DESC_TABLE | DESC_AF      # table descriptors are created with AF = 1
PT = 0x40000000


def test_layout_4k_48():
    # 4K/48: 4 levels (L0..L3), 9 bits each.  VA 0xc0000000 = 3 GiB:
    #   L0 index = va >> 39 = 0, L1 index = (va >> 30) & 511 = 3,
    #   L2 index = (va >> 21) & 511 = 0x600 & 511 = 0, L3 index = (va >> 12) & 511 = 0.
    # Tables: root = pt page 0, L1 = page 1, L2 = page 2, L3 = page 3.
    scn = parse_scenario({
        "version": 1, "guest": {"pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": PT, "pages": 8},
                     {"name": "data", "ipa": 0x80000000, "pages": 16}],
        "mappings": [{"va": 0xc0000000, "ipa": 0x80000000, "pages": 4, "dirty": False}],
    }, source="base.toml")
    t = build_tables(scn)
    assert t.root == PT
    assert t.tables_used == 4
    assert t.descriptors[PT + 0 * 8] == (PT + 0x1000) | TABLE
    assert t.descriptors[PT + 0x1000 + 3 * 8] == (PT + 0x2000) | TABLE
    assert t.descriptors[PT + 0x2000 + 0 * 8] == (PT + 0x3000) | TABLE
    assert t.leaf_addr[0xc0000000] == PT + 3 * 4096 + 0
    assert t.leaf_addr[0xc0003000] == PT + 3 * 4096 + 3 * 8
    # writable clean leaf, not executable (the Mapping default): DBM + AP[2] + PXN + UXN
    assert t.descriptors[PT + 3 * 4096] == (0x80000000 | DESC_VALID | DESC_TABLE | DESC_AF
                                            | DESC_DBM | DESC_AP2 | DESC_PXN | DESC_UXN)


def test_layout_64k_42():
    # 64K/42: stride 13, levels = ceil((42 - 16) / 13) = 2: L2 (root, 42 - 29 = 13 bits) and L3.
    # VA 0x40030000: L2 index = va >> 29 = 2; L3 index = (va >> 16) & 0x1fff = 0x4003 & 0x1fff = 3.
    # Root = granule 0 of pt, L3 table = granule 1 = pt + 0x10000; leaf at + 3 * 8.
    scn = parse_scenario({
        "version": 1, "machine": {"granule": "64k", "va_bits": 42}, "guest": {"pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": PT, "pages": 32},        # 2 granules
                     {"name": "data", "ipa": 0x80000000, "pages": 32}],
        "mappings": [{"va": 0x40030000, "ipa": 0x80010000}],
    }, source="g64.toml")
    t = build_tables(scn)
    assert t.root == PT and t.tables_used == 2
    assert t.descriptors[PT + 2 * 8] == (PT + 0x10000) | TABLE
    assert t.leaf_addr[0x40030000] == PT + 0x10000 + 3 * 8


def test_layout_16k_47():
    # 16K/47: stride 11, levels = ceil((47 - 14) / 11) = 3: L1 (root, 47 - 36 = 11 bits), L2, L3.
    # VA A = (2 << 36) + (5 << 25) + (7 << 14) = 0x200a01c000: L1 = 2, L2 = 5, L3 = 7.
    #   root = granule 0, its L2 table = granule 1, its L3 table = granule 2;
    #   leaf at pt + 2 * 16K + 7 * 8.
    # VA B = (2 << 36) + (6 << 25) = 0x200c000000 (second mapping): same L2 table, new L3 at
    #   granule 3, leaf index 0.
    # VA C = 3 << 36 = 0x3000000000 (third mapping): new L2 at granule 4, new L3 at granule 5.
    G = 16384
    scn = parse_scenario({
        "version": 1, "machine": {"granule": "16k", "va_bits": 47}, "guest": {"pt_slot": "pt"},
        "memslots": [{"name": "pt", "ipa": PT, "pages": 24},        # 6 granules
                     {"name": "data", "ipa": 0x80000000, "pages": 16}],
        "mappings": [{"va": 0x200a01c000, "ipa": 0x80000000},
                     {"va": 0x200c000000, "ipa": 0x80004000},
                     {"va": 0x3000000000, "ipa": 0x80008000}],
    }, source="g16.toml")
    t = build_tables(scn)
    assert t.root == PT and t.tables_used == 6
    assert t.descriptors[PT + 2 * 8] == (PT + 1 * G) | TABLE
    assert t.descriptors[PT + 1 * G + 5 * 8] == (PT + 2 * G) | TABLE
    assert t.leaf_addr[0x200a01c000] == PT + 2 * G + 7 * 8
    assert t.descriptors[PT + 1 * G + 6 * 8] == (PT + 3 * G) | TABLE
    assert t.leaf_addr[0x200c000000] == PT + 3 * G
    assert t.descriptors[PT + 3 * 8] == (PT + 4 * G) | TABLE
    assert t.descriptors[PT + 4 * G + 0] == (PT + 5 * G) | TABLE
    assert t.leaf_addr[0x3000000000] == PT + 5 * G


def test_layout_16k_47_one_granule_short_is_rejected():
    # Same as above with 5 granules: the third mapping's L3 table does not fit.
    from model.scenario import ScenarioError
    with pytest.raises(ScenarioError, match=r"^g16\.toml: mappings\[2\]: .*too small"):
        parse_scenario({
            "version": 1, "machine": {"granule": "16k", "va_bits": 47},
            "guest": {"pt_slot": "pt"},
            "memslots": [{"name": "pt", "ipa": PT, "pages": 20},
                         {"name": "data", "ipa": 0x80000000, "pages": 16}],
            "mappings": [{"va": 0x200a01c000, "ipa": 0x80000000},
                         {"va": 0x200c000000, "ipa": 0x80004000},
                         {"va": 0x3000000000, "ipa": 0x80008000}],
        }, source="g16.toml")
