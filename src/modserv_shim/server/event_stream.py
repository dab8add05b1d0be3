"""The event routes as Server-Sent Events (``Accept: text/event-stream``).

Each message is ``id: <journal id>\\nevent: <kind>\\ndata: <one JSON line>\\n\\n`` (kinds: ``state``,
``step``, ``log``, ``replica``; the data are the REST views with ``serviceId``); ``: keep-alive``
after 15 s of silence.  The rows come from the store's journal (:mod:`modserv_shim.core.journal`), so
a client that reconnects with ``Last-Event-ID`` gets every later row once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from modserv_shim.core.manager import ServiceManager
from modserv_shim.errors import ValidationFailed
from modserv_shim.server import views

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
MAX_ID = 2**63 - 1

# The 200 answer's second form, for the OpenAPI document.
STREAM_DOC = {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
              "description": "JSON; or, with `Accept: text/event-stream`, Server-Sent Events"
              " (`id`, `event`: state | step | log | replica, `data`: one JSON line; README: Event streams)."}


def wants_stream(request: Request) -> bool:
    """The client asks for Server-Sent Events: ``text/event-stream`` in ``Accept`` with a q above 0."""
    for part in request.headers.get("accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def start_after(header: str | None, after: int | None) -> int | None:
    """Where a stream starts: the ``Last-Event-ID`` header (a reconnect), else ``?after=``, else None."""
    if header is None or not header.strip():
        return after
    text = header.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise ValidationFailed(f"Last-Event-ID must be an event id (a whole number 0 or more); got {header[:40]!r}")
    return int(text)


def response(manager: ServiceManager, after: int, service_id: str | None) -> StreamingResponse:
    return StreamingResponse(_messages(manager, after, service_id), media_type=MEDIA_TYPE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _messages(manager: ServiceManager, after: int, service_id: str | None) -> AsyncIterator[bytes]:
    async for batch in manager.follow_journal(after, service_id):
        if not batch:
            yield KEEPALIVE
            continue
        out = []
        for entry in batch:
            data = json.dumps(views.journal_entry(entry, manager.private_of(entry.service_id)),
                              separators=(",", ":"), ensure_ascii=False)
            out.append(f"id: {entry.id}\nevent: {entry.kind}\ndata: {data}\n\n")
        yield "".join(out).encode()
