"""Shared fixtures: a real server on a free loopback port, reached over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from modserv_shim.config import Settings
from modserv_shim.core.registry import Registry
from modserv_shim.server.runner import Server, build, build_registry, uvicorn_config
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(pred: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await pred()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")


@dataclass
class Live:
    """A server running in this process on a real socket, and a client for it."""

    server: Server
    url: str
    client: httpx.AsyncClient
    userver: uvicorn.Server
    task: asyncio.Task[None]
    stopped: bool = False

    async def stop(self, *, delete_services: bool = False) -> None:
        """Stop the server; its workloads keep running unless ``delete_services``."""
        if self.stopped:
            return
        if delete_services:
            for rec in await self.server.manager.list_services():
                if rec.state.value != "terminated":
                    await self.server.manager.delete(rec.id, "test-teardown")
        await self.client.aclose()
        self.userver.should_exit = True
        await self.task
        self.stopped = True

    async def call(self, method: str, path: str, expect: int | None = None, **kw: Any) -> dict[str, Any]:
        r = await self.client.request(method, path, **kw)
        body: dict[str, Any] = r.json()
        assert set(body) >= {"code", "message", "data"}, body
        if expect is not None:
            assert r.status_code == expect, (r.status_code, body)
        assert (body["code"] == 0) == (r.status_code < 400), body
        body["_status"] = r.status_code
        return body

    async def state(self, sid: str) -> str:
        return str((await self.call("GET", f"/api/v1/modserv/{sid}"))["data"]["state"])

    async def wait_state(self, sid: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            data: dict[str, Any] = (await self.call("GET", f"/api/v1/modserv/{sid}"))["data"]
            return data if data["state"] in states else None

        result: dict[str, Any] = await wait_for(check, timeout)
        return result


def fake_settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "shimlet": "fake", "pipeline": "fake",
                            "port": free_port(), "poll_interval": 0.05,
                            "allowed_env": ["FAKE_*"]}  # the test doubles are steered through FAKE_* variables
    base.update(kw)
    return Settings.load(None, **base)


async def serve(settings: Settings, registry: Registry | None = None, headers: dict[str, str] | None = None) -> Live:
    """Run a real server in this process on ``settings.port``; stop it with ``Live.stop``."""
    srv = build(settings, registry or build_registry(settings))
    userver = uvicorn.Server(uvicorn_config(srv, log_level="warning", lifespan="on"))
    task = asyncio.create_task(userver.serve())
    await wait_for(lambda: _true(userver.started), timeout=10)
    url = f"http://{settings.host}:{settings.port}"
    client = httpx.AsyncClient(base_url=url, headers=headers or {}, timeout=60)
    return Live(srv, url, client, userver, task)


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Live]]]:
    """Start servers (fake shimlet + fake pipeline registered) on free ports.

    At teardown every server still running deletes its services (so no model
    process outlives the test) and stops.
    """
    running: list[Live] = []

    async def start(settings: Settings | None = None, headers: dict[str, str] | None = None) -> Live:
        settings = settings or fake_settings(tmp_path)
        registry = build_registry(settings)
        registry.register("shimlet", "fake", FakeShimlet, "test-double")
        registry.register("pipeline", "fake", FakePipeline, "test-double")
        live = await serve(settings, registry, headers)
        running.append(live)
        return live

    yield start
    for live in reversed(running):
        await live.stop(delete_services=True)


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def llama_server_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A ``llama-server`` (a script that exits 0) alone on PATH: runtimes then pick llama.cpp's own server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    binary = bin_dir / "llama-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return binary
