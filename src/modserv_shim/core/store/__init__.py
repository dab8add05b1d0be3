"""The persistent store: services, step runs, step logs, events and hot-loaded plugins.

SQLAlchemy 2 (async).  SQLite (``sqlite+aiosqlite:///<data-dir>/modserv.db``) is the
embedded default; a ``postgresql+asyncpg://`` URL works the same.  The schema is
owned by Alembic migrations (``migrations/``), applied on :meth:`Store.open`.

A transition and its event are written in one transaction, so the stored state
and the event history never disagree, even after ``kill -9``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, delete, event, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import Event, PluginRecord, RunStatus, ServiceRecord, StepLog, StepRun, now
from modserv_shim.core.store import tables as t
from modserv_shim.errors import BackendUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'modserv.db'}"


def _service(row: RowMapping) -> ServiceRecord:
    d = dict(row)
    d["state"] = State(d["state"])
    return ServiceRecord(**d)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise BackendUnavailable("the store is not open")
        return self._engine

    async def open(self) -> None:
        """Connect and bring the schema to the newest migration."""
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self._engine = create_async_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(self._migrate)
        except OSError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(f"cannot reach the store at {self.safe_url}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and errors."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @staticmethod
    def _migrate(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    # ---------------------------------------------------------------- services

    async def insert_service(self, rec: ServiceRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.services).values(**_row(rec)))
            await conn.execute(
                insert(t.events).values(
                    service_id=rec.id, ts=rec.created_at, from_state=None,
                    to_state=rec.state.value, reason=None, operator=rec.operator,
                )
            )

    async def get_service(self, service_id: str) -> ServiceRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.services).where(t.services.c.id == service_id))).mappings().first()
        return _service(row) if row else None

    async def list_services(self, states: Sequence[State] | None = None) -> list[ServiceRecord]:
        q = select(t.services).order_by(t.services.c.created_at)
        if states:
            q = q.where(t.services.c.state.in_([s.value for s in states]))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [_service(r) for r in rows]

    async def update_service(self, service_id: str, **fields: Any) -> None:
        fields["updated_at"] = now()
        if isinstance(fields.get("state"), State):
            fields["state"] = fields["state"].value
        async with self.engine.begin() as conn:
            await conn.execute(update(t.services).where(t.services.c.id == service_id).values(**fields))

    async def save_transition(self, rec: ServiceRecord, ev: Event) -> None:
        """Persist the record's new state/reason together with its event."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.services)
                .where(t.services.c.id == rec.id)
                .values(state=rec.state.value, reason=rec.reason, updated_at=rec.updated_at)
            )
            await conn.execute(insert(t.events).values(**_row(ev, skip_id=True)))

    async def count_services(self) -> dict[str, int]:
        q = select(t.services.c.state, func.count()).group_by(t.services.c.state)
        async with self.engine.connect() as conn:
            return {str(s): int(n) for s, n in (await conn.execute(q)).all()}

    # --------------------------------------------------------------- step runs

    async def add_step_run(self, run: StepRun) -> int:
        async with self.engine.begin() as conn:
            res = await conn.execute(insert(t.step_runs).values(**_row(run, skip_id=True)))
            pk = res.inserted_primary_key
        assert pk is not None
        run.id = int(pk[0])
        return run.id

    async def finish_step_run(
        self, run: StepRun, logs: Sequence[StepLog] = (), progress: Mapping[str, Any] | None = None
    ) -> None:
        """The attempt's outcome, its last log lines and the service's progress, in one transaction."""
        async with self.engine.begin() as conn:
            if logs:
                await conn.execute(insert(t.step_logs), [_row(x, skip_id=True) for x in logs])
            await conn.execute(
                update(t.step_runs).where(t.step_runs.c.id == run.id).values(**_row(run, skip_id=True))
            )
            if progress:
                await conn.execute(
                    update(t.services).where(t.services.c.id == run.service_id).values(**progress, updated_at=now())
                )

    async def list_step_runs(self, service_id: str) -> list[StepRun]:
        q = select(t.step_runs).where(t.step_runs.c.service_id == service_id).order_by(t.step_runs.c.id)
        async with self.engine.connect() as conn:
            return [StepRun(**dict(r)) for r in (await conn.execute(q)).mappings().all()]

    async def interrupt_running_steps(self) -> int:
        """Mark runs that were in flight when the server died; they will run again."""
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(t.step_runs)
                .where(t.step_runs.c.status == RunStatus.RUNNING)
                .values(status=RunStatus.INTERRUPTED, finished_at=now(),
                        error="the server stopped while this attempt ran; the step runs again")
            )
        return int(res.rowcount or 0)

    # --------------------------------------------------------------- step logs

    async def add_step_logs(self, logs: Sequence[StepLog]) -> None:
        if not logs:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.step_logs), [_row(x, skip_id=True) for x in logs])

    async def list_step_logs(self, service_id: str, step: str | None = None, limit: int = 1000) -> list[StepLog]:
        q = select(t.step_logs).where(t.step_logs.c.service_id == service_id)
        if step:
            q = q.where(t.step_logs.c.step == step)
        q = q.order_by(t.step_logs.c.id).limit(limit)
        async with self.engine.connect() as conn:
            return [StepLog(**dict(r)) for r in (await conn.execute(q)).mappings().all()]

    # ------------------------------------------------------------------ events

    async def add_event(self, ev: Event) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.events).values(**_row(ev, skip_id=True)))

    async def list_events(self, service_id: str) -> list[Event]:
        q = select(t.events).where(t.events.c.service_id == service_id).order_by(t.events.c.id)
        async with self.engine.connect() as conn:
            return [Event(**dict(r)) for r in (await conn.execute(q)).mappings().all()]

    # ----------------------------------------------------------------- plugins

    async def save_plugin(self, rec: PluginRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t.plugins).where((t.plugins.c.kind == rec.kind) & (t.plugins.c.name == rec.name))
            )
            await conn.execute(insert(t.plugins).values(**_row(rec)))

    async def list_plugins(self) -> list[PluginRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(t.plugins).order_by(t.plugins.c.loaded_at))).mappings().all()
        return [PluginRecord(**dict(r)) for r in rows]


def _row(obj: Any, *, skip_id: bool = False) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    if skip_id:
        d.pop("id", None)
    for k, v in d.items():
        if isinstance(v, State):
            d[k] = v.value
    return d


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
