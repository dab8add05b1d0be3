"""The docker shimlet and a remote Docker Engine over TCP with TLS client certificates.

A second ``dockerd`` of our own (same no-network flags and clean-up as
tests/helpers/docker_engine.py) listens on ``tcp://127.0.0.1:<free port>`` with ``--tlsverify``
and certificates made here: a CA, a server certificate for 127.0.0.1/localhost and a client
certificate.  It also keeps a Unix socket, which only the test uses (the CLI, to build the
tiny image there); the shimlet is only given the TCP address and the TLS files.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modserv_shim.errors import BackendUnavailable
from modserv_shim.plugins import ResourcePhase
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.testing import make_deploy_context, make_deploy_spec, make_plugin_context
from modserv_shim.testing.shimlet_contract import new_service_id, phase_is, wait_for_status
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import (
    DIR_PREFIX,
    DOCKERD_FLAGS,
    ENV_REQUIRE,
    START_TIMEOUT,
    DockerEngine,
    OwnDockerd,
    _set_pdeathsig,
    storage_driver,
)
from tests.test_docker_shimlet import FAST, busybox_launch

# ---------------------------------------------------------------------------------------------
# Certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
          | None, *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[0].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Certs:
    """The files, in one directory, named as the docker CLI expects them (``DOCKER_CERT_PATH``)."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    cert: Path  # the client's
    key: Path
    other_ca: Path  # a CA that signed nothing of this engine


def make_certs(where: Path) -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("modserv test CA", ca_key, None, ca=True)
    files = Certs(where, where / "ca.pem", where / "server-cert.pem", where / "server-key.pem", where / "cert.pem",
                  where / "key.pem", where / "other-ca.pem")
    _write_cert(ca, files.ca)
    _write_cert(_cert("modserv other CA", other_key, None, ca=True), files.other_ca)
    _write_cert(_cert("localhost", server_key, (ca, ca_key), server=True), files.server_cert)
    _write_key(server_key, files.server_key)
    _write_cert(_cert("modserv shim", client_key, (ca, ca_key)), files.cert)
    _write_key(client_key, files.key)
    return files


# ---------------------------------------------------------------------------------------------
# A second dockerd, on TCP with --tlsverify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1: a real Docker Engine is required)", pytrace=False)
    pytest.skip(reason)


@dataclass
class TlsEngine:
    own: OwnDockerd
    address: str  # tcp://127.0.0.1:<port>
    certs: Certs

    @property
    def engine(self) -> DockerEngine:
        """The test's own handle (its Unix socket)."""
        return self.own.engine

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"host": self.address, "tls_ca": str(self.certs.ca), "tls_cert": str(self.certs.cert),
                "tls_key": str(self.certs.key), "pull": "never", **FAST, **extra}


def start_tls_dockerd(timeout: float = START_TIMEOUT) -> TlsEngine:
    """``dockerd`` as OwnDockerd starts it, plus ``-H tcp://127.0.0.1:<port> --tlsverify``; stop with ``.own.stop()``.

    (OwnDockerd.start takes no extra flags, so the start is done here; its ``stop`` and clean-up are reused.)
    """
    dockerd = shutil.which("dockerd")
    assert dockerd
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir="/tmp"))  # swept like the session engine's if we die
    certs = make_certs(root / "certs")
    (root / "daemon.json").write_text("{}\n")
    sock = root / "docker.sock"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    cmd = [dockerd, *DOCKERD_FLAGS, f"--storage-driver={storage_driver()}", f"--config-file={root / 'daemon.json'}",
           f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'dockerd.pid'}",
           f"--host=unix://{sock}", f"--host={address}", "--tlsverify", f"--tlscacert={certs.ca}",
           f"--tlscert={certs.server_cert}", f"--tlskey={certs.server_key}", f"--cgroup-parent=/{root.name}"]
    with (root / "dockerd.log").open("wb") as log:
        pdeathsig = _set_pdeathsig if threading.current_thread() is threading.main_thread() else None
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pdeathsig)  # noqa: PLW1509
    host = f"unix://{sock}"
    own = OwnDockerd(root, proc, DockerEngine(host=host, env={"DOCKER_HOST": host}, own=True, root=root),
                     f"/{root.name}")
    deadline = time.monotonic() + timeout
    while not (sock.exists() and own.engine.ping()):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = own.log_tail()
            own.stop()
            raise RuntimeError(f"the TLS dockerd did not come up (exit {proc.returncode}):\n{tail}")
        time.sleep(0.05)
    return TlsEngine(own, address, certs)


@pytest.fixture(scope="module", name="tls_engine")
def tls_engine_fixture() -> Iterator[TlsEngine]:
    if not shutil.which("dockerd") or not shutil.which("docker"):
        _unavailable("no Docker Engine: dockerd or the docker CLI is not installed (Debian package docker.io)")
    if os.geteuid() != 0:
        _unavailable("a second dockerd (TCP with TLS) needs root")
    started = start_tls_dockerd()
    try:
        di.build_tiny_image(started.engine)
        yield started
    finally:
        started.own.stop()


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    return str(path)


@pytest.fixture
async def tls_docker(tls_engine: TlsEngine, tmp_path: Path) -> AsyncIterator[DockerShimlet]:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker", tls_engine.options()))
    try:
        yield shimlet
    finally:
        for rid in shimlet.resource_ids():
            await shimlet.delete(rid)
        await shimlet.close()


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
