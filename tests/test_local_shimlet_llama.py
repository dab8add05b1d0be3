"""The local shimlet with the real llama.cpp runtime on a tiny GGUF: the path a CPU user takes.

The model is written by ``tests/helpers/tiny_gguf.py`` (random weights, well
under 1 MB), rendered by the llama.cpp runtime for the local target
(``python -m llama_cpp.server`` unless ``llama-server`` is on PATH) and served
for real: readiness, the model list, one chat completion, and a delete that
leaves no process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modserv_shim.plugins import DeployContext, PluginContext, ResourcePhase
from modserv_shim.runtimes import LaunchParams, select_runtime
from modserv_shim.shimlets.local import LocalShimlet
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.shimlet_contract import phase_is, wait_for_status
from tests.helpers.local_shimlet import gone, running
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

pytestmark = pytest.mark.slow


async def test_real_llama_cpp_server_serves_a_tiny_gguf(tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    runtime = select_runtime("auto", "gguf", gpu_available=False, vllm_installed=False)
    launch = runtime.render(LaunchParams("tiny-llama", str(model), context_length=256), target="local")
    spec = DeploySpec(modelName="tiny-llama", modelFile=str(model), contextLength=256)
    shimlet = LocalShimlet(PluginContext("local", tmp_path / "data", {"probe_interval": 0.2}))
    await shimlet.start()
    try:
        rid = await shimlet.create(DeployContext("tiny-llama-1", spec, launch, 1))
        status = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.READY), timeout=120, what="READY")
        pid = status.detail["replicas"][0]["pid"]
        assert running(pid)
        async with httpx.AsyncClient(base_url=str(status.endpoint), trust_env=False, timeout=60) as client:
            models = (await client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["tiny-llama"]
            reply = await client.post(
                "/v1/chat/completions",
                json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
            )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "chat.completion"
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["usage"]["completion_tokens"] >= 1
        await shimlet.delete(rid)
        assert await gone(pid)
        assert (await shimlet.status(rid)).phase is ResourcePhase.NOT_FOUND
    finally:
        for leftover in shimlet.resource_ids():
            await shimlet.delete(leftover)
        await shimlet.close()
