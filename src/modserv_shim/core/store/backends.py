"""How the store's transactions reach the database.

Every store operation is a plain function of a SQLAlchemy ``Connection``; a
backend runs it in a transaction (:meth:`Backend.write`) or on a read
connection (:meth:`Backend.read`).

* :class:`AsyncBackend` (PostgreSQL through asyncpg, or any async driver):
  ``AsyncConnection.run_sync``, so the function's statements are awaited on
  the driver without blocking the event loop.
* :class:`SQLiteBackend` (the embedded default): the function runs on the event
  loop's own thread.  In WAL mode with ``synchronous=NORMAL`` a commit does not
  wait for the disk, so a transaction of the store takes tens of microseconds,
  while handing it to a worker thread (what aiosqlite does for every statement)
  costs about half a millisecond per hop, several hops per transaction.  The
  database file is ours alone, so the loop never waits for a lock: connections
  on the loop have a busy timeout of 0, and if another process does hold the
  lock (someone with the ``sqlite3`` shell open), the same function runs again
  on a worker thread that waits for it up to ``BUSY_TIMEOUT`` seconds.  Writes
  queue on an asyncio lock (SQLite has one writer at a time).  WAL checkpoints,
  the only part that does wait for the disk, run on a worker thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

T = TypeVar("T")
log = structlog.get_logger("modserv_shim.store")

BUSY_TIMEOUT = 30.0  # seconds a worker thread waits for a lock held by another process
CHECKPOINT_EVERY = 500  # write transactions between two WAL checkpoints


class Backend(Protocol):
    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a transaction: committed when it returns, rolled back when it raises."""
        ...

    async def read(self, fn: Callable[[Connection], T]) -> T: ...

    async def read_bulk(self, fn: Callable[[Connection], T]) -> T:
        """A read whose result may be large (lists for the API): kept off the event loop where possible."""
        ...

    async def close(self) -> None: ...


class AsyncBackend:
    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.connect() as conn:
            return await conn.run_sync(fn)

    async def read_bulk(self, fn: Callable[[Connection], T]) -> T:
        return await self.read(fn)  # asyncpg decodes rows on the loop; the API's list limits bound them

    async def close(self) -> None:
        await self.engine.dispose()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


class SQLiteBackend:
    def __init__(self, url: str) -> None:
        u = make_url(url).set(drivername="sqlite")  # sqlite+aiosqlite:// URLs of earlier versions still work
        # A private in-memory database: one connection, no other process, no WAL, no worker thread.
        self.memory = u.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"poolclass": StaticPool} if self.memory else {}
        # on the loop: never wait for a lock
        self.loop_engine = self._engine(u, 0.0, kwargs)
        # on a worker thread: wait for another process's lock
        self.thread_engine = self.loop_engine if self.memory else self._engine(u, BUSY_TIMEOUT, kwargs)
        self._write_lock = asyncio.Lock()
        self._writes = 0
        self._checkpoint: asyncio.Task[None] | None = None

    @staticmethod
    def _engine(url: Any, busy_timeout: float, kwargs: dict[str, Any]) -> Engine:
        engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _pragmas)
        return engine

    async def write(self, fn: Callable[[Connection], T]) -> T:
        async with self._write_lock:
            try:
                with self.loop_engine.begin() as conn:
                    result = fn(conn)
            except OperationalError as exc:
                if self.memory or not _locked(exc):
                    raise
                result = await _finish_even_if_cancelled(asyncio.to_thread(self._write_waiting, fn))
            self._writes += 1
            if (not self.memory and self._writes % CHECKPOINT_EVERY == 0
                    and (self._checkpoint is None or self._checkpoint.done())):
                self._checkpoint = asyncio.ensure_future(asyncio.to_thread(self._wal_checkpoint))
                self._checkpoint.add_done_callback(_log_checkpoint_failure)
            return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.loop_engine.connect() as conn:
                return fn(conn)
        except OperationalError as exc:
            if self.memory or not _locked(exc):
                raise
            return await asyncio.to_thread(self._read_waiting, fn)

    async def read_bulk(self, fn: Callable[[Connection], T]) -> T:
        """On a worker thread: decoding thousands of JSON columns must not hold up the loop (and /healthz)."""
        if self.memory:
            return await self.read(fn)
        return await asyncio.to_thread(self._read_waiting, fn)

    def _write_waiting(self, fn: Callable[[Connection], T]) -> T:
        with self.thread_engine.begin() as conn:
            return fn(conn)

    def _read_waiting(self, fn: Callable[[Connection], T]) -> T:
        with self.thread_engine.connect() as conn:
            return fn(conn)

    def _wal_checkpoint(self) -> None:
        with self.thread_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        self.loop_engine.dispose()
        self.thread_engine.dispose()


async def _finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Await ``work``; if the caller is cancelled meanwhile, still wait for it to end (it runs on a
    thread that cannot be stopped) before letting the cancellation through, so that the write lock
    is not handed to the next write while this one is still going."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _log_checkpoint_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("SQLite WAL checkpoint failed; the next one tries again", error=str(task.exception()))


def _locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on a worker thread (SQLiteBackend.write)
    cur.close()
