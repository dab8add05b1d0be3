"""The API over HTTPS: a certificate and key from --tls-certfile / --tls-keyfile, checked at start.

The certificates are made here (a throw-away CA and a server certificate for 127.0.0.1) with
the ``cryptography`` package; the server is the real CLI in a child process.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers.pki import issue, new_ca, new_key, write_cert, write_key
from tests.helpers.shim_process import stop_process

pytest.importorskip("cryptography")


CLI = [sys.executable, "-m", "modserv_shim.cli"]


@dataclass
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate (for 127.0.0.1 and localhost), signed by the CA
    key: Path  # its private key
    other_key: Path  # a key that belongs to no certificate here
    encrypted_key: Path  # ``key`` under a passphrase


def make_pki(folder: Path) -> Pki:
    ca = new_ca()
    key = new_key()
    return Pki(write_cert(ca[0], folder / "ca.pem"), write_cert(issue("127.0.0.1", key, ca, server=True),
               folder / "cert.pem"), write_key(key, folder / "key.pem"),
               write_key(new_key(), folder / "other-key.pem"),
               write_key(key, folder / "encrypted-key.pem", b"a passphrase"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return make_pki(folder)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # stdin closed: an encrypted key must not make the server wait for a passphrase on the terminal
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "MODSERV_TOKENS": ""}, check=False)


def assert_one_line_exit_2(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-serve-shim: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@dataclass
class HttpsServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def https_server(tmp_path: Path, pki: Pki) -> Iterator[HttpsServer]:
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, f"--port={port}", f"--data-dir={tmp_path / 'data'}", f"--tls-certfile={pki.cert}",
             f"--tls-keyfile={pki.key}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env={**os.environ, "MODSERV_TOKENS": ""})
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        yield HttpsServer(port, log, proc)
    finally:
        stop_process(proc)


def test_https_with_the_ca_only(https_server: HttpsServer, pki: Pki) -> None:
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    r = httpx.get(f"{https_server.url}/healthz", verify=trusted, timeout=10)
    assert r.status_code == 200 and r.json()["code"] == 0
    # plain HTTP on the same port gets no answer
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{https_server.port}/healthz", timeout=5)
    # a client that does not trust the CA refuses the certificate
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_server.url}/healthz", timeout=5)
    assert f"listening on https://127.0.0.1:{https_server.port} " in https_server.log.read_text()


def test_key_that_does_not_match_the_certificate_exits_2(tmp_path: Path, pki: Pki) -> None:
    r = run_cli("--port=0", f"--data-dir={tmp_path / 'data'}", f"--tls-certfile={pki.cert}",
                f"--tls-keyfile={pki.other_key}")
    assert_one_line_exit_2(r, f"the TLS private key {pki.other_key} does not match the certificate {pki.cert}")


def test_tls_files_that_cannot_be_used_exit_2(tmp_path: Path, pki: Pki) -> None:
    data = f"--data-dir={tmp_path / 'data'}"
    r = run_cli("--port=0", data, f"--tls-certfile={tmp_path / 'nope.pem'}", f"--tls-keyfile={pki.key}")
    assert_one_line_exit_2(r, f"TLS certificate file not found: {tmp_path / 'nope.pem'}")
    r = run_cli("--port=0", data, f"--tls-certfile={pki.cert}", f"--tls-keyfile={tmp_path}")
    assert_one_line_exit_2(r, f"TLS private key file {tmp_path} is a directory, not a file")
    r = run_cli("--port=0", data, f"--tls-certfile={pki.key}", f"--tls-keyfile={pki.key}")
    assert_one_line_exit_2(r, f"TLS certificate file {pki.key} holds no PEM certificate")
    r = run_cli("--port=0", data, f"--tls-certfile={pki.cert}", f"--tls-keyfile={pki.cert}")
    assert_one_line_exit_2(r, f"TLS private key file {pki.cert} holds no PEM private key")
    r = run_cli("--port=0", data, f"--tls-certfile={pki.cert}", f"--tls-keyfile={pki.encrypted_key}")
    assert_one_line_exit_2(r, "the TLS private key is encrypted", str(pki.encrypted_key))


@pytest.mark.parametrize("given", ["--tls-certfile", "--tls-keyfile"])
def test_certificate_and_key_go_together(tmp_path: Path, pki: Pki, given: str) -> None:
    r = run_cli("--port=0", f"--data-dir={tmp_path / 'data'}", f"{given}={pki.cert}")
    assert_one_line_exit_2(r, "bad configuration: ", "TLS needs both a certificate (--tls-certfile) and its private"
                           " key (--tls-keyfile), or neither")


def test_tls_does_not_lift_the_token_rule(tmp_path: Path, pki: Pki) -> None:
    r = run_cli("--host=0.0.0.0", "--port=0", f"--data-dir={tmp_path / 'data'}", f"--tls-certfile={pki.cert}",
                f"--tls-keyfile={pki.key}")
    assert_one_line_exit_2(r, "refusing to listen on 0.0.0.0 without API tokens")
