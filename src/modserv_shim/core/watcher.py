"""Status after ``running`` comes from the shimlet: the status watcher.

One ``watch`` stream per shimlet that can watch (with a full ``status()`` read of its
services after every (re)connect, and a safety-net poll every 10th round); otherwise a
poll of the cheap ``status()`` every ``poll_interval``.  What it observes it maps onto the
service's state through :class:`~modserv_shim.core.states.ServiceStates` (as an observer:
a transition the table forbids is skipped, never forced).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from modserv_shim.core.lifecycle import SERVING_STATES, State
from modserv_shim.core.records import ServiceRecord
from modserv_shim.core.registry import Registry
from modserv_shim.core.states import ServiceStates
from modserv_shim.plugins import ResourcePhase, ResourceStatus, Shimlet, Watchable

log = structlog.get_logger("modserv_shim.manager")

WATCH_SAFETY_POLLS = 10  # watched services are polled too, every 10th round


class StatusWatcher:
    def __init__(
        self, states: ServiceStates, registry: Registry, poll_interval: float, in_pipeline: Callable[[str], bool]
    ) -> None:
        """``in_pipeline(service_id)``: its pipeline task runs (the pipeline, not the watcher, moves it then)."""
        self.states = states
        self.registry = registry
        self.poll_interval = poll_interval
        self._in_pipeline = in_pipeline
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_loop(), name="status-poller")

    def tasks(self) -> list[asyncio.Task[None]]:
        """Its running tasks, for the manager to cancel; no new watch starts after this."""
        self._closing = True
        return [*self._watchers.values(), *([self._poller] if self._poller is not None else [])]

    async def follow(self, rec: ServiceRecord, shimlet: Shimlet, status: ResourceStatus | None = None) -> None:
        """Watch the shimlet of a service whose pipeline has ended, and apply ``status`` when it is known."""
        await self.ensure_watch(rec.shimlet, shimlet)
        if status is not None:
            await self.apply_status(rec, status)

    async def ensure_watch(self, shimlet_name: str, shimlet: Shimlet) -> None:
        if isinstance(shimlet, Watchable) and shimlet_name not in self._watchers and not self._closing:
            self._watchers[shimlet_name] = asyncio.create_task(self._watch_loop(shimlet_name, shimlet),
                                                               name=f"watch-{shimlet_name}")

    async def _watch_loop(self, shimlet_name: str, shimlet: Watchable) -> None:
        """One stream per shimlet for all its services; on every (re)connect, read every status once
        so that nothing that changed while the stream was down is missed."""
        delay = 0.5
        while not self._closing:
            try:
                stream = shimlet.watch()
                await self._resync(shimlet_name, shimlet)  # type: ignore[arg-type]
                async for resource_id, status in stream:
                    delay = 0.5
                    for rec in self.states.live():
                        if rec.shimlet == shimlet_name and rec.resource_id == resource_id:
                            await self._apply_status_safely(rec, status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("status watch failed; reconnecting", shimlet=shimlet_name, error=str(exc), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _resync(self, shimlet_name: str, shimlet: Shimlet) -> None:
        for rec in self.states.live():
            if rec.shimlet == shimlet_name and rec.resource_id:
                try:
                    await self._apply_status_safely(rec, await shimlet.status(rec.resource_id))
                except Exception as exc:
                    log.warning("status read failed", service_id=rec.id, error=str(exc))

    async def _apply_status_safely(self, rec: ServiceRecord, st: ResourceStatus) -> None:
        try:
            await self.apply_status(rec, st)
        except Exception:  # one service's trouble must not end the stream of all the others
            log.exception("applying a status failed", service_id=rec.id)

    async def _poll_loop(self) -> None:
        """Status of services whose shimlet cannot watch; cheap by contract (status never blocks).

        Services of watched shimlets are read too, every WATCH_SAFETY_POLLS rounds, as a safety net.
        """
        rounds = 0
        while True:
            await asyncio.sleep(self.poll_interval)
            rounds += 1
            for rec in self.states.live():
                if rec.state not in (*SERVING_STATES, State.FAILED) or not rec.resource_id:
                    continue
                if self._in_pipeline(rec.id):
                    continue
                if rec.shimlet in self._watchers and rounds % WATCH_SAFETY_POLLS:
                    continue
                try:
                    shimlet = await self.registry.shimlet(rec.shimlet)
                    await self.ensure_watch(rec.shimlet, shimlet)
                    await self.apply_status(rec, await shimlet.status(rec.resource_id))
                except Exception as exc:
                    log.warning("status poll failed", service_id=rec.id, error=str(exc))

    async def apply_status(self, rec: ServiceRecord, st: ResourceStatus) -> None:
        """Map a shimlet status onto a service that has finished its pipeline."""
        if self._in_pipeline(rec.id) or rec.state not in (*SERVING_STATES, State.FAILED):
            return
        if rec.state is State.FAILED and rec.current_step < len(rec.total_steps):
            return  # failed inside its pipeline: only a retry moves it
        if st.phase is ResourcePhase.UNKNOWN:
            return  # not observed yet (adopted after a restart): report nothing we have not seen
        await self.states.record_replicas(rec, st.ready_replicas, st.endpoint)
        transition = self.states.transition
        if st.phase is ResourcePhase.READY or (st.phase is ResourcePhase.PENDING and st.ready_replicas > 0):
            await transition(rec, State.RUNNING, background=True)
        elif st.phase in (ResourcePhase.DEGRADED, ResourcePhase.PENDING):
            await transition(rec, State.DEGRADED, st.reason or "no replica is ready", background=True)
        elif st.phase is ResourcePhase.FAILED:
            await transition(rec, State.FAILED, st.reason or "the workload failed", background=True)
        elif st.phase is ResourcePhase.NOT_FOUND and rec.state is not State.FAILED:
            await transition(rec, State.FAILED, f"the workload is gone from the {rec.shimlet} environment"
                             " (deleted outside modserv-shim?)", background=True)
