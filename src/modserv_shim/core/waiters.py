"""The ``waitFor`` long poll: callers wait for a service's next state change.

:class:`~modserv_shim.core.states.ServiceStates` wakes the waiters of a service after each
change it stores; a stopping server answers every pending wait at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import ServiceRecord


class Waiters:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop :meth:`stop_waiting` hands the wake-up to."""
        self._loop = loop

    def stop_waiting(self) -> None:
        """Answer every pending wait now (the server is stopping).  Safe from a signal handler
        or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._stopping = True
        for service_id in list(self._waiting):
            self.wake(service_id)

    def wake(self, service_id: str) -> None:
        """Let the waits on a service look at it again."""
        for woken in self._waiting.get(service_id, ()):
            if not woken.done():
                woken.set_result(None)

    async def wait_for_state(
        self, rec: ServiceRecord, states: Collection[State], timeout: float, is_live: Callable[[str], bool]
    ) -> ServiceRecord:
        """``rec`` once it is in one of ``states``, failed or terminated, or after ``timeout`` seconds
        as it is then; a service that is not live (``is_live``) is answered at once."""
        stop = {*states, State.FAILED, State.TERMINATED}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while rec.state not in stop and is_live(rec.id) and not self._stopping:
            woken: asyncio.Future[None] = loop.create_future()
            waiters = self._waiting.setdefault(rec.id, set())
            waiters.add(woken)
            try:
                await asyncio.wait([woken], timeout=max(deadline - loop.time(), 0))
            finally:
                waiters.discard(woken)
                if not waiters:
                    self._waiting.pop(rec.id, None)
            if not woken.done():
                break
        return rec
