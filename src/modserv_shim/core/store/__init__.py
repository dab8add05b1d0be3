"""The persistent store: services, step runs, step logs, events and hot-loaded plugins.

SQLAlchemy 2 Core.  SQLite (``sqlite:///<data-dir>/modserv.db``) is the embedded
default; a ``postgresql+asyncpg://`` URL works the same.  The schema is owned by
Alembic migrations (``migrations/``), applied on :meth:`Store.open`.

Each operation is a function of a ``Connection`` run by a backend
(:mod:`.backends`): on the event loop's thread for SQLite (a transaction takes
tens of microseconds there), through ``run_sync`` on an async driver otherwise.

A transition and its event are written in one transaction, so the stored state
and the event history never disagree, even after ``kill -9``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import RowMapping, make_url

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import Event, PluginRecord, RunStatus, ServiceRecord, StepLog, StepRun, now
from modserv_shim.core.store import tables as t
from modserv_shim.core.store.backends import AsyncBackend, Backend, SQLiteBackend, is_sqlite
from modserv_shim.errors import BackendUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")

# Built once: constructing a statement costs more than running it on SQLite.  An UPDATE
# without .values() sets the columns named by the parameters it is executed with.
_INSERT_SERVICE = insert(t.services)
_INSERT_EVENT = insert(t.events)
_INSERT_RUN = insert(t.step_runs)
_INSERT_LOGS = insert(t.step_logs)
_UPDATE_SERVICE = update(t.services).where(t.services.c.id == bindparam("_id"))
_UPDATE_RUN = update(t.step_runs).where(t.step_runs.c.id == bindparam("_id"))
_GET_SERVICE = select(t.services).where(t.services.c.id == bindparam("_id"))


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'modserv.db'}"


def _service(row: RowMapping) -> ServiceRecord:
    d = dict(row)
    d["state"] = State(d["state"])
    return ServiceRecord(**d)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._backend: Backend | None = None

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
            await self._backend.close()
            self._backend = None

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in one transaction (for operations this class does not have)."""
        return await self.backend.write(fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        return await self.backend.read(fn)

    # ---------------------------------------------------------------- services

    async def insert_service(self, rec: ServiceRecord) -> None:
        def op(conn: Connection) -> None:
            conn.execute(_INSERT_SERVICE, _row(rec))
            conn.execute(_INSERT_EVENT, {"service_id": rec.id, "ts": rec.created_at, "from_state": None,
                                         "to_state": rec.state.value, "reason": None, "operator": rec.operator})

        await self.write(op)

    async def get_service(self, service_id: str) -> ServiceRecord | None:
        def op(conn: Connection) -> ServiceRecord | None:
            row = conn.execute(_GET_SERVICE, {"_id": service_id}).mappings().first()
            return _service(row) if row else None

        return await self.read(op)

    async def list_services(self, states: Sequence[State] | None = None) -> list[ServiceRecord]:
        q = select(t.services).order_by(t.services.c.created_at)
        if states:
            q = q.where(t.services.c.state.in_([s.value for s in states]))
        return await self.read(lambda conn: [_service(r) for r in conn.execute(q).mappings().all()])

    async def update_service(self, service_id: str, **fields: Any) -> None:
        fields["updated_at"] = now()
        if isinstance(fields.get("state"), State):
            fields["state"] = fields["state"].value
        await self.write(lambda conn: conn.execute(_UPDATE_SERVICE, {"_id": service_id, **fields}))

    async def save_transition(self, rec: ServiceRecord, ev: Event, **fields: Any) -> None:
        """Persist the record's new state/reason (and any other ``fields``) together with its event."""
        def op(conn: Connection) -> None:
            conn.execute(_UPDATE_SERVICE, {"_id": rec.id, "state": rec.state.value, "reason": rec.reason,
                                           "updated_at": rec.updated_at, **fields})
            conn.execute(_INSERT_EVENT, _row(ev, skip_id=True))

        await self.write(op)

    async def count_services(self) -> dict[str, int]:
        q = select(t.services.c.state, func.count()).group_by(t.services.c.state)
        return await self.read(lambda conn: {str(s): int(n) for s, n in conn.execute(q).all()})

    # --------------------------------------------------------------- step runs

    async def add_step_run(self, run: StepRun) -> int:
        run.id = await self.write(lambda conn: _insert_run(conn, run))
        return run.id

    async def finish_step_run(
        self, run: StepRun, logs: Sequence[StepLog] = (), progress: Mapping[str, Any] | None = None
    ) -> None:
        """The attempt's outcome (inserted when ``run.id`` is None), its last log lines and the
        service's progress, in one transaction."""
        def op(conn: Connection) -> int | None:
            if logs:
                conn.execute(_INSERT_LOGS, [_row(x, skip_id=True) for x in logs])
            new_id = None
            if run.id is None:
                new_id = _insert_run(conn, run)
            else:
                conn.execute(_UPDATE_RUN, {"_id": run.id, **_row(run, skip_id=True)})
            if progress:
                conn.execute(_UPDATE_SERVICE, {"_id": run.service_id, **progress, "updated_at": now()})
            return new_id

        new_id = await self.write(op)
        if new_id is not None:  # only once committed
            run.id = new_id

    async def list_step_runs(self, service_id: str) -> list[StepRun]:
        q = select(t.step_runs).where(t.step_runs.c.service_id == service_id).order_by(t.step_runs.c.id)
        return await self.read(lambda conn: [StepRun(**dict(r)) for r in conn.execute(q).mappings().all()])

    async def interrupt_running_steps(self) -> int:
        """Mark runs that were in flight when the server died; they will run again."""
        stmt = (
            update(t.step_runs)
            .where(t.step_runs.c.status == RunStatus.RUNNING)
            .values(status=RunStatus.INTERRUPTED, finished_at=now(),
                    error="the server stopped while this attempt ran; the step runs again")
        )
        return await self.write(lambda conn: int(conn.execute(stmt).rowcount or 0))

    # --------------------------------------------------------------- step logs

    async def add_step_logs(self, logs: Sequence[StepLog]) -> None:
        if not logs:
            return
        rows = [_row(x, skip_id=True) for x in logs]
        await self.write(lambda conn: conn.execute(_INSERT_LOGS, rows))

    async def list_step_logs(self, service_id: str, step: str | None = None, limit: int = 1000) -> list[StepLog]:
        q = select(t.step_logs).where(t.step_logs.c.service_id == service_id)
        if step:
            q = q.where(t.step_logs.c.step == step)
        q = q.order_by(t.step_logs.c.id).limit(limit)
        return await self.read(lambda conn: [StepLog(**dict(r)) for r in conn.execute(q).mappings().all()])

    # ------------------------------------------------------------------ events

    async def add_event(self, ev: Event) -> None:
        row = _row(ev, skip_id=True)
        await self.write(lambda conn: conn.execute(_INSERT_EVENT, row))

    async def list_events(self, service_id: str) -> list[Event]:
        q = select(t.events).where(t.events.c.service_id == service_id).order_by(t.events.c.id)
        return await self.read(lambda conn: [Event(**dict(r)) for r in conn.execute(q).mappings().all()])

    # ----------------------------------------------------------------- plugins

    async def save_plugin(self, rec: PluginRecord) -> None:
        def op(conn: Connection) -> None:
            conn.execute(delete(t.plugins).where((t.plugins.c.kind == rec.kind) & (t.plugins.c.name == rec.name)))
            conn.execute(insert(t.plugins).values(**_row(rec)))

        await self.write(op)

    async def list_plugins(self) -> list[PluginRecord]:
        q = select(t.plugins).order_by(t.plugins.c.loaded_at)
        return await self.read(lambda conn: [PluginRecord(**dict(r)) for r in conn.execute(q).mappings().all()])


def _insert_run(conn: Connection, run: StepRun) -> int:
    pk = conn.execute(_INSERT_RUN, _row(run, skip_id=True)).inserted_primary_key
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
