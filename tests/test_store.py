"""The store against SQLite and a real PostgreSQL 15 (started by the fixture or by .ci/run)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import Event, PluginRecord, RunStatus, ServiceRecord, StepLog, StepRun
from modserv_shim.core.store import Store

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """MODSERV_TEST_PG_URL if set (CI starts a server), else a throwaway PostgreSQL of our own."""
    if os.environ.get("MODSERV_TEST_PG_URL"):
        yield os.environ["MODSERV_TEST_PG_URL"]
        return
    if PG_BIN is None or shutil.which("runuser") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI")
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="modserv-pg-"))
    os.chmod(root, 0o777)
    data, port = root / "data", _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                    "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = Store(url)
    await s.open()
    if request.param == "postgresql":  # a clean slate per test on the shared server
        from sqlalchemy import Connection, text

        def wipe(conn: Connection) -> None:
            for table in ("services", "step_runs", "step_logs", "events", "plugins", "journal"):
                conn.execute(text(f"DELETE FROM {table}"))

        await s.write(wipe)
    yield s
    await s.close()


def svc(i: int = 1, state: State = State.INITIALIZING) -> ServiceRecord:
    return ServiceRecord(f"m-{i}", "m", {"modelName": "m", "env": {"A": "b"}}, "local", "opensourcellm", state,
                         ["a", "b"], replicas_desired=2, operator="otto")


async def test_services_roundtrip_and_transitions(store: Store) -> None:
    rec = svc()
    await store.insert_service(rec)
    got = await store.get_service("m-1")
    assert got == rec
    rec.state, rec.reason = State.FAILED, "the model needs 41.2 GiB"
    await store.save_transition(rec, Event("m-1", time.time(), "initializing", "failed", rec.reason, "otto"))
    got = await store.get_service("m-1")
    assert got is not None and got.state is State.FAILED and got.reason == "the model needs 41.2 GiB"
    assert [e.to_state for e in await store.list_events("m-1")] == ["initializing", "failed"]
    await store.insert_service(svc(2, State.RUNNING))
    assert [s.id for s in await store.list_services([State.RUNNING])] == ["m-2"]
    assert await store.count_services() == {"failed": 1, "running": 1}
    await store.update_service("m-2", outputs={"launch": {"argv": ["x"]}}, current_step=2)
    got = await store.get_service("m-2")
    assert got is not None and got.outputs == {"launch": {"argv": ["x"]}} and got.current_step == 2
    assert await store.get_service("nope") is None


async def test_step_runs_logs_and_interrupt(store: Store) -> None:
    await store.insert_service(svc())
    run = StepRun("m-1", "a", 1, RunStatus.RUNNING, time.time(), "otto", {"timeout": 5})
    await store.add_step_run(run)
    assert run.id is not None
    done = StepRun("m-1", "a", 2, RunStatus.RUNNING, time.time(), "otto")
    await store.add_step_run(done)
    done.status, done.duration_ms = RunStatus.SUCCEEDED, 12.5
    await store.finish_step_run(done)
    assert await store.interrupt_running_steps() == 1
    runs = await store.list_step_runs("m-1")
    assert [(r.attempt, r.status) for r in runs] == [(1, "interrupted"), (2, "succeeded")]
    assert runs[1].duration_ms == 12.5 and runs[0].params == {"timeout": 5}
    await store.add_step_logs([StepLog("m-1", "a", 1, time.time(), "info", f"line {i}", {"i": i}) for i in range(5)])
    logs = await store.list_step_logs("m-1", "a", limit=3)
    assert [x.message for x in logs] == ["line 0", "line 1", "line 2"] and logs[2].fields == {"i": 2}


async def test_write_behind_keeps_order_and_read_your_writes(store: Store) -> None:
    """durable=False writes are queued, yet every read sees them and a later durable write lands after them."""
    rec = svc()
    await store.insert_service(rec)
    for to in ("pipeline_running", "deploying"):
        old, rec.state = rec.state, State(to)
        await store.save_transition(rec, Event(rec.id, time.time(), old.value, to, None, "otto"), durable=False)
    run = StepRun("m-1", "a", 1, RunStatus.SUCCEEDED, time.time(), "otto", duration_ms=3.0)
    await store.finish_step_run(run, [StepLog("m-1", "a", 1, time.time(), "info", "done")],
                                {"current_step": 1}, durable=False)
    got = await store.get_service("m-1")  # a read flushes the queue first
    assert got is not None and got.state is State.DEPLOYING and got.current_step == 1
    rec.state = State.FAILED
    await store.save_transition(rec, Event(rec.id, time.time(), "deploying", "failed", "boom", "otto"))
    assert [e.to_state for e in await store.list_events("m-1")] == [
        "initializing", "pipeline_running", "deploying", "failed"]
    assert [(r.step, r.status) for r in await store.list_step_runs("m-1")] == [("a", "succeeded")]


async def test_write_behind_flush_in_flight_then_durable_write_keeps_order(store: Store) -> None:
    import asyncio

    rec = svc()
    await store.insert_service(rec)
    for old, to in (("initializing", "pipeline_running"), ("pipeline_running", "deploying")):
        rec.state = State(to)
        await store.save_transition(rec, Event(rec.id, time.time(), old, to, None, "o"), durable=False)
    background = asyncio.ensure_future(store.flush())  # as the write-behind timer does
    await asyncio.sleep(0)
    rec.state, rec.reason = State.FAILED, "boom"
    await store.save_transition(rec, Event(rec.id, time.time(), "deploying", "failed", "boom", "o"))
    await background
    got = await store.get_service("m-1")
    assert got is not None and got.state is State.FAILED
    assert [e.to_state for e in await store.list_events("m-1")] == [
        "initializing", "pipeline_running", "deploying", "failed"]


async def test_a_cancelled_writer_does_not_take_queued_writes_with_it(store: Store) -> None:
    import asyncio

    a, b = svc(1), svc(2)
    await store.insert_service(a)
    await store.insert_service(b)
    b.state = State.PIPELINE_RUNNING
    await store.save_transition(b, Event(b.id, time.time(), "initializing", "pipeline_running", None, "o"),
                                durable=False)
    writer = asyncio.ensure_future(store.update_service("m-1", resource_id="r-1"))
    await asyncio.sleep(0)
    writer.cancel()  # e.g. a delete cancelling the step that was recording its resource
    await asyncio.gather(writer, return_exceptions=True)
    got = await store.get_service("m-2")
    assert got is not None and got.state is State.PIPELINE_RUNNING


async def test_a_queued_record_that_cannot_be_written_costs_only_itself(store: Store) -> None:
    """(On PostgreSQL the log level below is longer than its column; SQLite stores it.)"""
    a = svc(1)
    await store.insert_service(a)
    await store.finish_step_run(StepRun("m-1", "a", 1, RunStatus.SUCCEEDED, time.time(), "o"),
                                [StepLog("m-1", "a", 1, time.time(), "warning-deprecated-x", "odd level")],
                                {"current_step": 1}, durable=False)
    a.state = State.PIPELINE_RUNNING
    await store.save_transition(a, Event(a.id, time.time(), "initializing", "pipeline_running", None, "o"),
                                durable=False)
    await store.insert_service(svc(2))  # another user's deploy must not fail for it
    assert await store.get_service("m-2") is not None
    got = await store.get_service("m-1")
    assert got is not None and got.state is State.PIPELINE_RUNNING


async def test_write_behind_reaches_the_database_by_itself_and_on_close(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from modserv_shim.core.store import WRITE_BEHIND

    def stored_state() -> str:
        with sqlite3.connect(tmp_path / "m.db") as other:  # another connection: sees committed data only
            return str(other.execute("SELECT state FROM services WHERE id = 'm-1'").fetchone()[0])

    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    await s.open()
    rec = svc()
    await s.insert_service(rec)
    rec.state = State.PIPELINE_RUNNING
    await s.save_transition(rec, Event(rec.id, time.time(), "initializing", "pipeline_running", None, "o"),
                            durable=False)
    assert stored_state() == "initializing"  # queued
    await asyncio.sleep(WRITE_BEHIND)
    for _ in range(60):  # written without anyone asking, soon after WRITE_BEHIND
        if stored_state() == "pipeline_running":
            break
        await asyncio.sleep(0.05)
    assert stored_state() == "pipeline_running"
    rec.state = State.DEPLOYING
    await s.save_transition(rec, Event(rec.id, time.time(), "pipeline_running", "deploying", None, "o"),
                            durable=False)
    await s.close()
    assert stored_state() == "deploying"


async def test_plugins_saved_once_per_name(store: Store) -> None:
    await store.save_plugin(PluginRecord("pipeline", "q", "/p/q.py", None, "Q", "ada"))
    await store.save_plugin(PluginRecord("pipeline", "q", "/p/q2.py", None, "Q", "ada"))
    assert [(p.name, p.file) for p in await store.list_plugins()] == [("q", "/p/q2.py")]


async def test_reopen_applies_migrations_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    s = Store(url)
    await s.open()
    await s.insert_service(svc())
    await s.close()
    s = Store(url)
    await s.open()
    assert (await s.get_service("m-1")) is not None
    await s.close()


async def test_aiosqlite_url_of_earlier_versions_opens_the_same_file(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    await s.open()
    await s.insert_service(svc())
    await s.close()
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await s.open()
    assert (await s.get_service("m-1")) is not None
    await s.close()


async def test_sqlite_locked_by_another_process_waits_without_blocking_the_server(tmp_path: Path) -> None:
    """Someone holds the write lock (an sqlite3 shell in a transaction): our write waits for it on a
    worker thread, the event loop keeps serving, and the write lands once the lock is released."""
    import asyncio
    import sqlite3

    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    await s.open()
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        write = asyncio.ensure_future(s.insert_service(svc()))
        t0 = time.monotonic()
        await asyncio.sleep(0.3)  # the loop is free while the write waits
        assert time.monotonic() - t0 < 3  # not the 30 s a blocked loop would take
        assert not write.done()
        assert await s.get_service("m-1") is None  # reads go on meanwhile
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(write, 10)
    assert (await s.get_service("m-1")) is not None
    await s.close()


async def test_in_memory_sqlite_keeps_every_transaction_whole() -> None:
    """sqlite:// (a private in-memory database): one connection, never shared with a worker thread."""
    s = Store("sqlite://")
    await s.open()
    for i in range(600):  # past the WAL checkpoint interval of a file database
        await s.insert_service(svc(i))
    assert len(await s.list_services()) == 600
    for i in (0, 299, 599):
        assert len(await s.list_events(f"m-{i}")) == 1
    await s.close()


