"""CLI completeness and readable outputs (issue 11, items 6 and 7)."""
from __future__ import annotations

import argparse
import json

import pandas as pd

from bench.cli import build_parser, main
from bench.cost import CostModel
from bench.report import md_table
from bench.variants import VARIANTS
from bench.verdict import MATTERS_RULE, MATTERS_SHARE, MIN_EXITS_SAVED, answer, verdict_table


def _subparsers(ap):
    for a in ap._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


def test_every_option_of_every_command_has_help():
    missing = []
    for name, sp in _subparsers(build_parser()):
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, missing


def test_run_help_names_every_workload_form(capsys):
    try:
        main(["run", "--help"])
    except SystemExit:
        pass
    h = capsys.readouterr().out
    for form in ("micro:NAME", "micro:PATH", "import:PATH", "ptwbench workloads"):
        assert form in h, form


def test_workloads_lists_the_hardware_variants(capsys):
    assert main(["workloads"]) == 0
    text = capsys.readouterr().out
    assert "HARDWARE VARIANTS" in text
    for v in VARIANTS:
        assert f"\n    {v} " in text, v
    assert main(["workloads", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in d["variants"]] == list(VARIANTS)
    assert all(v["description"] for v in d["variants"])


def test_markdown_tables_never_print_nan():
    df = pd.DataFrame({"a": [1.0, float("nan")], "b": [None, "x"]})
    t = md_table(df)
    assert "nan" not in t.lower() and "None" not in t and t.count("—") == 2


def test_matters_rule_states_the_code_thresholds():
    # the words reports print are built from the constants the code compares with
    assert f"{100 * MATTERS_SHARE:g}%" in MATTERS_RULE and str(MIN_EXITS_SAVED) in MATTERS_RULE


def test_single_case_wording():
    rows = [{"workload": "w", "host": "none", "variant": "default", "seed": 1, "policy": p,
             "s2_faults": 0, "uffd_events": 0, "dirty_false_positive": 0,
             "uffd_wp_false_write": 0, "accesses": 10, "double_faults": 0,
             "uffd_false_write": 0, "guest_aborts": 0, "vcpu_run_failures": 0}
            for p in ("fix", "ha-promote")]
    a = answer(verdict_table(pd.DataFrame(rows), CostModel()))
    assert a.startswith("this case (w/none/default)") and "of 1 cases" not in a
