"""What a hunt leaves in its directory (bench/hunt.py): hunt.csv (every trial), best.toml
(the best configuration as a beer spec, with the one `ptwbench run` command that reproduces
it), report.md (best-so-far curve, parameter importances, q against q*), summary.json (for
`hunt_summary_line`) and meta.json.  Every file is written atomically."""
from __future__ import annotations

import io
import json
from pathlib import Path

from .hunt import KNOBS, METRICS, OBJECTIVE, Space, _optuna

TRIAL_COLUMNS = ("trial", "state", "space", "origin", OBJECTIVE,
                 *[m for m in METRICS if m != OBJECTIVE],
                 "seconds", "error")


def trial_rows(study, space: Space) -> tuple[list[dict], list[str]]:
    """One row per trial of the study (trial order): state, the space's label, metrics,
    the evaluation's seconds, why it was refused or failed, and every knob's value."""
    knobs = [d.name for d in space.dims]
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        vals = ua.get("values") or {}
        r = {"trial": t.number, "state": t.state.name,
             "space": "stress" if space.stress else "realistic",
             "origin": ua.get("origin", ""),
             OBJECTIVE: t.value if t.value is not None else "",
             "seconds": ua.get("seconds", ""), "error": ua.get("error", "")}
        for m in METRICS:
            if m != OBJECTIVE:
                r[m] = "" if ua.get(m) is None else ua[m]
        for k in knobs:
            r[k] = vals.get(k, "")
        rows.append(r)
    return rows, [*TRIAL_COLUMNS, *knobs]


