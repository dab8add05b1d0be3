"""What the benchmark scripts share: free ports, waiting, the commit measured, writing results."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.helpers.docker_engine import DockerEngine, OwnDockerd

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


@dataclass
class BenchEngine:
    """The Docker Engine a benchmark runs on; ``own`` when it is our own dockerd (``stop`` ends it)."""

    engine: DockerEngine
    own: OwnDockerd | None = None

    def stop(self) -> None:
        if self.own is not None:
            self.own.stop()


def docker_engine(host: str | None) -> BenchEngine | None:
    """The Engine at ``host``, else our own dockerd in a temporary folder (tests/helpers/docker_engine.py);
    None, with a line on stderr, when there is neither (no ``host``, and no dockerd or not root)."""
    from tests.helpers.docker_engine import DockerEngine, OwnDockerd

    if host:
        return BenchEngine(DockerEngine(host=host, env={"DOCKER_HOST": host}))
    if not shutil.which("dockerd") or os.geteuid() != 0:
        print("skipped: no Docker Engine (give --docker-host, or run as root with dockerd installed)", file=sys.stderr)
        return None
    own = OwnDockerd.start()
    return BenchEngine(own.engine, own)
