"""SQLAlchemy table definitions; the schema itself is created by Alembic migrations."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

services = Table(
    "services",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("model_name", String(63), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("shimlet", String(63), nullable=False),
    Column("pipeline", String(63), nullable=False),
    Column("state", String(32), nullable=False, index=True),
    Column("reason", Text),
    Column("total_steps", JSON, nullable=False),
    Column("current_step", Integer, nullable=False),
    Column("resource_id", String(255)),
    Column("endpoint", String(1024)),
    Column("replicas_ready", Integer, nullable=False),
    Column("replicas_desired", Integer, nullable=False),
    Column("outputs", JSON, nullable=False),
    Column("operator", String(120), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(120), nullable=False),
    Column("step", String(120), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("duration_ms", Float),
    Column("error", Text),
    Column("operator", String(120), nullable=False),
    Column("params", JSON, nullable=False),
    Index("ix_step_runs_service", "service_id", "id"),
)

step_logs = Table(
    "step_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(120), nullable=False),
    Column("step", String(120), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", JSON, nullable=False),
    Index("ix_step_logs_service", "service_id", "id"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(120), nullable=False),
    Column("ts", Float, nullable=False),
    Column("from_state", String(32)),
    Column("to_state", String(32), nullable=False),
    Column("reason", Text),
    Column("operator", String(120), nullable=False),
    Index("ix_events_service", "service_id", "id"),
)

# Everything a client following the services can see, in the order it was committed: state changes,
# step attempts (start and end), step log lines, replica counts.  ``id`` is the Server-Sent Events id:
# assigned when the row is written, never reused (sqlite_autoincrement), increasing in commit order
# (see Store: one writer per process, and an advisory lock on PostgreSQL).
journal = Table(
    "journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(120), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # state | step | log | replica
    Column("data", JSON, nullable=False),
    Index("ix_journal_service", "service_id", "id"),
    sqlite_autoincrement=True,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", String(120), primary_key=True),  # keys are per caller: two callers never collide
    Column("key", String(255), primary_key=True),
    Column("body_sha256", String(64), nullable=False),
    Column("service_id", String(120), nullable=False),
    Column("created_at", Float, nullable=False),
)

plugins = Table(
    "plugins",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", String(63), primary_key=True),
    Column("file", Text),
    Column("module", String(255)),
    Column("attr", String(255), nullable=False),
    Column("operator", String(120), nullable=False),
    Column("loaded_at", Float, nullable=False),
)
