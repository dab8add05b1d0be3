"""The parts every shimlet needs, whatever environment it drives.

* :class:`WatchHub` -- the ``watch`` capability: one stream of ``(resource_id, status)``
  fanned out to any number of consumers.  Each consumer gets every change from the
  moment it called :meth:`WatchHub.watch`, in order; queues are unbounded (status
  changes are rare); a consumer that stops iterating is dropped; :meth:`WatchHub.close`
  ends every stream.  :meth:`WatchHub.publish` drops a status whose
  :func:`status_key` equals the one last published for the same resource, so a
  shimlet may publish after every event it sees and consumers still see changes only.
* :class:`ShimletBase` -- the lifecycle guards: ``start`` runs once under a lock
  (a start that raised may be tried again), public methods call
  :meth:`ShimletBase._ensure_started` to start themselves if the server forgot to,
  and refuse with :class:`~modserv_shim.errors.BackendUnavailable` after ``close``;
  ``close`` is idempotent.  A subclass implements ``_open`` and ``_shut``.

A shimlet composes them::

    class DockerShimlet(ShimletBase):
        name = "docker"

        def __init__(self, ctx: PluginContext) -> None:
            super().__init__()
            self.options = DockerOptions.parse(ctx.options)
            self._hub = WatchHub()

        async def _open(self) -> None: ...       # connect, adopt what an earlier run left
        async def _shut(self) -> None:            # stop watching; leave the workloads running
            self._hub.close()

        def watch(self) -> AsyncIterator[Event]:
            return self._hub.watch()

        async def status(self, resource_id: str) -> ResourceStatus:
            await self._ensure_started()
            ...

Like the rest of the kit, this module imports only the standard library and the plugin API.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator

from modserv_shim.errors import BackendUnavailable
from modserv_shim.plugins import ResourcePhase, ResourceStatus

Event = tuple[str, ResourceStatus]
"""One item of a watch stream: the resource id and its new status."""

StatusKey = tuple[ResourcePhase, int, int, str | None, str | None]
"""What makes two statuses of a resource "the same" for watchers (``detail`` is not part of it)."""


def status_key(status: ResourceStatus) -> StatusKey:
    """Phase, ready and desired replicas, endpoint and reason: a change of any of them is news."""
    return status.phase, status.ready_replicas, status.desired_replicas, status.endpoint, status.reason


class WatchHub:
    """Fans one status stream out to every consumer of ``watch()``.  See the module docstring."""

    def __init__(self) -> None:
        # Weak: a consumer that drops its stream without closing it is dropped with it.
        self._queues: weakref.WeakSet[asyncio.Queue[Event | None]] = weakref.WeakSet()
        self._last: dict[str, StatusKey] = {}
        self._closed = False

    @property
    def consumers(self) -> int:
        """How many streams are open."""
        return len(self._queues)

    def watch(self) -> AsyncIterator[Event]:
        """A new stream: every change published from now on, in order; it ends with :meth:`close`."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
        return self._stream(queue)

    def publish(self, resource_id: str, status: ResourceStatus) -> bool:
        """Send ``status`` to every consumer unless it repeats the last one of ``resource_id``; True if sent."""
        key = status_key(status)
        if self._last.get(resource_id) == key:
            return False
        self._last[resource_id] = key
        for queue in list(self._queues):
            queue.put_nowait((resource_id, status))
        return True

    def forget(self, resource_id: str) -> None:
        """Forget the last status of ``resource_id``: its next status is published whatever it is."""
        self._last.pop(resource_id, None)

    def gone(self, resource_id: str, reason: str = "deleted") -> None:
        """Publish that ``resource_id`` no longer exists (``NOT_FOUND``), then forget it."""
        self.publish(resource_id, ResourceStatus(ResourcePhase.NOT_FOUND, reason=reason))
        self.forget(resource_id)

    def close(self) -> None:
        """End every stream; later ``watch()`` calls return streams that end at once.  Idempotent."""
        self._closed = True
        for queue in list(self._queues):
            queue.put_nowait(None)
        self._queues.clear()

    async def _stream(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.discard(queue)


class ShimletBase:
    """Lifecycle guards for a shimlet: start once, auto-start, refuse after close.  See the module docstring."""

    name: str = "shimlet"
    """The shimlet's plugin name; errors say ``the <name> shimlet is closed``."""

    def __init__(self) -> None:
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Run ``_open`` once (idempotent; concurrent callers wait for the first)."""
        async with self._start_lock:
            self._check_open()
            if self._started:
                return
            await self._open()
            self._started = True

    async def close(self) -> None:
        """Run ``_shut`` once; every later call of a public method is refused (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._shut()

    async def _open(self) -> None:
        """Connect to the environment and adopt what an earlier run left.  Override."""

    async def _shut(self) -> None:
        """Stop watching and release connections (workloads keep running).  Override."""

    async def _ensure_started(self) -> None:
        """Start if nobody did; :class:`BackendUnavailable` once closed.  Call first in every public method."""
        if not self._started:
            await self.start()
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"the {self.name} shimlet is closed")
