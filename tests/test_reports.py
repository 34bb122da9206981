"""Runs, reports, the beer verdict, compare, determinism, golden results (issue 5)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import report
from bench.compare import compare
from bench.cost import CostModel
from bench.runner import COLUMNS, METRIC_COLUMNS
from bench.verdict import answer, verdict_table

ROOT = Path(__file__).resolve().parents[1]


def ptwbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=600)


# The verdict's arithmetic is checked by hand with these round constants (not the calibrated
# defaults, which tests/test_calibration.py checks against the table).
HAND_CM = CostModel(exit_us=3.0, uffd_local_us=20.0, uffd_postcopy_us=100.0, link_gbit_s=10.0,
                    resend_overhead_us=1.0, guest_access_ns=10.0)


def _row(policy, **m):
    r = {c: 0 for c in COLUMNS}
    r.update(workload="w", host="precopy", variant="default", seed=1, policy=policy)
    r.update(m)
    return r


# ---- the verdict's arithmetic, by hand --------------------------------------------------
def test_verdict_net_and_break_even_by_hand():
    cm = HAND_CM    # exit 3 us, uffd 20 us, resend 4096*8/10e3 + 1 = 4.2768 us
    df = pd.DataFrame([
        _row("fix", s2_faults=20, double_faults=10),
        _row("ha-promote", s2_faults=10, dirty_false_positive=1),
    ])
    v = verdict_table(df, cm).iloc[0]
    assert v["exits_saved"] == 10
    resend = 4096 * 8 / 10e3 + 1.0
    # fix: 20 * 3 = 60; ha-promote: 10 * 3 + 1 * resend
    assert v["net_us"] == pytest.approx(60 - (30 + resend))
    # break-even exit cost: 10 * x = resend
    assert v["break_even_exit_us"] == pytest.approx(resend / 10)
    # no accesses recorded, so the run is fix's 60 us of overhead: 25.7 / 60 >= 1 %, and
    # 10 exits saved >= MIN_EXITS_SAVED
    assert v["net_us"] > 0 and v["matters"]
    assert v["run_share"] == pytest.approx(v["net_us"] / 60)
    few = pd.DataFrame([_row("fix", s2_faults=5), _row("ha-promote", s2_faults=3)])
    assert not verdict_table(few, cm).iloc[0]["matters"]             # 2 < 10 exits


def test_verdict_matters_threshold_and_broken_guest():
    cm = HAND_CM
    ok = pd.DataFrame([_row("fix", s2_faults=100), _row("ha-promote", s2_faults=90)])
    v = verdict_table(ok, cm).iloc[0]
    assert v["net_us"] == pytest.approx(30.0) and v["matters"]       # 30/300 = 10 % >= 1 %
    small = pd.DataFrame([_row("fix", s2_faults=1000), _row("ha-promote", s2_faults=999)])
    assert not verdict_table(small, cm).iloc[0]["matters"]           # 3/3000 = 0.1 %
    # 10 exits saved (30 us) in a run of 10^6 accesses: 10 ms of guest work -> 0.3 %
    long = pd.DataFrame([_row("fix", s2_faults=100, accesses=10**6),
                         _row("ha-promote", s2_faults=90, accesses=10**6)])
    v = verdict_table(long, cm).iloc[0]
    assert v["run_share"] == pytest.approx(30 / (10_000 + 300)) and not v["matters"]
    broken = pd.DataFrame([_row("fix", s2_faults=100),
                           _row("ha-promote", s2_faults=10, guest_aborts=5)])
    vb = verdict_table(broken, cm).iloc[0]
    assert vb["breaks_guest"] and not vb["matters"]
    one = answer(verdict_table(broken, cm))              # a single case speaks of itself
    assert one.startswith("this case (") and "matters: no" in one and "guest breaks" in one
    two = answer(verdict_table(pd.concat([broken, broken.assign(workload="w2")]), cm))
    assert two.startswith("a workload where ha-promote's saving over fix matters: no (0 of 2")
    assert "yes" in answer(verdict_table(ok, cm))


# ---- formats -----------------------------------------------------------------------------
def test_text_table_fits_72_columns():
    df = pd.DataFrame([{c: 123456 for c in METRIC_COLUMNS[:12]} | {"case": "x" * 60}] * 3)
    out = report.text_table(df)
    assert max(len(line) for line in out.splitlines()) <= 72


def test_markdown_table_renders():
    out = report.md_table(pd.DataFrame([{"a": 1, "b": "x"}]))
    lines = out.splitlines()
    assert lines[0].startswith("|") and set(lines[1]) <= set("|-: ")


# ---- beer, run, compare through the CLI -----------------------------------------------
SMALL_SPEC = """
seed = 3
micro = true
micro_variants = ["default"]
[[case]]
workloads = ["sparse"]
hosts = ["precopy", "snapshot"]
variants = ["default", "hw-always"]
[case.knobs.sparse]
regions = 16
accesses = 256
"""


@pytest.fixture(scope="module")
def beer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("beer")
    (d / "spec.toml").write_text(SMALL_SPEC)
    p = ptwbench("beer", "--spec", str(d / "spec.toml"), "--out", str(d), "--stamp", "t")
    assert p.returncode == 0, p.stderr
    return d / "beer-t", p.stdout


def test_beer_outputs(beer_dir):
    d, stdout = beer_dir
    assert stdout.startswith("a workload where ha-promote's saving over fix matters: ")
    assert max(len(line) for line in stdout.splitlines()) <= 72
    for f in ("metrics.csv", "timings.csv", "verdict.csv", "meta.json", "report.md",
              "verdict.txt", "false_dirty.png", "exits_vs_cost.png", "sensitivity.png"):
        assert (d / f).stat().st_size > 0, f
    import matplotlib.image as mpimg
    for f in ("false_dirty.png", "exits_vs_cost.png", "sensitivity.png"):
        assert mpimg.imread(d / f).ndim == 3                         # plots open
    meta = json.loads((d / "meta.json").read_text())
    assert meta["ptwbench"]["git_revision"]
    assert meta["cost_model_us"]["exit_us"] == CostModel().exit_us
    df = pd.read_csv(d / "metrics.csv")
    assert list(df.columns) == list(COLUMNS)
    assert set(df["policy"]) == {"fix", "legacy", "ha-promote", "oracle"}
    assert (df["dirty_false_negative"] == 0).all()                   # docs/semantics.md §5
    assert (df[df["policy"] == "oracle"]["dirty_false_positive"] == 0).all()
    md = (d / "report.md").read_text()
    assert "## Sensitivity" in md and "| param" in md


def test_same_seed_byte_identical_metrics(beer_dir, tmp_path):
    d, _ = beer_dir
    (tmp_path / "spec.toml").write_text(SMALL_SPEC)
    p = ptwbench("beer", "--spec", str(tmp_path / "spec.toml"), "--out", str(tmp_path),
                 "--stamp", "again")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "beer-again" / "metrics.csv").read_bytes() == (
        d / "metrics.csv").read_bytes()


def test_compare_identical_and_changed(beer_dir, tmp_path):
    d, _ = beer_dir
    status, text = compare(d, d, throughput=False)
    assert status == 0 and "identical" in text
    changed = tmp_path / "changed"
    changed.mkdir()
    df = pd.read_csv(d / "metrics.csv")
    df.loc[0, "s2_faults"] += 1
    df.to_csv(changed / "metrics.csv", index=False)
    status, text = compare(d, changed, throughput=False)
    assert status == 1 and "s2_faults" in text
    p = ptwbench("compare", str(d), str(changed), "--no-throughput")
    assert p.returncode == 1
    p = ptwbench("compare", str(d), str(tmp_path / "nothing"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def _timed(d: Path, dst: Path, samples: int, factor: float, spread: float) -> Path:
    """A copy of result directory d whose timings say: `samples` timed runs, median time x
    factor, samples spread +-spread around it."""
    dst.mkdir()
    (dst / "metrics.csv").write_bytes((d / "metrics.csv").read_bytes())
    t = pd.read_csv(d / "timings.csv")
    t["samples"] = samples
    t["seconds"] = t["seconds"] * factor
    t["seconds_min"] = t["seconds"] * (1 - spread)
    t["seconds_max"] = t["seconds"] * (1 + spread)
    t.to_csv(dst / "timings.csv", index=False)
    return dst


def test_compare_throughput_regression_needs_repeated_samples(beer_dir, tmp_path):
    d, _ = beer_dir
    base = _timed(d, tmp_path / "base", 10, 1.0, 0.05)
    slow = _timed(d, tmp_path / "slow", 10, 1.75, 0.05)    # 43 % fewer accesses/s
    assert compare(base, slow, threshold=0.10)[0] == 1
    assert compare(base, slow, threshold=0.80)[0] == 0      # within the threshold
    noisy = _timed(d, tmp_path / "noisy", 10, 1.75, 0.5)    # slower, but inside the spread
    assert compare(base, noisy, threshold=0.10)[0] == 0
    one = _timed(d, tmp_path / "one", 1, 1.75, 0.0)         # a single sample: not judged
    status, text = compare(base, one, threshold=0.10)
    assert status == 0 and "too few samples" in text
    assert compare(base, base, threshold=0.10)[0] == 0      # identical: never a regression


@pytest.mark.parametrize("threshold", ["nan", "-5", "inf", "100", "x"])
def test_compare_threshold_is_validated(beer_dir, threshold):
    d, _ = beer_dir
    p = ptwbench("compare", str(d), str(d), "--threshold", threshold)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("spec,key", [
    ("seed = 'x'", "seed"),
    ("colour = 1", "colour"),
    ("[[case]]\nworkloads = ['nope']", "case[0].workloads"),
    ("[[case]]\nhosts = ['moon']", "case[0].hosts"),
    ("[[case]]\nvariants = ['fast']", "case[0].variants"),
    ("[[case]]\nwhat = 1", "case[0].what"),
    ("seed = ", "not valid TOML"),
    ("[[case]]\nworkloads = ['sparse']\n[case.knobs.sparse]\nregions = 'many'",
     "case[0].knobs.sparse"),
    ("[[case]]\nhosts = ['precopy']\n[case.host_knobs.precopy]\nrounds = -1.5",
     "case[0].host_knobs.precopy"),
])
def test_bad_beer_spec(tmp_path, spec, key):
    f = tmp_path / "bad.toml"
    f.write_text(spec)
    out = tmp_path / "out"
    p = ptwbench("beer", "--spec", str(f), "--out", str(out))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(f) in lines[0]
    assert not out.exists() or not any(out.iterdir())                # nothing written


def test_run_writes_a_result_dir_and_is_deterministic(tmp_path):
    outs = []
    for i in range(2):
        p = ptwbench("run", "sparse", "--knob", "regions=16", "--knob", "accesses=200",
                     "--host", "precopy", "--seed", "5", "--out", str(tmp_path / str(i)))
        assert p.returncode == 0, p.stderr
        (d,) = (tmp_path / str(i)).iterdir()
        assert {f.name for f in d.iterdir()} == {"metrics.csv", "timings.csv", "meta.json",
                                                 "report.md"}
        outs.append((d / "metrics.csv").read_bytes())
    assert outs[0] == outs[1]
    p = ptwbench("run", "sparse", "--knob", "regions=x", "--out", str(tmp_path / "bad"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_engines_agree_on_a_run():
    from bench.catalog import build
    from bench.runner import run_workload
    w = build("sparse", {"regions": 16, "accesses": 300}, "snapshot", {}, 2)
    a = run_workload(w, host="snapshot", engine="numpy").rows
    b = run_workload(w, host="snapshot", engine="reference").rows
    assert a == b


def test_golden_results_unchanged(tmp_path):
    golden = ROOT / "results" / "golden"
    p = ptwbench("beer", "--spec", str(golden / "spec.toml"), "--out", str(tmp_path),
                 "--stamp", "now")
    assert p.returncode == 0, p.stderr
    p = ptwbench("compare", str(golden), str(tmp_path / "beer-now"), "--no-throughput")
    assert p.returncode == 0, p.stdout


def test_verdict_txt_is_a_short_summary_with_a_true_legend(beer_dir):
    d, _ = beer_dir
    text = (d / "verdict.txt").read_text()
    lines = text.splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= 72
    assert "ha-promote" in lines[0] + lines[1] and "fix" in text.split("\n\n")[1]
    # the legend explains exactly the column headers of the tables it follows
    legend = " ".join(text.split("Legend: ", 1)[1].split("\n\n")[0].split())
    keys = {k.split(":")[0].strip() for k in legend.rstrip(".").split("; ")}
    headers = set()
    for i, line in enumerate(lines[:-1]):
        if lines[i + 1].startswith("---"):
            headers |= set(line.split())
    headers -= {"variant", "policy"}                         # named by their values
    item_keys = {w for line in lines if line.startswith("   saved ")
                 for w in line.replace(",", " ").split()[::2]}
    assert keys == headers | item_keys, (keys, headers, item_keys)
    # case names are whole and unique
    cases = [line.split(". ", 1)[1] for line in lines if line[:1].isdigit() and ". " in line]
    assert cases and len(set(cases)) == len(cases) and not any("~" in c for c in cases)


def test_report_md_embeds_plots_and_has_no_nan(beer_dir):
    d, _ = beer_dir
    md = (d / "report.md").read_text()
    for png in ("false_dirty.png", "exits_vs_cost.png", "sensitivity.png"):
        assert f"]({png})" in md and (d / png).exists()
    assert "nan" not in md.lower().replace("nanos", "")
    assert "— = not applicable" in md


def test_beer_shows_real_programs_apart(tmp_path):
    """Issue 13: a recorded program (here a small CSV trace) among the realistic cases is
    marked real in verdict.csv and shown beside the generators in report.md, with what it
    touches: 64 distinct 4 KiB data pages = 0.25 MiB."""
    trace = tmp_path / "prog.csv"
    rows = [f"0,{0x10000000 + (i % 64) * 4096},{'write64' if i % 3 == 0 else 'read64'}"
            for i in range(2000)]
    trace.write_text("vcpu,va,kind\n" + "\n".join(rows) + "\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
seed = 1
micro = false
[[case]]
section = "realistic"
label = "prog"
workloads = ["import:{trace}", "sparse"]
hosts = ["migration"]
seconds = 0.001
[case.knobs."import:{trace}"]
demand = false
warm_stage2 = true
[case.knobs.sparse]
regions = 16
accesses = 256
demand = false
""")
    p = ptwbench("beer", "--spec", str(spec), "--out", str(tmp_path), "--stamp", "t")
    assert p.returncode == 0, p.stderr
    v = pd.read_csv(tmp_path / "beer-t" / "verdict.csv")
    kinds = dict(zip(v["workload"].str.split("+").str[0], v["workload_kind"]))
    assert kinds == {f"import:{trace.name}": "real", "sparse": "synthetic"}
    md = (tmp_path / "beer-t" / "report.md").read_text()
    part = md.split("### Real programs beside the generators")[1].split("###")[0]
    real_line = next(line for line in part.splitlines() if line.startswith("| real"))
    cells = [c.strip() for c in real_line.split("|")]
    # kind, workload, data_mib, pt_share (4 tables: root, L1, L2, one leaf table over
    # 64 data pages: 4 / 68), accesses_per_s (10 ns per imported access: 10^8)
    assert cells[3:6] == ["0.25", "0.0588", "1e+08"]
    assert "synthetic" in part
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace("warm_stage2 = true", "regions = 3"))
    p = ptwbench("beer", "--spec", str(bad), "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "regions" in p.stderr and len(p.stderr.splitlines()) == 1


def test_beer_results_do_not_depend_on_the_worker_count(beer_dir, tmp_path):
    """The fixture ran with one worker per core; one worker gives byte-identical CSVs."""
    (tmp_path / "spec.toml").write_text(SMALL_SPEC)
    p = ptwbench("beer", "--spec", str(tmp_path / "spec.toml"), "--out", str(tmp_path),
                 "--stamp", "one", "--workers", "1")
    assert p.returncode == 0, p.stderr
    d, _out = beer_dir
    for f in ("metrics.csv", "verdict.csv"):
        assert (tmp_path / "beer-one" / f).read_bytes() == (d / f).read_bytes(), f


def test_default_beer_realistic_first_with_real_programs(tmp_path):
    """The README's main job, offline (the shipped catalogue needs no valgrind): realistic
    cases first — warm VMs of >= 4 GiB, each over one whole migration (its window ends at
    the switch-over: at least one complete dirty round, none left open), q against its
    break-even — the catalogue's programs among them marked real, the stress cases after;
    verdict.txt leads with the answer and the map, and fits a mailing-list reply."""
    p = ptwbench("beer", "--out", str(tmp_path), "--stamp", "d")
    assert p.returncode == 0, p.stderr
    d = tmp_path / "beer-d"
    v = pd.read_csv(d / "verdict.csv")
    real = v[v["section"] == "realistic"]
    assert len(real) >= 7 and list(v["section"][:len(real)]) == ["realistic"] * len(real)
    assert (real["guest_gib"] >= 4).all()
    m = pd.read_csv(d / "metrics.csv")
    fix = m[(m["policy"] == "fix") & m["workload"].isin(real["workload"])]
    # the window is the whole migration: it ran to the switch-over
    assert (fix["migration_seconds"] > 0).all()
    assert (fix["guest_seconds"] - fix["migration_seconds"]).abs().max() < 1e-6
    assert (real["rounds_complete"] >= 1).all() and (fix["dirty_rounds_open"] == 0).all()
    assert real["q_break_even"].notna().all() and real["envelope_unit"].notna().all()
    for col in ("q_measured", "q_break_even", "rounds_complete", "net_ms_per_migration",
                "vcpu_share", "p_same_access"):
        assert col in v.columns, col
    programs = real[real["workload_kind"] == "real"]["workload"].str.split("+").str[0]
    assert set(programs) == {"catalogue:sqlite-tpcc", "catalogue:python-json",
                             "catalogue:gcc-compile"}
    assert (v[v["section"] == "stress"]["workload_kind"] == "synthetic").all()
    txt = (d / "verdict.txt").read_text()
    lines = txt.splitlines()
    assert lines[0].startswith(("Yes:", "No:"))
    assert any(ln.startswith("guest ") for ln in lines[:12])      # the map, in 12 lines
    assert len(lines) <= 60 and max(map(len, lines)) <= 72
    assert "### Real programs beside the generators" in (d / "report.md").read_text()
