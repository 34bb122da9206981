"""Progress (issue 23, item 6): a tqdm bar on a terminal, a line every few seconds elsewhere,
for run, sweep, convert and record (and beer)."""
from __future__ import annotations

import io

import pytest

from bench import progress as P
from bench.cli import main


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_every_few_seconds_when_not_on_a_terminal(monkeypatch):
    monkeypatch.delenv("PTWBENCH_PROGRESS_SECONDS", raising=False)
    f, clock = io.StringIO(), Clock()
    p = P.Progress(1000, "run w", "accesses", file=f, clock=clock)
    for _ in range(10):                    # 10 updates 1 s apart: a line after 5 s, 10 s
        clock.t += 1
        p.update(100)
    p.close()
    lines = f.getvalue().splitlines()
    assert lines == ["run w: 500/1k accesses (50%), 5 s", "run w: 1k/1k accesses (100%), 10 s"]


def test_short_work_prints_nothing_and_show_false_never():
    f, clock = io.StringIO(), Clock()
    p = P.Progress(10, "x", "run", file=f, clock=clock)
    p.update(10)
    p.close()
    q = P.Progress(10, "x", "run", file=f, clock=clock, show=False)
    clock.t += 100
    q.update(10)
    assert f.getvalue() == ""


def test_a_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    f = Tty()
    p = P.Progress(10, "sweep s", "point", file=f)
    assert p.bar is not None and not p.lines
    p.update(10)
    p.close()


@pytest.mark.parametrize("cmd", ["convert", "sweep", "beer"])
def test_commands_report_progress_off_a_terminal(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PTWBENCH_PROGRESS_SECONDS", "0")       # a line at every update
    if cmd == "convert":
        t = tmp_path / "t.csv"
        t.write_text("vcpu,va,kind\n" + "".join(f"0,{0x400000 + i * 4096},read64\n"
                                                for i in range(50)))
        argv, want = ["convert", str(t), "--out", str(tmp_path / "d")], "convert: read: 50"
    else:
        s = tmp_path / "s.toml"
        if cmd == "sweep":
            s.write_text('[sweep]\nseeds = 2\n[[grid]]\nworkloads = ["sparse"]\n'
                         '[grid.knobs.sparse]\nregions = 8\naccesses = 64\n')
            argv, want = ["sweep", str(s), "--out", str(tmp_path / "o"), "--workers", "1"], \
                "sweep s: 2/2 point (100%)"
        else:
            s.write_text('micro = false\n[[case]]\nworkloads = ["sparse"]\n'
                         '[case.knobs.sparse]\nregions = 8\naccesses = 64\n')
            argv, want = ["beer", "--spec", str(s), "--out", str(tmp_path / "o"),
                          "--workers", "1"], "beer: 1/1 run (100%)"
    capsys.readouterr()
    assert main(argv) == 0
    assert want in capsys.readouterr().err
