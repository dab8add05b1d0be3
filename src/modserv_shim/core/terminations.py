"""Removing workloads: the background part of a delete, retried until the environment agrees."""

from __future__ import annotations

import asyncio

from modserv_shim.core.clock import Clock
from modserv_shim.core.keys import ServiceKeys
from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import ServiceRecord
from modserv_shim.core.registry import Registry
from modserv_shim.core.states import ServiceStates


class Terminations:
    def __init__(self, states: ServiceStates, registry: Registry, clock: Clock, keys: ServiceKeys) -> None:
        self.states = states
        self.keys = keys
        self.registry = registry
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, service_id: str) -> asyncio.Task[None] | None:
        """The removal of the service in flight, if one is."""
        return self._tasks.get(service_id)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    def start(self, rec: ServiceRecord, operator: str) -> asyncio.Task[None]:
        """Remove the workload of a ``terminating`` service, then make it ``terminated``."""
        task = asyncio.create_task(self._terminate(rec, operator), name=f"terminate-{rec.id}")
        self._tasks[rec.id] = task
        return task

    async def _terminate(self, rec: ServiceRecord, operator: str) -> None:
        delay = 1.0
        try:
            while True:
                try:
                    shimlet = await self.registry.shimlet(rec.shimlet)
                    # With no recorded resource id a create may still have run: shimlets
                    # accept the service id for it (see the Shimlet contract).
                    await shimlet.delete(rec.resource_id or rec.id)
                    break
                except Exception as exc:
                    reason = f"removing the workload failed, retrying in {delay:g} s: {exc}"
                    await self.states.transition(rec, State.TERMINATING, reason, operator)
                    await self.clock.sleep(delay)
                    delay = min(delay * 2, 60.0)
            await self.states.transition(rec, State.TERMINATED, operator=operator)
            await asyncio.to_thread(self.keys.remove, rec.id)  # its API key, if it had one
            rec.replicas_ready = 0
            await self.states.store.update_service(rec.id, replicas_ready=0)
        finally:
            self._tasks.pop(rec.id, None)
