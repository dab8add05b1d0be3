"""The shimlet contract, as tests any shimlet can run.

A plugin's test module subclasses :class:`ShimletContract`; every test below then
runs against its shimlet.  The short form names the factory::

    from modserv_shim.testing import ShimletContract

    class TestMyShimlet(ShimletContract):
        factory = MyShimlet                  # built with a PluginContext on a fresh data dir
        options = {"probe_interval": 0.1}    # its options, as the config file would give them
        ready_timeout = 30.0

For more control, override the fixtures instead: ``plugin_options`` (options that
depend on other fixtures, e.g. a server's URL), ``shimlet`` (build, start and close it
yourself) and ``make_context`` (``(service_id, replicas) -> DeployContext``; the default
is :func:`~modserv_shim.testing.contexts.make_deploy_context`, whose launch runs the
OpenAI stub as a local process)::

    @pytest.fixture
    async def shimlet(self, tmp_path):       # a started shimlet; cleaned up afterwards
        s = MyShimlet(PluginContext("mine", tmp_path))
        await s.start()
        yield s
        await s.close()

What is checked is what the core relies on: the interface the server checks when it
loads a plugin, create -> READY with an endpoint, idempotent create and delete,
NOT_FOUND for unknown ids, a status that answers at once, and -- when the shimlet has
them -- scale, logs and watch.  Resources created through the ``deploy`` fixture are
deleted after each test, pass or fail.  Set ``endpoint_serves_http`` when the endpoint
is really reachable, to also check that it serves the OpenAI model list.

Needs pytest and pytest-asyncio (``pip install 'modserv-shim[testing]'``).  The tests
and fixtures are marked for pytest-asyncio, so they run in its default (strict) mode as
well as in ``asyncio_mode = "auto"``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import pytest_asyncio

from modserv_shim.core.registry import check_shimlet
from modserv_shim.errors import NotFound
from modserv_shim.plugins import (
    DeployContext,
    LogSource,
    ResourcePhase,
    ResourceStatus,
    Scalable,
    Shimlet,
    Watchable,
)
from modserv_shim.testing.contexts import make_deploy_context, make_plugin_context, running_plugin

ContextFactory = Callable[[str, int], DeployContext]
Deploy = Callable[[DeployContext], Awaitable[str]]
ShimletFactory = Callable[..., Any]
"""A plugin factory: called with a :class:`PluginContext`, returns the shimlet (usually its class).

