"""Following the journal: what the event streams (Server-Sent Events) send.

The journal is a table of the store (see :mod:`modserv_shim.core.store`): every state change, step
attempt start and end, step log line and replica count change, in commit order, each with an id that
only grows.  :func:`follow` reads the rows above a given id from the database, then waits for the
store's next commit (:attr:`Store.changes <modserv_shim.core.store.Store.changes>`) and reads again:
the database is the one source, so a client that reconnects with the last id it saw gets every later
row once, whatever it missed while away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import JournalEntry, JournalKind
from modserv_shim.core.store import Store

KEEPALIVE = 15.0  # seconds of silence after which a stream gets an empty batch (a keep-alive comment)
POLL = 5.0  # seconds between reads without a commit of ours: rows another process sharing the database wrote


def ends_stream(entry: JournalEntry) -> bool:
    """The last entry of a service's stream: its ``terminated`` state change."""
    return entry.kind == JournalKind.STATE and entry.data.get("to_state") == State.TERMINATED.value


async def follow(store: Store, after: int, service_id: str | None = None, *,
                 keepalive: float | None = None) -> AsyncIterator[list[JournalEntry]]:
    """Batches of journal rows with ids above ``after`` (of one service, or of all), oldest first, as
    they are committed; an empty batch after ``keepalive`` seconds without one.

    A service's stream ends after its ``terminated`` state change (at once when that is at or before
    ``after``, or when the service is unknown); the stream of all services ends when the server stops
    (:meth:`Changes.stop <modserv_shim.core.store.changes.Changes.stop>`).
    """
    changes = store.changes
    loop = asyncio.get_running_loop()
    keepalive = KEEPALIVE if keepalive is None else keepalive
    if service_id is not None:
        rec = await store.get_service(service_id)  # committed state: its journal row is committed with it
        if rec is None or rec.state is State.TERMINATED:
            async for rows in _until_end(store, after, service_id):
                yield rows
            return
    quiet_since = loop.time()
    while not changes.stopped:
        woken = changes.waiter()  # before the read: a commit after the read still wakes us
        rows = await store.read_journal(after, service_id)
        if rows:
            rows = _upto_end(rows) if service_id is not None else rows
            after = rows[-1].id
            yield rows
            quiet_since = loop.time()
            if service_id is not None and ends_stream(rows[-1]):
                return
            continue
        remaining = keepalive - (loop.time() - quiet_since)
        if remaining <= 0:
            yield []
            quiet_since = loop.time()
            continue
        await asyncio.wait([woken], timeout=min(remaining, POLL))


async def _until_end(store: Store, after: int, service_id: str) -> AsyncIterator[list[JournalEntry]]:
    """The rest of a terminated service's stream: its rows above ``after`` up to its ``terminated`` state
    change (nothing when that is at or before ``after``; rows written after it are not part of it)."""
    end = await store.journal_end(service_id)
    while end is not None and after < end:
        rows = [r for r in await store.read_journal(after, service_id) if r.id <= end]
        if not rows:
            return
        yield rows
        after = rows[-1].id


def _upto_end(rows: list[JournalEntry]) -> list[JournalEntry]:
    for i, row in enumerate(rows):
        if ends_stream(row):
            return rows[: i + 1]
    return rows
