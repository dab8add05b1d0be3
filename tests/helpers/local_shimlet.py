"""What the tests of the local shimlet share: short back-offs, a deploy context whose runtime is the test double
``tests/helpers/fake_openai_server.py`` (its servers carry ``OWNER_VAR=OWNER`` in their environment, so that
a test can find any left behind), and whether a process runs or is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from modserv_shim.plugins import DeployContext, LaunchSpec
from modserv_shim.spec import DeploySpec
from tests.helpers.fake_openai_server import PATH as FAKE_SERVER

FAST: dict[str, Any] = {
    "probe_interval": 0.05,
    "poll_interval": 0.1,
    "restart_backoff": 0.2,
    "restart_backoff_max": 1.0,
    "stop_grace_period": 3.0,
}

# Every server these tests start carries this in its environment, so that the
# teardown can find (and fail on) any process left behind, whatever went wrong.
OWNER_VAR = "MODSERV_SHIM_TEST_OWNER"
OWNER = os.environ.get(OWNER_VAR) or str(os.getpid())


def fake_launch(*extra: str, name: str = "tiny", ready_path: str = "/v1/models") -> LaunchSpec:
    return LaunchSpec(
        runtime="fake-openai",
        served_model_name=name,
        model_path="/models/tiny.gguf",
        local_command=(sys.executable, FAKE_SERVER),
        args=("--host", "{host}", "--port", "{port}", "--model-name", name, *extra),
        ready_path=ready_path,
        env={OWNER_VAR: OWNER},
    )


def fake_context(service_id: str, replicas: int = 1, *extra: str) -> DeployContext:
    spec = DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf", replicaCount=max(replicas, 1))
    return DeployContext(service_id=service_id, spec=spec, launch=fake_launch(*extra), replicas=replicas)


def running(pid: int) -> bool:
    """Is ``pid`` a live process?  A zombie is not (and is reaped if it is our child)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


async def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not running(pid)
