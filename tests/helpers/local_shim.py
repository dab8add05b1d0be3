"""What the tests of the local shimlet through the in-process server share: the real SmolLM2, short
back-offs, the settings and the request body of a deploy, a tiny GGUF (the fixture ``tiny``), a chat with the
served model, the pids of a service's replicas and whether a process is alive."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, Live, fake_settings
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

SMOLLM2 = REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST_LOCAL = {"restart_backoff": 0.2, "restart_backoff_max": 1.0, "probe_interval": 0.1,
              "stop_grace_period": 5.0}


def local_settings(tmp_path: Path, **kw: Any):  # type: ignore[no-untyped-def]
    return fake_settings(tmp_path, shimlet="local", pipeline="opensourcellm",
                         shimlets={"local": FAST_LOCAL}, **kw)


@pytest.fixture(name="tiny")
def tiny_fixture(tmp_path: Path) -> Path:
    """``tmp_path/models/tiny.gguf``, a tiny random-weight llama GGUF."""
    (tmp_path / "models").mkdir()
    return write_tiny_llama_gguf(tmp_path / "models" / "tiny.gguf")


def deploy_body(name: str, model: Path, **extra: Any) -> dict[str, Any]:
    return {"modelName": name, "modelFile": str(model),
            "resourceRequirements": {"cpu": "1", "memory": "2Gi"}, "replicaCount": 1, **extra}


async def chat(endpoint: str, model: str) -> dict[str, Any]:
    """The served model's answer (the whole OpenAI response) to one short question."""
    async with httpx.AsyncClient(timeout=120) as c:
        r = await c.post(f"{endpoint}/v1/chat/completions", json={
            "model": model, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def replica_pids(live: Live, sid: str) -> list[int]:
    shimlet = await live.server.manager.registry.shimlet("local")
    rec = await live.server.manager.get(sid)
    assert rec.resource_id
    st = await shimlet.status(rec.resource_id)
    return [int(r["pid"]) for r in st.detail.get("replicas", []) if r.get("pid")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
