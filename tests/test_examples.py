"""The README's plugin examples are the files in examples/plugins, and they really work."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO, Live, free_port, wait_for
from tests.helpers.local_shim import chat, deploy_body, local_settings
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

EXAMPLE_ENV = ["QUANTIZE", "EXTERNAL_URL"]  # the examples' per-deploy parameters, allowed as README says

EXAMPLES = REPO / "examples" / "plugins"


def test_readme_shows_the_example_files_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", readme, re.S)
    names = {name for name, _ in blocks}
    assert names == {"examples/plugins/quant_pipeline.py", "examples/plugins/external_shimlet.py"}
    for name, code in blocks:
        assert code == (REPO / name).read_text(), f"README block for {name} differs from the file"


async def load(live: Live, kind: str, name: str, file: str, attr: str) -> None:
    shutil.copy(EXAMPLES / file, live.server.settings.resolved_plugin_dir / file)
    await live.call("POST", "/api/v1/plugins/load", expect=201,
                    json={"kind": kind, "name": name, "file": file, "attr": attr})


async def test_quant_pipeline_example_deploys_a_quantized_model(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    model = write_tiny_llama_gguf(tmp_path / "m" / "tiny-f16.gguf")
    live: Live = await start_server(local_settings(tmp_path, allowed_env=EXAMPLE_ENV))
    await load(live, "pipeline", "quantllm", "quant_pipeline.py", "QuantLLMPipeline")
    body = deploy_body("tiny-q8", model, pipeline="quantllm", env={"QUANTIZE": "Q8_0"})
    r = await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202)
    assert r["data"]["totalSteps"] == ["model-validation", "model-quantization", "config-rendering",
                                       "resource-deployment", "health-check"]
    svc = await live.wait_state(r["data"]["serviceId"], "running", "failed", timeout=120)
    assert svc["state"] == "running", svc["reason"]
    logs = [x["message"] for x in (await live.call(
        "GET", f"/api/v1/modserv/{svc['serviceId']}/pipeline/logs"))["data"]["logs"]]
    assert any(m.startswith("quantized:") and "Q8_0" in m for m in logs)
    assert any("quantized/" in m and ".Q8_0.gguf" in m and m.startswith("runtime llama.cpp") for m in logs)
    await chat(svc["endpoint"], "tiny-q8")


async def test_quant_pipeline_refuses_unknown_quantization(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    model = write_tiny_llama_gguf(tmp_path / "m" / "tiny-f16.gguf")
    live: Live = await start_server(local_settings(tmp_path, allowed_env=EXAMPLE_ENV))
    await load(live, "pipeline", "quantllm", "quant_pipeline.py", "QuantLLMPipeline")
    body = deploy_body("tiny-q3", model, pipeline="quantllm", env={"QUANTIZE": "Q3"})
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed", timeout=60)
    assert svc["currentStep"] == "model-quantization"
    assert "QUANTIZE must be one of Q8_0, Q4_0, Q4_K_M, got 'Q3'" in svc["reason"]


async def test_external_shimlet_example_adopts_a_running_server(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    model = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf")
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "outside",
            "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, timeout=60)
        live: Live = await start_server(local_settings(tmp_path, allowed_env=EXAMPLE_ENV))
        await load(live, "shimlet", "external", "external_shimlet.py", "ExternalShimlet")
        plugins = (await live.call("GET", "/api/v1/plugins"))["data"]["shimlets"]
        assert "external" in [p["name"] for p in plugins]
        body = deploy_body("outside", model, shimlet="external", env={"EXTERNAL_URL": f"http://127.0.0.1:{port}"})
        sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
        svc = await live.wait_state(sid, "running", "failed", timeout=60)
        assert svc["state"] == "running", svc["reason"]
        assert svc["endpoint"] == f"http://127.0.0.1:{port}" and svc["shimlet"] == "external"
        await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
        assert server.poll() is None  # the external server is not ours to stop
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)


