"""Wakes the readers of the journal (the event streams) after each commit of the store."""

from __future__ import annotations

import asyncio


class Changes:
    """One future per generation: every commit completes the current one; readers take a fresh one
    *before* they read, so a commit between their read and their wait still wakes them."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False

    def waiter(self) -> asyncio.Future[None]:
        """A future completed by the next commit (or :meth:`stop`).  Wait on it with ``asyncio.wait``
        (never ``wait_for``: it is shared, and must not be cancelled by one reader's timeout)."""
        if self._next is None or self._next.done():
            self._loop = asyncio.get_running_loop()
            self._next = self._loop.create_future()
            if self.stopped:
                self._next.set_result(None)
        return self._next

    def notify(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)

    def stop(self) -> None:
        """The server is stopping: wake every reader for good.  Safe from a signal handler or another thread."""
        self.stopped = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.notify)
