"""The quant pipeline on the k8s shimlet: the quantization runs in a Job on the model volume.

The simulated API server (tests/k8s_sim, real lightkube over HTTP) runs each Job's pod with a job
handler that does what the pod would do: it runs the pod's own command - the real worker,
``python -m modserv_shim.pipelines.quant.worker '<json>'``, with llama.cpp's real quantizer - in a
child process, on a temporary folder standing for the PersistentVolumeClaim mounted at /models
(paths mapped both ways), and returns the report file as the termination message.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.config import Settings
from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.modelinfo import inspect_model
from modserv_shim.pipelines.quant import QuantPipeline
from modserv_shim.plugins import TASK_REPORT_ENV, PluginContext, VolumeTask
from modserv_shim.shimlets.k8s import K8sShimlet
from modserv_shim.shimlets.k8s.naming import COMPONENT, TASK_COMPONENT
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.shimlets.k8s.tasks import task_job
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.pipeline_contract import ContractContext, ServiceState
from tests.conftest import Live, free_port, serve
from tests.helpers.k8s_shimlet import openai_backend, options_for, shimlet_on, sim_fixture  # noqa: F401
from tests.helpers.k8s_volume import VOLUME, k8s_server_fixture, modelinfo_job, pvc_folder  # noqa: F401
from tests.helpers.tiny_gguf import write_tiny_llama_gguf
from tests.k8s_sim import JobResult, Sim, wait_until

TASK_PODS = f"{COMPONENT}={TASK_COMPONENT}"
WORKER = ["python", "-m", "modserv_shim.pipelines.quant.worker"]


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The content of the PVC "models": what the pods see under /models."""
    return pvc_folder(tmp_path)


def quant_job(volume: Path, tmp_path: Path, seen: list[dict[str, Any]], run_seconds: float = 2.5,
              ) -> Callable[[dict[str, Any]], JobResult]:
    """Runs the task pod's command (the real worker) against ``volume`` mounted at /models."""

    def handle(pod: dict[str, Any]) -> JobResult:
        container = pod["spec"]["containers"][0]
        command = list(container["command"])
        assert command[:3] == WORKER, command
        mounts = container["volumeMounts"]
        assert [(m["mountPath"], m.get("readOnly", False)) for m in mounts] == [("/models", False)]
        env = {e["name"]: e["value"] for e in container.get("env") or []}
        assert env == {TASK_REPORT_ENV: "/dev/termination-log"}
        seen.append({"request": json.loads(command[3]), "pod": pod})
        local = command[3].replace("/models", str(volume))  # the pod's paths, on the folder standing for the PVC
        report = tmp_path / f"report-{len(seen)}"
        done = subprocess.run([sys.executable, "-m", "modserv_shim.pipelines.quant.worker", local], check=False,
                              env={**os.environ, TASK_REPORT_ENV: str(report)}, capture_output=True, timeout=120)
        message = report.read_text().replace(str(volume), "/models") if report.exists() else done.stderr.decode()
        return JobResult(succeeded=done.returncode == 0, message=message, exit_code=done.returncode,
                         logs=done.stdout.decode(), duration=run_seconds)

    return handle


def partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.partial"))


# ------------------------------------------------------------------- through the REST API


def body(name: str, model: str = "/models/tiny.gguf", **extra: Any) -> dict[str, Any]:
    return {"modelName": name, "modelFile": model, "pipeline": "quant", "quantization": {"type": "Q8_0"},
            "resourceRequirements": {"cpu": "1", "memory": "2Gi"}, **extra}


