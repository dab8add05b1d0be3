"""The persistent store: services, step runs, step logs, events and hot-loaded plugins.

SQLAlchemy 2 Core.  SQLite (``sqlite:///<data-dir>/modserv.db``) is the embedded
default; a ``postgresql+asyncpg://`` URL works the same.  The schema is owned by
Alembic migrations (``migrations/``), applied on :meth:`Store.open`.

Each operation is a function of a ``Connection`` run by a backend
(:mod:`.backends`): on the event loop's thread for SQLite (a transaction takes
tens of microseconds there), through ``run_sync`` on an async driver otherwise.

A transition and its event are written in one transaction, so the stored state
and the event history never disagree, even after ``kill -9``.

Write-behind: a write made with ``durable=False`` is queued and written within
WRITE_BEHIND seconds, in one transaction with the other queued writes, and in any
case before the next durable write or any read (so the order of writes, and
read-your-writes, hold).  The pipeline uses it for the progress it can afford to
lose in a crash (a phase change, a step that succeeded): after a restart the step
simply runs again.  What must survive a crash (an accepted deploy, a created
workload, a failure, a delete) is written durably, before the call returns.

The journal (table ``journal``) is what the event streams send: every state change, step
attempt start and end, step log line and replica count change gets a row, written in the
transaction that writes the thing it reports.  Its ids are Server-Sent Event ids, so they must
increase in commit order (a reader that has seen id N must never later find a new row below N):

* in one process every write reaches the database through ``_order``, one transaction at a time
  (the write-behind batch too), so ids are assigned and committed in the same order;
* SQLite has one writer at a time, also across processes, and the table uses AUTOINCREMENT, so an
  id is never reused even after rows are deleted;
* on PostgreSQL two processes sharing a database could commit out of id order, so every write
  transaction of the store begins by taking a transaction-level advisory lock (``JOURNAL_LOCK``):
  the next id is assigned only after the previous writer has committed.  Taken first, before any
  row lock, it cannot deadlock with them; within one process it is never contended.

After each commit :attr:`Store.changes` wakes the streams, which then read the rows above their
last id from the database (committed rows only: the database is the one source).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.exc import IntegrityError

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import (
    Event,
    JournalEntry,
    JournalKind,
    PluginRecord,
    RunStatus,
    ServiceRecord,
    StepLog,
    StepRun,
    now,
)
from modserv_shim.core.store import tables as t
from modserv_shim.core.store.backends import AsyncBackend, Backend, SQLiteBackend, is_sqlite
from modserv_shim.core.store.changes import Changes
from modserv_shim.errors import BackendUnavailable, IdempotencyConflict

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")
WRITE_BEHIND = 0.05  # seconds a write made with durable=False may wait (it goes earlier with the next write)
IDEMPOTENCY_TTL = 24 * 3600.0  # seconds an Idempotency-Key is remembered (a retry comes within minutes)


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    principal: str
    key: str
    body_sha256: str
    service_id: str
    created_at: float

log = structlog.get_logger("modserv_shim.store")

# Built once: constructing a statement costs more than running it on SQLite.  An UPDATE
# without .values() sets the columns named by the parameters it is executed with.
_INSERT_SERVICE = insert(t.services)
_INSERT_EVENT = insert(t.events)
_INSERT_RUN = insert(t.step_runs)
_INSERT_LOGS = insert(t.step_logs)
_UPDATE_SERVICE = update(t.services).where(t.services.c.id == bindparam("_id"))
_UPDATE_RUN = update(t.step_runs).where(t.step_runs.c.id == bindparam("_id"))
_GET_SERVICE = select(t.services).where(t.services.c.id == bindparam("_id"))
_INSERT_JOURNAL = insert(t.journal)
_GET_REPLICAS = select(t.services.c.replicas_ready, t.services.c.replicas_desired).where(
    t.services.c.id == bindparam("_id"))
JOURNAL_LOCK = 0x6D6F_6473_6A72  # PostgreSQL advisory lock key of the journal's writers ("modsjr")
_TAKE_JOURNAL_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=JOURNAL_LOCK)
JOURNAL_PAGE = 500  # journal rows per read of a stream


def _service(row: Mapping[str, Any] | RowMapping) -> ServiceRecord:
    d = dict(row)
    d["state"] = State(d["state"])
    return ServiceRecord(**d)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._backend: Backend | None = None
        self._pending: list[Callable[[Connection], object]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._order = asyncio.Lock()  # writes (queued ones first) reach the backend one at a time, in order
        self._inflight: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.changes = Changes()  # completed after every commit: the event streams read the journal then

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise BackendUnavailable("the store is not open")
        return self._backend

    async def open(self) -> None:
        """Connect and bring the schema to the newest migration."""
        backend: Backend = SQLiteBackend(self.url) if is_sqlite(self.url) else AsyncBackend(self.url)
        try:
            await backend.write(self._migrate)
        except OSError as exc:  # pragma: no cover - depends on the environment
            await backend.close()
            raise BackendUnavailable(f"cannot reach the store at {self.safe_url}: {exc}") from exc
        self._backend = backend

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and errors."""
        return make_url(self.url).render_as_string(hide_password=True)

    @staticmethod
    def _migrate(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        if self._backend is not None:
            await self.flush()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._backend.close()
            self._backend = None

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in one transaction, after the queued writes (for operations this
        class does not have).  Writes land in the order they were asked for."""
        async with self._order:
            await self._drain()
            result = await self.backend.write(functools.partial(_serialized, fn))
        self.changes.notify()
        return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Read-your-writes: queued writes are written first.  A durable write of another caller
        in progress is not waited for (it may be waiting for another process's lock)."""
        await self._settle()
        return await self.backend.read(fn)

    async def read_bulk(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`read` for results that may be large (API listings): off the event loop where the backend can."""
        await self._settle()
        return await self.backend.read_bulk(fn)

    async def _settle(self) -> None:
        """Before a read: queued writes are written, a batch in flight has landed."""
        if self._pending:
            async with self._order:
                await self._drain()
        elif self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)

    async def _submit(self, fn: Callable[[Connection], object], durable: bool) -> None:
        """Write now (durable) or queue for write-behind."""
        if durable:
            await self.write(fn)
            return
        self._pending.append(fn)
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(WRITE_BEHIND, self._flush_later)

    async def flush(self) -> None:
        """Write what is queued (write-behind), in order."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._pending or self._order.locked():
            async with self._order:
                await self._drain()

    async def _drain(self) -> None:
        """With ``_order`` held: write the queue.  The batch is written by a task of its own that a
        cancelled caller leaves running; it leaves the queue only once it is written (or given up)."""
        while self._pending:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._write_queued(list(self._pending)))
            await asyncio.shield(self._inflight)

    async def _write_queued(self, batch: list[Callable[[Connection], object]]) -> None:
        """One transaction for the batch; if it fails, one per record, so that a record that cannot be
        written costs only itself (logged and dropped: lost progress, the step runs again after a
        restart).  Never raises: the failure belongs to no caller."""
        try:
            await self.backend.write(functools.partial(_serialized, functools.partial(_run_all, batch)))
        except Exception:
            for fn in batch:
                try:
                    await self.backend.write(functools.partial(_serialized, fn))
                except Exception as exc:
                    log.error("a queued progress record could not be written; it is lost",
                              error=f"{type(exc).__name__}: {exc}")
        finally:
            del self._pending[: len(batch)]
            self.changes.notify()

    def _flush_later(self) -> None:
        self._flush_timer = None
        task = asyncio.ensure_future(self._flush_logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # the store is closed or gone: lost progress only
            log.error("writing queued progress records failed; they are lost", error=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- services

    async def insert_service(self, rec: ServiceRecord, idempotency: IdempotencyKey | None = None) -> None:
        """Store an accepted deploy with its first event (and its idempotency key), in one transaction.

        Raises :class:`~modserv_shim.errors.IdempotencyConflict` when the key was taken meanwhile
        (by another process sharing the database); the caller looks it up again.
        """
        row = _row(rec)
        event = {"service_id": rec.id, "ts": rec.created_at, "from_state": None, "to_state": rec.state.value,
                 "reason": None, "operator": rec.operator}
        entry = _state_entry(event)
        key_row = dataclasses.asdict(idempotency) if idempotency else None

        def op(conn: Connection) -> None:
            if key_row is not None:
                conn.execute(delete(t.idempotency_keys).where(
                    (t.idempotency_keys.c.principal == key_row["principal"])
                    & (t.idempotency_keys.c.key == key_row["key"])
                    & (t.idempotency_keys.c.created_at < key_row["created_at"] - IDEMPOTENCY_TTL)))
                conn.execute(insert(t.idempotency_keys), key_row)
            conn.execute(_INSERT_SERVICE, row)
            conn.execute(_INSERT_EVENT, event)
            _journal(conn, [entry])

        try:
            await self.write(op)
        except IntegrityError as exc:
            if key_row is None:
                raise
            raise IdempotencyConflict("this Idempotency-Key was just used by another request") from exc

    async def find_idempotency_key(self, principal: str, key: str) -> IdempotencyKey | None:
        """The deploy made with ``key`` by ``principal`` within the last IDEMPOTENCY_TTL seconds."""
        q = select(t.idempotency_keys).where(
            (t.idempotency_keys.c.principal == principal) & (t.idempotency_keys.c.key == key)
            & (t.idempotency_keys.c.created_at >= now() - IDEMPOTENCY_TTL))

        def op(conn: Connection) -> IdempotencyKey | None:
            row = conn.execute(q).mappings().first()
            return IdempotencyKey(**dict(row)) if row else None

        return await self.read(op)

    async def get_service(self, service_id: str) -> ServiceRecord | None:
        def op(conn: Connection) -> ServiceRecord | None:
            row = conn.execute(_GET_SERVICE, {"_id": service_id}).mappings().first()
            return _service(row) if row else None

        return await self.read(op)

    async def list_services(
        self, states: Sequence[State] | None = None, *, limit: int | None = None, offset: int = 0,
        light: bool = False,
    ) -> list[ServiceRecord]:
        """Services, oldest first.  ``light``: for listings: without step outputs, read off the event loop."""
        columns = [c for c in t.services.c if c.name != "outputs"] if light else [t.services]
        q = select(*columns).order_by(t.services.c.created_at, t.services.c.id).offset(offset).limit(limit)
        if states:
            q = q.where(t.services.c.state.in_([s.value for s in states]))

        def op(conn: Connection) -> list[ServiceRecord]:
            rows = conn.execute(q).mappings().all()
            return [_service({"outputs": {}, **r}) for r in rows] if light else [_service(r) for r in rows]

        return await (self.read_bulk(op) if light else self.read(op))

    async def update_service(self, service_id: str, **fields: Any) -> None:
        fields["updated_at"] = now()
        if isinstance(fields.get("state"), State):
            fields["state"] = fields["state"].value
        values = copy.deepcopy({"_id": service_id, **fields})
        await self.write(lambda conn: _journal(conn, _update_service(conn, values)))

    async def save_transition(self, rec: ServiceRecord, ev: Event, *, durable: bool = True, **fields: Any) -> None:
        """Persist the record's new state/reason (and any other ``fields``) together with its event."""
        values = {"_id": rec.id, "state": rec.state.value, "reason": rec.reason, "updated_at": rec.updated_at,
                  **fields}
        event = _row(ev, skip_id=True)
        entry = _state_entry(event)

        def op(conn: Connection) -> None:
            replicas = _update_service(conn, values)
            conn.execute(_INSERT_EVENT, event)
            _journal(conn, [entry, *replicas])

        await self._submit(op, durable)

    async def count_services(self) -> dict[str, int]:
        q = select(t.services.c.state, func.count()).group_by(t.services.c.state)
        return await self.read(lambda conn: {str(s): int(n) for s, n in conn.execute(q).all()})

    # --------------------------------------------------------------- step runs

    async def add_step_run(self, run: StepRun) -> int:
        row = _row(run, skip_id=True)
        entry = _step_entry(row, started=True)

        def op(conn: Connection) -> int:
            run_id = _insert_run_row(conn, row)
            _journal(conn, [entry])
            return run_id

        run.id = await self.write(op)
        return run.id

    async def finish_step_run(
        self, run: StepRun, logs: Sequence[StepLog] = (), progress: Mapping[str, Any] | None = None,
        *, durable: bool = True,
    ) -> None:
        """The attempt's outcome (inserted when ``run.id`` is None), its last log lines and the
        service's progress, in one transaction.  With ``durable=False``, ``run.id`` stays None."""
        log_rows = [_row(x, skip_id=True) for x in logs]
        run_row = _row(run, skip_id=True)
        service = copy.deepcopy({"_id": run.service_id, **progress, "updated_at": now()}) if progress else None
        run_id = run.id
        # Journal: the attempt's start (when its row was not written while it ran), its lines, its end.
        entries = [*([_step_entry(run_row, started=True)] if run_id is None else []),
                   *(_log_entry(x) for x in log_rows), _step_entry(run_row)]

        def op(conn: Connection) -> int | None:
            if log_rows:
                conn.execute(_INSERT_LOGS, log_rows)
            new_id = None
            if run_id is None:
                new_id = _insert_run_row(conn, run_row)
            else:
                conn.execute(_UPDATE_RUN, {"_id": run_id, **run_row})
            replicas = _update_service(conn, service) if service else []
            _journal(conn, [*entries, *replicas])
            return new_id

        if not durable:
            await self._submit(op, durable=False)
            return
        new_id = await self.write(op)
        if new_id is not None:  # only once committed
            run.id = new_id

    async def list_step_runs(self, service_id: str) -> list[StepRun]:
        q = select(t.step_runs).where(t.step_runs.c.service_id == service_id).order_by(t.step_runs.c.id)
        return await self.read_bulk(lambda conn: [StepRun(**dict(r)) for r in conn.execute(q).mappings().all()])

    async def interrupt_running_steps(self) -> int:
        """Mark runs that were in flight when the server died; they will run again."""
        ended = now()
        fields = {"status": RunStatus.INTERRUPTED, "finished_at": ended,
                  "error": "the server stopped while this attempt ran; the step runs again"}
        running = select(t.step_runs).where(t.step_runs.c.status == RunStatus.RUNNING).order_by(t.step_runs.c.id)
        stmt = update(t.step_runs).where(t.step_runs.c.status == RunStatus.RUNNING).values(**fields)

        def op(conn: Connection) -> int:
            runs = [{**r, **fields} for r in conn.execute(running).mappings().all()]
            count = int(conn.execute(stmt).rowcount or 0)
            _journal(conn, [_step_entry(r) for r in runs])
            return count

        return await self.write(op)

    # --------------------------------------------------------------- step logs

    async def add_step_logs(self, logs: Sequence[StepLog]) -> None:
        if not logs:
            return
        rows = [_row(x, skip_id=True) for x in logs]
        entries = [_log_entry(x) for x in rows]

        def op(conn: Connection) -> None:
            conn.execute(_INSERT_LOGS, rows)
            _journal(conn, entries)

        await self.write(op)

    async def list_step_logs(self, service_id: str, step: str | None = None, limit: int = 1000) -> list[StepLog]:
        q = select(t.step_logs).where(t.step_logs.c.service_id == service_id)
        if step:
            q = q.where(t.step_logs.c.step == step)
        q = q.order_by(t.step_logs.c.id).limit(limit)
        return await self.read_bulk(lambda conn: [StepLog(**dict(r)) for r in conn.execute(q).mappings().all()])

    # ------------------------------------------------------------------ events

    async def add_event(self, ev: Event) -> None:
        row = _row(ev, skip_id=True)
        entry = _state_entry(row)

        def op(conn: Connection) -> None:
            conn.execute(_INSERT_EVENT, row)
            _journal(conn, [entry])

        await self.write(op)

    async def list_events(self, service_id: str) -> list[Event]:
        q = select(t.events).where(t.events.c.service_id == service_id).order_by(t.events.c.id)
        return await self.read_bulk(lambda conn: [Event(**dict(r)) for r in conn.execute(q).mappings().all()])

    async def recent_events(self, limit: int) -> list[Event]:
        """The last ``limit`` state changes of all services, oldest first."""
        q = select(t.events).order_by(t.events.c.id.desc()).limit(limit)
        return await self.read_bulk(
            lambda conn: [Event(**dict(r)) for r in reversed(conn.execute(q).mappings().all())])

    # ----------------------------------------------------------------- journal

    async def read_journal(self, after: int, service_id: str | None = None, limit: int = JOURNAL_PAGE
                           ) -> list[JournalEntry]:
        """Journal rows with an id above ``after`` (of one service, or all), oldest first.  Committed rows
        only: it does not wait for the write-behind queue (those rows come with a later commit)."""
        q = select(t.journal).where(t.journal.c.id > after)
        if service_id is not None:
            q = q.where(t.journal.c.service_id == service_id)
        q = q.order_by(t.journal.c.id).limit(limit)
        return await self.backend.read_bulk(
            lambda conn: [JournalEntry(**dict(r)) for r in conn.execute(q).mappings().all()])

    async def journal_end(self, service_id: str) -> int | None:
        """The id of the service's ``terminated`` state entry (None when it has none)."""
        q = (select(t.journal.c.id, t.journal.c.data)
             .where((t.journal.c.service_id == service_id) & (t.journal.c.kind == JournalKind.STATE))
             .order_by(t.journal.c.id.desc()))

        def op(conn: Connection) -> int | None:
            for row_id, data in conn.execute(q):  # a service has a few dozen state changes
                if data.get("to_state") == State.TERMINATED.value:
                    return int(row_id)
            return None

        return await self.backend.read_bulk(op)

    async def journal_head(self) -> int:
        """The newest journal id (0 when the journal is empty)."""
        q = select(func.max(t.journal.c.id))
        return await self.backend.read(lambda conn: int(conn.execute(q).scalar() or 0))

    # ----------------------------------------------------------------- plugins

    async def save_plugin(self, rec: PluginRecord) -> None:
        def op(conn: Connection) -> None:
            conn.execute(delete(t.plugins).where((t.plugins.c.kind == rec.kind) & (t.plugins.c.name == rec.name)))
            conn.execute(insert(t.plugins).values(**_row(rec)))

        await self.write(op)

    async def list_plugins(self) -> list[PluginRecord]:
        q = select(t.plugins).order_by(t.plugins.c.loaded_at)
        return await self.read(lambda conn: [PluginRecord(**dict(r)) for r in conn.execute(q).mappings().all()])


def _run_all(batch: Sequence[Callable[[Connection], object]], conn: Connection) -> None:
    for fn in batch:
        fn(conn)


def _serialized(fn: Callable[[Connection], T], conn: Connection) -> T:
    """A write transaction: on PostgreSQL, first the advisory lock that keeps journal ids in commit order
    across processes (held until the transaction ends; see the module)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_TAKE_JOURNAL_LOCK)
    return fn(conn)


def _journal(conn: Connection, entries: Sequence[Mapping[str, Any]]) -> None:
    """Append journal rows, in this transaction (see the module: ids increase in commit order)."""
    if entries:
        conn.execute(_INSERT_JOURNAL, list(entries))


def _update_service(conn: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Update a service row; the journal entry to write when its ready/desired replica count changes."""
    if "replicas_ready" not in values and "replicas_desired" not in values:
        conn.execute(_UPDATE_SERVICE, values)
        return []
    before = conn.execute(_GET_REPLICAS, {"_id": values["_id"]}).first()
    conn.execute(_UPDATE_SERVICE, values)
    if before is None:
        return []
    ready = int(values.get("replicas_ready", before[0]))
    desired = int(values.get("replicas_desired", before[1]))
    if (ready, desired) == (before[0], before[1]):
        return []
    return [{"service_id": values["_id"], "ts": values.get("updated_at") or now(), "kind": JournalKind.REPLICA,
             "data": {"ready": ready, "desired": desired}}]


def _state_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: event[k] for k in ("ts", "from_state", "to_state", "reason", "operator")}
    return {"service_id": event["service_id"], "ts": event["ts"], "kind": JournalKind.STATE, "data": data}


def _step_entry(run: Mapping[str, Any], *, started: bool = False) -> dict[str, Any]:
    """A step attempt as it ended (``run`` as it is now), or as it started."""
    data = {k: v for k, v in run.items() if k not in ("id", "service_id")}
    if started:
        data.update(status=RunStatus.RUNNING, finished_at=None, duration_ms=None, error=None)
    ts = data["started_at"] if started or data.get("finished_at") is None else data["finished_at"]
    return {"service_id": run["service_id"], "ts": ts, "kind": JournalKind.STEP, "data": copy.deepcopy(data)}


def _log_entry(line: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in line.items() if k not in ("id", "service_id")}
    return {"service_id": line["service_id"], "ts": line["ts"], "kind": JournalKind.LOG, "data": data}


def _insert_run_row(conn: Connection, row: Mapping[str, Any]) -> int:
    pk = conn.execute(_INSERT_RUN, row).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _row(obj: Any, *, skip_id: bool = False) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    if skip_id:
        d.pop("id", None)
    for k, v in d.items():
        if isinstance(v, State):
            d[k] = v.value
    return d
