"""metrics.csv (one row per scenario, policy, kernel and source model | kvm) and report.md
(every disagreement with both fault sequences side by side) for `ptwbench kvm check`."""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass

from model.arch import HOST_PAGE
from model.reference import run_reference
from model.results import S2_CLASSES, PolicyResult

from .check import Case, KernelRun, model_step_classes
from .export import as_qemu
from .parse import RunLog, disagreements, observed

COLUMNS = ("scenario", "kernel", "policy", "source", "status", *S2_CLASSES, "double_faults",
           "uffd_events", "uffd_write", "mmio_exits", "vcpu_run_failures", "guest_aborts",
           "stage1_faults", "dirty_marked", "dirty_false_positive", "s2_other", "qemu",
           "kernel_release")


@dataclass
class Outcome:
    case: Case
    kernel: str
    policy: str
    status: str                          # agree | disagree | failed
    model: dict
    kvm: dict | None
    diffs: list
    why: str = ""
    log: RunLog | None = None


def _failure(log: RunLog | None) -> str:
    if log is None:
        return "no output (the boot ended or timed out before this replay)"
    if log.problems:
        return "; ".join(log.problems)[:300]
    if not log.ended or log.exit_status:
        return f"replay ended early (exit status {log.exit_status})"
    return ""


def _rounds(res: dict) -> list[tuple[str, list[int]]]:
    out = [(h["slot"], h["dirty_pages"]) for h in res["harvests"]]
    return out + sorted(res["dirty_pages"].items())


def _false_positive(res: dict, pr: PolicyResult) -> int:
    """Pages marked dirty that the model's ground truth says were not written, per round."""
    written = [set(h.written_pages) for h in pr.harvests]
    written += [set(pr.written_pages.get(s, ())) for s in sorted(res["dirty_pages"])]
    return sum(len(set(pages) - w) for (_, pages), w in zip(_rounds(res), written))


def _row(o: Outcome, source: str, res: dict | None, pr: PolicyResult, facts) -> dict:
    row = {"scenario": o.case.ident, "kernel": o.kernel, "policy": o.policy,
           "source": source, "status": o.status, "qemu": facts.get("qemu", ""),
           "kernel_release": facts.get("kernel", "").split(" ")[0]}
    if res is None:
        return row
    row.update(res["s2_faults"])
    row.update(double_faults=res["double_faults"], uffd_events=len(res["uffd_events"]),
               uffd_write=sum(e["write"] for e in res["uffd_events"]),
               mmio_exits=res["mmio_exits"], vcpu_run_failures=res["vcpu_run_failures"],
               guest_aborts=res["guest_aborts"], stage1_faults=res["stage1_faults"],
               dirty_marked=sum(len(p) for _, p in _rounds(res)),
               dirty_false_positive=_false_positive(res, pr), s2_other=res.get("s2_other", 0))
    return row


def compare(cases: list[Case], runs: list[KernelRun], qemu: str):
    """(outcomes, metrics rows)."""
    outcomes, rows = [], []
    for k, c in enumerate(cases):
        if c.export is None:
            continue
        pols = tuple(sorted({p for kr in runs for p in kr.policies}))
        models = run_reference(as_qemu(c.scn), pols)     # QEMU's AT sets AF
        for kr in runs:
            facts = dict(kr.facts, qemu=qemu)
            for p in kr.policies:
                pr = models[p]
                mj = pr.as_json()
                log = kr.logs.get((k, p))
                why = _failure(log)
                kvm = None if why else observed(log, c.export.slot_names, c.export.slot_ipas)
                diffs = disagreements(mj, kvm) if kvm else []
                status = "failed" if why else ("disagree" if diffs else "agree")
                o = Outcome(c, kr.name, p, status, mj, kvm, diffs, why, log)
                outcomes.append(o)
                rows.append(_row(o, "model", mj, pr, facts))
                rows.append(_row(o, "kvm", kvm, pr, facts))
    return outcomes, rows


def metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    return buf.getvalue()


def _slot_page(ipa: int, c: Case) -> str:
    for name, base, s in zip(c.export.slot_names, c.export.slot_ipas, c.scn.memslots):
        if base <= ipa < base + s.pages * HOST_PAGE:
            return f"{name}[{(ipa - base) // HOST_PAGE}]"
    return f"{ipa:#x}"


