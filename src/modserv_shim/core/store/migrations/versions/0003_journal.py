"""The journal: what the event streams (Server-Sent Events) send, in commit order.

The history already stored (state changes, step attempts, log lines) is copied in, ordered by
time, so that a stream of a service deployed before this version starts from its beginning too.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    journal = op.create_table(
        "journal",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(120), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_journal_service", "journal", ["service_id", "id"])
    assert journal is not None
    _backfill(op.get_bind(), journal)


def _backfill(conn: sa.Connection, journal: sa.Table) -> None:
    meta = sa.MetaData()
    events = sa.Table("events", meta, autoload_with=conn)
    runs = sa.Table("step_runs", meta, autoload_with=conn)
    logs = sa.Table("step_logs", meta, autoload_with=conn)
    rows: list[tuple[float, int, int, dict[str, Any]]] = []  # (ts, order within the same ts, source id, row)
    for e in conn.execute(sa.select(events)).mappings():
        rows.append((e["ts"], 0, e["id"], {"service_id": e["service_id"], "ts": e["ts"], "kind": "state", "data": {
            "ts": e["ts"], "from_state": e["from_state"], "to_state": e["to_state"], "reason": e["reason"],
            "operator": e["operator"]}}))
    for r in conn.execute(sa.select(runs)).mappings():
        run = {k: r[k] for k in ("step", "attempt", "status", "started_at", "operator", "params", "finished_at",
                                 "duration_ms", "error")}
        start = {**run, "status": "running", "finished_at": None, "duration_ms": None, "error": None}
        rows.append((r["started_at"], 1, r["id"],
                     {"service_id": r["service_id"], "ts": r["started_at"], "kind": "step", "data": start}))
        if r["status"] != "running":
            ended = r["finished_at"] if r["finished_at"] is not None else r["started_at"]
            rows.append((ended, 3, r["id"], {"service_id": r["service_id"], "ts": ended, "kind": "step", "data": run}))
    for x in conn.execute(sa.select(logs)).mappings():
        rows.append((x["ts"], 2, x["id"], {"service_id": x["service_id"], "ts": x["ts"], "kind": "log", "data": {
            k: x[k] for k in ("step", "attempt", "ts", "level", "message", "fields")}}))
    rows.sort(key=lambda item: item[:3])
    for i in range(0, len(rows), _BATCH):
        conn.execute(sa.insert(journal), [row for *_, row in rows[i:i + _BATCH]])


def downgrade() -> None:
    op.drop_index("ix_journal_service", "journal")
    op.drop_table("journal")
