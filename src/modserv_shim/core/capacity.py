"""Capacity readings of the shimlets, refreshed in the background for the metrics.

Every ``interval`` seconds (and once right at start) each *started* shimlet that is a
:class:`~modserv_shim.plugins.CapacityReporter` is asked what its environment offers; the answer is
kept in :attr:`Metrics.capacity <modserv_shim.core.metrics.Metrics.capacity>`, which a scrape only
reads.  A scrape never waits on a shimlet; a shimlet that does not answer within the interval (or
fails) keeps its last reading, and ``modserv_capacity_refresh_errors_total`` counts the failure.
Shimlets are not started for this: one nobody used yet reports nothing.
"""

from __future__ import annotations

import asyncio

import structlog

from modserv_shim.core.metrics import Metrics
from modserv_shim.core.registry import Registry
from modserv_shim.plugins import CapacityReporter

log = structlog.get_logger("modserv_shim.metrics")

TICK = 1.0  # how soon a shimlet that has just started is read


class CapacityMonitor:
    def __init__(self, registry: Registry, metrics: Metrics, interval: float) -> None:
        self.registry = registry
        self.metrics = metrics
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="capacity-monitor")

    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._task] if self._task is not None else []

    def _reporters(self) -> list[tuple[str, CapacityReporter]]:
        return [(e.name, e.instance) for e in self.registry.entries("shimlet")
                if e.instance is not None and isinstance(e.instance, CapacityReporter)]

    async def _loop(self) -> None:
        """A reading every ``interval``, and at once when a shimlet has started since the last one."""
        loop = asyncio.get_running_loop()
        seen: set[str] = set()
        due = loop.time()
        while True:
            names = {name for name, _ in self._reporters()}
            if loop.time() >= due or names - seen:
                seen = names
                due = loop.time() + self.interval
                await self.refresh()
            await asyncio.sleep(min(self.interval, TICK))

    async def refresh(self) -> None:
        """Read every started shimlet's capacity once (concurrently, each within ``interval``)."""
        await asyncio.gather(*(self._read(name, shimlet) for name, shimlet in self._reporters()))

    async def _read(self, name: str, shimlet: CapacityReporter) -> None:
        try:
            async with asyncio.timeout(self.interval):
                capacity = await shimlet.capacity()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.capacity_refresh_errors.labels(shimlet=name).inc()
            level = log.debug if name in self._failing else log.warning  # say it once, not every interval
            self._failing.add(name)
            level("cannot read the capacity of a shimlet; its last reading stays", shimlet=name,
                  error=f"{type(exc).__name__}: {exc}")
            return
        if name in self._failing:
            self._failing.discard(name)
            log.info("the capacity of a shimlet can be read again", shimlet=name)
        self.metrics.set_capacity(name, capacity)
