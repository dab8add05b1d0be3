"""Model validation where the pods see the model, and the whole deploy flow through the REST API.

The simulator runs the validation Job's pod with a job handler that does what
the real pod does: it runs ``python -m modserv_shim.modelinfo PATH
--termination-log FILE`` (in process, on a local directory standing in for the
model volume) and returns the file's content as the termination message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo import ModelFacts
from modserv_shim.plugins import PluginContext
from modserv_shim.shimlets.k8s import K8sShimlet
from modserv_shim.shimlets.k8s.naming import COMPONENT, VALIDATION_COMPONENT
from modserv_shim.spec import DeploySpec
from tests.conftest import Live
from tests.helpers.k8s_shimlet import openai_backend, shimlet_on, sim_fixture  # noqa: F401
from tests.helpers.k8s_volume import VOLUME, k8s_server_fixture, modelinfo_job, pvc_folder  # noqa: F401
from tests.k8s_sim import JobResult, PodFault, Sim

JOB_PODS = f"{COMPONENT}={VALIDATION_COMPONENT}"


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The content of the PVC "models": what the validation pod sees under /models."""
    root = pvc_folder(tmp_path)
    (root / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    return root


def spec(model_file: str) -> DeploySpec:
    return DeploySpec(modelName="tiny", modelFile=model_file)


async def test_validation_job_reports_the_facts_and_is_deleted(sim: Sim, tmp_path: Path, volume: Path) -> None:
    seen: list[list[str]] = []
    sim.set_job_handler(modelinfo_job(volume, tmp_path, seen))
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME) as shimlet:
        facts = ModelFacts.from_dict(await shimlet.inspect_model(spec("/models/tiny.gguf")))
        assert (facts.format, facts.architecture, facts.path) == ("gguf", "llama", "/models/tiny.gguf")
        assert seen == [["python", "-m", "modserv_shim.modelinfo", "/models/tiny.gguf", "--termination-log",
                         "/dev/termination-log"]]
        jobs = [r for r in sim.requests if "/jobs/" in r.path]
        assert [(r.method, r.status) for r in jobs] == [("PATCH", 201), ("DELETE", 200)]
        assert not sim.list("Job", "default")
        await asyncio.wait_for(_until(lambda: not sim.list("Pod", "default", JOB_PODS)), 5)
        pod_reads = [r for r in sim.requests if "/pods" in r.path and r.method == "GET" and not r.watch]
        assert len(pod_reads) == 1  # the informer's first list: the Job's pod was followed by the watch


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.02)


async def test_a_missing_model_is_not_found_on_the_volume(sim: Sim, tmp_path: Path, volume: Path) -> None:
    sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME) as shimlet:
        with pytest.raises(PermanentStepError, match=r"^model not found on the volume: /models/llama-3-8b does not "
                                                     r"exist on PersistentVolumeClaim models"):
            await shimlet.inspect_model(spec("/models/llama-3-8b"))
        with pytest.raises(PermanentStepError, match=r"^model file /models/broken.gguf is truncated"):
            await shimlet.inspect_model(spec("/models/broken.gguf"))
        with pytest.raises(PermanentStepError, match="not on the model volume"):
            await shimlet.inspect_model(spec("/data/tiny.gguf"))
    assert not sim.list("Job", "default")


async def test_a_validation_image_without_the_tool(sim: Sim, tmp_path: Path) -> None:
    sim.set_job_handler(lambda pod: JobResult(succeeded=False, exit_code=1,
                                              message="/usr/bin/python: No module named modserv_shim"))
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME, validation_image="python:3.12-slim") as shimlet:
        with pytest.raises(PermanentStepError, match=r"failed with exit code 1: .*No module named modserv_shim"):
            await shimlet.inspect_model(spec("/models/tiny.gguf"))


async def test_a_validation_job_that_cannot_start(sim: Sim, tmp_path: Path) -> None:
    sim.inject(PodFault.bad_image(JOB_PODS))
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME) as shimlet:
        t0 = time.monotonic()
        with pytest.raises(PermanentStepError, match=r"validation Job .* cannot run: cannot pull the image "
                                                     r"ghcr.io/modserv-shim/modserv-shim"):
            await shimlet.inspect_model(spec("/models/tiny.gguf"))
        assert time.monotonic() - t0 < 2
    assert not sim.list("Job", "default")


async def test_model_root_reads_the_volume_directly(tmp_path: Path, volume: Path) -> None:
    options = {"model_volume": VOLUME, "model_root": str(volume), "kubeconfig": str(tmp_path / "no-cluster")}
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, options))  # never started: no cluster needed
    facts = ModelFacts.from_dict(await shimlet.inspect_model(spec("/models/tiny.gguf")))
    assert facts.path == "/models/tiny.gguf" and facts.format == "gguf"
    with pytest.raises(PermanentStepError, match=r"model not found on the volume: /models/gone.gguf .* looked for "
                                                 rf"{volume}/gone.gguf through model_root"):
        await shimlet.inspect_model(spec("/models/gone.gguf"))


# -- the whole flow: REST API -> opensourcellm pipeline -> k8s shimlet -> simulated cluster ---------------------


async def test_deploy_through_the_api_to_running(sim: Sim, tmp_path: Path, volume: Path, k8s_server: Live) -> None:
    sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
    body = {"modelName": "llama-3-8b", "modelFile": "/models/tiny.gguf",  # the brief's request, a small file
            "resourceRequirements": {"acceleratorType": "NVIDIA H20", "acceleratorCount": 1, "cpu": "4",
                                     "memory": "16Gi"}, "replicaCount": 1}
    dry = (await k8s_server.call("POST", "/api/v1/modserv/deploy", json={**body, "dryRun": True}, expect=200))
    rendered = dry["data"]["rendered"]["workload"]
    assert [o["kind"] for o in rendered["objects"]] == ["Service", "Deployment"]
    assert "kind: Deployment" in rendered["yaml"]
    pod = rendered["objects"][1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H20"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert not sim.list("Deployment", "default")

    with openai_backend("llama-3-8b") as backend:
        sid = (await k8s_server.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
        sim.set_service_backend("default", sid, backend)
        data = await k8s_server.wait_state(sid, "running", "failed", timeout=20)
        logs = (await k8s_server.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]
        assert data["state"] == "running", logs
    text = str(logs)
    assert "inspecting the model where the workload will see it" in text
    assert "a one-token completion answered" in text
    assert sim.get("Deployment", sid) is not None
    await k8s_server.call("DELETE", f"/api/v1/modserv/{sid}")
    await k8s_server.wait_state(sid, "terminated", timeout=10)
    assert sim.get("Deployment", sid) is None and sim.get("Service", sid) is None


async def test_a_deploy_that_cannot_pull_fails_with_the_reason(sim: Sim, tmp_path: Path, volume: Path,
                                                               k8s_server: Live) -> None:
    sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
    sim.inject(PodFault.bad_image("app.kubernetes.io/component=inference-server"))
    body = {"modelName": "tiny", "modelFile": "/models/tiny.gguf"}
    sid = (await k8s_server.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    data = await k8s_server.wait_state(sid, "failed", "running", timeout=20)
    assert data["state"] == "failed"
    assert "cannot pull the image ghcr.io/ggml-org/llama.cpp:server (ErrImagePull" in str(data), data