def _step_op(st) -> str:
    if st.op == "access":
        return f"access {st.kind} {st.va:#x} (vCPU {st.vcpu})"
    if st.op in ("zap", "uffd_wp", "swap_out"):
        return f"{st.op} {st.slot}[{st.first}+{st.count}]"
    if st.op == "set_tcr":
        return f"set_tcr ha={st.ha} hd={st.hd}"
    return f"{st.op} {st.slot or ''}".strip()


def side_by_side(o: Outcome) -> str:
    """Per step: the model's stage-2 faults by class, KVM's faults decoded."""
    per = model_step_classes(as_qemu(o.case.scn), o.policy)
    kvm_by_step: dict[int, list[str]] = {}
    for f in o.log.faults:
        kvm_by_step.setdefault(f.step, []).append(f.describe(_slot_page(f.ipa, o.case)))
    lines = ["| step | op | model | kvm |", "|---|---|---|---|"]
    for i, st in enumerate(o.case.scn.steps):
        m = ", ".join(f"{c}×{n}" for c, n in per[i].items()) or "-"
        k = "; ".join(kvm_by_step.get(i, [])) or "-"
        lines.append(f"| {i} | {_step_op(st)} | {m} | {k} |")
    return "\n".join(lines)


def _field_table(o: Outcome) -> str:
    lines = ["| field | model | kvm |", "|---|---|---|"]
    lines += [f"| {f} | `{a}` | `{b}` |" for f, a, b in o.diffs]
    return "\n".join(lines)


def report_md(outcomes: list[Outcome], cases: list[Case], runs: list[KernelRun],
              header: list[str]) -> str:
    out = ["# ptwbench kvm check", ""] + header + [""]
    tally = Counter((o.kernel, o.policy, o.status) for o in outcomes)
    out += ["## Summary", "", "| kernel | policy | agree | disagree | failed |", "|---|---|---|---|---|"]
    for kr in runs:
        for p in kr.policies:
            out.append(f"| {kr.name} | {p} | {tally[(kr.name, p, 'agree')]} | "
                       f"{tally[(kr.name, p, 'disagree')]} | {tally[(kr.name, p, 'failed')]} |")
    unsup = [c for c in cases if c.export is None]
    out += ["", f"Scenarios replayed: {len(cases) - len(unsup)}; not replayable: {len(unsup)}."]
    classes = Counter(tuple(sorted({f.split('.')[0] + ('.' + f.split('.')[1] if f.startswith(
        's2_faults') else '') for f, _, _ in o.diffs})) for o in outcomes if o.diffs)
    if classes:
        out += ["", "## Disagreement classes", "", "| fields that differ | runs |", "|---|---|"]
        out += [f"| {', '.join(k)} | {n} |" for k, n in classes.most_common()]
    out += _details(outcomes, unsup, runs)
    return "\n".join(out) + "\n"


def _details(outcomes, unsup, runs) -> list[str]:
    out = []
    bad = [o for o in outcomes if o.status == "failed"]
    if bad:
        out += ["", "## Failed runs", ""]
        out += [f"* `{o.case.ident}` {o.kernel}/{o.policy}: {o.why}" for o in bad]
    dis = [o for o in outcomes if o.status == "disagree"]
    if dis:
        out += ["", "## Disagreements", ""]
        for o in dis:
            out += [f"### `{o.case.ident}` — {o.kernel} kernel, {o.policy}", "",
                    _field_table(o), "", side_by_side(o), ""]
    if unsup:
        why = Counter(c.unsupported for c in unsup)
        out += ["", "## Not replayable", "", "| reason | scenarios |", "|---|---|"]
        out += [f"| {r} | {n} |" for r, n in why.most_common()]
    for kr in runs:
        if kr.pft:
            out += ["", f"## page_fault_test cases ({kr.name} kernel)", ""]
            for p, res in kr.pft.items():
                t = Counter(r for _, r in res)
                out.append(f"* {p}: {t['pass']} pass, {t['fail']} fail, {t['timeout']} "
                           f"timeout, {t['skip']} skip")
                out += [f"  * {r.upper()} `{n}`" for n, r in res if r not in ("pass", "skip")]
    return out
