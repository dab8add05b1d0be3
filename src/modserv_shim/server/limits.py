"""A cap on request bodies, as a pure ASGI middleware (it buffers nothing).

* A ``Content-Length`` over the cap is answered 413 at once; the app never runs and the
  body is never read.
* A body without a length (``Transfer-Encoding: chunked``) is counted chunk by chunk as the
  app reads it; the chunk that crosses the cap raises :class:`BodyTooLarge` (a Starlette
  ``HTTPException``, which FastAPI's body reader passes on to the envelope's handler) and
  nothing more is handed to the app.

Both answers are the envelope with code 1007.  The connection stays open: the HTTP server
drops the rest of the body as it arrives (nothing is kept), and a client that sends its whole
body before reading the answer (most do) still gets the 413, where a close would reset the
connection under it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modserv_shim.errors import PayloadTooLarge
from modserv_shim.server.envelope import error_response


def too_large_message(limit: int) -> str:
    return (f"the request body is over this server's limit of {limit} bytes; the limit is the max_body_bytes"
            " setting (config file, or MODSERV_MAX_BODY_BYTES)")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body crosses the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await _refuse(limit, scope, receive, send)
            return

        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            if seen > limit:  # the app asks again after the refusal: read nothing more
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            # Normally the envelope's handler answers it inside the app; this is for a reader
            # outside that handler's reach.
            if started:
                raise
            await _refuse(limit, scope, receive, send)


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(PayloadTooLarge(too_large_message(limit)))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before we get here
    return None