async def test_quantized_in_a_job_on_the_volume_and_served_from_it(sim: Sim, tmp_path: Path, volume: Path,
                                                                    k8s_server: Live) -> None:
    seen: list[dict[str, Any]] = []
    sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
    sim.set_job_handler(quant_job(volume, tmp_path, seen), selector=TASK_PODS)
    with openai_backend("tiny-q8") as backend:
        sid = (await k8s_server.call("POST", "/api/v1/modserv/deploy", json=body("tiny-q8"), expect=202)
               )["data"]["serviceId"]
        sim.set_service_backend("default", sid, backend)
        svc = (await k8s_server.wait_state(sid, "running", "failed", timeout=60))
        logs = (await k8s_server.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs?step=model-quantization"))["data"]
        assert svc["state"] == "running", (svc["reason"], logs)
    text = [x["message"] for x in logs["logs"]]

    [made] = sorted((volume / ".modserv-quant").glob("*.Q8_0.gguf"))  # on the volume, named by the input's hash
    assert inspect_model(made).dtype == "Q8_0"
    assert partials(volume) == []
    served = f"/models/.modserv-quant/{made.name}"
    [job] = seen
    assert job["request"]["src"] == "/models/tiny.gguf" and job["request"]["cache"] == "/models/.modserv-quant"
    pod = job["pod"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert any(m.startswith("quantize Job tiny-q8-quantize-") and ": Running on " in m for m in text), text
    assert any(m.startswith("quantized to Q8_0 in ") and served in m for m in text), text
    rec = await k8s_server.server.manager.get(sid)
    assert rec.outputs["model_file"] == served
    assert rec.outputs["quantization"]["source_sha256"] == made.name.split(".")[0]
    deployment = sim.get("Deployment", sid)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert served in args, args  # the server reads the quantized file through its own (read-only) mount
    await wait_until_async(lambda: not sim.list("Job", "default") and not sim.list("Pod", "default", TASK_PODS))

    # The same model and type again: the Job finds the file in the cache (no quantizing, the file untouched).
    mtime = made.stat().st_mtime_ns
    with openai_backend("tiny-again") as backend:
        sid2 = (await k8s_server.call("POST", "/api/v1/modserv/deploy", json=body("tiny-again"), expect=202)
                )["data"]["serviceId"]
        sim.set_service_backend("default", sid2, backend)
        svc2 = await k8s_server.wait_state(sid2, "running", "failed", timeout=60)
        assert svc2["state"] == "running", svc2["reason"]
    text2 = [x["message"] for x in (await k8s_server.call(
        "GET", f"/api/v1/modserv/{sid2}/pipeline/logs?step=model-quantization"))["data"]["logs"]]
    assert any(m.startswith(f"cache hit: {served} (Q8_0") for m in text2), text2
    assert made.stat().st_mtime_ns == mtime and len(seen) == 2


async def wait_until_async(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_shimlet_that_mounts_only_the_model_file_is_a_422(sim: Sim, tmp_path: Path) -> None:
    options = options_for(sim, tmp_path)  # hostPath without path: each pod mounts its model's own file
    settings = Settings.load(None, data_dir=tmp_path / "data", shimlet="k8s", pipeline="opensourcellm",
                             port=free_port(), shimlets={"k8s": options})
    live = await serve(settings)
    try:
        answer = await live.call("POST", "/api/v1/modserv/deploy", json=body("tiny", "/srv/tiny.gguf"), expect=422)
    finally:
        await live.stop(delete_services=True)
    assert "the quant pipeline puts the quantized model where the k8s shimlet's workloads read it" in answer["message"]
    assert "set model_volume to a PersistentVolumeClaim" in answer["message"]


# --------------------------------------------------------------- failures and leftovers


async def run_quant_step(shimlet: K8sShimlet, spec: DeploySpec, tmp_path: Path) -> ContractContext:
    """model-quantization alone, with the facts model-validation found for the tiny model."""
    pipeline = QuantPipeline(PluginContext("quant", tmp_path))
    facts = inspect_model(write_tiny_llama_gguf(tmp_path / "facts.gguf"))
    state = ServiceState("svc-1", outputs={"model": facts.to_dict()})
    step = next(s for s in pipeline.steps() if s.name == "model-quantization")
    ctx = ContractContext(state, spec, shimlet, tmp_path)
    await pipeline.run_step(step, ctx)
    return ctx


async def test_the_jobs_report_is_the_reason(sim: Sim, tmp_path: Path, volume: Path) -> None:
    sim.set_job_handler(quant_job(volume, tmp_path, [], run_seconds=0.05), selector=TASK_PODS)
    spec = DeploySpec.model_validate(body("tiny", "/models/gone.gguf"))  # removed after it was validated
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME) as shimlet:
        with pytest.raises(PermanentStepError, match=r"^model not found on the volume: /models/gone.gguf is not a"
                                                     r" file on the model volume \(checked by Job tiny-quantize-"):
            await run_quant_step(shimlet, spec, tmp_path)
        # An image without llama-cpp-python: no report, the end of its output
        sim.set_job_handler(lambda pod: JobResult(succeeded=False, exit_code=1, message=(
            "ModuleNotFoundError: No module named 'llama_cpp'")), selector=TASK_PODS)
        with pytest.raises(PermanentStepError, match=r"ended with exit code 1 without a report \(ModuleNotFoundError:"
                                                     r" No module named 'llama_cpp'\); its image needs Python with"
                                                     r" modserv_shim and llama-cpp-python"):
            await run_quant_step(shimlet, DeploySpec.model_validate(body("tiny")), tmp_path)
    assert not sim.list("Job", "default")


async def test_a_task_job_left_by_a_killed_shim_is_deleted_at_start(sim: Sim, tmp_path: Path) -> None:
    from lightkube.resources.batch_v1 import Job
    from lightkube.types import PatchType

    sim.set_job_handler(lambda pod: JobResult(duration=600), selector=TASK_PODS)  # still quantizing
    options = options_for(sim, tmp_path, model_volume=VOLUME)
    spec = DeploySpec.model_validate(body("tiny"))
    task = VolumeTask(kind="quantize", spec=spec, command=(*WORKER, "{}"), timeout=600)
    leftover = task_job(task, "tiny-quantize-dead00", "default", K8sOptions.parse(options))
    async with sim.async_client(field_manager="modserv-shim") as client:
        await client.patch(Job, "tiny-quantize-dead00", leftover, patch_type=PatchType.APPLY, force=True)
    wait_until(lambda: sim.list("Pod", "default", "modserv-shim/validation-job=tiny-quantize-dead00"), timeout=5)
    async with shimlet_on(sim, tmp_path, model_volume=VOLUME):
        await wait_until_async(lambda: not sim.list("Job", "default") and not sim.list(
            "Pod", "default", "modserv-shim/validation-job=tiny-quantize-dead00"))


def test_the_shared_model_volume_of_the_k8s_shimlet(tmp_path: Path) -> None:
    def shimlet(**options: Any) -> K8sShimlet:
        return K8sShimlet(PluginContext("k8s", tmp_path, {"kubeconfig": str(tmp_path / "none"), **options}))

    spec = DeploySpec.model_validate(body("tiny"))
    shared = shimlet(model_volume=VOLUME).shared_model_volume(spec)
    assert shared.workload_root == "/models" and shared.host_root is None
    node_dir = {"type": "hostPath", "path": "/srv/models", "mount_path": "/models"}
    assert shimlet(model_volume=node_dir).shared_model_volume(spec).workload_root == "/models"
    with pytest.raises(ValidationFailed, match="hostPath without path"):
        shimlet().shared_model_volume(spec)
    with pytest.raises(ValidationFailed, match="not on the model volume"):
        shimlet(model_volume=VOLUME).shared_model_volume(DeploySpec.model_validate(body("x", "/data/x.gguf")))