def test_password_hidden_in_url() -> None:
    assert Store("postgresql+asyncpg://u:hunter2@db/x").safe_url == "postgresql+asyncpg://u:***@db/x"


# ------------------------------------------------------------------------------------------ journal


async def test_journal_records_every_change_in_commit_order(store: Store) -> None:
    """What the event streams send: each state change, attempt start and end, log line and replica count
    change, written with what it reports (write-behind ones when they land), ids increasing."""
    head = await store.journal_head()
    rec = svc()
    await store.insert_service(rec)
    rec.state = State.PIPELINE_RUNNING
    await store.save_transition(rec, Event("m-1", time.time(), "initializing", "pipeline_running", None, "o"),
                                durable=False)
    long = StepRun("m-1", "a", 1, RunStatus.RUNNING, time.time(), "o", {"timeout": 5})
    await store.add_step_run(long)  # a long step: its row while it runs
    await store.add_step_logs([StepLog("m-1", "a", 1, time.time(), "info", "working")])
    long.status, long.finished_at, long.duration_ms, long.error = RunStatus.FAILED, time.time(), 3.5, "boom"
    await store.finish_step_run(long, [StepLog("m-1", "a", 1, time.time(), "warning", "last words")])
    quick = StepRun("m-1", "a", 2, RunStatus.SUCCEEDED, time.time(), "o", finished_at=time.time(), duration_ms=1.0)
    await store.finish_step_run(quick, [StepLog("m-1", "a", 2, time.time(), "info", "done")],
                                {"current_step": 1}, durable=False)  # a quick step: start, lines, end at once
    rec.state = State.RUNNING
    await store.save_transition(rec, Event("m-1", time.time(), "pipeline_running", "running", None, "o"),
                                replicas_ready=2)
    await store.update_service("m-1", replicas_ready=2)  # unchanged: no entry
    await store.update_service("m-1", replicas_desired=3)
    await store.add_event(Event("m-1", time.time(), "running", "running", "scaled to 3 replicas", "o"))
    hung = StepRun("m-1", "b", 1, RunStatus.RUNNING, time.time(), "o")
    await store.add_step_run(hung)
    assert await store.interrupt_running_steps() == 1

    rows = await store.read_journal(head)
    assert [r.id for r in rows] == sorted({r.id for r in rows}) and rows[-1].id == await store.journal_head()
    assert all(r.service_id == "m-1" for r in rows)
    seen = [(r.kind, r.data.get("to_state") or r.data.get("status") or r.data.get("message") or r.data)
            for r in rows]
    assert seen == [
        ("state", "initializing"), ("state", "pipeline_running"),
        ("step", "running"), ("log", "working"), ("log", "last words"), ("step", "failed"),
        ("step", "running"), ("log", "done"), ("step", "succeeded"),
        ("state", "running"), ("replica", {"ready": 2, "desired": 2}), ("replica", {"ready": 2, "desired": 3}),
        ("state", "running"), ("step", "running"), ("step", "interrupted"),
    ], seen
    failed = rows[5].data
    assert failed["error"] == "boom" and failed["duration_ms"] == 3.5 and failed["params"] == {"timeout": 5}
    assert rows[6].data["attempt"] == 2 and rows[6].data["finished_at"] is None and rows[6].ts == quick.started_at
    assert rows[8].ts == quick.finished_at
    assert [r.id for r in await store.read_journal(rows[3].id, "m-1", limit=2)] == [rows[4].id, rows[5].id]
    assert await store.read_journal(head, "other") == []
    assert await store.journal_end("m-1") is None
    rec.state = State.TERMINATED
    await store.save_transition(rec, Event("m-1", time.time(), "running", "terminated", None, "o"))
    assert await store.journal_end("m-1") == await store.journal_head()


