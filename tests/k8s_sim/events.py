"""``v1`` Events recorded by the simulated controllers, scheduler and kubelet.

Events are real objects in the store (listable and watchable, e.g. with
``fieldSelector=involvedObject.name=<pod>``).  Repeats of the same reason and message for the same
object are folded into one Event with a growing ``count``, like the real event recorder does.
"""

from __future__ import annotations

import itertools
import time

from . import resources as r
from .api import ObjectAPI
from .store import Obj
from .util import clone, rfc3339

__all__ = ["EventRecorder"]


class EventRecorder:
    """Writes and de-duplicates Events."""

    def __init__(self, api: ObjectAPI) -> None:
        self.api = api
        self._names: dict[tuple[str, str, str, str], str] = {}
        self._seq = itertools.count()

    def record(self, obj: Obj, type_: str, reason: str, message: str, *, component: str = "kubelet",
               field_path: str | None = None, host: str | None = None) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid", ""), type_, reason, message)
        now = rfc3339()
        existing_name = self._names.get(key)
        if existing_name is not None:
            existing = self.api.store.get(r.EVENT, namespace, existing_name)
            if existing is not None:
                new = clone(existing)
                new["count"] = int(existing.get("count", 1)) + 1
                new["lastTimestamp"] = now
                self.api.internal_update(r.EVENT, existing, new)
                return
        name = f"{meta['name']}.{time.time_ns() + next(self._seq):x}"
        involved = {"kind": obj.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"],
                    "uid": meta.get("uid"), "apiVersion": obj.get("apiVersion"),
                    "resourceVersion": meta.get("resourceVersion")}
        if field_path:
            involved["fieldPath"] = field_path
        source = {"component": component}
        if host:
            source["host"] = host
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {k: v for k, v in involved.items() if v is not None},
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        if self.api.store.get(r.NAMESPACE, None, namespace) is None:
            return  # the namespace is gone (object deleted with it)
        self.api.internal_create(r.EVENT, event)
        self._names[key] = name
