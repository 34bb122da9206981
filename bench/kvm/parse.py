"""The replay's "@R" lines -> results shaped like the model's (docs/scenario-format.md JSON),
and the comparison of the two.

ESR_EL2 decoding (Arm ARM D24.2.x ESR_ELx; Linux arch/arm64/include/asm/esr.h): EC = bits
[31:26] (0x24 data abort from a lower EL, 0x20 instruction abort from a lower EL, 0x25/0x21
the same taken at the current EL, i.e. inside the guest); ISS bit 7 S1PTW, bit 6 WnR, bit 24
ISV; DFSC/IFSC = bits [5:0]: 0b0001LL translation, 0b0010LL access flag, 0b0011LL
permission (LL = level), 0b010000 synchronous external abort (what kvm_inject_dabt() /
kvm_inject_pabt() deliver: inject_abt64(), ESR_ELx_FSC_EXTABT).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from model.arch import HOST_PAGE
from model.results import S2_CLASSES

EC_IABT_LOW, EC_DABT_LOW, EC_IABT_CUR, EC_DABT_CUR = 0x20, 0x24, 0x21, 0x25
FSC_EXTABT = 0x10
COMPARED = ("s2_faults", "double_faults", "uffd_events", "mmio_exits", "vcpu_run_failures",
            "guest_aborts", "stage1_faults", "harvests", "dirty_pages")


@dataclass(frozen=True)
class Fault:
    """One stage-2 abort KVM took (kvm:kvm_guest_fault), decoded."""
    step: int
    ipa: int
    esr: int

    @property
    def ec(self) -> int:
        return self.esr >> 26

    @property
    def s1ptw(self) -> bool:
        return bool(self.esr >> 7 & 1)

    @property
    def wnr(self) -> bool:
        return bool(self.esr >> 6 & 1)

    @property
    def fsc_type(self) -> str:
        f = self.esr & 0x3F
        return {0x04: "translation", 0x08: "access_flag", 0x0C: "permission"}.get(
            f & 0x3C, f"fsc{f:#x}")

    @property
    def level(self) -> int:
        return self.esr & 3

    @property
    def cls(self) -> str:
        """The model's class (S2_CLASSES), or 'other' (stage-2 access flag, ...)."""
        kind = self.fsc_type
        if kind not in ("translation", "permission"):
            return "other"
        return f"{'s1ptw' if self.s1ptw else 'data'}_{kind}"

    def describe(self, slot_page: str) -> str:
        src = "IABT" if self.ec == EC_IABT_LOW else "DABT"
        return (f"{src} {'S1PTW ' if self.s1ptw else ''}{self.fsc_type} L{self.level} "
                f"WnR={int(self.wnr)} @{slot_page}")


@dataclass
class RunLog:
    """One replay's raw record, as printed by ptw_replay."""
    ident: str
    policy: str
    faults: list[Fault] = field(default_factory=list)
    uffd: list[tuple[int, int, int, str, bool]] = field(default_factory=list)
    mmio: list[tuple[int, int, bool]] = field(default_factory=list)
    runfail: list[tuple[int, int]] = field(default_factory=list)
    gexc: list[tuple[int, int, int]] = field(default_factory=list)    # step, esr, far
    harvests: list[tuple[int, int, list[int]]] = field(default_factory=list)
    final: dict[int, list[int]] = field(default_factory=dict)
    ended: bool = False
    exit_status: int | None = None
    problems: list[str] = field(default_factory=list)


def _pages(s: str) -> list[int]:
    return [] if s == "-" else [int(x) for x in s.split(",")]


def _apply(log: RunLog, w: list[str]) -> None:
    kind = w[0]
    if kind == "fault":
        log.faults.append(Fault(int(w[1]), int(w[2], 16), int(w[3], 16)))
    elif kind == "uffd":
        log.uffd.append((int(w[1]), int(w[2]), int(w[3]), w[4], w[5] == "1"))
    elif kind == "mmio":
        log.mmio.append((int(w[1]), int(w[3], 16), w[4] == "1"))
    elif kind == "runfail":
        log.runfail.append((int(w[1]), int(w[2])))
    elif kind == "gexc":
        log.gexc.append((int(w[1]), int(w[3], 16), int(w[4], 16)))
    elif kind == "harvest":
        log.harvests.append((int(w[1]), int(w[2]), _pages(w[3] if len(w) > 3 else "-")))
    elif kind == "final":
        log.final[int(w[2])] = _pages(w[3] if len(w) > 3 else "-")
    elif kind == "end":
        log.ended = True
    elif kind == "exit":
        log.exit_status = int(w[1])
    elif kind in ("timeout", "error"):
        log.problems.append(" ".join(w))


