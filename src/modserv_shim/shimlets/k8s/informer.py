"""List, then watch, one kind of object forever: the only way the shimlet learns about the cluster.

One informer per kind (Deployments, StatefulSets, Pods), each ONE watch
request selected by ``app.kubernetes.io/managed-by=modserv-shim`` and shared by
every service.  So the API requests at steady state do not grow with the
number of services: 3 open watches, re-opened every ``watch_timeout``.

The loop, as client-go's reflector does it::

    list                                  -> replace the cache, remember resourceVersion
    watch from that version               -> apply each event, remember its version
      connection dropped / 5xx / 429      -> back off, watch again from the last version
      410 Gone (version compacted away)   -> list again (deleted objects are noticed)

lightkube 1.0.1 cannot ask for bookmarks, so a watch idle for longer than the
server's history gets 410 on resumption and relists: correct, only a little
more expensive.  Errors never end the loop; they are logged, backed off
(``Retry-After`` honoured) and retried until the task is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from modserv_shim.shimlets.k8s.cache import ClusterCache
from modserv_shim.shimlets.k8s.kube import Backoff, message_of, status_code

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Lister = Callable[[str], Awaitable[tuple[str, list[Obj]]]]
Watcher = Callable[[str, str], AsyncIterator[tuple[str, Obj]]]


class Informer:
    """Keeps ``cache`` current for one ``kind``; run :meth:`run` as a task, cancel it to stop."""

    def __init__(self, kind: str, cache: ClusterCache, lister: Lister, watcher: Watcher, backoff: Backoff) -> None:
        self.kind = kind
        self.cache = cache
        self._list = lister
        self._watch = watcher
        self._backoff = backoff
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.lists = 0  # how often it listed (a test and the benchmark read it)
        self.resumes = 0  # how often a watch was re-opened after an error
        self._events = 0
        self.last_error: str | None = None  # the latest failure, for messages such as start()'s

    async def run(self) -> None:
        failures = 0
        while True:
            self._events = 0
            relisted = self.resource_version is None
            try:
                if relisted:
                    await self._relist()
                await self._follow()
                failures = 0  # a watch ended cleanly (lightkube reopens those itself; rare)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Our version was compacted away: list again, at once unless a fresh list just expired too.
                if status_code(exc) == 410 and not (relisted and self._events == 0):
                    log.info("k8s shimlet: %s watch expired (410); relisting", self.kind)
                    self.resource_version = None
                    continue
                if status_code(exc) == 410:
                    self.resource_version = None
                # A watch that worked for a while starts the back-off from scratch.
                failures = 1 if self._events else failures + 1
                self.last_error = f"{type(exc).__name__}: {message_of(exc)}"
                delay = self._backoff.delay(failures, exc)
                level = logging.DEBUG if failures == 1 else logging.WARNING
                log.log(level, "k8s shimlet: %s watch failed (%s: %s); retrying in %.2f s", self.kind,
                        type(exc).__name__, message_of(exc), delay)
                self.resumes += 1
                await asyncio.sleep(delay)

    async def _relist(self) -> None:
        rv, items = await self._list(self.kind)
        self.lists += 1
        self.cache.replace(self.kind, items, rv)
        self.resource_version = rv
        self.synced.set()

    async def _follow(self) -> None:
        assert self.resource_version is not None
        async for event_type, obj in self._watch(self.kind, self.resource_version):
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if event_type == "ERROR":  # pragma: no cover - lightkube raises ApiError for these
                continue
            if version:
                self.resource_version = str(version)
            self._events += 1
            self.cache.event(self.kind, event_type, obj)
