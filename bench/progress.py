"""Progress of long work (`run`, `beer`, `sweep`, `convert`, `record`), on stderr: a tqdm bar
on a terminal; elsewhere (a log file, a pipe, CI) one line every few seconds, so that a long
run is never silent and a short one prints nothing."""
from __future__ import annotations

import os
import sys
import time

LINE_SECONDS = 5.0              # a line at most this often when stderr is not a terminal
BAR_DELAY = 1.0                 # tqdm: no bar for work shorter than this


def _every() -> float:
    try:
        return float(os.environ.get("PTWBENCH_PROGRESS_SECONDS", LINE_SECONDS))
    except ValueError:
        return LINE_SECONDS


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n)}"


class Progress:
    """`update(n)` as work is done; `close()` at the end.  `show`: None (a bar on a terminal,
    lines elsewhere), False (nothing)."""

    def __init__(self, total: int | None, desc: str, unit: str, *, show: bool | None = None,
                 initial: int = 0, file=None, clock=time.monotonic):
        self.file = file or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.clock = initial, clock
        self.t0 = self.last = clock()
        self.every = _every()
        self.bar = None
        self.lines = show is None and not _isatty(self.file)
        if show is None and not self.lines:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial,
                            file=self.file, dynamic_ncols=True, delay=BAR_DELAY,
                            unit_scale=unit != "run" and unit != "point")

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            now = self.clock()
            if now - self.last >= self.every:
                self.last = now
                print(self.line(now), file=self.file, flush=True)

    def line(self, now: float) -> str:
        done = f"{_human(self.n)}"
        if self.total:
            done += f"/{_human(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        return f"{self.desc}: {done}, {now - self.t0:.0f} s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False
