"""The vectorised policy twins (model.policies.VECTOR_POLICIES) equal the scalar policy functions
on every input combination."""
import itertools

import numpy as np

from model.policies import POLICIES, VECTOR_POLICIES, FaultInfo

FIELDS = ("s1ptw", "permission", "instruction", "wnr", "ha", "vm_protected",
          "walk_writes_page")


def test_same_policies():
    assert set(VECTOR_POLICIES) == set(POLICIES)


def test_every_combination():
    combos = list(itertools.product((False, True), repeat=len(FIELDS)))
    cols = [np.array([c[k] for c in combos]) for k in range(len(FIELDS))]
    for name, scalar in POLICIES.items():
        vec = np.asarray(VECTOR_POLICIES[name](*cols))
        want = [scalar(FaultInfo(**dict(zip(FIELDS, c)))) for c in combos]
        assert vec.tolist() == want, name
        # scalar (broadcast) arguments, as the engine passes machine-wide flags
        for k, c in enumerate(combos):
            assert bool(VECTOR_POLICIES[name](*c)) == want[k], (name, c)
