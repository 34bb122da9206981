"""Repeated windows computed once (issue 21 item 1): a window served again (TiledTrace) with
events at random offsets gives every metric equal whether the engine counts the repetitions
that would only settle again (engine.REPEATS_ONCE) or runs every access, on the tiled and
on the expanded trace, and equal to the reference simulator on the expanded trace."""
from contextlib import contextmanager

from hypothesis import event, given, settings
from hypothesis import strategies as st

from model import engine
from model.engine import run_trace
from model.reference_trace import run_reference_trace
from tests.strategies import repeated_windows
from tests.test_engine_differential import examples, facts


@contextmanager
def knobs(**values):
    """Set engine module knobs for one example (hypothesis runs many in one test call, so
    not pytest's monkeypatch, which undoes only at the test's end); count the repetitions
    Group.repeat_settled skips (the list yielded)."""
    saved = {k: getattr(engine, k) for k in values}
    orig = engine.Group.repeat_settled
    seen: list[int] = []

    def counting(self, settled_from, pos, end):
        out = orig(self, settled_from, pos, end)
        if out > pos:
            seen.append((out - pos) // self.period)
        return out
    try:
        for k, v in values.items():
            setattr(engine, k, v)
        engine.Group.repeat_settled = counting
        yield seen
    finally:
        for k, v in saved.items():
            setattr(engine, k, v)
        engine.Group.repeat_settled = orig


@settings(max_examples=examples(150))
@given(repeated_windows(max_repeats=40), st.sampled_from((8, 64, 1 << 18)))
def test_repeats_once_equal_expanded_and_reference(case, max_window):
    """Chunks of at most `max_window` accesses (small ones, without the reference-only
    shortcuts: the repetitions that settle are found after a few, and skipped, inside short
    windows too)."""
    scn, tiled, expanded = case
    small = dict(SCALAR_INTERVAL=0, MAX_SCALAR_RUN=0) if max_window < 64 else {}
    win = dict(MIN_WINDOW=min(64, max_window), MAX_WINDOW=max_window, **small)
    with knobs(**win) as seen:
        once = facts(run_trace(scn, tiled))
    event(f"repetitions skipped: {'some' if seen else 'none'}")
    with knobs(REPEATS_ONCE=False, **win) as seen:
        every = facts(run_trace(scn, tiled))
        assert not seen
    flat = facts(run_trace(scn, expanded))
    ref = facts(run_reference_trace(scn, expanded))
    for p in ref:
        assert once[p] == every[p], f"policy {p}: repeats once != every access"
        assert flat[p] == ref[p], f"policy {p}: expanded trace != reference"
        assert once[p] == ref[p], f"policy {p}: repeats once != reference"


@settings(max_examples=examples(50))
@given(repeated_windows(max_repeats=40))
def test_repeats_once_with_tiny_windows(case):
    """Chunks of 1..2 accesses, no reference-only shortcuts: every repetition boundary
    meets a chunk boundary."""
    scn, tiled, expanded = case
    with knobs(MIN_WINDOW=1, MAX_WINDOW=2, SCALAR_INTERVAL=0, MAX_SCALAR_RUN=0) as seen:
        once = facts(run_trace(scn, tiled))
    event(f"repetitions skipped: {'some' if seen else 'none'}")
    ref = facts(run_reference_trace(scn, expanded))
    for p in ref:
        assert once[p] == ref[p], f"policy {p}: repeats once != reference"
