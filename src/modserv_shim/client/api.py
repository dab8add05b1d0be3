"""An HTTP client for the REST API: one method per endpoint, the envelope's ``data`` returned.

An answer with a non-zero ``code`` raises :class:`ApiError` (the server's code, message and HTTP
status); a server that cannot be reached raises :class:`Unreachable` naming the URL.  The token
goes in ``Authorization: Bearer`` and appears in no message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

API = "/api/v1"
DEFAULT_SERVER = "http://127.0.0.1:8080"
LONG_POLL_SLACK = 15.0  # seconds a read may take beyond a long poll's own timeout


class ClientError(Exception):
    """Anything that stops a command; ``str()`` is the one line shown."""


class ApiError(ClientError):
    """The server answered with an error envelope."""

    def __init__(self, status: int, code: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} (code {self.code}, HTTP {self.status})"


class Unreachable(ClientError):
    """No answer from the server (connection refused, DNS, TLS, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the server at {url}: {reason}")
        self.url = url


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc) or "connection failed"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "its TLS certificate is not trusted (give its CA with --cacert)"
        return "connection refused" if "refused" in text.lower() else text
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class EventStream:
    """The answer to an events request: Server-Sent Events (``lines``), or the JSON list (``events``)."""

    lines: Iterator[str] | None
    events: list[dict[str, Any]] | None


class ApiClient:
    """A synchronous client of one server; use it as a context manager (it closes its connections)."""

    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None, *,
                 cacert: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "modserv-shim-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout,
                                  verify=cacert if cacert else True, follow_redirects=False)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json_body: Any = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Any:
        """``data`` of the envelope; an error envelope raises :class:`ApiError`."""
        try:
            r = self._http.request(method, path, params=_clean(params), json=json_body, headers=headers,
                                   timeout=timeout if timeout is not None else self.timeout)
        except httpx.HTTPError as exc:
            raise Unreachable(self.server, _reason(exc)) from None
        return self._data(r)

    def _data(self, r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "code" not in body:
            snippet = " ".join(r.text.split())[:200]
            raise ApiError(r.status_code, -1, f"not a ModelServeShim answer from {self.server}{r.url.path}"
                           f" (HTTP {r.status_code}): {snippet or 'empty body'}")
        if body["code"] != 0 or r.status_code >= 400:
            raise ApiError(r.status_code, int(body.get("code") or -1), str(body.get("message") or "error"),
                           body.get("details"))
        return body.get("data")

    # ------------------------------------------------------------------ services

    def deploy(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        out: dict[str, Any] = self.request("POST", f"{API}/modserv/deploy", json_body=spec, headers=headers)
        return out

    def services(self, state: str | None = None, limit: int | None = None, offset: int | None = None
                 ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", f"{API}/modserv",
                                                 params={"state": state, "limit": limit, "offset": offset})
        return out

    def service(self, sid: str, wait_for: list[str] | None = None, timeout: float | None = None
                ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        read_timeout = None
        if wait_for:
            params = {"waitFor": ",".join(wait_for), "timeout": timeout if timeout is not None else 30.0}
            read_timeout = float(params["timeout"]) + LONG_POLL_SLACK
        out: dict[str, Any] = self.request("GET", f"{API}/modserv/{_seg(sid)}", params=params, timeout=read_timeout)
        return out

    def pipeline(self, sid: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"{API}/modserv/{_seg(sid)}/pipeline")
        return out

    def pipeline_logs(self, sid: str, step: str | None = None, limit: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"{API}/modserv/{_seg(sid)}/pipeline/logs",
                                           params={"step": step, "limit": limit})
        return out

    def events(self, sid: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", f"{API}/modserv/{_seg(sid)}/events")
        return out

    def runtime_logs(self, sid: str, tail: int | None = None) -> list[str]:
        data = self.request("GET", f"{API}/modserv/{_seg(sid)}/logs", params={"tail": tail})
        return [str(x) for x in (data or {}).get("lines", [])]

    def delete(self, sid: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("DELETE", f"{API}/modserv/{_seg(sid)}")
        return out

    def scale(self, sid: str, replicas: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"{API}/modserv/{_seg(sid)}/scale",
                                           json_body={"replicaCount": replicas})
        return out

    def retry(self, sid: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"{API}/modserv/{_seg(sid)}/retry")
        return out

    # ------------------------------------------------------------------ plugins

    def plugins(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"{API}/plugins")
        return out

    def load_plugin(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"{API}/plugins/load", json_body=_clean(body))
        return out

    # ------------------------------------------------------------------ event stream

    @contextlib.contextmanager
    def event_stream(self, sid: str, last_event_id: str | None = None) -> Iterator[EventStream]:
        """``GET .../events`` asking for ``text/event-stream``: the stream's lines when the server
        streams, else the JSON list it answers (servers without the stream)."""
        headers = {"Accept": "text/event-stream, application/json;q=0.5", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        # No read timeout on a stream: the server may be quiet for long (a keep-alive comment is optional).
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with self._http.stream("GET", f"{API}/modserv/{_seg(sid)}/events", headers=headers,
                                   timeout=timeout) as r:
                ctype = r.headers.get("content-type", "")
                if r.status_code == 200 and ctype.startswith("text/event-stream"):
                    yield EventStream(_lines(r, self.server), None)
                    return
                r.read()
                data = self._data(r)
                yield EventStream(None, list(data or []))
        except httpx.HTTPError as exc:
            raise Unreachable(self.server, _reason(exc)) from None


def _lines(r: httpx.Response, server: str) -> Iterator[str]:
    try:
        yield from r.iter_lines()
    except httpx.HTTPError as exc:
        raise StreamBroken(server, _reason(exc)) from None


class StreamBroken(Unreachable):
    """An event stream that was open ended by a network error (reconnect with ``Last-Event-ID``)."""


def _seg(sid: str) -> str:
    """A service id as one path segment (an id with '/' or '?' cannot reach another endpoint)."""
    return quote(sid, safe="")


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


def dumps(data: Any) -> str:
    """JSON for ``--output json``: indented, non-ASCII kept."""
    return json.dumps(data, indent=2, ensure_ascii=False)