def best_trial(study):
    """The best finished trial (highest objective; the first of equals), or None."""
    optuna = _optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _toml_key(k: str) -> str:
    """A bare TOML key, or quoted ("catalogue:sqlite-tpcc")."""
    import re
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _cli_value(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def label_of(cfg: dict) -> str:
    """GUEST/AGING/LINK as the realistic map names a case, with the VM's size."""
    k, mig = cfg["knobs"], cfg["host_knobs"].get("migration", {})
    link = (f"{mig['link_gbit_s']:g}G" if "link_gbit_s" in mig else
            f"{mig['bandwidth_mb_s']:.0f}MBps" if "bandwidth_mb_s" in mig else "128MiBps")
    return f"{cfg['workload']}/{k.get('aging', 'none')}/{link}/{k.get('ram_mb', 0)}MB"


def run_command(cfg: dict) -> str:
    """The one `ptwbench run` command that reproduces a trial's configuration."""
    parts = ["ptwbench", "run", cfg["workload"]]
    parts += [f"--knob {k}={_cli_value(v)}" for k, v in cfg["knobs"].items()]
    parts += ["--host", cfg["host"]]
    for h, kv in cfg["host_knobs"].items():
        parts += [f"--host-knob {h}.{k}={_cli_value(v)}" for k, v in kv.items()]
    parts += ["--variant", cfg["variant"], "--seed", str(cfg["seed"]), "--until", cfg["until"]]
    return " ".join(parts)


def best_toml(cfg: dict, t, space: Space, name: str) -> str:
    """The best configuration as a beer spec with one case (`ptwbench beer --spec`)."""
    section = "stress" if space.stress else "realistic"
    lines = [f"# The best configuration of hunt {name} ({section} space): trial {t.number},",
             f"# {OBJECTIVE} = {t.value:.6g}, net "
             f"{t.user_attrs.get('net_ms_per_migration')} ms per migration.",
             "# Reproduce it alone with:", f"#   {run_command(cfg)}",
             f"seed = {cfg['seed']}", "micro = false", "", "[[case]]",
             f'section = "{section}"', f'label = "hunt/{label_of(cfg)}"',
             f'workloads = ["{cfg["workload"]}"]', f'hosts = ["{cfg["host"]}"]',
             f'until = "{cfg["until"]}"', f'variants = ["{cfg["variant"]}"]',
             f"[case.knobs.{_toml_key(cfg['workload'])}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in cfg["knobs"].items()]
    for h, kv in cfg["host_knobs"].items():
        lines.append(f"[case.host_knobs.{h}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in kv.items()]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def plots(rows: list[dict]) -> dict[str, bytes]:
    """best_so_far.png (objective per trial and its running maximum) and q_vs_qstar.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = [r["trial"] for r in done], [r[OBJECTIVE] for r in done]
    best, run = [], float("-inf")
    for y in ys:
        run = max(run, y)
        best.append(run)
    ax.plot(xs, ys, ".", label="trial")
    ax.step(xs, best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{OBJECTIVE} (net saving / vCPU time)")
    ax.legend()
    fig.tight_layout()
    out = {"best_so_far.png": _png(fig)}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    qs = [(r["q_break_even"], r["q_measured"]) for r in done
          if r["q_measured"] != "" and r["q_break_even"] != ""]
    if qs:
        ax.scatter([a for a, _ in qs], [b for _, b in qs], s=12)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="q = q*")
    ax.set_xlabel("q* (break-even)")
    ax.set_ylabel("q (measured)")
    ax.legend()
    fig.tight_layout()
    out["q_vs_qstar.png"] = _png(fig)
    return out


def importances(study) -> list[tuple[str, float]]:
    """PED-ANOVA importances (Optuna's evaluator that needs no scikit-learn) of the knobs
    of the complete trials (as Optuna computes them); [] when there are too few to say."""
    optuna = _optuna()
    import warnings
    try:
        ev = optuna.importance.PedAnovaImportanceEvaluator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # "too few trials": said below
            imp = optuna.importance.get_param_importances(study, evaluator=ev)
    except (ValueError, RuntimeError, ZeroDivisionError, ImportError):
        return []
    return sorted(imp.items(), key=lambda kv: -kv[1])


def _md_table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def summary_of(rows: list[dict], study, space: Space) -> dict:
    """The facts hunt_summary_line states: trials searched, the space's label, the best."""
    t = best_trial(study)
    s = {"searched": sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows),
         "complete": sum(r["state"] == "COMPLETE" for r in rows),
         "stress": space.stress, "space": space.name, "best": None}
    if t is not None:
        cfg = t.user_attrs["config"]
        s["best"] = {"trial": t.number, "label": label_of(cfg), OBJECTIVE: t.value,
                     "net_ms_per_migration": t.user_attrs.get("net_ms_per_migration"),
                     "matters": bool(t.user_attrs.get("matters")),
                     "command": run_command(cfg)}
    return s


def summary_line(s: dict) -> str:
    where = ("in a stress space (outside the calibrated ranges)" if s["stress"]
             else "within calibrated ranges")
    head = f"searched {s['searched']} configurations {where}"
    b = s["best"]
    if b is None:
        return f"{head}; best: none (no trial finished)"
    net = b["net_ms_per_migration"]
    net_t = "-" if net is None else f"{net:.3g}"
    return (f"{head}; best: {b['label']} (net {net_t} ms per migration, matters: "
            f"{'yes' if b['matters'] else 'no'})")


def hunt_summary_line(d) -> str:
    """The line a beer run with `--hunt DIR` adds to verdict.txt (issue 24): "searched N
    configurations within calibrated ranges; best: ... (net X ms per migration, matters:
    yes/no)".  Raises OSError/ValueError when DIR holds no finished hunt."""
    return summary_line(json.loads((Path(d) / "summary.json").read_text()))


def _rate_text(rows: list[dict], run) -> str:
    secs = [r["seconds"] for r in rows if r["state"] in ("COMPLETE", "PRUNED")
            and r["seconds"] != ""]
    mean = sum(secs) / len(secs) if secs else 0.0
    wall = (f"This run: {run.ran} trials in {run.seconds:.0f} s on {run.executor} = "
            f"{3600 * run.ran / run.seconds:.0f} trials per hour"
            if run.ran and run.seconds else f"This run: {run.ran} trials")
    per = f"; mean evaluation {mean:.1f} s ({3600 / mean:.0f} per core-hour)" if mean else ""
    return wall + per


def report_md(name: str, rows: list[dict], study, space: Space, run, s: dict) -> str:
    label = "STRESS space (outside the calibrated ranges)" if space.stress else \
        "realistic space (within the calibrated ranges)"
    by_state = {k: sum(r["state"] == k for r in rows) for k in ("COMPLETE", "PRUNED", "FAIL")}
    out = [f"# ptwbench hunt {name}: {label}", "", f"**{summary_line(s)}**", "",
           f"Trials: {by_state['COMPLETE']} complete, {by_state['PRUNED']} refused by the "
           f"registry (hunt.csv's error column), {by_state['FAIL']} failed or interrupted. "
           f"{_rate_text(rows, run)}.", ""]
    out += _origin_md(rows)
    if run.out_of_time:
        out += ["The time budget (--minutes) stopped the hunt before --trials.", ""]
    out += _best_md(study, space) + ["![best so far](best_so_far.png)", ""]
    imp = importances(study)
    out += ["## Parameter importances", "",
            "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator) over the complete trials; a "
            "conditional knob is judged from the trials that have it "
            "(as Optuna computes them):", ""]
    out += [_md_table(["knob", "importance"], [[k, f"{v:.3f}"] for k, v in imp]) if imp
            else "(too few complete trials to say)", ""]
    out += _q_md(rows) + _space_md(space)
    return "\n".join(out) + "\n"


def _origin_md(rows: list[dict]) -> list[str]:
    """The best of the realistic map's cases (the warm start) against the best the search
    found beyond them."""
    out = []
    for origin, what in (("map", "the default beer's realistic cases"),
                         ("tpe", "the trials TPE chose")):
        g = [r for r in rows if r["origin"] == origin and r["state"] == "COMPLETE"]
        if g:
            b = max(g, key=lambda r: r[OBJECTIVE])
            out.append(f"* best of {what} ({len(g)}): trial {b['trial']}, {OBJECTIVE} "
                       f"{b[OBJECTIVE]:.4g}, net {b['net_ms_per_migration']} ms per migration")
    return out + [""] if out else []


def _best_md(study, space: Space) -> list[str]:
    t = best_trial(study)
    if t is None:
        return ["No trial completed.", ""]
    ua, cfg = t.user_attrs, t.user_attrs["config"]
    rows = [[k, v] for k, v in (ua.get("values") or {}).items()]
    rows += [[m, ua.get(m)] for m in METRICS if m != OBJECTIVE]
    return [f"## Best: trial {t.number}, {OBJECTIVE} = {t.value:.6g}", "",
            _md_table(["knob / measure", "value"], rows), "",
            "Reproduce it (best.toml holds it as a beer spec case):", "",
            f"    {run_command(cfg)}", ""]


def _q_md(rows: list[dict]) -> list[str]:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    qd = [r for r in done if r["q_measured"] != ""]
    above = sum(1 for r in qd if r["q_break_even"] != "" and r["q_measured"] >
                r["q_break_even"])
    by = {}
    for r in done:
        g = by.setdefault(r.get("workload", ""), [])
        g.append(r)
    tab = [[w, len(g), f"{max(x[OBJECTIVE] for x in g):.3g}",
            sum(1 for x in g if x["q_measured"] != "" and x["q_break_even"] != ""
                and x["q_measured"] > x["q_break_even"]),
            sum(1 for x in g if x["matters"] is True)] for w, g in sorted(by.items())]
    return ["## q against q*", "",
            f"{len(qd)} of {len(done)} complete trials measured q (a page-table page took an "
            f"S1PTW translation fault in a complete dirty round); {above} of them have "
            f"q > q* (the break-even at the trial's own link).", "",
            "![q against q*](q_vs_qstar.png)", "",
            _md_table(["workload", "trials", f"best {OBJECTIVE}", "q > q*", "matters"], tab),
            ""]


def _space_md(space: Space) -> list[str]:
    rows = [[f"`{d.name}`", d.describe(),
             "{" + ", ".join(map(str, d.knob.choices)) + "}" if d.knob.kind == "cat"
             else f"{d.knob.lo:.10g} .. {d.knob.hi:.10g}", d.knob.source] for d in space.dims]
    return ["## The space", "", f"`{space.name}`{' (stress)' if space.stress else ''}; "
            f"docs/hunt.md gives each range's source.", "",
            _md_table(["knob", "searched", "calibrated", "source"], rows), ""]


def write_outputs(d: Path, study, space: Space, run, meta: dict) -> dict:
    """hunt.csv, best.toml, report.md, the PNGs, summary.json, meta.json into `d`."""
    from .runner import csv_text, meta_json, write_atomic
    rows, cols = trial_rows(study, space)
    s = summary_of(rows, study, space)
    files = {"hunt.csv": csv_text(rows, cols), "summary.json": meta_json(s),
             "meta.json": meta_json({**meta, "trials_run": run.ran,
                                     "trials_resumed": run.resumed, "stale_failed": run.stale,
                                     "seconds": round(run.seconds, 3),
                                     "executor": run.executor, "space": space.as_json()}),
             "report.md": report_md(meta["study"], rows, study, space, run, s)}
    t = best_trial(study)
    if t is not None:
        files["best.toml"] = best_toml(t.user_attrs["config"], t, space, meta["study"])
    files.update(plots(rows))
    for name, data in files.items():
        write_atomic(d / name, data)
    return s
