"""The watch cache: every Deployment, StatefulSet and Pod the shim manages, kept current by the informers.

``status()`` answers from here, so asking about 1000 services costs the API
server nothing; the informers (:mod:`.informer`) are the only readers of the
API at steady state.  Objects are the API's JSON dicts, indexed the way the
shimlet asks: workloads by name, server pods by their workload
(``app.kubernetes.io/instance``), validation-Job pods by Job.

Writes of our own (``create``, ``scale``) are put here at once ("write
through"), so a status read right after ``create`` sees the workload before
its watch event arrives.  ``resourceVersion`` decides between the two copies:
an older version never replaces a newer one (compared as integers, as every
real API server issues them; an opaque version is simply accepted).

Everything runs on the event loop; there are no locks.  Changes are reported
to a callback with the names of the workloads they concern, and wake anyone
waiting in :meth:`ClusterCache.wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from modserv_shim.shimlets.k8s.naming import COMPONENT, INSTANCE, JOB_COMPONENTS, VALIDATION_LABEL

Obj = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
KINDS = (*WORKLOAD_KINDS, "Pod")


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def not_older(new: Obj, old: Obj) -> bool:
    a, b = str(_meta(new).get("resourceVersion") or ""), str(_meta(old).get("resourceVersion") or "")
    return not (a.isdigit() and b.isdigit()) or int(a) >= int(b)


def _rv_le(obj: Obj, rv: str) -> bool:
    mine = str(_meta(obj).get("resourceVersion") or "")
    return not (mine.isdigit() and rv.isdigit()) or int(mine) <= int(rv)


def pod_owner(pod: Obj) -> tuple[str, str] | None:
    """``("server", workload name)`` or ``("validation", job name)`` for one of our pods."""
    labels = _meta(pod).get("labels") or {}
    if labels.get(COMPONENT) in JOB_COMPONENTS and labels.get(VALIDATION_LABEL):  # validation or task Job
        return "validation", str(labels[VALIDATION_LABEL])
    if labels.get(INSTANCE):
        return "server", str(labels[INSTANCE])
    return None


class ClusterCache:
    def __init__(self, on_change: Callable[[set[str]], None]) -> None:
        self._objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self._by_owner: dict[tuple[str, str], dict[str, Obj]] = {}
        self._on_change = on_change
        self._waiters: set[asyncio.Event] = set()
        self.synced: set[str] = set()

    # ------------------------------------------------------------ reads

    @property
    def is_synced(self) -> bool:
        return self.synced.issuperset(KINDS)

    def workload(self, name: str) -> Obj | None:
        """The workload called ``name``: a live one before one being deleted, a Deployment before a StatefulSet."""
        found = [self._objects[kind][name] for kind in WORKLOAD_KINDS if name in self._objects[kind]]
        found.sort(key=lambda o: bool(_meta(o).get("deletionTimestamp")))
        return found[0] if found else None

    def workloads(self, name: str) -> dict[str, Obj]:
        """Every workload kind present under ``name`` (normally one)."""
        return {kind: self._objects[kind][name] for kind in WORKLOAD_KINDS if name in self._objects[kind]}

    def workload_names(self) -> set[str]:
        return {name for kind in WORKLOAD_KINDS for name in self._objects[kind]}

    def pods_of(self, name: str) -> list[Obj]:
        return list(self._by_owner.get(("server", name), {}).values())

    def validation_pods(self, job: str) -> list[Obj]:
        return list(self._by_owner.get(("validation", job), {}).values())

    def validation_jobs(self) -> set[str]:
        """Names of the validation Jobs whose pods the cache holds."""
        return {name for kind, name in self._by_owner if kind == "validation"}

    # ----------------------------------------------------------- writes

    def replace(self, kind: str, items: Iterable[Obj], list_rv: str) -> None:
        """A fresh list: what is missing from it is gone (unless we wrote it after the list was taken)."""
        fresh = {str(_meta(o).get("name")): o for o in items}
        touched: set[str] = set()
        for name, old in list(self._objects[kind].items()):
            if name not in fresh and _rv_le(old, list_rv):
                touched |= self._remove(kind, name)
        for obj in fresh.values():
            touched |= self._put(kind, obj)
        self.synced.add(kind)
        self._changed(touched)

    def event(self, kind: str, event_type: str, obj: Obj) -> None:
        """One watch event (ADDED / MODIFIED / DELETED; BOOKMARK and others are ignored)."""
        name = str(_meta(obj).get("name"))
        if event_type == "DELETED":
            old = self._objects[kind].get(name)
            if old is not None and not_older(obj, old):
                self._changed(self._remove(kind, name))
        elif event_type in ("ADDED", "MODIFIED"):
            self._changed(self._put(kind, obj))

    def put(self, obj: Obj) -> None:
        """Write through an object the API just returned to us."""
        self._changed(self._put(str(obj.get("kind")), obj))

    def patch_replicas(self, kind: str, name: str, replicas: int, resource_version: str | None) -> None:
        """What a ``/scale`` call changed, until the workload's own event arrives."""
        old = self._objects[kind].get(name)
        if old is None:
            return
        new = {**old, "metadata": {**_meta(old)}, "spec": {**(old.get("spec") or {}), "replicas": replicas}}
        if resource_version:
            new["metadata"]["resourceVersion"] = resource_version
        self.put(new)

    def _put(self, kind: str, obj: Obj) -> set[str]:
        if kind not in self._objects:
            return set()
        name = str(_meta(obj).get("name"))
        old = self._objects[kind].get(name)
        if old is not None and not not_older(obj, old):
            return set()
        touched = self._remove(kind, name) if old is not None else set()
        self._objects[kind][name] = obj
        if kind != "Pod":
            return touched | {name}
        owner = pod_owner(obj)
        if owner is not None:
            self._by_owner.setdefault(owner, {})[name] = obj
            if owner[0] == "server":
                touched.add(owner[1])
        return touched

    def _remove(self, kind: str, name: str) -> set[str]:
        obj = self._objects[kind].pop(name, None)
        if obj is None:
            return set()
        if kind != "Pod":
            return {name}
        owner = pod_owner(obj)
        if owner is None:
            return set()
        pods = self._by_owner.get(owner, {})
        pods.pop(name, None)
        if not pods:
            self._by_owner.pop(owner, None)
        return {owner[1]} if owner[0] == "server" else set()

    def _changed(self, names: set[str]) -> None:
        for waiter in self._waiters:
            waiter.set()
        if names:
            self._on_change(names)

    # ---------------------------------------------------------- waiting

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, *, tick: float | None = None) -> bool:
        """Wait until ``predicate()`` holds, re-checking on every change (and every ``tick`` s); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = asyncio.Event()
            self._waiters.add(event)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, tick) if tick else remaining):
                        await event.wait()
            finally:
                self._waiters.discard(event)
        return True
