"""`ptwbench kvm`: the scenario exporter, the replay-output parser, the comparison and the
initramfs writer (quick, anywhere); one end-to-end check on the real stack, skipped unless it
is installed and asked for (it boots QEMU)."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.kvm.boot import cpio, initramfs
from bench.kvm.check import POLICY_PARAM, Case, job_files, parse_pft
from bench.kvm.export import (IPA_SHIFT, Unsupported, export_script, replayable, shift_desc,
                              ttbr1_va)
from bench.kvm.parse import Fault, disagreements, observed, parse_console
from bench.kvm.stack import PATCH, Stack, default_cache
from model.scenario import Step
from model.scenario_io import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCN = ROOT / "workloads" / "scenarios"


def test_ttbr1_alias_keeps_the_low_bits():
    # 48-bit VAs: TTBR1 covers 0xffff_0000_0000_0000 upwards (Arm ARM D8.2, T1SZ = 16)
    assert ttbr1_va(0xC000_0000, 48) == 0xFFFF_0000_C000_0000
    # 39-bit VAs: 0xffff_ff80_0000_0000 upwards (T1SZ = 25)
    assert ttbr1_va(0x1000, 39) == 0xFFFF_FF80_0000_1000


def test_shift_desc_moves_the_output_address_and_adds_leaf_attributes():
    oa_mask = ((1 << 48) - 1) & ~0xFFF
    table = 0x4000_1000 | 0b11 | 1 << 10              # valid, table, AF
    assert shift_desc(table, oa_mask, leaf=False) == (0x4000_1000 + IPA_SHIFT) | 0x403
    leaf = 0x8000_0000 | 0b11 | 1 << 10 | 1 << 51     # valid page, AF, DBM
    # + AttrIndx 4 (bits [4:2] = 0b100 -> 0x10) and SH = 0b11 (bits [9:8] -> 0x300)
    assert shift_desc(leaf, oa_mask, leaf=True) == (0x8000_0000 + IPA_SHIFT) | 0x713 | 1 << 51
    assert shift_desc(0, oa_mask, leaf=True) == 0     # invalid stays invalid


def test_export_lays_out_the_scenarios_tables():
    """ha_af_clear_after_zap: VA 0xc0000000 in 4K/48 has indices L0 0, L1 3, L2 0, L3 0;
    the root is pt page 0 and each next table the next free page (docs/scenario-format.md)."""
    ex = export_script(load_scenario(SCN / "ha_af_clear_after_zap.toml"))
    pt = 0x4000_0000 + IPA_SHIFT
    lines = ex.script.splitlines()
    descs = [ln for ln in lines if ln.startswith("desc ")]
    assert descs[:3] == [f"desc {pt:#x} {pt + 0x1000 | 0x403:#x}",
                         f"desc {pt + 0x1000 + 3 * 8:#x} {pt + 0x2000 | 0x403:#x}",
                         f"desc {pt + 0x2000:#x} {pt + 0x3000 | 0x403:#x}"]
    assert descs[3].startswith(f"desc {pt + 0x3000:#x} ")
    assert f"ttbr1 {pt:#x} 16 2" in lines                  # T1SZ 16, TG1 = 0b10 (4K)
    assert f"step 1 clear_af 0 0xffff0000c0000000 {pt + 0x3000:#x}" in lines
    assert "step 3 zap 0 3 1" in lines
    assert ex.slot_names == ("pt", "data")


@pytest.mark.parametrize("change, why", [
    (lambda s: replace(s, machine=replace(s.machine, isa="x86-ept")), "isa"),
    (lambda s: replace(s, machine=replace(s.machine, hw_update="always")), "always"),
    (lambda s: replace(s, machine=replace(s.machine, haft=True)), "HAFT"),
    (lambda s: replace(s, steps=s.steps + (Step("swap_out", slot="pt", first=0, count=1),)),
     "swap_out"),
])
def test_unsupported_scenarios_say_why(change, why):
    scn = change(load_scenario(SCN / "ha_af_clear_after_zap.toml"))
    with pytest.raises(Unsupported, match=why):
        export_script(scn)


def test_replayable_turns_off_what_qemu_lacks():
    scn = load_scenario(SCN / "ha_af_clear_after_zap.toml")
    bad = replace(scn, machine=replace(scn.machine, haft=True, hw_update="always"),
                  steps=scn.steps + (Step("swap_out", slot="pt", first=0, count=1),))
    ok = replayable(bad)
    assert not ok.machine.haft and ok.machine.hw_update == "on-change"
    assert [s.op for s in ok.steps] == [s.op for s in scn.steps]
    export_script(ok)


CONSOLE = """\
[    1.0] booting
@R kernel 6.12.118+deb12-arm64 Linux version ...
@R begin 0 fix
@R ready
@R fault 0 0x1040000000 0x92000084 0xffff0000c0000000
@R fault 0 0x1080000000 0x93c18005 0xffff0000c0000000
@R stepdone 0
@R fault 1 0x1040003000 0x92000087 0xffff0000c0000000
@R fault 1 0x1040003000 0x9200008f 0xffff0000c0000000
@R uffd 1 0 3 missing 1
@R gexc 1 0 0x96000010 0x0
@R gexc 1 0 0x96000009 0x0
@R harvest 1 0 0,3
@R final -1 0 3
@R end
@R exit 0
"""


def test_parse_decodes_esr_classes_and_double_faults():
    facts, logs = parse_console(CONSOLE)
    assert facts["kernel"].startswith("6.12.118")
    (log,) = logs
    # 0x92000084: EC 0x24 (DABT, lower EL), S1PTW (ISS bit 7), DFSC 0b000100 translation L0
    f = Fault(0, 0x1040000000, 0x92000084)
    assert (f.ec, f.s1ptw, f.wnr, f.fsc_type, f.level) == (0x24, True, False, "translation", 0)
    # 0x93c18005: ISV, WnR clear, DFSC 0b000101: data translation L1
    assert Fault(0, 0, 0x93C18005).cls == "data_translation"
    got = observed(log, ("pt", "data"), (0x1040000000, 0x1080000000))
    assert got["s2_faults"] == {"s1ptw_translation": 2, "s1ptw_permission": 1,
                                "data_translation": 1, "data_permission": 0}
    assert got["double_faults"] == 1            # step 1: translation then permission, page 3
    assert got["uffd_events"] == [{"step": 1, "slot": "pt", "page": 3, "mode": "missing",
                                   "write": True}]
    # DFSC 0x10 = synchronous external abort: KVM's injected abort; 0x09 = stage-1 AF fault
    assert (got["guest_aborts"], got["stage1_faults"]) == (1, 1)
    assert got["harvests"] == [{"step": 1, "slot": "pt", "dirty_pages": [0, 3]}]
    assert got["dirty_pages"] == {"pt": [3], "data": []}


def test_page_fault_tests_assertions_are_not_the_last_replays():
    text = CONSOLE + "@R pft_begin fix\n==== Test Assertion Failure ====\n"
    (log,) = parse_console(text)[1]
    assert log.problems == []


def test_double_fault_needs_the_same_step_and_page():
    text = CONSOLE.replace("@R fault 1 0x1040003000 0x92000087", "@R fault 0 0x1040003000 "
                           "0x92000087")
    (log,) = parse_console(text)[1]
    assert observed(log, ("pt", "data"), (0x1040000000, 0x1080000000))["double_faults"] == 0


def test_disagreements_name_the_fields():
    (log,) = parse_console(CONSOLE)[1]
    kvm = observed(log, ("pt", "data"), (0x1040000000, 0x1080000000))
    model = {k: v for k, v in kvm.items()}
    assert disagreements(model, kvm) == []
    model["s2_faults"] = dict(kvm["s2_faults"], data_translation=2)
    model["dirty_pages"] = {"pt": [], "data": []}
    assert [d[0] for d in disagreements(model, kvm)] == ["s2_faults.data_translation",
                                                         "dirty_pages.pt"]


def test_a_replay_cut_short_is_a_failure_not_a_result():
    from bench.kvm.report import _failure
    (log,) = parse_console(CONSOLE.replace("@R end\n@R exit 0\n", "@R timeout 1\n"))[1]
    assert "timeout 1" in _failure(log)
    assert _failure(None).startswith("no output")


def test_cpio_newc_layout():
    arc = cpio({"a": b"xyz", "d": None}, {"a"})
    assert arc.startswith(b"070701")
    # header 110 bytes + "a\0" padded to 112, then the data padded to 4
    assert arc[110:112] == b"a\0" and arc[112:115] == b"xyz" and arc[115] == 0
    assert int(arc[14:22], 16) == 0o100755 and int(arc[54:62], 16) == 3
    assert b"TRAILER!!!" in arc and len(arc) % 4 == 0


def test_initramfs_holds_init_busybox_and_job(tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF")
    data = gzip.decompress(initramfs(bb, {}, {"run.sh": "true\n"}))
    for name in (b"bin/busybox\0", b"init\0", b"job/run.sh\0"):
        assert name in data


def test_job_runs_each_policy_with_the_patchs_parameter():
    # bench/kvm/s1ptw_policy.patch: "0 fix ..., 1 legacy ..., 2 ha-promote"
    text = PATCH.read_text()
    assert "0 fix" in text and "1 legacy" in text and "2 ha-promote" in text
    assert POLICY_PARAM == {"fix": 0, "legacy": 1, "ha-promote": 2}
    c = Case("x", load_scenario(SCN / "ha_af_clear_after_zap.toml"))
    c.export = export_script(c.scn)
    run = job_files([c], ("legacy", "ha-promote"), param=True, pft=False)["run.sh"]
    assert run.index("echo 1 > /sys/module/kvm/parameters/s1ptw_policy") < \
        run.index('"@R begin 0 legacy"') < run.index("echo 2 >") < \
        run.index('"@R begin 0 ha-promote"')


def test_parse_pft():
    text = "@R pft_begin fix\n@R pft a pass\n@R pft b_SCAT2(x, y) fail\nnoise\n" \
           "@R pft_begin legacy\n@R pft a timeout\n"
    assert parse_pft(text) == {"fix": [("a", "pass"), ("b_SCAT2(x, y)", "fail")],
                               "legacy": [("a", "timeout")]}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env)


def test_check_without_the_stack_is_one_line_exit_2(tmp_path):
    r = _cli("kvm", "check", "--cache", str(tmp_path / "none"), "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "kvm setup" in r.stderr
    assert list(tmp_path.iterdir()) == []


STACK = Stack(default_cache())
WHY = STACK.installed() or ("" if os.environ.get("PTWBENCH_KVM_TESTS") == "1" else
                            "boots QEMU (~30-60 s): set PTWBENCH_KVM_TESTS=1 to run it")


@pytest.mark.skipif(bool(WHY), reason=f"real-KVM stack: {WHY}")
def test_stock_kernel_agrees_on_a_shipped_scenario(tmp_path):
    r = _cli("kvm", "check", "--policy", "fix", "--no-conformance", "--stamp", "t",
             "--out", str(tmp_path), str(SCN / "ha_af_clear_after_zap.toml"))
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "kvm-t" / "metrics.csv").read_text().splitlines()
    kvm = [x for x in rows if ",kvm," in x]
    assert len(kvm) == 1 and ",agree," in kvm[0]


def test_the_model_runs_on_qemus_at():
    """QEMU's AT updates AF (docs/real-kvm.md): only scenarios with an AT step change."""
    from bench.kvm.export import as_qemu
    scn = load_scenario(SCN / "ha_af_clear_after_zap.toml")
    assert as_qemu(scn) is scn
    at = replace(scn, steps=scn.steps + (Step("access", va=0xC000_0000, kind="at"),))
    assert as_qemu(at).machine.at_sets_af and not at.machine.at_sets_af
