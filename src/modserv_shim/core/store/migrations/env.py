"""Alembic environment: runs on the (sync) connection the store hands over."""

from __future__ import annotations

from alembic import context

from modserv_shim.core.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - we always pass a connection
    raise RuntimeError("run migrations through modserv_shim.core.store.Store.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
