"""Plugins as the server offers them: listing (started, with their capabilities), hot-loading
(stored, so that a restart loads them again) and starting the defaults early."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import PluginRecord
from modserv_shim.core.registry import Kind, Registry
from modserv_shim.core.store import Store
from modserv_shim.errors import ShimError

log = structlog.get_logger("modserv_shim.manager")

KINDS: tuple[Kind, ...] = ("shimlet", "pipeline")


class PluginService:
    def __init__(self, store: Store, registry: Registry, *, default_shimlet: str, default_pipeline: str,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.defaults: dict[Kind, str] = {"shimlet": default_shimlet, "pipeline": default_pipeline}
        self._warm_up: asyncio.Task[None] | None = None

    async def reload_stored(self) -> None:
        """Load the plugins hot-loaded before a restart; one that fails now is logged and skipped."""
        for p in await self.store.list_plugins():
            try:
                await self.registry.load(p.kind, p.name, file=p.file, module=p.module, attr=p.attr)  # type: ignore[arg-type]
                self.metrics.plugin_loads.labels(kind=p.kind, result="succeeded").inc()
            except ShimError as exc:
                self.metrics.plugin_loads.labels(kind=p.kind, result="failed").inc()
                log.error("a plugin loaded earlier cannot be loaded again", kind=p.kind, name=p.name, error=str(exc))

    def warm_up(self) -> None:
        """Start the default shimlet and pipeline now, in the background (see :meth:`_start_defaults`)."""
        self._warm_up = asyncio.create_task(self._start_defaults(), name="start-default-plugins")

    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._warm_up] if self._warm_up is not None else []

    async def _start_defaults(self) -> None:
        """Start the default shimlet and pipeline now, so that the first deploy does not wait for them
        (imports, HTTP clients, a cluster connection); in the background, so that a cluster that
        is slow to answer does not hold up the server.  A deploy meanwhile waits for the same start."""
        try:
            await self.registry.shimlet(self.defaults["shimlet"])
            await self.registry.pipeline(self.defaults["pipeline"])
        except ShimError as exc:  # the first deploy tries again and reports it
            log.warning("a default plugin could not start yet", error=str(exc))

    async def load(
        self, kind: Kind, name: str, *, file: str | None, module: str | None, attr: str, operator: str
    ) -> dict[str, Any]:
        """Hot-load a plugin, store where it came from, and describe it."""
        try:
            entry = await self.registry.load(kind, name, file=file, module=module, attr=attr)
        except Exception:
            self.metrics.plugin_loads.labels(kind=kind, result="failed").inc()
            raise
        self.metrics.plugin_loads.labels(kind=kind, result="succeeded").inc()
        stored_file = str(self.registry.resolve_plugin_file(file)) if file else None
        await self.store.save_plugin(PluginRecord(kind, name, stored_file, module, attr, operator))
        log.info("plugin hot-loaded", kind=kind, name=name, source=entry.source, operator=operator)
        return self.registry.describe(kind, name)

    async def listing(self) -> dict[str, Any]:
        """Every plugin, started (so that its capabilities are known), or with the reason it cannot
        be used; and the ones refused when they were found."""
        data: dict[str, Any] = {}
        for kind in KINDS:
            items = []
            for name in self.registry.names(kind):
                try:
                    await self._started(kind, name)
                    items.append({**self.registry.describe(kind, name), "default": name == self.defaults[kind]})
                except Exception as exc:  # listed, with the reason it cannot be used
                    items.append({**self.registry.describe(kind, name), "error": str(exc)})
            data[f"{kind}s"] = items
        data["refused"] = [vars(b) for b in self.registry.broken]
        return data

    async def _started(self, kind: Kind, name: str) -> None:
        if kind == "shimlet":
            await self.registry.shimlet(name)
        else:
            await self.registry.pipeline(name)
