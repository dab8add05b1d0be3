"""The docker shimlet's life after ready, against a real Docker Engine (the tiny busybox image).

* health checks of ready replicas: a server that stops answering (``docker pause``: the
  kernel still accepts the connection, nobody answers, as with a hung server) is not
  ready after ``health_failures`` checks, the service DEGRADED with the path and the
  timeout in its reason; the shim's rule restarts it (``restart: no``), or, with a
  Docker restart policy, it is ready again once it answers;
* ``stable_after``: the restart back-off starts over after a replica was ready that long;
* a replica the shim gave up on stays FAILED after a restart of the shim (close, then a
  new shimlet on the same data dir), and is not started again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from modserv_shim.plugins import ResourcePhase, ResourceStatus
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.testing.shimlet_contract import wait_for_status
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import tiny_image_fixture  # noqa: F401
from tests.helpers.docker_shimlet import context, model_file_fixture, ours, started, until  # noqa: F401

HEALTH = {"health_interval": 0.2, "health_timeout": 0.3, "health_failures": 2}



def reason_has(phase: ResourcePhase, *words: str) -> Callable[[ResourceStatus], bool]:
    return lambda s: s.phase is phase and all(w in (s.reason or "") for w in words)


async def test_a_server_that_stops_answering_is_degraded_and_restarted(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    shimlet = await started(docker_engine, tmp_path, **HEALTH)
    rid = await shimlet.create(context(tiny_image, model_file))
    name = f"modserv-{rid}-0"
    try:
        await until(shimlet, rid, ResourcePhase.READY)
        first_start = docker_engine.inspect(name)["State"]["StartedAt"]
        docker_engine.cli("pause", name)
        paused = time.monotonic()
        degraded = await wait_for_status(
            shimlet, rid, reason_has(ResourcePhase.DEGRADED, "stopped answering its health path /v1/models"),
            timeout=10, interval=0.02, what="degraded for its health")
        noticed = time.monotonic() - paused
        assert "replica 0 stopped answering its health path /v1/models (no answer within 0.3 s: timeout;" \
               " 2 checks in a row, 0.2 s apart)" in (degraded.reason or "")
        assert degraded.ready_replicas == 0
        assert noticed < 0.2 * 2 + 0.3 * 2 + 1.0, noticed  # two checks and their timeouts, plus slack
        restarting = await wait_for_status(
            shimlet, rid, reason_has(ResourcePhase.DEGRADED, "it was stopped (exit code", "restarting in"),
            timeout=15, interval=0.02, what="the restart after the health checks failed")
        assert "stopped answering its health path /v1/models" in (restarting.reason or "")
        ready = await until(shimlet, rid, ResourcePhase.READY, timeout=20)
        recovered = time.monotonic() - paused
        state = docker_engine.inspect(name)["State"]
        assert state["Running"] and not state["Paused"] and state["StartedAt"] != first_start
        assert ready.detail["containers"][0]["restarts"] == 1
        assert ours(docker_engine, rid) == [name]  # the same container, started again
        print(f"\nhealth: noticed after {noticed:.2f} s, ready again after {recovered:.2f} s")
    finally:
        await shimlet.delete(rid)
        await shimlet.close()


async def test_with_a_docker_restart_policy_it_is_ready_again_once_it_answers(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    shimlet = await started(docker_engine, tmp_path, restart="on-failure", **HEALTH)
    rid = await shimlet.create(context(tiny_image, model_file))
    name = f"modserv-{rid}-0"
    try:
        await until(shimlet, rid, ResourcePhase.READY)
        docker_engine.cli("pause", name)
        degraded = await wait_for_status(
            shimlet, rid, reason_has(ResourcePhase.DEGRADED, "stopped answering its health path /v1/models"),
            timeout=10, interval=0.02, what="degraded for its health")
        assert "waiting for it to answer again (restart policy on-failure)" in (degraded.reason or "")
        started_at = docker_engine.inspect(name)["State"]["StartedAt"]
        docker_engine.cli("unpause", name)
        await until(shimlet, rid, ResourcePhase.READY, timeout=10)
        assert docker_engine.inspect(name)["State"]["StartedAt"] == started_at  # not restarted: it answered
    finally:
        await shimlet.delete(rid)
        await shimlet.close()


async def test_the_back_off_starts_over_after_stable_after(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    shimlet = await started(docker_engine, tmp_path, restart_backoff=0.3, restart_backoff_max=10.0,
                            stable_after=1.5)
    rid = await shimlet.create(context(tiny_image, model_file))
    name = f"modserv-{rid}-0"

    async def kill_and_read() -> str:
        docker_engine.cli("kill", name)
        status = await wait_for_status(shimlet, rid, reason_has(ResourcePhase.DEGRADED, "restarting in"),
                                       timeout=10, interval=0.02, what="the restart")
        await until(shimlet, rid, ResourcePhase.READY)
        return status.reason or ""

    try:
        await until(shimlet, rid, ResourcePhase.READY)
        await asyncio.sleep(1.6)  # ready long enough: the first exit's delay is the first step anyway
        assert "restarting in 0.3 s (restart 1)" in await kill_and_read()
        assert "restarting in 0.6 s (restart 2)" in await kill_and_read()  # ready < 1.5 s: it doubles
        assert "restarting in 1.2 s (restart 3)" in await kill_and_read()
        await asyncio.sleep(1.6)
        assert "restarting in 0.3 s (restart 4)" in await kill_and_read()  # stable: from the start again
    finally:
        await shimlet.delete(rid)
        await shimlet.close()


async def test_a_replica_given_up_on_stays_failed_after_a_restart_of_the_shim(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    command = ["sh", "-c", "echo 'error: model file is corrupt' >&2; exit 3"]
    first = await started(docker_engine, tmp_path, max_start_failures=2)
    ctx = context(tiny_image, model_file, command=command)
    rid = await first.create(ctx)
    name = f"modserv-{rid}-0"
    second: DockerShimlet | None = None
    try:
        failed = await until(first, rid, ResourcePhase.FAILED)
        assert "(2 failed starts in a row); giving up" in (failed.reason or "")
        await first.close()
        state_file = tmp_path / "data" / "docker" / "given-up.json"
        assert json.loads(state_file.read_text())[name]["service"] == rid
        last_run = docker_engine.inspect(name)["State"]["StartedAt"]

        second = await started(docker_engine, tmp_path, max_start_failures=2)
        status = await second.status(rid)  # at once: the verdict was read before start() returned
        assert status.phase is ResourcePhase.FAILED and status.reason == failed.reason
        await asyncio.sleep(1.0)  # the restart back-off (0.1 s) passes many times over: nothing starts it
        assert docker_engine.inspect(name)["State"]["StartedAt"] == last_run
        assert (await second.status(rid)).phase is ResourcePhase.FAILED

        await second.create(ctx)  # a retry: the verdict goes, the replica starts over
        assert name not in json.loads(state_file.read_text())
        deadline = time.monotonic() + 10
        while docker_engine.inspect(name)["State"]["StartedAt"] == last_run:
            assert time.monotonic() < deadline, "the retried replica was not started again"
            await asyncio.sleep(0.05)
        await until(second, rid, ResourcePhase.FAILED)  # and fails again, on its own this time
        await second.delete(rid)
        assert json.loads(state_file.read_text()) == {}
    finally:
        if second is not None:
            await second.close()
        await first.close()
        docker_engine.cli("rm", "-f", name, check=False)


async def test_a_container_removed_while_the_shim_was_away_loses_its_verdict(
        docker_engine: DockerEngine, tiny_image: str, model_file: str, tmp_path: Path) -> None:
    first = await started(docker_engine, tmp_path, max_start_failures=1)
    rid = await first.create(context(tiny_image, model_file, command=["sh", "-c", "exit 4"]))
    await until(first, rid, ResourcePhase.FAILED)
    await first.close()
    docker_engine.cli("rm", "-f", f"modserv-{rid}-0")
    second = await started(docker_engine, tmp_path)
    try:
        assert json.loads((tmp_path / "data" / "docker" / "given-up.json").read_text()) == {}
        assert (await second.status(rid)).phase is ResourcePhase.NOT_FOUND
    finally:
        await second.close()


def test_the_verdict_file_holds_for_that_container_and_run_only(tmp_path: Path) -> None:
    from modserv_shim.shimlets.docker.state import GivenUp

    doc = {"Id": "abc", "Name": "/modserv-s-0", "State": {"StartedAt": "2025-01-01T00:00:00.1Z"}}
    GivenUp(tmp_path).record(doc, "s", 0, "replica 0 exited with code 3")
    again = GivenUp(tmp_path)  # read back, as the next run of the shim does
    assert again.reason_for(doc) == "replica 0 exited with code 3"
    assert again.reason_for({**doc, "Id": "new"}) is None  # a new container of the same name
    assert again.reason_for({**doc, "State": {"StartedAt": "2025-01-02T00:00:00Z"}}) is None  # started since
    again.keep_only(["modserv-other-0"])
    assert GivenUp(tmp_path).reason_for(doc) is None
    (tmp_path / "given-up.json").write_text("{not json")
    assert len(GivenUp(tmp_path)) == 0  # an unreadable file is ignored (with a warning), not fatal
