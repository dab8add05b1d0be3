"""modserv_shim.testing, the kit a plugin author installs: the contract runs, the doubles keep it.

The contract from the package runs here against its own FakeShimlet and against the
local shimlet with nothing but the kit's defaults (the launch is the kit's OpenAI stub,
a real process that serves /v1/models).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.builtins import BUILTINS
from modserv_shim.core.registry import Registry, RegistryConfig, check_pipeline
from modserv_shim.errors import NotFound
from modserv_shim.plugins import ResourcePhase, Shimlet
from modserv_shim.shimlets.local import LocalShimlet
from modserv_shim.testing import (
    FakePipeline,
    FakeShimlet,
    OpenAIStub,
    ShimletContract,
    discover_plugin,
    make_deploy_context,
    make_plugin_context,
    phase_is,
    wait_for_status,
)
from modserv_shim.testing import fake_pipeline as fake_pipeline_module
from modserv_shim.testing import fake_shimlet as fake_shimlet_module

LOCAL_FAST: dict[str, Any] = {"probe_interval": 0.05, "poll_interval": 0.1, "restart_backoff": 0.2,
                              "restart_backoff_max": 1.0, "stop_grace_period": 3.0}


class TestFakeShimletKeepsTheContract(ShimletContract):
    factory = FakeShimlet
    ready_timeout = 5.0


class TestLocalShimletWithTheKitDefaults(ShimletContract):
    """The default make_context launches the kit's OpenAI stub; the local shimlet really serves it."""

    factory = LocalShimlet
    options = LOCAL_FAST
    ready_timeout = 20.0
    endpoint_serves_http = True

    @pytest.fixture
    async def shimlet(self, tmp_path: Path) -> AsyncIterator[Shimlet]:
        ctx = make_plugin_context(tmp_path / "data", "local", LOCAL_FAST)
        shimlet = LocalShimlet(ctx)
        await shimlet.start()
        try:
            yield shimlet
        finally:
            await shimlet.close()
            janitor = LocalShimlet(ctx)  # whatever a failed test left running is stopped
            await janitor.start()
            for rid in janitor.resource_ids():
                await janitor.delete(rid)
            await janitor.close()


# ------------------------------------------------------------------ the doubles


async def test_fake_shimlet_is_steered_by_env_and_refuses_unknown_ids(tmp_path: Path) -> None:
    shimlet = FakeShimlet(make_plugin_context(tmp_path))
    rid = await shimlet.create(make_deploy_context("svc-1", env={"FAKE_STATUS": "failed", "FAKE_REASON": "no GPU"}))
    status = await shimlet.status(rid)
    assert (status.phase, status.reason) == (ResourcePhase.FAILED, "no GPU")
    shimlet.set_status(rid, None)
    await wait_for_status(shimlet, rid, phase_is(ResourcePhase.READY), timeout=5)
    assert shimlet.creates == 1 and list(shimlet.resources()) == [rid]
    with pytest.raises(NotFound):
        await shimlet.scale("fake-never-created", 2)
    await shimlet.delete("svc-1")  # by service id, as the core does after a crash before recording
    assert (await shimlet.status(rid)).phase is ResourcePhase.NOT_FOUND and shimlet.deletes == 1


async def test_the_doubles_hot_load_from_a_plugin_directory(tmp_path: Path) -> None:
    """The files import only the plugin API, so they can be copied into a plugin dir and loaded."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for module in (fake_shimlet_module, fake_pipeline_module):
        assert module.__file__ is not None
        shutil.copy(module.__file__, plugins)
    registry = Registry(RegistryConfig(data_dir=tmp_path / "data", plugin_dir=plugins))
    (tmp_path / "data").mkdir()
    await registry.load("shimlet", "fake", file="fake_shimlet.py", attr="FakeShimlet")
    await registry.load("pipeline", "fake", file="fake_pipeline.py", attr="FakePipeline")
    shimlet = await registry.shimlet("fake")
    assert type(shimlet).__name__ == "FakeShimlet" and type(shimlet) is not FakeShimlet  # the copy, not ours
    await registry.close()


def test_fake_pipeline_passes_the_servers_checks(tmp_path: Path) -> None:
    pipeline = FakePipeline(make_plugin_context(tmp_path))
    assert [s.name for s in check_pipeline(pipeline, "fake")] == ["prepare", "deploy", "verify"]


async def test_openai_stub_serves_models_and_echoes_chat() -> None:
    with OpenAIStub("tiny") as stub:
        async with httpx.AsyncClient(base_url=stub.url, trust_env=False, timeout=5) as client:
            models = (await client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["tiny"]
            chat = await client.post("/v1/chat/completions",
                                     json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
            assert chat.json()["choices"][0]["message"]["content"] == "hi"
            assert (await client.get("/nope")).status_code == 404
    with OpenAIStub("slow", ready_delay=60) as stub:
        async with httpx.AsyncClient(base_url=stub.url, trust_env=False, timeout=5) as client:
            assert (await client.get("/health")).status_code == 503


def test_discover_plugin_finds_what_the_server_finds() -> None:
    assert discover_plugin("shimlet", "local") is BUILTINS["shimlet"]["local"]
    with pytest.raises(AssertionError, match=r"no shimlet named 'no-such-shimlet'.*shimlets found: .*local"):
        discover_plugin("shimlet", "no-such-shimlet")


def test_the_kit_imports_no_pytest_and_the_server_none_at_all() -> None:
    """pytest is an optional dependency: the server, the CLI and the kit's doubles run without it."""
    code = ("import sys, modserv_shim, modserv_shim.cli, modserv_shim.server.runner, modserv_shim.builtins;"
            "assert 'pytest' not in sys.modules, 'the server imports pytest';"
            "import modserv_shim.testing as t; t.FakeShimlet, t.make_deploy_context, t.OpenAIStub;"
            "assert 'pytest' not in sys.modules, 'modserv_shim.testing imports pytest eagerly';"
            "t.ShimletContract; assert 'pytest' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
