"""The server CLI in a child process with the docker shimlet on the session's test Engine
(tests/helpers/docker_engine.py), and the containers it made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from modserv_shim.shimlets.docker import render
from tests.conftest import free_port
from tests.helpers.docker_engine import DockerEngine
from tests.helpers.shim_process import ShimProcess


def containers(engine: DockerEngine, label: str) -> list[dict[str, str]]:
    """Every container (running or not) carrying ``label``: id, name and state, sorted by name."""
    out = engine.cli("ps", "-a", "--no-trunc", "--filter", f"label={label}",
                     "--format", "{{.ID}} {{.Names}} {{.State}}").stdout
    rows = [dict(zip(("id", "name", "state"), line.split(), strict=True)) for line in out.splitlines() if line]
    return sorted(rows, key=lambda c: c["name"])


@contextlib.contextmanager
def docker_shim(tmp_path: Path, engine: DockerEngine, options: dict[str, Any]) -> Iterator[ShimProcess]:
    """The server CLI (not started) with the docker shimlet's ``options`` and the opensourcellm pipeline; at the
    end it is stopped and every container it made is removed."""
    config = tmp_path / "modserv.yaml"
    config.write_text(yaml.safe_dump({"shimlets": {"docker": options}}))
    server = ShimProcess(tmp_path / "data", tmp_path / "shim.log", free_port(),
                         ["--shimlet=docker", "--pipeline=opensourcellm", f"--config={config}"])
    try:
        yield server
    finally:
        server.stop()
        left = containers(engine, f"{render.MANAGED_BY}={render.MANAGER}")
        if left:
            engine.cli("rm", "-f", "-v", *(c["id"] for c in left), check=False)
