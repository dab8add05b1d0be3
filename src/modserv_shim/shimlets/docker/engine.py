"""The Engine API, typed: the only module that imports ``aiodocker`` and ``aiohttp``.

aiodocker has partial types and raises one exception for everything; this wrapper
gives the shimlet the dozen calls it makes with plain dicts in and out, and one error,
:class:`EngineError` (a :class:`~modserv_shim.errors.BackendUnavailable`: "try again"
unless the caller knows better), carrying the Engine's HTTP status and its own words.

* the address is exactly :attr:`DockerOptions.engine_url` (no Docker *contexts* read
  from ``~/.docker``); ``tcp://`` with ``tls_*`` files becomes HTTPS with client
  certificates;
* every request but the event stream, pulls, stops and log reads is bounded by
  ``api_timeout``;
* :meth:`Engine.events` opens ``GET /events`` filtered by our label and yields its
  JSON objects until the connection ends; the caller reconnects (:mod:`.watcher`).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from modserv_shim.errors import BackendUnavailable
from modserv_shim.shimlets.docker.options import DockerOptions

Obj = dict[str, Any]
CANNOT_CONNECT = 900  # aiodocker's status for "the Engine did not answer"


class EngineError(BackendUnavailable):
    """A failed Engine request: ``status`` is the HTTP status (900: no connection), ``engine_message`` its words."""

    def __init__(self, status: int, engine_message: str, what: str) -> None:
        super().__init__(f"{what}: the Docker Engine said: {engine_message}" if status != CANNOT_CONNECT
                         else f"{what}: {engine_message}")
        self.status = status
        self.engine_message = engine_message


def _ssl_context(options: DockerOptions) -> ssl.SSLContext | None:
    """HTTPS with ``tls_ca`` (else the system's CAs) and the client certificate; None without TLS options."""
    if not (options.tls_ca or options.tls_cert):
        return None
    files = {"tls_ca": options.tls_ca, "tls_cert": options.tls_cert, "tls_key": options.tls_key}
    for option, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise BackendUnavailable(f"cannot use the Docker Engine at {options.engine_url}: the docker shimlet's"
                                     f" {option} {path} is not a readable file")
    try:
        context = ssl.create_default_context(cafile=options.tls_ca)
        if options.tls_cert and options.tls_key:
            context.load_cert_chain(options.tls_cert, options.tls_key)
    except (ssl.SSLError, OSError) as exc:
        named = ", ".join(f"{k} {v}" for k, v in files.items() if v)
        raise BackendUnavailable(f"cannot use the Docker Engine at {options.engine_url}: the docker shimlet's TLS"
                                 f" files ({named}) do not load: {exc}") from None
    if not options.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_hint(message: str) -> str:
    """What to change when a connection failed on TLS (empty for other failures)."""
    lowered = message.lower()
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        if "mismatch" in lowered:
            return ("; the Engine's TLS certificate does not name the host in `host` (connect by a name or"
                    " address its certificate carries)")
        return ("; the Engine's TLS certificate is not signed by the CA in the docker shimlet's tls_ca (the"
                " Engine's --tlscacert/--tlscert pair decides which CA that is)")
    if any(words in lowered for words in ("alert bad certificate", "certificate required", "alert unknown ca",
                                          "alert certificate unknown")):
        return ("; the Engine refused our client certificate: set tls_cert and tls_key to a certificate signed"
                " by the CA the Engine trusts (its --tlscacert)")
    if "client sent an http request to an https server" in lowered:
        return "; the Engine speaks TLS on this port: set tls_ca, tls_cert and tls_key"
    if "wrong version number" in lowered or "record layer failure" in lowered:
        return "; the Engine does not speak TLS on this port: unset tls_ca, tls_cert and tls_key, or use its TLS port"
    return ""


def _url(options: DockerOptions, tls: bool) -> str:
    url = options.engine_url
    if tls and url.startswith(("tcp://", "http://")):
        url = "https://" + url.split("://", 1)[1]
    return url


class Engine:
    """One connection pool to one Engine.  Build it on the event loop; :meth:`close` it."""

    def __init__(self, options: DockerOptions) -> None:
        context = _ssl_context(options)
        self.url = options.engine_url
        self._timeout = aiohttp.ClientTimeout(total=options.api_timeout)
        self._long = aiohttp.ClientTimeout(total=None, sock_read=None, connect=options.api_timeout)
        try:
            self._docker = aiodocker.Docker(url=_url(options, context is not None), ssl_context=context,
                                            timeout=self._timeout)
        except (ValueError, OSError) as exc:
            raise BackendUnavailable(f"cannot use the Docker Engine at {self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._docker.close()

    async def _json(self, what: str, path: str, method: str = "GET", *, params: Mapping[str, Any] | None = None,
                    body: Any = None, timeout: aiohttp.ClientTimeout | None = None) -> Any:
        try:
            return await self._docker._query_json(
                path, method, params=dict(params or {}), data=body, timeout=timeout or self._timeout)
        except DockerError as exc:
            raise EngineError(exc.status, exc.message + tls_hint(exc.message), what) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise EngineError(CANNOT_CONNECT, message + tls_hint(message), what) from None

    async def version(self) -> Obj:
        return dict(await self._json(f"asking the Docker Engine at {self.url} for its version", "version"))

    async def info(self) -> Obj:
        """``GET /info``: the host as the Engine describes it (``Labels``, ``GenericResources``, ...)."""
        return dict(await self._json(f"asking the Docker Engine at {self.url} about its host", "info"))

    async def wait(self, container: str, timeout: float) -> int:
        """``POST /containers/{id}/wait``: the exit code once it stopped; EngineError (status 900) after ``timeout``."""
        done = await self._json(f"waiting for container {container}", f"containers/{container}/wait", "POST",
                                timeout=aiohttp.ClientTimeout(total=timeout))
        return int((done or {}).get("StatusCode", -1))

    async def list_ids(self, label: str) -> list[str]:
        """Ids of every container, running or not, that carries ``label`` (``key=value``)."""
        filters = json.dumps({"label": [label]})
        found = await self._json("listing our containers", "containers/json",
                                 params={"all": "1", "filters": filters})
        return [str(c["Id"]) for c in found]

    async def inspect(self, container: str) -> Obj | None:
        """The container's inspect document, or None when it does not exist."""
        try:
            return dict(await self._json(f"inspecting container {container}", f"containers/{container}/json"))
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, name: str, body: Mapping[str, Any]) -> str:
        made = await self._json(f"creating container {name}", "containers/create", "POST",
                                params={"name": name}, body=json.dumps(body))
        return str(made["Id"])

    async def start(self, container: str) -> None:
        await self._json(f"starting container {container}", f"containers/{container}/start", "POST")

    async def stop(self, container: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; a stopped or missing container is no error."""
        try:
            await self._json(f"stopping container {container}", f"containers/{container}/stop", "POST",
                             params={"t": str(int(grace))}, timeout=self._long)
        except EngineError as exc:
            if exc.status not in (304, 404):
                raise

    async def remove(self, container: str) -> None:
        """Remove (forced: a container still running is killed); a missing one is no error."""
        try:
            await self._json(f"removing container {container}", f"containers/{container}", "DELETE",
                             params={"force": "1"}, timeout=self._long)
        except EngineError as exc:
            if exc.status != 404 and "is already in progress" not in exc.engine_message:
                raise

    async def image_present(self, image: str) -> bool:
        try:
            await self._json(f"inspecting image {image}", f"images/{image}/json")
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def pull(self, image: str) -> AsyncIterator[Obj]:
        """``POST /images/create``: the Engine's progress objects; EngineError on an error in the stream."""
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
        params = {"fromImage": name, "tag": tag} if "@" not in image else {"fromImage": image}
        async with self._stream(f"pulling image {image}", "images/create", "POST", params) as lines:
            async for item in lines:
                if item.get("error") or item.get("errorDetail"):
                    detail = item.get("errorDetail") or {}
                    raise EngineError(0, str(detail.get("message") or item.get("error")), f"pulling image {image}")
                yield item

    async def logs(self, container: str, tail: int, since: float | None = None) -> list[str]:
        """The last ``tail`` lines of stdout and stderr (containers without a TTY: multiplexed frames)."""
        params = {"stdout": "1", "stderr": "1", "tail": str(tail)}
        if since:
            params["since"] = f"{since:.9f}"
        try:
            async with self._docker._query(f"containers/{container}/logs", "GET", params=params,
                                           timeout=self._long) as response:
                raw = await response.read()
        except DockerError as exc:
            raise EngineError(exc.status, exc.message, f"reading the logs of {container}") from None
        return demultiplex(raw)

    @asynccontextmanager
    async def _stream(self, what: str, path: str, method: str,
                      params: Mapping[str, str]) -> AsyncIterator[AsyncIterator[Obj]]:
        try:
            async with self._docker._query(path, method, params=dict(params), timeout=self._long) as response:
                yield _json_lines(response.content)
        except DockerError as exc:
            raise EngineError(exc.status, exc.message + tls_hint(exc.message), what) from None
        except aiohttp.ClientError as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise EngineError(CANNOT_CONNECT, message + tls_hint(message), what) from None

    def events(self, label: str) -> Any:
        """An async context manager: the open ``/events`` stream of containers with ``label``, as JSON objects.

        The stream is subscribed once the context is entered, so a list made after that misses nothing.
        """
        filters = json.dumps({"type": ["container"], "label": [label]})
        return self._stream("watching the Docker Engine's events", "events", "GET", {"filters": filters})


async def _json_lines(content: aiohttp.StreamReader) -> AsyncIterator[Obj]:
    while line := await content.readline():
        line = line.strip()
        if line:
            item = json.loads(line)
            if isinstance(item, dict):
                yield item


def demultiplex(raw: bytes) -> list[str]:
    """Lines of a log body: frames of ``[stream, 0, 0, 0, size (4 bytes)] payload``, or plain text (TTY)."""
    chunks: list[bytes] = []
    pos = 0
    if raw[:1] in (b"\x00", b"\x01", b"\x02") and raw[1:4] == b"\x00\x00\x00":
        while pos + 8 <= len(raw):
            size = int.from_bytes(raw[pos + 4:pos + 8], "big")
            chunks.append(raw[pos + 8:pos + 8 + size])
            pos += 8 + size
    else:
        chunks = [raw]
    text = b"".join(chunks).decode("utf-8", "replace")
    return [line.rstrip("\r") for line in text.splitlines()]
