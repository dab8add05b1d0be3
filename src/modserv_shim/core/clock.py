"""Time as the core sees it; tests swap in a clock that does not really sleep.

``now()`` is wall-clock time (timestamps people read: when a step started, a log line);
``monotonic()`` measures durations (it never jumps when the system clock is set).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
