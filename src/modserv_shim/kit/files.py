"""Files a step produces (a download, a quantized model): never seen half written.

Write to a temporary name next to the final one, then :func:`publish` it: the data is flushed
to disk, the file takes its final name in one rename, and the rename itself is flushed.  A crash
at any moment leaves either no final file or the whole one; the temporary name is the step's to
clean up (or resume from) when it runs again.
"""

from __future__ import annotations

import os
from pathlib import Path


def publish(partial: Path, final: Path) -> None:
    """Give the finished ``partial`` its ``final`` name atomically and durably (blocking: run it in a thread)."""
    with partial.open("rb+") as f:
        os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
