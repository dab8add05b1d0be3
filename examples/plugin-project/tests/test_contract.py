"""The endpoints shimlet keeps modserv-shim's shimlet contract, and the server finds it."""

import pytest
from modserv_shim.testing import OpenAIStub, ShimletContract, discover_plugin

from acme_endpoints import EndpointsShimlet


class TestEndpointsShimlet(ShimletContract):
    factory = EndpointsShimlet
    endpoint_serves_http = True  # the stub below really answers /v1/models
    ready_timeout = 10.0

    @pytest.fixture
    def plugin_options(self, openai_stub: OpenAIStub) -> dict[str, object]:
        # The contract deploys the model "tiny"; the admin's configuration points it at the stub.
        return {"endpoints": {"tiny": openai_stub.url}, "probe_interval": 0.05}


def test_the_server_finds_the_shimlet_through_its_entry_point() -> None:
    assert discover_plugin("shimlet", "endpoints") is EndpointsShimlet
