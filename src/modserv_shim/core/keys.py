"""Per-service API keys, for the services of a pipeline that ``issues_api_keys`` (``privatellm``).

A key is made when the deploy is accepted (and again by ``rotate-key``), shown to the
caller once, and kept in two places:

* the store holds its SHA-256 and a fingerprint (``msk-…last4``) in the service's
  :data:`~modserv_shim.plugins.API_KEY_OUTPUT` output: enough to tell keys apart,
  useless to call the service;
* the model server needs the key itself, so it lives in ``<data dir>/keys/<service>.key``,
  mode 0600 in a 0700 folder (like an SSH host key), where the runtime reads it.  It is
  written before the service is stored, replaced atomically on rotation and removed when
  the service is terminated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from modserv_shim.core.records import now

KEY_PREFIX = "msk-"
KEY_BYTES = 32


def fingerprint(key: str) -> str:
    return f"{KEY_PREFIX}...{key[-4:]}"


class ServiceKeys:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "keys"

    def path(self, service_id: str) -> Path:
        return self.folder / f"{service_id}.key"

    def issue(self, service_id: str, *, write: bool = True) -> tuple[str, dict[str, Any]]:
        """A new key for ``service_id`` and the output that describes it; written to the key file
        (replacing an older key) unless ``write`` is false (a dry run)."""
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        path = self.path(service_id)
        if write:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, key.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        info = {"file": str(path), "sha256": hashlib.sha256(key.encode()).hexdigest(),
                "fingerprint": fingerprint(key), "createdAt": now()}
        return key, info

    def remove(self, service_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(service_id).unlink()
