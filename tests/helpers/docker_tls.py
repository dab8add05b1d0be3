"""A second Docker Engine listening on TCP with TLS client certificates, and the certificates it needs."""


from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# ---------------------------------------------------------------------------------------------
# Certificates
from tests.conftest import free_port
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
from tests.helpers.docker_shimlet import FAST
from tests.helpers.pki import issue, new_ca, new_key, write_cert, write_key


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
    ca = new_ca("modserv test CA")
    server_key, client_key = new_key(), new_key()
    files = Certs(where, where / "ca.pem", where / "server-cert.pem", where / "server-key.pem", where / "cert.pem",
                  where / "key.pem", where / "other-ca.pem")
    write_cert(ca[0], files.ca)
    write_cert(new_ca("modserv other CA")[0], files.other_ca)
    write_cert(issue("localhost", server_key, ca, server=True), files.server_cert)
    write_key(server_key, files.server_key)
    write_cert(issue("modserv shim", client_key, ca), files.cert)
    write_key(client_key, files.key)
    return files


# ---------------------------------------------------------------------------------------------
# A second dockerd, on TCP with --tlsverify


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