Typed ``...`` so that a class attribute holding it is not taken by mypy for a method."""


def new_service_id(prefix: str = "contract") -> str:
    """A fresh, DNS-safe service id."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_for_status(
    shimlet: Shimlet,
    resource_id: str,
    check: Callable[[ResourceStatus], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "the expected status",
) -> ResourceStatus:
    """Poll ``status`` until ``check`` holds; fail with the last status after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = await shimlet.status(resource_id)
        if check(status):
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(f"{resource_id}: no {what} within {timeout} s; last status: {status}")
        await asyncio.sleep(interval)


def phase_is(phase: ResourcePhase, **fields: Any) -> Callable[[ResourceStatus], bool]:
    """A check for ``wait_for_status``: this phase, and these ResourceStatus fields equal."""
    return lambda s: s.phase is phase and all(getattr(s, k) == v for k, v in fields.items())


@pytest.mark.asyncio
class ShimletContract:
    """Subclass it (its name starting with ``Test``) to run the contract against a shimlet."""

    factory: ClassVar[ShimletFactory | None] = None
    """The plugin factory (usually the shimlet class); used by the default ``shimlet`` fixture."""
    options: ClassVar[Mapping[str, Any]] = {}
    """The plugin's options for the default ``plugin_options`` fixture."""
    plugin_name: ClassVar[str | None] = None
    """The name the shimlet is registered under; default: the factory's ``name``."""
    ready_timeout: ClassVar[float] = 60.0
    endpoint_serves_http: ClassVar[bool] = False

    # ------------------------------------------ fixtures a subclass may override

    @pytest.fixture
    def plugin_options(self) -> Mapping[str, Any]:
        return dict(self.options)

    @pytest_asyncio.fixture
    async def shimlet(self, tmp_path: Path, plugin_options: Mapping[str, Any]) -> AsyncIterator[Any]:
        factory = type(self).factory
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set 'factory = YourShimlet' or override the 'shimlet' fixture")
        name = self.plugin_name or str(getattr(factory, "name", "shimlet"))
        async with running_plugin(factory, make_plugin_context(tmp_path / "data", name, plugin_options)) as obj:
            yield obj

    @pytest.fixture
    def make_context(self) -> ContextFactory:
        return make_deploy_context

    @pytest_asyncio.fixture
    async def deploy(self, shimlet: Shimlet) -> AsyncIterator[Deploy]:
        created: list[str] = []

        async def _deploy(ctx: DeployContext) -> str:
            resource_id = await shimlet.create(ctx)
            created.append(resource_id)
            return resource_id

        try:
            yield _deploy
        finally:
            for resource_id in created:
                await shimlet.delete(resource_id)

    async def wait_ready(self, shimlet: Shimlet, resource_id: str, replicas: int = 1) -> ResourceStatus:
        return await wait_for_status(
            shimlet,
            resource_id,
            phase_is(ResourcePhase.READY, ready_replicas=replicas, desired_replicas=replicas),
            timeout=self.ready_timeout,
            what=f"READY with {replicas} replica(s)",
        )

    # ----------------------------------------------------------- the contract

    async def test_meets_the_interface_the_server_checks(self, shimlet: Shimlet) -> None:
        check_shimlet(shimlet, self.plugin_name or str(getattr(shimlet, "name", "?")))
        assert isinstance(shimlet.name, str) and shimlet.name

    async def test_create_becomes_ready_with_an_endpoint(
        self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy
    ) -> None:
        ctx = make_context(new_service_id(), 1)
        resource_id = await deploy(ctx)
        assert isinstance(resource_id, str) and resource_id
        status = await self.wait_ready(shimlet, resource_id)
        assert status.endpoint and status.endpoint.startswith(("http://", "https://")), status
        assert status.reason is None
        if self.endpoint_serves_http:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                response = await client.get(f"{status.endpoint}/v1/models")
            assert response.status_code == 200
            assert ctx.launch.served_model_name in [m["id"] for m in response.json()["data"]]

    async def test_status_answers_at_once_while_starting(
        self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy
    ) -> None:
        resource_id = await deploy(make_context(new_service_id(), 1))
        status = await asyncio.wait_for(shimlet.status(resource_id), timeout=1.0)
        assert status.phase in (ResourcePhase.PENDING, ResourcePhase.READY), status
        assert status.desired_replicas == 1

    async def test_create_is_idempotent(self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy) -> None:
        ctx = make_context(new_service_id(), 1)
        first = await deploy(ctx)
        assert await shimlet.create(ctx) == first
        await self.wait_ready(shimlet, first)
        assert await shimlet.create(ctx) == first
        # A second workload, or a restart of the first, would not be READY with one replica now.
        status = await shimlet.status(first)
        assert (status.phase, status.ready_replicas, status.desired_replicas) == (ResourcePhase.READY, 1, 1)

    async def test_unknown_id_is_not_found(self, shimlet: Shimlet) -> None:
        status = await shimlet.status(new_service_id("never-created"))
        assert status.phase is ResourcePhase.NOT_FOUND
        assert status.ready_replicas == 0

    async def test_delete_is_idempotent_and_leaves_not_found(
        self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy
    ) -> None:
        resource_id = await deploy(make_context(new_service_id(), 1))
        await self.wait_ready(shimlet, resource_id)
        await shimlet.delete(resource_id)
        await wait_for_status(
            shimlet, resource_id, phase_is(ResourcePhase.NOT_FOUND), timeout=self.ready_timeout, what="NOT_FOUND"
        )
        await shimlet.delete(resource_id)
        await shimlet.delete(new_service_id("never-created"))

    async def test_delete_while_starting(self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy) -> None:
        resource_id = await deploy(make_context(new_service_id(), 1))
        await shimlet.delete(resource_id)
        await wait_for_status(
            shimlet, resource_id, phase_is(ResourcePhase.NOT_FOUND), timeout=self.ready_timeout, what="NOT_FOUND"
        )

    async def test_scale_up_and_down(self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy) -> None:
        if not isinstance(shimlet, Scalable):
            pytest.skip("this shimlet cannot scale")
        resource_id = await deploy(make_context(new_service_id(), 1))
        await self.wait_ready(shimlet, resource_id, 1)
        await shimlet.scale(resource_id, 2)
        await self.wait_ready(shimlet, resource_id, 2)
        await shimlet.scale(resource_id, 1)
        await self.wait_ready(shimlet, resource_id, 1)

    async def test_logs(self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy) -> None:
        if not isinstance(shimlet, LogSource):
            pytest.skip("this shimlet has no logs")
        resource_id = await deploy(make_context(new_service_id(), 1))
        await self.wait_ready(shimlet, resource_id)
        lines = await shimlet.logs(resource_id, tail=5)
        assert lines and all(isinstance(line, str) for line in lines)
        assert len(lines) <= 5
        with pytest.raises(NotFound):
            await shimlet.logs(new_service_id("never-created"))

    async def test_watch_reports_ready_and_deleted(
        self, shimlet: Shimlet, make_context: ContextFactory, deploy: Deploy
    ) -> None:
        if not isinstance(shimlet, Watchable):
            pytest.skip("this shimlet cannot watch")
        events: list[tuple[str, ResourceStatus]] = []
        stream = shimlet.watch()

        async def consume() -> None:
            async for event in stream:
                events.append(event)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.1)  # let a lazily subscribing stream subscribe
        try:
            resource_id = await deploy(make_context(new_service_id(), 1))

            async def seen(phase: ResourcePhase) -> None:
                while not any(rid == resource_id and s.phase is phase for rid, s in events):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(seen(ResourcePhase.READY), self.ready_timeout)
            await shimlet.delete(resource_id)
            await asyncio.wait_for(seen(ResourcePhase.NOT_FOUND), self.ready_timeout)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
