"""A real HTTPS model source for the privatellm tests and bench/fetch.py (no tests here).

stdlib ``http.server`` + ``ssl`` in a thread, with a certificate from a CA made here
(``cryptography``), bearer-token auth, ``Range`` requests, an optional rate limit, and a switch that
drops the connection once in the middle of a file's body.  Every request is recorded (method, path,
``Range`` and whether it was authorised) so a test can assert what the client asked.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.helpers.pki import issue, new_ca, new_key, write_cert, write_key

CHUNK = 256 * 1024


@dataclass
class Certs:
    ca: Path  # what the shim's secret trusts (ca_file)
    cert: Path
    key: Path


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = new_ca("privatellm test CA")
    key = new_key()
    return Certs(write_cert(ca[0], folder / "ca.pem"), write_cert(issue("127.0.0.1", key, ca, server=True),
                 folder / "server.pem"), write_key(key, folder / "server-key.pem"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_signed_manifest(folder: Path, files: dict[str, Path], signing_key: Ed25519PrivateKey,
                          public_key_file: Path) -> dict[str, str]:
    """``folder/manifest.json`` (file -> SHA-256), its signature ``manifest.json.sig`` and the PEM public key."""
    manifest = {name: sha256(p) for name, p in files.items()}
    data = json.dumps(manifest, indent=1).encode()
    (folder / "manifest.json").write_bytes(data)
    (folder / "manifest.json.sig").write_bytes(signing_key.sign(data))
    public_key_file.write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return manifest


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorised: bool
    status: int = 0


@dataclass
class ModelSourceServer:
    """Serves ``root`` over HTTPS on 127.0.0.1; ``url(path)`` is a file's address."""

    root: Path
    certs: Certs
    token: str
    rate: float | None = None  # bytes per second per response (None: as fast as it goes)
    drop_once: dict[str, int] = field(default_factory=dict)  # path -> byte offset where the connection drops
    requests: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def seen(self, path: str, method: str = "GET") -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.path == "/" + path.lstrip("/") and s.method == method]

    def start(self) -> ModelSourceServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a client that went away does not hold a thread for ever

            def setup(self) -> None:
                self.request.settimeout(self.timeout)
                self.request.do_handshake()  # here, not in the accepting thread: a stalled client blocks no one
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _answer(self, seen: Seen, status: int, headers: dict[str, str] | None = None) -> None:
                seen.status = status
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, *, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                ok = self.headers.get("Authorization") == f"Bearer {owner.token}"
                seen = Seen(self.command, path, self.headers.get("Range"), ok)
                with owner._lock:
                    owner.requests.append(seen)
                if not ok:
                    return self._answer(seen, 401, {"WWW-Authenticate": 'Bearer realm="models"'})
                target = owner.root / path.lstrip("/")  # a symlink in root may point anywhere (SmolLM2)
                if ".." in Path(path).parts or not target.is_file():
                    return self._answer(seen, 404)
                size = target.stat().st_size
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    if start >= size:
                        return self._answer(seen, 416, {"Content-Range": f"bytes */{size}"})
                    status = 206
                seen.status = status
                self.send_response(status)
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                with owner._lock:
                    drop_at = owner.drop_once.pop(path, None) if body else None
                sent, t0 = start, time.monotonic()
                with target.open("rb") as f:
                    f.seek(start)
                    while chunk := f.read(CHUNK):
                        if drop_at is not None and sent + len(chunk) > drop_at:
                            self.wfile.write(chunk[: max(drop_at - sent, 0)])
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
                            self.close_connection = True
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if owner.rate:
                            ahead = (sent - start) / owner.rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certs.cert, self.certs.key)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="model-source", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
