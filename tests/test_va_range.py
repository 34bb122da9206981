"""VAs outside the TTBR0 range (bits set above va_bits) take a stage-1 translation fault
without a walk, in both engines (AArch64.VAIsOutOfRange)."""
import numpy as np

from model.engine import run_trace
from model.reference_trace import run_reference_trace
from model.scenario import Guest, Machine, Mapping, Memslot, Scenario, Vmm
from model.trace import Trace


def test_out_of_range_vas_fault_in_both_engines():
    scn = Scenario("range", Machine(va_bits=39), Guest(tcr_ha=True, pt_slot="pt"),
                   (Memslot("pt", 0x4000_0000, 8), Memslot("data", 0x8000_0000, 4)), Vmm(),
                   (Mapping(0x1000, 0x8000_0000, 2),), ())
    va = np.array([0x1000, (1 << 39) | 0x1000, 0x2008, 0xFFFF_FF80_0000_1000, 0x1010],
                  dtype=np.uint64)
    tr = Trace(np.zeros(5, np.uint16), va, np.array([0, 0, 1, 1, 0], np.uint8))
    ref = run_reference_trace(scn, tr, ("fix", "legacy"))
    fast = run_trace(scn, tr, ("fix", "legacy"))
    for p in ref:
        assert ref[p].stage1_faults == 2            # the two out-of-range VAs, by hand
        assert fast[p].metrics() == ref[p].metrics()
        assert fast[p].as_json() == ref[p].as_json()
