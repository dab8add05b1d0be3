"""The docker shimlet against a real Docker Engine (no mock of the Engine API).

The containers run the tiny busybox image with ``network: host``: ``busybox httpd`` serves
``/v1/models`` on the port the shimlet gives each replica, so "ready" is a real HTTP 200.
Failure tests use the image's other commands (exit with a code, run out of memory).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import ResourcePhase, ResourceStatus
from modserv_shim.shimlets.docker import DockerShimlet, render
from modserv_shim.testing import ShimletContract
from modserv_shim.testing.shimlet_contract import ContextFactory
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import tiny_image_fixture  # noqa: F401
from tests.helpers.docker_shimlet import FAST, cleaned_up, context, model_file_fixture, ours, started, until  # noqa: F401


@pytest.fixture
async def docker(docker_engine: DockerEngine, tmp_path: Path) -> AsyncIterator[DockerShimlet]:
    async with cleaned_up(await started(docker_engine, tmp_path)) as shimlet:
        yield shimlet


class TestDockerShimletContract(ShimletContract):
    plugin_name = "docker"
    ready_timeout = 20.0
    endpoint_serves_http = True

    @pytest.fixture
    def plugin_options(self, docker_engine: DockerEngine) -> Mapping[str, Any]:
        return {"host": docker_engine.host, "pull": "never", **FAST}

    @pytest.fixture
    def make_context(self, tiny_image: str, model_file: str) -> ContextFactory:
        return lambda service_id, replicas: context(tiny_image, model_file, service_id, replicas)

    factory = DockerShimlet


async def test_create_serves_and_is_idempotent(docker: DockerShimlet, docker_engine: DockerEngine,
                                               tiny_image: str, model_file: str) -> None:
    ctx = context(tiny_image, model_file)
    begun = time.monotonic()
    rid = await docker.create(ctx)
    status = await until(docker, rid, ResourcePhase.READY, ready_replicas=1)
    assert time.monotonic() - begun < 10
    assert ours(docker_engine, rid) == [f"modserv-{rid}-0"]
    doc = docker_engine.inspect(f"modserv-{rid}-0")
    assert doc["HostConfig"]["Init"] is True and doc["HostConfig"]["NetworkMode"] == "host"
    assert doc["Config"]["Labels"][render.PORT] == status.endpoint.rsplit(":", 1)[1]  # type: ignore[union-attr]
    assert await docker.create(ctx) == rid
    assert ours(docker_engine, rid) == [f"modserv-{rid}-0"]


async def test_scale_up_and_down_by_index(docker: DockerShimlet, docker_engine: DockerEngine, tiny_image: str,
                                          model_file: str) -> None:
    rid = await docker.create(context(tiny_image, model_file))
    await until(docker, rid, ResourcePhase.READY, ready_replicas=1)
    await docker.scale(rid, 2)
    await until(docker, rid, ResourcePhase.READY, ready_replicas=2, desired_replicas=2)
    assert ours(docker_engine, rid) == [f"modserv-{rid}-0", f"modserv-{rid}-1"]
    await docker.scale(rid, 1)
    await until(docker, rid, ResourcePhase.READY, ready_replicas=1, desired_replicas=1)
    assert ours(docker_engine, rid) == [f"modserv-{rid}-0"]
    lines = await docker.logs(rid, tail=3)
    assert lines and all(line.startswith("[replica 0] ") for line in lines)
    await docker.delete(rid)
    assert ours(docker_engine, rid) == []
    await docker.delete(rid)


async def test_a_killed_container_is_restarted(docker: DockerShimlet, docker_engine: DockerEngine,
                                               tiny_image: str, model_file: str) -> None:
    rid = await docker.create(context(tiny_image, model_file))
    await until(docker, rid, ResourcePhase.READY)
    seen: list[ResourceStatus] = []

    async def record() -> None:
        async for event_rid, status in docker.watch():
            if event_rid == rid:
                seen.append(status)

    watcher = asyncio.create_task(record())
    await asyncio.sleep(0.05)
    docker_engine.cli("kill", f"modserv-{rid}-0")
    degraded = await until(docker, rid, ResourcePhase.DEGRADED)
    assert "replica 0 was killed by SIGKILL (exit code 137)" in (degraded.reason or "")
    await until(docker, rid, ResourcePhase.READY)
    for _ in range(100):  # the watch stream's consumer runs a moment after the status changed
        if seen and seen[-1].phase is ResourcePhase.READY:
            break
        await asyncio.sleep(0.02)
    watcher.cancel()
    phases = [s.phase for s in seen]
    assert phases[-1] is ResourcePhase.READY and ResourcePhase.DEGRADED in phases, phases
    assert ours(docker_engine, rid) == [f"modserv-{rid}-0"]  # the same container, started again


async def test_containers_are_adopted_after_a_restart(docker_engine: DockerEngine, tiny_image: str,
                                                      model_file: str, tmp_path: Path) -> None:
    first = await started(docker_engine, tmp_path)
    ctx = context(tiny_image, model_file, replicas=2)
    rid = await first.create(ctx)
    await until(first, rid, ResourcePhase.READY, ready_replicas=2)
    await first.close()
    second = await started(docker_engine, tmp_path)
    try:
        assert rid in second.resource_ids()
        await until(second, rid, ResourcePhase.READY, ready_replicas=2)
        assert await second.create(ctx) == rid
        await second.scale(rid, 3)  # rendered from the adopted containers' labels
        await until(second, rid, ResourcePhase.READY, ready_replicas=3)
        assert ours(docker_engine, rid) == [f"modserv-{rid}-{i}" for i in range(3)]
    finally:
        await second.delete(rid)
        await second.close()
    assert ours(docker_engine, rid) == []


async def test_pull_never_and_a_missing_image_fails_at_once(docker: DockerShimlet, model_file: str) -> None:
    ctx = context("modserv-test/not-there:9", model_file)
    begun = time.monotonic()
    with pytest.raises(PermanentStepError) as info:
        await docker.create(ctx)
    assert time.monotonic() - begun < 2
    assert "modserv-test/not-there:9" in info.value.message and "pull policy is `never`" in info.value.message
    status = await docker.status(ctx.service_id)
    assert status.phase is ResourcePhase.FAILED and "not-there:9" in (status.reason or "")


async def test_an_oom_kill_is_named(docker_engine: DockerEngine, tiny_image: str, model_file: str,
                                    tmp_path: Path) -> None:
    shimlet = await started(docker_engine, tmp_path, max_start_failures=1)
    try:
        rid = await shimlet.create(context(tiny_image, model_file, command=di.oom_cmd(),
                                           resourceRequirements={"memory": "32Mi"}))
        status = await until(shimlet, rid, ResourcePhase.FAILED)
        assert "killed for running out of memory of its 32 MiB limit (OOMKilled, exit code 137)" in (
            status.reason or "")
    finally:
        await shimlet.delete(rid)
        await shimlet.close()


async def test_exit_code_and_last_lines_then_failed_after_max_start_failures(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    shimlet = await started(docker_engine, tmp_path, max_start_failures=2)
    # Both lines on stderr: Docker orders lines of one stream, not lines of stdout against stderr.
    command = ["sh", "-c", "echo loading the model >&2; echo 'error: model file is corrupt' >&2; exit 3"]
    try:
        rid = await shimlet.create(context(tiny_image, model_file, command=command))
        status = await until(shimlet, rid, ResourcePhase.FAILED)
        reason = status.reason or ""
        assert "replica 0 exited with code 3 before becoming ready (2 failed starts in a row); giving up" in reason
        assert "Last log lines:\n  loading the model\n  error: model file is corrupt" in reason
        assert docker_engine.inspect(f"modserv-{rid}-0")["State"]["Running"] is False  # kept for its logs
    finally:
        await shimlet.delete(rid)
        await shimlet.close()


async def test_a_gpu_request_on_a_host_without_gpus_fails_at_once(docker: DockerShimlet, tiny_image: str,
                                                                   model_file: str) -> None:
    ctx = context(tiny_image, model_file, resourceRequirements={"acceleratorType": "NVIDIA L4", "acceleratorCount": 1})
    with pytest.raises(PermanentStepError) as info:
        await docker.create(ctx)
    assert "cannot give GPUs to containers (could not select device driver" in info.value.message
    status = await docker.status(ctx.service_id)
    assert status.phase is ResourcePhase.FAILED and "NVIDIA Container Toolkit" in (status.reason or "")
