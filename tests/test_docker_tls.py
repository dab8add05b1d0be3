"""The docker shimlet and a remote Docker Engine over TCP with TLS client certificates.

A second ``dockerd`` of our own (same no-network flags and clean-up as
tests/helpers/docker_engine.py) listens on ``tcp://127.0.0.1:<free port>`` with ``--tlsverify``
and certificates made here: a CA, a server certificate for 127.0.0.1/localhost and a client
certificate.  It also keeps a Unix socket, which only the test uses (the CLI, to build the
tiny image there); the shimlet is only given the TCP address and the TLS files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.errors import BackendUnavailable
from modserv_shim.plugins import ResourcePhase
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.testing import make_deploy_context, make_deploy_spec, make_plugin_context
from modserv_shim.testing.shimlet_contract import new_service_id, phase_is, wait_for_status
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import (
    DockerEngine,
)
from tests.helpers.docker_shimlet import FAST, busybox_launch, cleaned_up, model_file_fixture  # noqa: F401

# ---------------------------------------------------------------------------------------------
# Certificates
from tests.helpers.docker_tls import TlsEngine, tls_engine_fixture  # noqa: F401


@pytest.fixture
async def tls_docker(tls_engine: TlsEngine, tmp_path: Path) -> AsyncIterator[DockerShimlet]:
    async with cleaned_up(DockerShimlet(make_plugin_context(tmp_path / "data", "docker", tls_engine.options()))) as s:
        yield s


def test_the_cli_needs_a_client_certificate(tls_engine: TlsEngine) -> None:
    """The engine really demands TLS client certificates on TCP (else the tests below prove little)."""
    plain = DockerEngine(host=tls_engine.address, env={"DOCKER_HOST": tls_engine.address})
    assert plain.cli("version", "--format", "{{.Server.Version}}", check=False, timeout=30).returncode != 0
    tls = DockerEngine(host=tls_engine.address, env={"DOCKER_HOST": tls_engine.address, "DOCKER_TLS_VERIFY": "1",
                                                     "DOCKER_CERT_PATH": str(tls_engine.certs.dir)})
    assert tls.cli("version", "--format", "{{.Server.Version}}", timeout=30).stdout.strip()


async def test_deploys_over_tls_and_reaches_ready(tls_docker: DockerShimlet, tls_engine: TlsEngine,
                                                  model_file: str) -> None:
    sid = new_service_id("tls")
    ctx = make_deploy_context(sid, 1, spec=make_deploy_spec("tiny", modelFile=model_file),
                              launch=busybox_launch(di.TINY_IMAGE))
    rid = await tls_docker.create(ctx)
    status = await wait_for_status(tls_docker, rid, phase_is(ResourcePhase.READY, ready_replicas=1), timeout=30,
                                   interval=0.05, what="ready")
    assert status.endpoint
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(f"{status.endpoint}/v1/models")).json()["data"][0]["id"] == "tiny"
    names = tls_engine.engine.cli("ps", "--format", "{{.Names}}").stdout.split()
    assert f"modserv-{rid}-0" in names
    await tls_docker.delete(rid)
    assert f"modserv-{rid}-0" not in tls_engine.engine.cli("ps", "-a", "--format", "{{.Names}}").stdout.split()


async def _refused(options: dict[str, Any], tmp_path: Path) -> str:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker", {**options, "api_timeout": 20}))
    begun = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await asyncio.wait_for(shimlet.start(), 30)
    finally:
        await shimlet.close()
    assert time.monotonic() - begun < 10, "a refused TLS handshake must fail at once, not wait for a timeout"
    return str(caught.value)


async def test_a_wrong_ca_is_refused_clearly(tls_engine: TlsEngine, tmp_path: Path) -> None:
    text = await _refused(tls_engine.options(tls_ca=str(tls_engine.certs.other_ca)), tmp_path)
    assert tls_engine.address in text, text
    assert "certificate verify failed" in text and "not signed by the CA in the docker shimlet's tls_ca" in text, text


async def test_no_client_certificate_is_refused_clearly(tls_engine: TlsEngine, tmp_path: Path) -> None:
    options = tls_engine.options()
    del options["tls_cert"], options["tls_key"]
    text = await _refused(options, tmp_path)
    assert "bad certificate" in text and "refused our client certificate" in text, text


async def test_plain_http_to_the_tls_port_is_refused_clearly(tls_engine: TlsEngine, tmp_path: Path) -> None:
    options = {k: v for k, v in tls_engine.options().items() if not k.startswith("tls_")}
    text = await _refused(options, tmp_path)
    assert "Client sent an HTTP request to an HTTPS server" in text and "set tls_ca, tls_cert and tls_key" in text


async def test_a_missing_tls_file_is_named(tls_engine: TlsEngine, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "cert.pem")
    text = await _refused(tls_engine.options(tls_cert=missing), tmp_path)
    assert f"tls_cert {missing} is not a readable file" in text, text
