"""Errors and argument types shared by the command-line modules (no imports of them: no cycles)."""
from __future__ import annotations

import argparse


class BadInput(Exception):
    """Bad input of any kind: one line, exit status 2, nothing written."""


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (one line from argparse otherwise, exit 2)."""
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative")
    return v
