"""Fixtures for a plugin's tests, as a pytest plugin.

Turn it on in the plugin project's ``conftest.py``::

    pytest_plugins = ["modserv_shim.testing.pytest_plugin"]

(or ``pytest -p modserv_shim.testing.pytest_plugin``).  It provides:

* ``plugin_context`` -- ``plugin_context(name="test", options=None)``: a
  :class:`~modserv_shim.plugins.PluginContext` on a fresh data dir under ``tmp_path``;
* ``fake_shimlet`` -- a :class:`~modserv_shim.testing.fake_shimlet.FakeShimlet` (for a
  pipeline's tests: it is the environment ``run_step`` deploys into);
* ``fake_pipeline`` -- a :class:`~modserv_shim.testing.fake_pipeline.FakePipeline`;
* ``openai_stub`` -- a running :class:`~modserv_shim.testing.openai_stub.OpenAIStub`
  serving the model ``tiny`` (``openai_stub.url``), stopped after the test.

The shimlet contract needs none of these: subclass
:class:`~modserv_shim.testing.shimlet_contract.ShimletContract`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.plugins import PluginContext
from modserv_shim.testing.contexts import make_plugin_context
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet
from modserv_shim.testing.openai_stub import OpenAIStub

PluginContextFactory = Callable[..., PluginContext]


@pytest.fixture
def plugin_context(tmp_path: Path) -> PluginContextFactory:
    def make(name: str = "test", options: Mapping[str, Any] | None = None, **kw: Any) -> PluginContext:
        return make_plugin_context(tmp_path / "data", name, options, **kw)

    return make


@pytest.fixture
def fake_shimlet(plugin_context: PluginContextFactory) -> FakeShimlet:
    return FakeShimlet(plugin_context("fake"))


@pytest.fixture
def fake_pipeline(plugin_context: PluginContextFactory) -> FakePipeline:
    return FakePipeline(plugin_context("fake"))


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub("tiny") as stub:
        yield stub
