"""HTTP metrics as a pure ASGI middleware: requests by route template, method and status, and latency.

The route is the matched route's path template (``/api/v1/modserv/{service_id}``), never the raw path,
so the number of series stays bounded whatever clients send; a path no route matches is
``unmatched``, a method outside the ones HTTP defines is ``other``.  A request is counted when its
response has been sent (a long poll or an event stream when it ends), or when the app raised (500).
The metric objects live in :mod:`modserv_shim.core.metrics`.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modserv_shim.core.metrics import Metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class HttpMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        started = time.perf_counter()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route = route_of(scope)
            self.metrics.http_requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.http_duration.labels(route=route, method=method).observe(time.perf_counter() - started)

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, counted_send)
        finally:
            record()  # the app raised, or ended without finishing its response (the client went away)
