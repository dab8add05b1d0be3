"""Test kit for plugin authors: the contract suites, test doubles and builders.

A shimlet's tests, in a plugin project (``pip install 'modserv-shim[testing]'``)::

    from modserv_shim.testing import ShimletContract
    from acme_plugins.docker import DockerShimlet

    class TestDockerShimlet(ShimletContract):
        factory = DockerShimlet
        options = {"host": "unix:///var/run/docker.sock"}

Modules:

* :mod:`modserv_shim.testing.shimlet_contract` -- :class:`ShimletContract`, the tests
  every shimlet passes, and its helpers (``wait_for_status``, ``phase_is``,
  ``new_service_id``);
* ``modserv_shim.testing.pipeline_contract`` -- the same for pipelines (import it
  from there; it is not re-exported here);
* :mod:`modserv_shim.testing.contexts` -- :func:`make_plugin_context`,
  :func:`make_deploy_context`, :func:`make_deploy_spec`, :func:`stub_launch`: what the
  core hands a plugin, with defaults that pass the server's checks;
* :mod:`modserv_shim.testing.discovery` -- :func:`discover_plugin`: is the installed
  entry point found and accepted the way the server does at start-up;
* test doubles, named ``Fake*`` and documented as TEST DOUBLE:
  :class:`FakeShimlet` (workloads are records in a file, steered by ``FAKE_*`` env
  keys), :class:`ProbedFakeShimlet` (the same, answering the health check's requests
  itself), :class:`FakePipeline` (three steps; failures, sleeps and gates steered by
  ``FAKE_*`` env keys), :class:`OpenAIStub` (an OpenAI-compatible HTTP server that
  serves no model; also ``python -m modserv_shim.testing.openai_stub``);
* :mod:`modserv_shim.testing.pytest_plugin` -- fixtures (``plugin_context``,
  ``fake_shimlet``, ``fake_pipeline``, ``openai_stub``); enable with
  ``pytest_plugins = ["modserv_shim.testing.pytest_plugin"]``.

pytest and pytest-asyncio are needed only by the contracts and the pytest plugin, which
are imported on first use: ``import modserv_shim.testing`` (the doubles and builders)
does not import pytest, and nothing outside this package imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modserv_shim.testing.contexts import make_deploy_context, make_deploy_spec, make_plugin_context, stub_launch
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet, ProbedFakeShimlet
from modserv_shim.testing.openai_stub import OpenAIStub

if TYPE_CHECKING:
    from modserv_shim.testing.discovery import discover_plugin
    from modserv_shim.testing.shimlet_contract import ShimletContract, new_service_id, phase_is, wait_for_status

# name -> module, imported when the name is first used (they import pytest or the core's registry)
_LAZY = {
    "ShimletContract": "modserv_shim.testing.shimlet_contract",
    "new_service_id": "modserv_shim.testing.shimlet_contract",
    "phase_is": "modserv_shim.testing.shimlet_contract",
    "wait_for_status": "modserv_shim.testing.shimlet_contract",
    "discover_plugin": "modserv_shim.testing.discovery",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FakePipeline",
    "FakeShimlet",
    "OpenAIStub",
    "ProbedFakeShimlet",
    "ShimletContract",
    "discover_plugin",
    "make_deploy_context",
    "make_deploy_spec",
    "make_plugin_context",
    "new_service_id",
    "phase_is",
    "stub_launch",
    "wait_for_status",
]
