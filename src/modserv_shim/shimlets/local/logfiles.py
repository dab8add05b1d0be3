"""Replica log files: one per replica, appended to by the server process itself.

The process writes straight into the file (it is its stdout and stderr), not
through a pipe to the shim: a pipe would break when the shim stops, and the
next write would kill the model server with SIGPIPE.  The price is that lines
carry no timestamp from us.  Before every start the shim appends a marker
line, so "the output of the latest run" can be told apart from older runs.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

MARKER = "==> modserv-shim:"
_BLOCK = 64 * 1024


def marker(index: int, argv: Sequence[str]) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"{MARKER} {stamp} starting replica {index}: {shlex.join(argv)}\n".encode()


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads from the end; missing file -> [])."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos, data = end, b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(_BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def last_run(path: Path, lines: int) -> list[str]:
    """Up to ``lines`` last lines written by the latest run (after the latest marker)."""
    recent = tail(path, max(lines * 20, 200))
    starts = [i for i, line in enumerate(recent) if line.startswith(MARKER)]
    if starts:
        recent = recent[starts[-1] + 1 :]
    return recent[-lines:] if lines > 0 else []