def parse_console(text: str) -> tuple[dict[str, str], list[RunLog]]:
    """(facts about the boot: kernel, kvm_mode, ...; one RunLog per `begin` block)."""
    facts: dict[str, str] = {}
    logs: list[RunLog] = []
    cur: RunLog | None = None
    for line in text.splitlines():
        i = line.find("@R ")
        if i < 0:
            if cur is not None and ("Assertion" in line or "==== Test" in line):
                cur.problems.append(line.strip())
            continue
        w = line[i + 3:].split()
        if not w:
            continue
        if w[0].startswith("pft"):              # page_fault_test's own lines follow
            cur = None
        elif w[0] == "begin" and len(w) >= 3:
            cur = RunLog(w[1], w[2])
            logs.append(cur)
        elif cur is None or w[0] in ("kernel", "hafdbs", "kvm_mode", "policy_param", "kvm"):
            facts.setdefault(w[0], " ".join(w[1:]))
        else:
            try:
                _apply(cur, w)
            except (IndexError, ValueError):
                cur.problems.append("unparsable: " + line[i:].strip())
    return facts, logs


def _double_faults(faults: list[Fault]) -> int:
    """Walks that took an S1PTW translation fault and then an S1PTW permission fault on the
    same page (the model's count: model.reference.Vm.s1ptw_fault), per step."""
    n, translated, step = 0, set(), None
    for f in faults:
        if f.step != step:
            translated, step = set(), f.step
        page = f.ipa & ~(HOST_PAGE - 1)
        if f.cls == "s1ptw_translation":
            translated.add(page)
        elif f.cls == "s1ptw_permission" and page in translated:
            n += 1
            translated.discard(page)
    return n


def observed(log: RunLog, names: tuple[str, ...], slot_ipas: tuple[int, ...]) -> dict:
    """The replay's record in the shape of the model's per-policy JSON
    (docs/scenario-format.md), plus `s2_other` (stage-2 faults of no model class)."""
    s2 = dict.fromkeys(S2_CLASSES, 0)
    other = 0
    for f in log.faults:
        if f.cls in s2:
            s2[f.cls] += 1
        else:
            other += 1
    aborts = [g for g in log.gexc if g[1] >> 26 in (EC_DABT_CUR, EC_IABT_CUR)]
    return {
        "s2_faults": s2,
        "double_faults": _double_faults(log.faults),
        "uffd_events": [{"step": st, "slot": names[si], "page": pg, "mode": mode,
                         "write": wr} for st, si, pg, mode, wr in log.uffd],
        "mmio_exits": len(log.mmio),
        "vcpu_run_failures": len(log.runfail),
        "guest_aborts": sum(1 for g in aborts if g[1] & 0x3F == FSC_EXTABT),
        "stage1_faults": sum(1 for g in aborts if g[1] & 0x3F != FSC_EXTABT),
        "harvests": [{"step": st, "slot": names[si], "dirty_pages": pages}
                     for st, si, pages in log.harvests],
        "dirty_pages": {n: log.final.get(i, []) for i, n in enumerate(names)},
        "s2_other": other,
        "guest_other_exceptions": len(log.gexc) - len(aborts),
    }


def disagreements(model: dict, kvm: dict) -> list[tuple[str, object, object]]:
    """(field, model value, kvm value) for every compared field that differs."""
    out = []
    for k in COMPARED:
        if k == "s2_faults":
            for c in S2_CLASSES:
                if model[k][c] != kvm[k][c]:
                    out.append((f"s2_faults.{c}", model[k][c], kvm[k][c]))
        elif k == "dirty_pages":
            for s in sorted(set(model[k]) | set(kvm[k])):
                a, b = model[k].get(s, []), kvm[k].get(s, [])
                if list(a) != list(b):
                    out.append((f"dirty_pages.{s}", a, b))
        elif model[k] != kvm[k]:
            out.append((k, model[k], kvm[k]))
    if kvm.get("s2_other"):
        out.append(("s2_other", 0, kvm["s2_other"]))
    return out
