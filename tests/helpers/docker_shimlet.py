"""What the docker shimlet's tests share: the busybox "runtime", contexts, a started shimlet, waits.

The containers run the tiny busybox image (tests/helpers/docker_images.py): ``busybox httpd`` serves
``/v1/models`` on the port the shimlet gives each replica, so "ready" is a real HTTP 200.  A test
module brings the ``model_file`` fixture in with
``from tests.helpers.docker_shimlet import model_file_fixture  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.plugins import DeployContext, LaunchSpec, ResourcePhase, ResourceStatus
from modserv_shim.shimlets.docker import DockerShimlet, render
from modserv_shim.testing import make_deploy_context, make_deploy_spec, make_plugin_context
from modserv_shim.testing.shimlet_contract import new_service_id, phase_is, wait_for_status
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import DockerEngine

FAST = {"restart_backoff": 0.1, "restart_backoff_max": 0.5, "stop_grace_period": 1.0, "probe_interval": 0.02}


def busybox_launch(image: str, command: Sequence[str] | None = None, model: str = "tiny") -> LaunchSpec:
    # A word on stdout first: busybox httpd itself logs nothing, and the contract reads the logs.
    serve = ["sh", "-c", 'echo "serving on $0"; exec "$@"', "{host}:{port}",
             *di.serve_models_cmd(model, "{port}", "{host}")]  # type: ignore[arg-type]
    args = command or serve
    return LaunchSpec(runtime="busybox", served_model_name=model, model_path="/models/tiny.gguf",
                      local_command=(), args=tuple(args), image=image, startup_timeout=20)


@pytest.fixture(name="model_file")
def model_file_fixture(tmp_path: Path) -> str:
    """A stand-in model file (the busybox runtime never reads it), bound into the containers."""
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    return str(path)


def context(image: str, model_file: str, service_id: str | None = None, replicas: int = 1,
            command: Sequence[str] | None = None, **spec: Any) -> DeployContext:
    return make_deploy_context(service_id or new_service_id("dk"), replicas,
                               spec=make_deploy_spec("tiny", replicas=replicas, modelFile=model_file, **spec),
                               launch=busybox_launch(image, command))


def ours(engine: DockerEngine, service_id: str) -> list[str]:
    """Names of the containers, running or not, labelled with ``service_id``."""
    out = engine.cli("ps", "-a", "--filter", f"label={render.SERVICE_ID}={service_id}", "--format", "{{.Names}}")
    return sorted(out.stdout.split())


async def started(engine: DockerEngine, tmp_path: Path, **options: Any) -> DockerShimlet:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker",
                                                {"host": engine.host, "pull": "never", **FAST, **options}))
    await shimlet.start()
    return shimlet


async def until(shimlet: DockerShimlet, rid: str, phase: ResourcePhase, timeout: float = 20.0,
                **fields: Any) -> ResourceStatus:
    return await wait_for_status(shimlet, rid, phase_is(phase, **fields), timeout=timeout, interval=0.02,
                                 what=str(phase))


@asynccontextmanager
async def cleaned_up(shimlet: DockerShimlet) -> AsyncIterator[DockerShimlet]:
    """Yield ``shimlet``; afterwards delete every resource it knows and close it, pass or fail."""
    try:
        yield shimlet
    finally:
        for rid in shimlet.resource_ids():
            await shimlet.delete(rid)
        await shimlet.close()
