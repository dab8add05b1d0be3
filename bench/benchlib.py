"""What the benchmark scripts share: free ports, waiting, the commit measured, writing results."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float = 120.0, poll: float = 0.01) -> None:
    """Call ``pred`` every ``poll`` s until it is true; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise TimeoutError("condition not met")


def tree() -> str:
    """The commit measured, and whether src/ had uncommitted changes (others work in the same tree)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True,
                           text=True, check=False).stdout
    changed = ", ".join(line[3:] for line in dirty.splitlines() if line.strip())
    return head.stdout.strip() + (f" + uncommitted changes in src/: {changed}" if changed else "")


def write_json(path: Path | None, result: Any) -> None:
    """Write ``result`` as indented JSON to ``path`` (its folder created), if a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
