"""The live services and the one function that changes a lifecycle state.

:meth:`ServiceStates.transition` checks the transition table, persists the new state with
its event in one transaction, updates the metrics, writes the log line and wakes the
``waitFor`` callers.  Everything else (the pipeline tasks, the status watcher, delete,
retry, resume after a crash) asks it.

Live services are kept in memory as the same :class:`ServiceRecord` objects the store
was last given, guarded by one lock per service, so the pipeline task, the status
watcher and an API call never act on stale copies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

from modserv_shim.core.lifecycle import State, can_transition, check_transition
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import Event, ServiceRecord, now
from modserv_shim.core.store import Store
from modserv_shim.core.waiters import Waiters
from modserv_shim.private import mask_private, private_values

log = structlog.get_logger("modserv_shim.manager")

SYSTEM = "system"


class ServiceStates:
    def __init__(self, store: Store, metrics: Metrics, waiters: Waiters) -> None:
        self.store = store
        self.metrics = metrics
        self.waiters = waiters
        self._live: dict[str, ServiceRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ live records

    def add(self, rec: ServiceRecord) -> None:
        self._live[rec.id] = rec

    def find(self, service_id: str) -> ServiceRecord | None:
        return self._live.get(service_id)

    def is_live(self, service_id: str) -> bool:
        return service_id in self._live

    def live(self) -> Iterator[ServiceRecord]:
        """A snapshot of the live services (safe while they change)."""
        return iter(list(self._live.values()))

    def lock(self, service_id: str) -> asyncio.Lock:
        """The lock of one service: user operations and transitions take it."""
        return self._locks.setdefault(service_id, asyncio.Lock())

    async def record_replicas(self, rec: ServiceRecord, ready: int, endpoint: str | None) -> None:
        """Ready replicas and endpoint as a shimlet last reported them (no state change)."""
        endpoint = endpoint or rec.endpoint
        if (ready, endpoint) != (rec.replicas_ready, rec.endpoint):
            rec.replicas_ready, rec.endpoint = ready, endpoint
            await self.store.update_service(rec.id, replicas_ready=rec.replicas_ready, endpoint=rec.endpoint)

    # ------------------------------------------------------------ state change

    async def transition(
        self, rec: ServiceRecord, new: State, reason: str | None = None, operator: str = SYSTEM,
        *, background: bool = False, also: Mapping[str, Any] | None = None, durable: bool = True,
    ) -> bool:
        """The one place a lifecycle state changes; True when the service is now in ``new``.

        ``background`` is for observers (pipeline end, status watch) that may lose a race
        with a user's delete: a transition the table forbids is then skipped, not an error.
        ``also``: other fields of the record that change with the state, in the same transaction.
        ``durable=False``: written soon rather than before returning (the store's write-behind).
        """
        async with self.lock(rec.id):
            return await self.transition_locked(rec, new, reason, operator, background=background, also=also,
                                                durable=durable)

    async def fail(self, rec: ServiceRecord, reason: str, operator: str = SYSTEM) -> None:
        await self.transition(rec, State.FAILED, reason, operator, background=True)

    async def transition_locked(
        self, rec: ServiceRecord, new: State, reason: str | None, operator: str, *, background: bool = False,
        also: Mapping[str, Any] | None = None, durable: bool = True,
    ) -> bool:
        """:meth:`transition` for a caller that holds the service's :meth:`lock`."""
        if reason is not None:  # the words of a failure may quote a private path (modserv_shim.private)
            reason = mask_private(reason, private_values(rec.outputs))
        old = rec.state
        if old is new:
            if reason != rec.reason:  # same state, new words (e.g. degraded for another cause)
                rec.reason = reason
                await self.store.update_service(rec.id, reason=reason)
            return True
        if background and not can_transition(old, new):
            log.debug("transition skipped", service_id=rec.id, from_state=old.value, to_state=new.value)
            return False
        check_transition(old, new)
        rec.state = new
        rec.reason = reason
        rec.updated_at = now()
        for name, value in (also or {}).items():
            setattr(rec, name, value)
        # shielded: a delete that cancels the pipeline must not leave memory and store disagreeing
        await asyncio.shield(self.store.save_transition(
            rec, Event(rec.id, rec.updated_at, old.value, new.value, reason, operator), durable=durable,
            **(also or {})))
        self.metrics.transitioned(rec, old, new)
        log.info("state changed", service_id=rec.id, from_state=old.value, to_state=new.value,
                 reason=reason, operator=operator)
        self.waiters.wake(rec.id)
        if new is State.TERMINATED:
            self._live.pop(rec.id, None)
        return True

    def accepted(self, rec: ServiceRecord) -> None:
        """A deploy that has just been stored in its first state: live from now on, and counted."""
        self._live[rec.id] = rec
        self.metrics.accepted(rec)
