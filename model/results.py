"""Per-policy results of a run: the facts of docs/scenario-format.md's output and docs/semantics.md §5 metrics."""
from __future__ import annotations

from dataclasses import dataclass, field

S2_CLASSES = ("s1ptw_translation", "s1ptw_permission", "data_translation", "data_permission")


@dataclass
class UffdEvent:
    step: int
    slot: str
    page: int
    mode: str                    # missing | minor | wp
    write: bool                  # UFFD_PAGEFAULT_FLAG_WRITE
    written: bool = False        # the step that raised it wrote that page (guest or VMM)

    def as_json(self) -> dict:
        return {"step": self.step, "slot": self.slot, "page": self.page, "mode": self.mode,
                "write": self.write}


@dataclass
class Harvest:
    step: int
    slot: str
    dirty_pages: list[int]
    written_pages: list[int]     # ground truth of the round (not in the JSON)
    s1ptw_tf_pages: list[int] = field(default_factory=list)  # took an S1PTW translation
    #                                               fault in the round (not in the JSON)
    s1ptw_tf_written: list[int] = field(default_factory=list)  # ... and were written after

    def as_json(self) -> dict:
        return {"step": self.step, "slot": self.slot, "dirty_pages": self.dirty_pages}


@dataclass
class PolicyResult:
    policy: str
    s2_faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(S2_CLASSES, 0))
    double_faults: int = 0
    uffd_events: list[UffdEvent] = field(default_factory=list)
    mmio_exits: int = 0
    vcpu_run_failures: int = 0
    guest_aborts: int = 0
    stage1_faults: int = 0
    efaults: int = 0
    pml_full_exits: int = 0      # x86-ept-ad only (model/x86.py)
    host_unmapped_pages: int = 0  # stage-2 page mappings removed by host operations
    harvests: list[Harvest] = field(default_factory=list)
    dirty_pages: dict[str, list[int]] = field(default_factory=dict)
    written_pages: dict[str, list[int]] = field(default_factory=dict)
    # work
    accesses: int = 0
    walks: int = 0
    descriptor_reads: int = 0
    # classification of slot pages as page-table pages (for the pt/data split of §5)
    pt_pages: dict[str, set[int]] = field(default_factory=dict)
    logging_slots: set[str] = field(default_factory=set)
    # the open rounds' pages that took an S1PTW translation fault (slots logging at the end)
    s1ptw_tf_pending: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self) -> dict:
        """Exactly docs/scenario-format.md's per-policy shape."""
        return {
            "s2_faults": dict(self.s2_faults),
            "double_faults": self.double_faults,
            "uffd_events": [e.as_json() for e in self.uffd_events],
            "mmio_exits": self.mmio_exits,
            "vcpu_run_failures": self.vcpu_run_failures,
            "guest_aborts": self.guest_aborts,
            "stage1_faults": self.stage1_faults,
            "harvests": [h.as_json() for h in self.harvests],
            "dirty_pages": {k: list(v) for k, v in self.dirty_pages.items()},
            "written_pages": {k: list(v) for k, v in self.written_pages.items()},
        }

    # ---- docs/semantics.md §5 derived metrics -------------------------------------------------
    def dirty_metrics(self) -> dict[str, int]:
        """Dirty-log metrics judged as the kernel judges them: a page marked dirty is a false
        positive only if the guest did not write it before the harvest that ends its round
        (KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG of its range).  A round still open when the
        run ends (a slot logging at the end: the rest of the round could still write its
        pages) is reported apart as pending, never counted false."""
        m = dict.fromkeys(("dirty_marked_pt", "dirty_marked_data", "dirty_true",
                           "dirty_false_positive", "dirty_false_positive_pt",
                           "dirty_false_negative", "dirty_pending_marked",
                           "dirty_pending_unwritten", "s1ptw_tf_round_pages",
                           "s1ptw_tf_round_written", "s1ptw_tf_round_neutral",
                           "s1ptw_tf_pending"), 0)
        for h in self.harvests:
            pt = self.pt_pages.get(h.slot, set())
            marked, written = set(h.dirty_pages), set(h.written_pages)
            m["dirty_marked_pt"] += len(marked & pt)
            m["dirty_marked_data"] += len(marked - pt)
            m["dirty_true"] += len(written)
            fp = marked - written
            m["dirty_false_positive"] += len(fp)
            m["dirty_false_positive_pt"] += len(fp & pt)
            m["dirty_false_negative"] += len(written - marked)
            # q's pairs (page, round): walk-faulted page-table pages, and those the guest
            # wrote after the fault, before the harvest (each an exit fix takes later)
            tf = set(h.s1ptw_tf_pages) & pt
            tfw = set(h.s1ptw_tf_written) & pt
            m["s1ptw_tf_round_pages"] += len(tf)
            m["s1ptw_tf_round_written"] += len(tfw)
            # written in the round, but only before the fault: neither a saving nor a false
            # positive (fix's page was writable then; ha-promote's mark is true)
            m["s1ptw_tf_round_neutral"] += len((tf & written) - tfw)
        for slot in sorted(self.logging_slots):
            marked = set(self.dirty_pages.get(slot, ()))
            m["dirty_pending_marked"] += len(marked)
            m["dirty_pending_unwritten"] += len(marked - set(self.written_pages.get(slot, ())))
            m["s1ptw_tf_pending"] += len(set(self.s1ptw_tf_pending.get(slot, ()))
                                         & self.pt_pages.get(slot, set()))
        return m

    def _false_write(self, e: UffdEvent, written_at_end: dict[str, set[int]]) -> bool:
        """A WRITE event that nothing wrote.  uffd-wp (a background snapshot, one round from
        the protection to the end): the page is copied once per snapshot, so an early WRITE
        resolution of a page the guest writes later in the snapshot costs nothing extra —
        false only if the guest wrote the page neither in the event's step nor after it
        (the slot's written pages at the end; the snapshot protects at its start, so an
        earlier write would have raised the event itself)."""
        if not e.write or e.written:
            return False
        if e.mode == "wp":
            if e.slot not in written_at_end:
                written_at_end[e.slot] = set(self.written_pages.get(e.slot, ()))
            return e.page not in written_at_end[e.slot]
        return True

    def uffd_counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for mode in ("missing", "minor", "wp"):
            for flag in ("read", "write"):
                c[f"uffd_{mode}_{flag}"] = sum(
                    1 for e in self.uffd_events if e.mode == mode and e.write == (flag == "write"))
        c["uffd_events"] = len(self.uffd_events)
        written_at_end: dict[str, set[int]] = {}
        false = [e for e in self.uffd_events if self._false_write(e, written_at_end)]
        c["uffd_false_write"] = len(false)
        for mode in ("missing", "minor", "wp"):
            c[f"uffd_{mode}_false_write"] = sum(1 for e in false if e.mode == mode)
        return c

    def metrics(self, oracle: "PolicyResult | None" = None) -> dict[str, int]:
        """Flat docs/semantics.md §5 metrics; `uffd_extra` needs the oracle's result of the same run."""
        m: dict[str, int] = {"accesses": self.accesses, "walks": self.walks,
                             "descriptor_reads": self.descriptor_reads}
        for k, v in self.s2_faults.items():
            m[f"s2_{k}"] = v
        m["s2_faults"] = sum(self.s2_faults.values())
        m["double_faults"] = self.double_faults
        m.update(self.uffd_counts())
        if oracle is not None:
            m["uffd_extra"] = max(0, len(self.uffd_events) - len(oracle.uffd_events))
        m.update(self.dirty_metrics())
        m["dirty_rounds"] = len(self.harvests)                # complete rounds
        # slots logging at the end whose round has something in it (marked, written or
        # walk-faulted pages): a round opened by a final harvest and left empty is not one
        m["dirty_rounds_open"] = sum(
            1 for s in self.logging_slots
            if self.dirty_pages.get(s) or self.written_pages.get(s)
            or self.s1ptw_tf_pending.get(s))
        m.update(guest_aborts=self.guest_aborts, mmio_exits=self.mmio_exits,
                 vcpu_run_failures=self.vcpu_run_failures, efaults=self.efaults, pml_full_exits=self.pml_full_exits,
                 stage1_faults=self.stage1_faults,
                 host_unmapped_pages=self.host_unmapped_pages)
        return m
