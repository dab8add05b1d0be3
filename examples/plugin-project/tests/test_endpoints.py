"""What the contract does not cover: the configuration, and a server that goes away."""

from collections.abc import Callable

import pytest
from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.plugins import PluginContext, ResourcePhase
from modserv_shim.testing import OpenAIStub, make_deploy_context, phase_is, wait_for_status

from acme_endpoints import EndpointsShimlet


def test_options_are_checked(plugin_context: Callable[..., PluginContext]) -> None:
    with pytest.raises(ValidationFailed, match="unknown endpoints shimlet option"):
        EndpointsShimlet(plugin_context("endpoints", {"endpoint": {}}))


@pytest.mark.asyncio
async def test_a_model_without_a_configured_endpoint_is_refused(plugin_context: Callable[..., PluginContext]) -> None:
    shimlet = EndpointsShimlet(plugin_context("endpoints", {"endpoints": {"other": "http://127.0.0.1:9"}}))
    with pytest.raises(PermanentStepError, match="no endpoint is configured for model 'tiny'"):
        await shimlet.create(make_deploy_context("svc-1"))
    with pytest.raises(PermanentStepError, match="one replica"):
        await shimlet.create(make_deploy_context("svc-2", replicas=2, model_name="other"))


@pytest.mark.asyncio
async def test_a_server_that_stops_answering_is_degraded_and_a_restart_keeps_the_service(
    plugin_context: Callable[..., PluginContext],
) -> None:
    stub = OpenAIStub("tiny").start()
    ctx = plugin_context("endpoints", {"endpoints": {"tiny": stub.url}, "probe_interval": 0.05})
    shimlet = EndpointsShimlet(ctx)
    await shimlet.start()
    try:
        rid = await shimlet.create(make_deploy_context("svc-1"))
        await wait_for_status(shimlet, rid, phase_is(ResourcePhase.READY), timeout=5)
        stub.stop()
        status = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.DEGRADED), timeout=5)
        assert status.reason and "does not answer" in status.reason and status.ready_replicas == 0
    finally:
        await shimlet.close()
    again = EndpointsShimlet(ctx)  # the shim restarted: the service is still there, not yet probed
    assert (await again.status(rid)).phase is ResourcePhase.UNKNOWN
