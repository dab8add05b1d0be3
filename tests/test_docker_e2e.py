"""End to end with the docker shimlet: the real server CLI, a real Docker Engine, the real SmolLM2.

One scenario (issue 10, "Tests"): the server runs as a child process
(``python -m modserv_shim.cli --shimlet=docker``) pointed at the session's test Engine
(``tests/helpers/docker_engine.py``), with ``network: host``, the inference image
``modserv-test/llama:1`` for llama.cpp running llama-cpp-python, and ``.models/`` bind-mounted
read-only.  Through the REST API only, it:

1. deploys SmolLM2-135M (Q4_1 GGUF) and waits for ``running``;
2. chats with it through the endpoint the API reports, and hears "Paris";
3. scales to 2: two containers carrying our labels, both ready;
4. ``docker kill``s one: the service goes ``degraded``, then ``running`` again (the shim restarts it);
5. ``kill -9``s the shim and starts it again on the same data dir: the same two containers are
   adopted (same ids, no duplicates), the service is still ``running`` and still answers;
6. deletes the service: no container is left, running or stopped.

The model comes from ``make setup``; the test fails, never skips, when it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modserv_shim.shimlets.docker import render
from tests.conftest import REPO
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import llama_image_fixture  # noqa: F401
from tests.helpers.docker_server import containers, docker_shim
from tests.helpers.shim_api import QUESTION, api, chat
from tests.helpers.shim_process import ShimProcess

MODELS = REPO / ".models"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"

T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------------


class Steps:
    """Prints each step of the scenario with how long it took (visible with ``-s``)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        print(f"  [{now - self.t0:6.1f} s] {what} ({now - self.last:.1f} s)", flush=True)
        self.last = now


def service(shim: ShimProcess, sid: str) -> dict[str, Any]:
    data: dict[str, Any] = api(shim, "GET", f"/{sid}")
    return data


