"""Shared by the privatellm tests: a real HTTPS model source, settings with its secret, deploys and chats."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.config import Settings
from tests.conftest import Live, fake_settings
from tests.helpers.https_file_server import ModelSourceServer, make_certs
from tests.helpers.local_shim import FAST_LOCAL, SMOLLM2

TOKEN = "tok-RIGHT-5d9a1c0e7b"
WRONG = "tok-WRONG-0c4f2e8a91"
API = "/api/v1/modserv"


@pytest.fixture(name="source")
def source_fixture(tmp_path: Path) -> Iterator[ModelSourceServer]:
    """A real HTTPS model source with bearer-token auth (token ``TOKEN``), stopped at the end."""
    root = tmp_path / "source"
    root.mkdir()
    server = ModelSourceServer(root, make_certs(tmp_path / "certs"), TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def settings(tmp_path: Path, server: ModelSourceServer, *, token: str = TOKEN, public_key: Path | None = None,
             groups: list[str] | None = None, server_settings: dict[str, Any] | None = None,
             **options: Any) -> Settings:
    """A server with secret ``acme`` for ``server`` (allowed ``groups``), the local shimlet made quick."""
    secret: dict[str, Any] = {"token": token, "ca_file": str(server.certs.ca)}
    if public_key is not None:
        secret["public_key_file"] = str(public_key)
    if groups is not None:
        secret["groups"] = groups
    return fake_settings(tmp_path, shimlet="local", pipeline="opensourcellm", shimlets={"local": FAST_LOCAL},
                         **(server_settings or {}),
                         secrets={"acme": secret},
                         pipelines={"privatellm": {"options": {"progress_interval": 0.5, **options}}})


def body(name: str, model_source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"modelName": name, "pipeline": "privatellm", "modelSource": model_source,
            "resourceRequirements": {"cpu": "1", "memory": "2Gi"}, **extra}


async def deploy(live: Live, b: dict[str, Any], *states: str, timeout: float = 180) -> dict[str, Any]:
    """The service once in one of ``states``, with the API key its deploy answered (``_apiKey``)."""
    accepted = (await live.call("POST", f"{API}/deploy", json=b, expect=202))["data"]
    svc: dict[str, Any] = await live.wait_state(accepted["serviceId"], *states, timeout=timeout)
    return {**svc, "_apiKey": accepted.get("apiKey")}


async def logs(live: Live, sid: str) -> dict[str, Any]:
    data: dict[str, Any] = (await live.call("GET", f"{API}/{sid}/pipeline/logs"))["data"]
    return data


def messages(data: dict[str, Any], step: str | None = None) -> list[str]:
    return [x["message"] for x in data["logs"] if step is None or x["step"] == step]


async def chat_response(endpoint: str, model: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=120) as c:
        return await c.post(f"{endpoint}/v1/chat/completions", headers=headers, json={
            "model": model, "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]})


async def chat(endpoint: str, model: str, key: str | None) -> str:
    r = await chat_response(endpoint, model, key)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["message"]["content"]
    return text


def smollm2() -> Path:
    if not SMOLLM2.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SMOLLM2} is missing: `make setup` extracts it")
        pytest.skip("run `make setup` to extract SmolLM2")
    return SMOLLM2
