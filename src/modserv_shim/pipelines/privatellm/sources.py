"""Where a ``modelSource`` lives: the configured secret it names, its file URLs, its cache folder.

Secrets come from the server's configuration (``secrets:``), handed to the pipeline as
``PluginContext.server_settings["secrets"]`` (name -> ``{token, token_file, ca_file, public_key_file, groups}``);
a request only names one.  The token goes into the ``Authorization`` header of the fetch's own
HTTP client and nowhere else: never into a log line, an error message or an output.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modserv_shim.errors import PermanentStepError
from modserv_shim.spec import ModelSource

MANIFEST_NAME = "manifest.json"
SIGNATURE_SUFFIX = ".sig"


@dataclass(frozen=True)
class Secret:
    """A configured secret; ``repr`` never shows the token."""

    name: str
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None
    public_key_file: Path | None = None
    groups: frozenset[str] = frozenset()  # whose operators may deploy through it (admins always may)

    def bearer(self) -> str | None:
        """The token (from ``token_file`` when set, read now so a rotated file is picked up)."""
        if self.token_file is None:
            return self.token
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PermanentStepError(f"cannot read the token file of secret {self.name} ({self.token_file}):"
                                     f" {exc.strerror or type(exc).__name__}") from None
        if not text:
            raise PermanentStepError(f"the token file of secret {self.name} ({self.token_file}) is empty")
        return text


def parse_secrets(raw: Any) -> dict[str, Secret]:
    """The ``secrets`` server setting (plain mappings) as :class:`Secret` objects."""
    out: dict[str, Secret] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, entry in raw.items():
        if not isinstance(entry, Mapping):
            continue

        def path(key: str, e: Mapping[str, Any] = entry) -> Path | None:
            v = e.get(key)
            return Path(v) if isinstance(v, str | Path) and str(v) else None

        token = entry.get("token")
        groups = entry.get("groups") or ()
        out[str(name)] = Secret(str(name), token if isinstance(token, str) and token else None,
                                path("token_file"), path("ca_file"), path("public_key_file"),
                                frozenset(str(g) for g in groups if isinstance(g, str)))
    return out


def tls_verify(secret: Secret | None) -> ssl.SSLContext | bool:
    """The CA file of the secret (instead of the system's), else the system's trust."""
    if secret is None or secret.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(secret.ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise PermanentStepError(f"cannot load the CA file of secret {secret.name} ({secret.ca_file}): {reason}")\
            from None


def client(secret: Secret | None, *, read_timeout: float) -> httpx.AsyncClient:
    """An HTTP client for one source: its CA, its bearer token, identity encoding (byte ranges stay
    byte ranges), redirects followed (httpx drops ``Authorization`` when one leaves the origin)."""
    headers = {"Accept-Encoding": "identity", "User-Agent": "modserv-shim-privatellm"}
    token = secret.bearer() if secret is not None else None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(verify=tls_verify(secret), headers=headers, follow_redirects=True, max_redirects=5,
                             timeout=httpx.Timeout(read_timeout, connect=10.0))


def file_url(source: ModelSource, name: str) -> str:
    """The URL of ``name``: next to ``url``, or ``<endpoint>/<repo>/resolve/<revision>/<name>`` (HF-compatible)."""
    if source.hub is not None:
        hub = source.hub
        return f"{hub.endpoint}/{hub.repo}/resolve/{quote(hub.revision, safe='')}/{quote(name, safe='/')}"
    assert source.url is not None
    base = source.url.rsplit("/", 1)[0]
    return f"{base}/{quote(name, safe='/')}" if name != source.files[0] else source.url


def cache_key(source: ModelSource) -> str:
    """The cache folder of a source: a readable name and a hash of where it comes from and with which secret
    (a cached file is not handed to a deploy naming another secret, or none)."""
    if source.hub is not None:
        ident = f"hub\n{source.hub.endpoint}\n{source.hub.repo}\n{source.hub.revision}"
        slug = source.hub.repo.replace("/", "--") + "--" + source.hub.revision
    else:
        assert source.url is not None
        ident = f"url\n{source.url}"
        slug = source.files[0]
    ident += f"\n{source.secret or ''}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip(".-")[:80] or "model"
    return f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
