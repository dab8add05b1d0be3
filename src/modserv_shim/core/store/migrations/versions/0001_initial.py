"""Initial schema: services, step runs, step logs, events, hot-loaded plugins.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("model_name", sa.String(63), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("shimlet", sa.String(63), nullable=False),
        sa.Column("pipeline", sa.String(63), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("total_steps", sa.JSON, nullable=False),
        sa.Column("current_step", sa.Integer, nullable=False),
        sa.Column("resource_id", sa.String(255)),
        sa.Column("endpoint", sa.String(1024)),
        sa.Column("replicas_ready", sa.Integer, nullable=False),
        sa.Column("replicas_desired", sa.Integer, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("operator", sa.String(120), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_services_state", "services", ["state"])
    op.create_table(
        "step_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(120), nullable=False),
        sa.Column("step", sa.String(120), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("duration_ms", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("operator", sa.String(120), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
    )
    op.create_index("ix_step_runs_service", "step_runs", ["service_id", "id"])
    op.create_table(
        "step_logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(120), nullable=False),
        sa.Column("step", sa.String(120), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
    )
    op.create_index("ix_step_logs_service", "step_logs", ["service_id", "id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(120), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("from_state", sa.String(32)),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("operator", sa.String(120), nullable=False),
    )
    op.create_index("ix_events_service", "events", ["service_id", "id"])
    op.create_table(
        "plugins",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("file", sa.Text),
        sa.Column("module", sa.String(255)),
        sa.Column("attr", sa.String(255), nullable=False),
        sa.Column("operator", sa.String(120), nullable=False),
        sa.Column("loaded_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for name in ("plugins", "events", "step_logs", "step_runs", "services"):
        op.drop_table(name)