async def test_journal_ids_follow_commit_order_with_two_writers(store: Store) -> None:
    """Two stores on one database (two server processes) write at once while a reader tails the journal:
    the reader, which only ever asks for ids above the last it saw, misses nothing (PostgreSQL: the
    advisory lock; SQLite: one writer at a time)."""
    import asyncio

    other = Store(store.url)
    await other.open()
    head = await store.journal_head()
    tailed: list[int] = []
    done = asyncio.Event()

    async def tail() -> None:
        after = head
        while True:
            finished = done.is_set()
            for row in await store.read_journal(after):
                tailed.append(row.id)
                after = row.id
            if finished:
                return
            await asyncio.sleep(0)

    async def write(s: Store, name: str) -> None:
        await s.insert_service(svc(hash(name) % 1000 + 10))
        for i in range(60):
            await s.add_step_logs([StepLog(name, "a", 1, time.time(), "info", f"{name} {i}")])

    try:
        reader = asyncio.ensure_future(tail())
        await asyncio.gather(write(store, "w1"), write(other, "w2"))
        done.set()
        await reader
    finally:
        await other.close()
    every = [r.id for r in await store.read_journal(head, limit=100000)]
    assert len(every) == 122 and tailed == every


async def test_migration_0003_copies_the_history_and_goes_down(tmp_path: Path) -> None:
    """A database of the previous version: the journal starts with the history already stored."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, inspect, text

    from modserv_shim.core.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)

    def migrate(to: str, down: bool = False) -> None:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, to)

    migrate("0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO events (service_id, ts, from_state, to_state, reason, operator) VALUES"
                          " ('s', 1.0, NULL, 'initializing', NULL, 'o'),"
                          " ('s', 2.0, 'initializing', 'failed', 'no', 'o')"))
        conn.execute(text("INSERT INTO step_runs (service_id, step, attempt, status, started_at, finished_at,"
                          " duration_ms, error, operator, params) VALUES"
                          " ('s', 'a', 1, 'failed', 1.1, 1.5, 400.0, 'bad', 'o', '{\"timeout\": 5}')"))
        conn.execute(text("INSERT INTO step_logs (service_id, step, attempt, ts, level, message, fields) VALUES"
                          " ('s', 'a', 1, 1.2, 'info', 'hello', '{}')"))
    s = Store(url)
    await s.open()
    try:
        rows = await s.read_journal(0, "s")
        assert [(r.kind, r.ts) for r in rows] == [("state", 1.0), ("step", 1.1), ("log", 1.2), ("step", 1.5),
                                                  ("state", 2.0)]
        assert rows[1].data["status"] == "running" and rows[3].data["status"] == "failed"
        assert rows[3].data["params"] == {"timeout": 5} and rows[4].data["reason"] == "no"
    finally:
        await s.close()
    migrate("0002", down=True)
    assert "journal" not in inspect(engine).get_table_names()
    migrate("head")
    assert "journal" in inspect(engine).get_table_names()
    engine.dispose()
