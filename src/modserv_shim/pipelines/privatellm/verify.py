"""model-verification: SHA-256 of every fetched file against a manifest, a signed one when fetched.

The manifest is a JSON object ``{"<file>": "<sha256 hex>", ...}``: given in the request
(``modelSource.manifest``), or ``manifest.json`` next to the files at the source, with its Ed25519
signature in ``manifest.json.sig`` (the 64 raw bytes, or them in base64) checked against the
secret's ``public_key_file``.  Digests are remembered in ``<cache>/<source>/.verified.json`` by
size and modification time, so a cached file is not read again on the next deploy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx

from modserv_shim.errors import PermanentStepError
from modserv_shim.pipelines.privatellm.fetch import check_status

MAX_MANIFEST_BYTES = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
INDEX = ".verified.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def parse_manifest(data: bytes, origin: str) -> dict[str, str]:
    """``{"file": "sha256", ...}`` from a manifest's bytes; anything else is a clear error."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentStepError(f"the manifest {origin} is not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise PermanentStepError(f"the manifest {origin} must be a JSON object of file -> SHA-256")
    out: dict[str, str] = {}
    for name, digest in raw.items():
        if not isinstance(digest, str) or not SHA256_RE.match(digest.lower()):
            raise PermanentStepError(f"the manifest {origin} gives {name!r} no SHA-256 (64 hex digits)")
        out[name] = digest.lower()
    return out


def load_public_key(path: Path, secret: str) -> Any:
    """The Ed25519 public key in ``path`` (PEM, or 32 raw bytes / their base64)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # pragma: no cover - a dependency of the shim
        raise PermanentStepError("checking the manifest's signature needs the 'cryptography' package") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PermanentStepError(f"cannot read public_key_file of secret {secret} ({path}):"
                                 f" {exc.strerror or type(exc).__name__}") from None
    try:
        if b"BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            raw = data if len(data) == 32 else base64.b64decode(data.strip(), validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise PermanentStepError(f"public_key_file of secret {secret} ({path}) is not an Ed25519 public key"
                                 f" ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PermanentStepError(f"public_key_file of secret {secret} ({path}) holds a {type(key).__name__},"
                                 " not an Ed25519 public key")
    return key


def check_signature(key: Any, data: bytes, signature: bytes, origin: str) -> None:
    from cryptography.exceptions import InvalidSignature

    sig = signature
    if len(sig) != 64:
        try:
            sig = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            sig = b""
    if len(sig) != 64:
        raise PermanentStepError(f"the signature of the manifest {origin} is not an Ed25519 signature"
                                 " (64 bytes, raw or base64)")
    try:
        key.verify(sig, data)
    except InvalidSignature:
        raise PermanentStepError(f"the signature of the manifest {origin} does not match the configured public"
                                 " key: the manifest is not trusted") from None


async def fetch_small(http: httpx.AsyncClient, url: str, secret: str | None, what: str) -> bytes:
    try:
        async with http.stream("GET", url) as r:
            if r.status_code == 404:
                raise PermanentStepError(f"no {what} at the source (HTTP 404): {url}")
            check_status(r, url, secret)
            if r.status_code != 200:
                raise PermanentStepError(f"the source answered HTTP {r.status_code} for {url}")
            data = b""
            async for chunk in r.aiter_raw():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise PermanentStepError(f"the {what} at {url} is larger than {MAX_MANIFEST_BYTES} bytes")
            return data
    except httpx.TransportError as exc:
        raise PermanentStepError(f"cannot fetch the {what} {url}: {exc or type(exc).__name__}") from None


class VerifiedIndex:
    """Digests of cached files, by name, valid while size and modification time stay the same."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / INDEX
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries: dict[str, Any] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    def digest(self, name: str, path: Path) -> tuple[str, bool]:
        """(SHA-256, whether it was remembered) of ``path``; reads the file unless remembered."""
        st = path.stat()
        e = self.entries.get(name)
        if isinstance(e, dict) and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns \
                and isinstance(e.get("sha256"), str):
            return e["sha256"], True
        return sha256_file(path), False

    def remember(self, name: str, path: Path, digest: str) -> None:
        st = path.stat()
        self.entries[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
