"""How the shimlet learns about containers: one event stream, a cache, a full re-list per connection.

One ``GET /events`` request, filtered by type ``container`` and our ``managed-by``
label, shared by every service: at steady state the Engine sees one open request,
however many services run.  The loop::

    open the event stream                 (subscribed from here on)
    list our containers, inspect each     -> replace the cache (missed events do not matter)
    for each event: inspect its container -> put it in the cache (None: gone)
    stream ended / Engine unreachable     -> back off (doubling, capped), then from the top

The stream is opened *before* the list, so nothing that happens during the list is
lost; an event that arrives for a container the list already saw costs one inspect.
``status()`` reads the cache only (:class:`Containers`), never the Engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from modserv_shim.shimlets.docker.engine import Engine, EngineError
from modserv_shim.shimlets.docker.render import REPLICA, SERVICE_ID

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# Events that tell nothing about a container's state: no inspect for them.
_QUIET = ("exec_", "attach", "resize", "top", "archive-path", "extract-to-dir", "copy", "export", "commit")


def service_of(doc: Obj) -> str | None:
    return ((doc.get("Config") or {}).get("Labels") or {}).get(SERVICE_ID)


def replica_of(doc: Obj) -> int:
    value = ((doc.get("Config") or {}).get("Labels") or {}).get(REPLICA, "0")
    return int(value) if str(value).isdigit() else 0


class Containers:
    """Our containers' inspect documents by id, and which services they belong to."""

    def __init__(self) -> None:
        self._docs: dict[str, Obj] = {}

    def replace(self, docs: dict[str, Obj]) -> set[str]:
        """A fresh list: every service that had or has a container is reported as changed."""
        touched = {s for d in (*self._docs.values(), *docs.values()) if (s := service_of(d))}
        self._docs = dict(docs)
        return touched

    def put(self, container_id: str, doc: Obj | None) -> set[str]:
        old = self._docs.pop(container_id, None) if doc is None else self._docs.get(container_id)
        if doc is not None:
            self._docs[container_id] = doc
        return {s for d in (old, doc) if d is not None and (s := service_of(d))}

    def of(self, service_id: str) -> list[Obj]:
        """The service's containers, by replica index."""
        return sorted((d for d in self._docs.values() if service_of(d) == service_id), key=replica_of)

    def services(self) -> set[str]:
        return {s for d in self._docs.values() if (s := service_of(d))}


class Watcher:
    """Keeps ``containers`` current; run :meth:`run` as a task, cancel it to stop."""

    def __init__(self, engine: Engine, label: str, containers: Containers,
                 changed: Callable[[Iterable[str]], None], backoff_max: float) -> None:
        self._engine = engine
        self._label = label
        self.containers = containers
        self._changed = changed
        self._backoff_max = backoff_max
        self.synced = asyncio.Event()
        self.lists = 0  # full re-lists so far (one per connection)
        self.last_error: str | None = None

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                async with self._engine.events(self._label) as stream:
                    await self._relist()
                    failures = 0
                    async for event in stream:
                        await self._on_event(event)
                log.info("docker shimlet: the Engine closed the event stream; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.last_error = str(exc)
                delay = min(0.1 * 2 ** (failures - 1), self._backoff_max)
                level = logging.DEBUG if failures == 1 else logging.WARNING
                log.log(level, "docker shimlet: event stream failed (%s); again in %.2f s", exc, delay)
                await asyncio.sleep(delay)

    async def _relist(self) -> None:
        docs: dict[str, Obj] = {}
        for container_id in await self._engine.list_ids(self._label):
            doc = await self._engine.inspect(container_id)
            if doc is not None:
                docs[container_id] = doc
        self.lists += 1
        self._changed(self.containers.replace(docs))
        self.synced.set()

    async def _on_event(self, event: Obj) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        container_id = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
        if not container_id or action.startswith(_QUIET):
            return
        await self.refresh(container_id, gone=action == "destroy")

    async def refresh(self, container_id: str, *, gone: bool = False) -> None:
        """Inspect one container again (after an event, or a change of our own) and update the cache."""
        try:
            doc = None if gone else await self._engine.inspect(container_id)
        except EngineError as exc:
            log.debug("docker shimlet: inspecting %s failed: %s", container_id, exc)
            return
        self._changed(self.containers.put(container_id, doc))
