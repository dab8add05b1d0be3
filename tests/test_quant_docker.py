"""The quant pipeline on the docker shimlet: quantized on the shim's host, into the bound host folder.

The server CLI runs as a child process with the docker shimlet on the session's real Engine
(tests/helpers/docker_engine.py) and ``model_volume: {type: bind, source: <a folder>, target: /models}``;
the real SmolLM2 GGUF (Q4_1) is re-quantized to Q4_K_M by llama.cpp on this host, into
``<folder>/.modserv-quant/``, and the container (llama-cpp-python) serves it as
``/models/.modserv-quant/<sha256>.Q4_K_M.gguf`` and answers "Paris".  Where the shim cannot write
what the containers see (a named volume, a per-model bind, a remote Engine), the deploy is a 422.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import ValidationFailed
from modserv_shim.modelinfo import inspect_model
from modserv_shim.pipelines.quant import QuantPipeline
from modserv_shim.plugins import PluginContext
from modserv_shim.shimlets.docker import DockerShimlet, render
from modserv_shim.spec import DeploySpec
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import llama_image_fixture  # noqa: F401
from tests.helpers.docker_server import containers, docker_shim
from tests.helpers.local_shim import SMOLLM2
from tests.helpers.shim_api import api, chat
from tests.helpers.shim_process import ShimProcess

QUANT = {"type": "Q4_K_M", "allowRequantize": True}


@pytest.fixture
def models(tmp_path: Path) -> Iterator[Path]:
    """The host folder bound into the containers at /models, holding a copy of SmolLM2."""
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: `make setup` puts it there", pytrace=False)
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(SMOLLM2, folder / SMOLLM2.name)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 200 MB: not kept with the test's tmp dir


@pytest.fixture
def shim(tmp_path: Path, models: Path, docker_engine: DockerEngine, llama_image: str) -> Iterator[ShimProcess]:
    with docker_shim(tmp_path, docker_engine, {
        "host": docker_engine.host, "network": "host", "pull": "never",
        "images": {"llama.cpp": {"image": llama_image, "program": "llama-cpp-python"}},
        "model_volume": {"type": "bind", "source": str(models), "target": "/models"},
    }) as server:
        yield server


@pytest.mark.timeout(600)
def test_smollm2_quantized_into_the_bound_folder_is_served_by_the_container(
        shim: ShimProcess, models: Path, docker_engine: DockerEngine) -> None:
    shim.start()
    sid = api(shim, "POST", "/deploy", expect=202, json={
        "modelName": "smollm2-q4km", "modelFile": f"/models/{SMOLLM2.name}", "pipeline": "quant",
        "quantization": QUANT, "resourceRequirements": {"cpu": "1", "memory": "2Gi"},
        "contextLength": 2048})["serviceId"]
    svc = api(shim, "GET", f"/{sid}?waitFor=running&timeout=300", timeout=330)
    logs = api(shim, "GET", f"/{sid}/pipeline/logs?step=model-quantization")["logs"]
    assert svc["state"] == "running", f"{svc['state']}: {svc['reason']}\n{logs}\n{shim.tail()}"

    [made] = sorted((models / ".modserv-quant").glob("*.Q4_K_M.gguf"))  # on the host, in the bound folder
    assert inspect_model(made).dtype == "Q4_K_M"
    assert not list(models.rglob("*.partial"))
    seen = f"/models/.modserv-quant/{made.name}"  # the same file, as the container sees it
    text = [x["message"] for x in logs]
    assert any(m.startswith("quantized 272/272 tensors to Q4_K_M in") and str(made) in m for m in text), text
    [container] = containers(docker_engine, f"{render.SERVICE_ID}={sid}")
    doc = docker_engine.inspect(container["id"])
    assert seen in doc["Config"]["Cmd"], doc["Config"]["Cmd"]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in doc["Mounts"]] == [(str(models), "/models", False)]
    outputs = api(shim, "GET", f"/{sid}/pipeline")
    assert seen in str(outputs), outputs

    answer = chat(svc["endpoint"], "smollm2-q4km")
    assert "Paris" in answer, answer
    api(shim, "DELETE", f"/{sid}", expect=(200, 202))
    api(shim, "GET", f"/{sid}?waitFor=terminated&timeout=60", timeout=90)


def quant_check(tmp_path: Path, **docker: Any) -> None:
    shimlet = DockerShimlet(PluginContext("docker", tmp_path, docker))  # not started: no Engine needed
    spec = DeploySpec.model_validate({"modelName": "m", "modelFile": "/models/m.gguf", "pipeline": "quant",
                                      "quantization": QUANT})
    QuantPipeline(PluginContext("quant", tmp_path)).check_request(spec, shimlet)


def test_where_the_shim_cannot_write_what_the_containers_see_the_deploy_is_refused(tmp_path: Path) -> None:
    local = "unix:///var/run/docker.sock"
    quant_check(tmp_path, host=local, model_volume={"source": "/srv/models", "target": "/models"})  # accepted
    with pytest.raises(ValidationFailed, match=r"^the quant pipeline puts the quantized model where the docker"
                                               r" shimlet's workloads read it, and cannot here: the containers see"
                                               r" the models in the named volume 'models'.*\{type: bind, source:"):
        quant_check(tmp_path, host=local, model_volume={"type": "volume", "source": "models", "target": "/models"})
    with pytest.raises(ValidationFailed, match=r"the Docker Engine at tcp://gpu-1:2376 is on another machine: the"
                                               r" shim cannot write into its folder /srv/models; run the shim on"
                                               r" the Docker host"):
        quant_check(tmp_path, host="tcp://gpu-1:2376", model_volume={"source": "/srv/models", "target": "/models"})
    with pytest.raises(ValidationFailed, match=r"model_volume is unset, so each container sees only its model's"
                                               r" own file"):
        quant_check(tmp_path, host=local)
    with pytest.raises(ValidationFailed, match=r"modelFile /data/m.gguf is not under /models"):
        shimlet = DockerShimlet(PluginContext("docker", tmp_path, {"host": local, "model_volume": {
            "source": "/srv/models", "target": "/models"}}))
        QuantPipeline(PluginContext("quant", tmp_path)).check_request(DeploySpec.model_validate({
            "modelName": "m", "modelFile": "/data/m.gguf", "pipeline": "quant", "quantization": QUANT}), shimlet)
