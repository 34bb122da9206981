"""Errors and argument types shared by the command-line modules (no imports of them: no cycles)."""
from __future__ import annotations

import argparse
import errno


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the same cleanup); the exit status is 128 + 15."""


def interrupted_status(e: BaseException) -> int:
    return 143 if isinstance(e, Terminated) else 130


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


# errors of the file system that are the user's to fix (a read-only, full or over-quota
# disk, a name too long, no permission): one line, exit 2, never a traceback
OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                 errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EFBIG}


def os_error_line(e: OSError) -> str:
    where = e.filename if e.filename is not None else ""
    if isinstance(where, (bytes, str)) and len(where) > 100:
        where = f"{str(where)[:60]}...({len(where)} characters)"
    return f"{where}: {e.strerror or e}" if where else str(e.strerror or e)
