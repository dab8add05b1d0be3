"""The shared parts of every shimlet (modserv_shim.kit.shimlet): the watch hub and the lifecycle guards."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from modserv_shim.errors import BackendUnavailable
from modserv_shim.kit.shimlet import Event, ShimletBase, WatchHub, status_key
from modserv_shim.plugins import ResourcePhase, ResourceStatus

PENDING = ResourceStatus(ResourcePhase.PENDING, 0, 1, reason="starting")
READY = ResourceStatus(ResourcePhase.READY, 1, 1, endpoint="http://x:1")


async def take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    """The next ``n`` events of a stream (fails instead of hanging)."""
    out: list[Event] = []
    async with asyncio.timeout(2):
        async for event in stream:
            out.append(event)
            if len(out) == n:
                break
    return out


def test_status_key_ignores_detail() -> None:
    a = ResourceStatus(ResourcePhase.READY, 1, 1, detail={"pods": [1]})
    b = ResourceStatus(ResourcePhase.READY, 1, 1, detail={"pods": [2]})
    assert status_key(a) == status_key(b)
    assert status_key(a) != status_key(ResourceStatus(ResourcePhase.READY, 1, 2))


async def test_two_consumers_get_every_change_in_order() -> None:
    hub = WatchHub()
    first, second = hub.watch(), hub.watch()
    hub.publish("a", PENDING)
    hub.publish("b", PENDING)
    hub.publish("a", READY)
    expected = [("a", PENDING), ("b", PENDING), ("a", READY)]
    assert await take(first, 3) == expected
    assert await take(second, 3) == expected


async def test_a_consumer_sees_changes_from_the_moment_it_subscribed() -> None:
    hub = WatchHub()
    hub.publish("a", PENDING)
    late = hub.watch()  # subscribed at the call, before its first iteration
    hub.publish("a", READY)
    assert await take(late, 1) == [("a", READY)]


async def test_repeats_are_dropped_per_resource() -> None:
    hub = WatchHub()
    stream = hub.watch()
    assert hub.publish("a", PENDING)
    assert not hub.publish("a", ResourceStatus(ResourcePhase.PENDING, 0, 1, reason="starting", detail={"x": 1}))
    assert hub.publish("b", PENDING)  # the same status of another resource is news
    assert hub.publish("a", READY)
    assert not hub.publish("a", READY)
    assert await take(stream, 3) == [("a", PENDING), ("b", PENDING), ("a", READY)]


async def test_forget_and_gone() -> None:
    hub = WatchHub()
    stream = hub.watch()
    hub.publish("a", READY)
    hub.forget("a")
    assert hub.publish("a", READY)  # forgotten: the same status is published again
    hub.gone("a")
    assert hub.publish("a", READY)  # created again after a delete
    events = await take(stream, 4)
    ready, gone = ResourcePhase.READY, ResourcePhase.NOT_FOUND
    assert [(rid, s.phase) for rid, s in events] == [("a", ready), ("a", ready), ("a", gone), ("a", ready)]
    assert events[2][1].reason == "deleted"


async def test_a_consumer_that_stops_is_dropped() -> None:
    hub = WatchHub()
    closed, abandoned, kept = hub.watch(), hub.watch(), hub.watch()
    assert hub.consumers == 3
    hub.publish("a", PENDING)
    assert await take(closed, 1) == [("a", PENDING)]
    await closed.aclose()  # type: ignore[attr-defined]
    del abandoned  # never iterated, dropped on the floor
    gc.collect()
    assert hub.consumers == 1
    hub.publish("a", READY)
    assert await take(kept, 2) == [("a", PENDING), ("a", READY)]


async def test_close_ends_every_stream() -> None:
    hub = WatchHub()
    first, second = hub.watch(), hub.watch()
    hub.publish("a", PENDING)
    hub.close()
    hub.close()  # idempotent
    async with asyncio.timeout(2):
        assert [e async for e in first] == [("a", PENDING)]  # what was sent before still arrives
        assert [e async for e in second] == [("a", PENDING)]
        assert [e async for e in hub.watch()] == []  # a watch after close ends at once
    assert hub.consumers == 0
    hub.publish("a", READY)  # nobody listens: no error


class Counting(ShimletBase):
    name = "counting"

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.opened = self.shut = 0
        self.fail_first = fail_first

    async def _open(self) -> None:
        self.opened += 1
        await asyncio.sleep(0.01)  # concurrent starts overlap here
        if self.fail_first and self.opened == 1:
            raise BackendUnavailable("not yet")

    async def _shut(self) -> None:
        self.shut += 1

    async def status(self) -> str:
        await self._ensure_started()
        return "ok"


async def test_start_runs_once_even_when_called_concurrently() -> None:
    shimlet = Counting()
    await asyncio.gather(shimlet.start(), shimlet.start(), shimlet.start())
    await shimlet.start()
    assert shimlet.opened == 1 and shimlet.started


async def test_public_methods_start_the_shimlet() -> None:
    shimlet = Counting()
    assert await shimlet.status() == "ok"
    assert shimlet.opened == 1 and shimlet.started


async def test_a_failed_start_may_be_tried_again() -> None:
    shimlet = Counting(fail_first=True)
    with pytest.raises(BackendUnavailable, match="not yet"):
        await shimlet.start()
    assert not shimlet.started
    assert await shimlet.status() == "ok"
    assert shimlet.opened == 2


async def test_after_close_everything_is_refused_and_close_is_idempotent() -> None:
    shimlet = Counting()
    await shimlet.start()
    await shimlet.close()
    await shimlet.close()
    assert shimlet.shut == 1 and shimlet.closed
    with pytest.raises(BackendUnavailable, match="the counting shimlet is closed"):
        await shimlet.status()
    with pytest.raises(BackendUnavailable, match="closed"):
        await shimlet.start()


async def test_a_shimlet_closed_before_it_started_never_starts() -> None:
    shimlet = Counting()
    await shimlet.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        await shimlet.status()
    assert shimlet.opened == 0