def eventually(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1,
               last: Callable[[], Any] | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            seen = last() if last else None
            pytest.fail(f"{what}: not seen within {timeout:g} s; last seen: {seen}", pytrace=False)
        time.sleep(interval)


@pytest.fixture
def model_file() -> Path:
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: `make setup` puts it there", pytrace=False)
    return SMOLLM2


@pytest.fixture
def shim(tmp_path: Path, docker_engine: DockerEngine, llama_image: str) -> Iterator[ShimProcess]:
    """The server CLI with the docker shimlet on the test Engine; its containers removed at the end."""
    with docker_shim(tmp_path, docker_engine, {
        "host": docker_engine.host,
        "network": "host",
        "pull": "never",  # nothing can be pulled here: the image was built in this Engine
        "images": {"llama.cpp": {"image": llama_image, "program": "llama-cpp-python"}},
        "model_volume": {"type": "bind", "source": str(MODELS)},
        "restart_backoff": 1.0,
        "stop_grace_period": 5.0,
    }) as server:
        try:
            yield server
        finally:
            print(f"\n--- shim log: {server.log}", flush=True)


# --- the scenario -------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_smollm2_in_docker_through_the_rest_api(shim: ShimProcess, docker_engine: DockerEngine,
                                               llama_image: str, model_file: Path) -> None:
    steps = Steps()
    shim.start()
    steps.done(f"shim started on port {shim.port}")

    # 1. deploy, wait for running
    sid = api(shim, "POST", "/deploy", expect=202, json={
        "modelName": "smollm2", "modelFile": str(model_file),
        "resourceRequirements": {"cpu": "1", "memory": "2Gi"}, "replicaCount": 1,
        "contextLength": 2048})["serviceId"]
    svc = api(shim, "GET", f"/{sid}?waitFor=running&timeout=300", timeout=330)
    assert svc["state"] == "running", f"the deploy did not reach running: {svc['state']}: {svc['reason']}"
    endpoint = svc["endpoint"]
    assert endpoint and endpoint.startswith("http://127.0.0.1:"), f"unexpected endpoint {endpoint!r}"
    ours = f"{render.SERVICE_ID}={sid}"
    first = containers(docker_engine, ours)
    assert [c["state"] for c in first] == ["running"], f"expected one running container for {sid}: {first}"
    doc = docker_engine.inspect(first[0]["id"])
    assert doc["Config"]["Image"] == llama_image
    assert doc["HostConfig"]["NetworkMode"] == "host"
    mounts = [(m["Source"], m["RW"]) for m in doc["Mounts"]]
    assert (str(MODELS), False) in mounts, f"the model folder should be bound read-only: {doc['Mounts']}"
    steps.done(f"deployed {sid}: running at {endpoint}, container {first[0]['name']}")

    # 2. chat through the endpoint the API reports
    answer = chat(endpoint, "smollm2")
    assert "Paris" in answer, f"SmolLM2 was asked {QUESTION!r} and answered {answer!r}"
    steps.done(f"chat answered: {answer.strip()!r}")

    # 3. scale to 2
    api(shim, "POST", f"/{sid}/scale", json={"replicaCount": 2})

    def two_ready() -> dict[str, Any] | None:
        s = service(shim, sid)
        return s if s["state"] == "running" and s["replicas"] == {"ready": 2, "desired": 2} else None

    eventually(two_ready, 180, "2 ready replicas after scaling to 2", last=lambda: service(shim, sid))
    two = containers(docker_engine, ours)
    assert len(two) == 2 and all(c["state"] == "running" for c in two), f"expected 2 running containers: {two}"
    assert first[0]["id"] in {c["id"] for c in two}, "scaling up must keep the first replica's container"
    steps.done(f"scaled to 2: {[c['name'] for c in two]}")

    # 4. docker kill one container: degraded, then running again
    victim = next(c for c in two if c["id"] != first[0]["id"])
    docker_engine.cli("kill", victim["id"])
    degraded = eventually(lambda: (s := service(shim, sid))["state"] == "degraded" and s, 30,
                          "state degraded after `docker kill` of a replica", interval=0.05,
                          last=lambda: service(shim, sid))
    assert "replica 1" in degraded["reason"] and "SIGKILL" in degraded["reason"], \
        f"the degraded reason should say which replica was killed and how: {degraded['reason']!r}"
    steps.done(f"degraded: {degraded['reason']}")
    recovered = eventually(two_ready, 120, "recovery to running with 2 ready replicas",
                           last=lambda: service(shim, sid))
    assert recovered["reason"] is None, f"a recovered service should carry no reason: {recovered['reason']!r}"
    transitions = [e["to"] for e in api(shim, "GET", f"/{sid}/events")]
    assert transitions[-2:] == ["degraded", "running"], f"state changes: {transitions}"
    after_kill = containers(docker_engine, ours)
    assert len(after_kill) == 2 and all(c["state"] == "running" for c in after_kill), \
        f"expected the killed replica back, 2 running containers: {after_kill}"
    assert after_kill == two, f"the shim restarts the killed container in place; before: {two}, after: {after_kill}"
    steps.done("recovered: running, 2/2 ready")

    # 5. kill -9 the shim, start it again on the same data dir: the containers are adopted
    assert shim.kill9(), "the shim was not running"
    assert containers(docker_engine, ours) == after_kill, "the containers must outlive the shim"
    steps.done("shim killed with SIGKILL")
    shim.start()
    adopted = api(shim, "GET", f"/{sid}?waitFor=running&timeout=60", timeout=90)
    assert adopted["state"] == "running", f"after the restart: {adopted['state']}: {adopted['reason']}"
    assert adopted["endpoint"] == endpoint, f"endpoint changed from {endpoint} to {adopted['endpoint']}"
    eventually(two_ready, 60, "2 ready replicas after the restart", last=lambda: service(shim, sid))
    now = containers(docker_engine, ours)
    assert now == after_kill, f"the restarted shim must adopt the same containers; before: {after_kill}, now: {now}"
    everything = containers(docker_engine, f"{render.MANAGED_BY}={render.MANAGER}")
    assert everything == now, f"no other container of ours may exist: {everything}"
    assert "Paris" in chat(endpoint, "smollm2")
    steps.done(f"restarted shim adopted {[c['id'][:12] for c in now]}, still answers")

    # 6. delete: no container left
    api(shim, "DELETE", f"/{sid}", expect=(200, 202))
    gone = api(shim, "GET", f"/{sid}?waitFor=terminated&timeout=60", timeout=90)
    assert gone["state"] == "terminated", f"after DELETE: {gone['state']}: {gone['reason']}"
    left = containers(docker_engine, f"{render.MANAGED_BY}={render.MANAGER}")
    assert left == [], f"containers left after DELETE: {left}"
    steps.done("deleted: terminated, no container left")
