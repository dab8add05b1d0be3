"""The object store: one global resourceVersion counter, a bounded event history, and watchers.

Every write -- create, update or delete -- takes the next resourceVersion and appends exactly one
event to the history, so "all events after N" is well defined and a watch from a version older
than the history is answered with ``410 Expired``, as etcd compaction does on a real cluster.
The store runs on the simulator's event loop only; it needs no locks.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import StatusError
from .resources import ResourceType
from .selection import FieldSelector, LabelSelector

__all__ = ["Obj", "Store", "StoreEvent", "Watcher"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class StoreEvent:
    """One committed write. ``old`` is the previous version for MODIFIED events."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rt: ResourceType
    obj: Obj
    old: Obj | None = None


@dataclass(eq=False)
class Watcher:
    """An open watch: a filter and a queue the store feeds synchronously on every write."""

    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[tuple[str, Obj] | str] = field(default_factory=asyncio.Queue)

    def translate(self, event: StoreEvent) -> tuple[str, Obj] | None:
        """The event this watcher must see, if any.

        As on a real server, an update that makes an object start matching the selector is
        delivered as ADDED and one that makes it stop matching as DELETED.
        """
        if event.rt is not self.rt:
            return None
        meta = event.obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return None

        def matches(obj: Obj | None) -> bool:
            return obj is not None and self.labels.matches(obj["metadata"].get("labels")) \
                and self.fields.matches(obj)

        now = matches(event.obj)
        if event.type == "MODIFIED":
            before = matches(event.old)
            if now and before:
                return "MODIFIED", event.obj
            if now:
                return "ADDED", event.obj
            if before:
                return "DELETED", event.obj
            return None
        return (event.type, event.obj) if now else None


class Store:
    """Objects by resource type and ``(namespace, name)``, plus history and watchers."""

    def __init__(self, history_size: int = 1000) -> None:
        self.rv = 0
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._history: deque[StoreEvent] = deque(maxlen=history_size)
        self._compacted_at = 0  # versions <= this have no history any more
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[StoreEvent], None]] = []
        # (kind, controller uid) -> the objects it controls, so controllers find their pods and ReplicaSets
        # without scanning every object of the namespace (which made 1000 services take hours).
        self._controlled: dict[tuple[ResourceType, str], dict[tuple[str, str], Obj]] = {}

    # -- reads ------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object (shared: callers copy before changing it)."""
        return self._objects.get(rt, {}).get((namespace or "", name))

    def items(self, rt: ResourceType, namespace: str | None = None) -> list[Obj]:
        objs = self._objects.get(rt, {})
        if namespace is None:
            return [objs[k] for k in sorted(objs)]
        return [objs[k] for k in sorted(objs) if k[0] == namespace]

    def controlled(self, rt: ResourceType, owner_uid: str) -> list[Obj]:
        """Objects of ``rt`` whose controller ownerReference is ``owner_uid``, ordered like :meth:`items`."""
        objs = self._controlled.get((rt, owner_uid), {})
        return [objs[k] for k in sorted(objs)]

    def all_items(self) -> Iterator[tuple[ResourceType, Obj]]:
        for rt, objs in list(self._objects.items()):
            for obj in list(objs.values()):
                yield rt, obj

    # -- writes -----------------------------------------------------------------------------

    def put(self, rt: ResourceType, obj: Obj) -> Obj:
        """Store ``obj`` (taking ownership), stamping the next resourceVersion."""
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        old = self._objects.setdefault(rt, {}).get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self._objects[rt][key] = obj
        if old is not None:
            self._unindex(rt, key, old)
        self._index(rt, key, obj)
        self._emit(StoreEvent(self.rv, "MODIFIED" if old is not None else "ADDED", rt, obj, old))
        return obj

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """Delete an object; the DELETED event carries a new resourceVersion, as on a real server."""
        old = self._objects.get(rt, {}).pop((namespace or "", name), None)
        if old is None:
            return None
        self._unindex(rt, (namespace or "", name), old)
        final = copy.deepcopy(old)
        self.rv += 1
        final["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(StoreEvent(self.rv, "DELETED", rt, final))
        return final

    @staticmethod
    def _controllers(obj: Obj) -> list[str]:
        return [str(ref.get("uid")) for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")]

    def _index(self, rt: ResourceType, key: tuple[str, str], obj: Obj) -> None:
        for uid in self._controllers(obj):
            self._controlled.setdefault((rt, uid), {})[key] = obj

    def _unindex(self, rt: ResourceType, key: tuple[str, str], obj: Obj) -> None:
        for uid in self._controllers(obj):
            objs = self._controlled.get((rt, uid))
            if objs is not None:
                objs.pop(key, None)
                if not objs:
                    del self._controlled[(rt, uid)]

    def _emit(self, event: StoreEvent) -> None:
        self._history.append(event)
        for watcher in list(self.watchers):
            delivered = watcher.translate(event)
            if delivered is not None:
                watcher.queue.put_nowait(delivered)
        for listener in self.listeners:
            listener(event)

    # -- history ----------------------------------------------------------------------------

    @property
    def oldest_available(self) -> int:
        """The smallest resourceVersion from which a watch can still resume."""
        first = self._history[0].rv - 1 if self._history else self.rv
        return max(first, self._compacted_at)

    def events_since(self, rv: int) -> list[StoreEvent]:
        """Events after ``rv``; raises 410 Expired when some of them were compacted away."""
        if rv >= self.rv:
            return []
        if rv < self.oldest_available:
            raise StatusError.expired(rv, self.oldest_available + 1)
        return [e for e in self._history if e.rv > rv]

    def advance(self, versions: int = 1) -> None:
        """Skip resourceVersions, as writes to resources nobody here watches (leases...) do."""
        self.rv += versions

    def compact(self) -> None:
        """Forget all history, like an etcd compaction at the current revision."""
        self._history.clear()
        self._compacted_at = self.rv

    # -- watchers ---------------------------------------------------------------------------

    def add_watcher(self, watcher: Watcher) -> None:
        self.watchers.add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def close_watchers(self, how: str) -> int:
        """Ask every open watch to end: ``"close"`` ends it cleanly, ``"drop"`` aborts the connection."""
        for watcher in self.watchers:
            watcher.queue.put_nowait(how)
        return len(self.watchers)
