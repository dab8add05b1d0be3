"""Host ports on a named network: a port that is taken, and the Engine's refusal in the reason.

Named (user-defined bridge) networks work on the test engines although they run with
``--bridge=none --iptables=false``: ``docker network create`` makes a ``br-<id>`` device, and the
userland proxy (``docker-proxy``) publishes a container's port on the host.  Each test creates its
network and removes it at the end, checking that no bridge device is left (``ip link``).

Who sees a taken port:

* with the Engine on a Unix socket (this machine) the shim itself skips ports something listens on,
  so a port range whose only port is taken fails at once, and one with a free port succeeds;
* with the Engine over TCP (here: the TLS engine of tests/test_docker_tls.py, on 127.0.0.1) the shim
  cannot know the host's ports; the Engine refuses the start ("address already in use" for another
  program, "port is already allocated" for another container) and the reason names the port and
  those words, after another port of the range was tried.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.errors import BackendUnavailable, PermanentStepError
from modserv_shim.plugins import DeployContext, ResourcePhase
from modserv_shim.shimlets.docker import DockerShimlet, render
from modserv_shim.testing import make_deploy_context, make_deploy_spec, make_plugin_context
from modserv_shim.testing.shimlet_contract import new_service_id, phase_is, wait_for_status
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import tiny_image_fixture  # noqa: F401
from tests.helpers.docker_shimlet import FAST, busybox_launch, model_file_fixture  # noqa: F401
from tests.helpers.docker_tls import TlsEngine, tls_engine_fixture  # noqa: F401


def _bridges() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ": br-" in line}


@contextlib.contextmanager
def named_network(engine: DockerEngine) -> Iterator[str]:
    """A user-defined bridge network; removed (with any container on it) at the end, its bridge gone."""
    name = f"modserv-ports-{random.randrange(16**6):06x}"
    net_id = engine.cli("network", "create", "--driver", "bridge", name).stdout.strip()
    device = f"br-{net_id[:12]}"
    assert device in _bridges()
    try:
        yield name
    finally:
        ids = engine.cli("ps", "-aq", "--filter", f"network={name}", check=False).stdout.split()
        if ids:
            engine.cli("rm", "-f", *ids, check=False)
        engine.cli("network", "rm", name)
        assert device not in _bridges(), f"{device} is left behind"


def free_port_pair() -> int:
    """``p`` such that 127.0.0.1:p and p+1 are both free (below the ephemeral range)."""
    for _ in range(200):
        port = random.randrange(20000, 29990)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free ports in a row")


@contextlib.contextmanager
def held(port: int) -> Iterator[None]:
    """Another program listening on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield



def tiny_context(model_file: str) -> DeployContext:
    return make_deploy_context(new_service_id("port"), 1, spec=make_deploy_spec("tiny", modelFile=model_file),
                               launch=busybox_launch(di.TINY_IMAGE))


@contextlib.asynccontextmanager
async def shimlet(tmp_path: Path, options: dict[str, Any]) -> AsyncIterator[DockerShimlet]:
    made = DockerShimlet(make_plugin_context(tmp_path / f"data-{random.randrange(10**6)}", "docker", options))
    await made.start()
    try:
        yield made
    finally:
        for rid in made.resource_ids():
            await made.delete(rid)
        await made.close()


def containers_of(engine: DockerEngine, service_id: str) -> list[str]:
    out = engine.cli("ps", "-a", "--filter", f"label={render.SERVICE_ID}={service_id}", "--format", "{{.Names}}")
    return out.stdout.split()


async def serves_on(docker: DockerShimlet, rid: str, port: int) -> None:
    status = await wait_for_status(docker, rid, phase_is(ResourcePhase.READY, ready_replicas=1), timeout=30,
                                   interval=0.05, what="ready")
    assert status.endpoint == f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(f"{status.endpoint}/v1/models")).json()["data"][0]["id"] == "tiny"


# ---------------------------------------------------------------------------------------------
# The Engine over TCP: its refusal is the reason


async def test_a_port_another_program_holds_is_refused_by_the_engine(tls_engine: TlsEngine, tmp_path: Path,
                                                                      model_file: str) -> None:
    engine = tls_engine.engine
    port = free_port_pair()
    with named_network(engine) as network, held(port):
        async with shimlet(tmp_path, tls_engine.options(network=network, port_range=[port, port])) as docker:
            ctx = tiny_context(model_file)
            with pytest.raises(BackendUnavailable) as caught:
                await docker.create(ctx)
            text = str(caught.value)
            assert f"replica 0 cannot be started: host port {port} is already in use" in text, text
            assert "address already in use" in text, text
            assert containers_of(engine, ctx.service_id) == []  # the container that could not start is gone
        # the same with a free port in the range: the refused one is not tried again
        async with shimlet(tmp_path, tls_engine.options(network=network, port_range=[port, port + 1])) as docker:
            for _ in range(3):  # whichever port comes first
                ctx = tiny_context(model_file)
                rid = await docker.create(ctx)
                await serves_on(docker, rid, port + 1)
                doc = engine.inspect(f"modserv-{rid}-0")
                assert doc["HostConfig"]["NetworkMode"] == network
                assert doc["HostConfig"]["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1",
                                                                           "HostPort": str(port + 1)}]}
                await docker.delete(rid)


async def test_a_port_another_container_holds_is_already_allocated(tls_engine: TlsEngine, tmp_path: Path,
                                                                   model_file: str) -> None:
    engine = tls_engine.engine
    port = free_port_pair()
    with named_network(engine) as network:
        engine.cli("run", "-d", "--network", network, "-p", f"127.0.0.1:{port}:8000", di.TINY_IMAGE, "sleep", "300")
        async with shimlet(tmp_path, tls_engine.options(network=network, port_range=[port, port])) as docker:
            ctx = tiny_context(model_file)
            with pytest.raises(BackendUnavailable) as caught:
                await docker.create(ctx)
            text = str(caught.value)
            assert f"host port {port} is already in use" in text and "port is already allocated" in text, text
            assert containers_of(engine, ctx.service_id) == []


# ---------------------------------------------------------------------------------------------
# The Engine on this machine: the shim sees the port is taken


async def test_the_shim_skips_a_port_in_use_here(docker_engine: DockerEngine, tiny_image: str, tmp_path: Path,
                                                 model_file: str) -> None:
    port = free_port_pair()
    options = {"host": docker_engine.host, "pull": "never", **FAST}
    with named_network(docker_engine) as network, held(port):
        async with shimlet(tmp_path, {**options, "network": network, "port_range": [port, port]}) as docker:
            with pytest.raises(PermanentStepError, match=rf"no free host port left in the docker shimlet's"
                               rf" port_range {port}-{port}: .* in use on this machine"):
                await docker.create(tiny_context(model_file))
        async with shimlet(tmp_path, {**options, "network": network, "port_range": [port, port + 1]}) as docker:
            rid = await docker.create(tiny_context(model_file))
            await serves_on(docker, rid, port + 1)
