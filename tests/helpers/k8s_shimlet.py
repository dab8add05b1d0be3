"""What the tests of the k8s shimlet on the simulated cluster (tests/k8s_sim) share: the nodes (one CPU node,
one node with two H20 GPUs), short back-offs, deploy contexts as the opensourcellm pipeline builds them, a
started shimlet, waiting for a phase, the pods of a workload, an OpenAI-shaped backend for the service proxy,
and the fixtures ``sim`` and ``shimlet``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.plugins import DeployContext, LaunchSpec, PluginContext, ResourcePhase, ResourceStatus
from modserv_shim.runtimes import LaunchParams, LlamaCppRuntime, VllmRuntime
from modserv_shim.shimlets.k8s import K8sShimlet
from modserv_shim.shimlets.k8s.naming import INSTANCE, workload_name
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.openai_stub import OpenAIStub
from modserv_shim.testing.shimlet_contract import phase_is, wait_for_status
from tests.k8s_sim import NodeSpec, Sim, run_sim

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NODES = [
    NodeSpec("cpu-1", cpu="16", memory="64Gi"),
    NodeSpec("h20-1", cpu="32", memory="256Gi", gpus=2, gpu_product="NVIDIA-H20", gpu_memory_mib=97871,
             taints=(GPU_TAINT,)),
]
# Short back-offs: the simulator's faults clear in tens of milliseconds.
FAST: dict[str, Any] = {"trust_env": False, "api_backoff": 0.02, "api_backoff_max": 0.2, "sync_timeout": 10.0,
                        "delete_wait": 5.0}


def tiny_launch(name: str = "tiny", model: str = "/models/tiny.gguf") -> LaunchSpec:
    return LlamaCppRuntime().render(LaunchParams(name, model, context_length=2048), target="container")


def llama3_launch() -> LaunchSpec:
    params = LaunchParams("llama-3-8b", "/models/llama-3-8b", accelerator_count=1, context_length=8192,
                          gpu_memory_utilization=0.9, startup_timeout=1080)
    return VllmRuntime().render(params, target="container")


def context(service_id: str, replicas: int = 1, *, launch: LaunchSpec | None = None, **spec: Any) -> DeployContext:
    """A deploy context as the opensourcellm pipeline builds it (same labels)."""
    launch = launch or tiny_launch()
    fields: dict[str, Any] = {"modelName": launch.served_model_name, "modelFile": launch.model_path,
                              "replicaCount": max(replicas, 1), **spec}
    deploy = DeploySpec(**fields)
    return DeployContext(service_id=service_id, spec=deploy, launch=launch, replicas=replicas,
                         labels={"modserv-shim/service-id": service_id, "modserv-shim/model": deploy.modelName})


def llama3_context(service_id: str, **requirements: Any) -> DeployContext:
    rr = {"acceleratorType": "NVIDIA H20", "acceleratorCount": 1, "cpu": "4", "memory": "16Gi", **requirements}
    return context(service_id, launch=llama3_launch(), resourceRequirements=rr)


def options_for(sim: Sim, tmp_path: Path, **options: Any) -> dict[str, Any]:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    return {"kubeconfig": str(kubeconfig), **FAST, **options}


@asynccontextmanager
async def shimlet_on(sim: Sim, tmp_path: Path, **options: Any) -> AsyncIterator[K8sShimlet]:
    """A started shimlet on ``sim``; closed (workloads left running) on exit."""
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path / "data", options_for(sim, tmp_path, **options)))
    await shimlet.start()
    try:
        yield shimlet
    finally:
        await shimlet.close()


async def wait_phase(shimlet: K8sShimlet, rid: str, phase: ResourcePhase, timeout: float = 5.0,
                     **fields: Any) -> ResourceStatus:
    return await wait_for_status(shimlet, rid, phase_is(phase, **fields), timeout=timeout, interval=0.01,
                                 what=f"{phase} {fields or ''}")


def pods_of(sim: Sim, rid: str) -> list[dict[str, Any]]:
    return sim.list("Pod", "default", f"{INSTANCE}={workload_name(rid)}")


@contextmanager
def openai_backend(model: str = "tiny") -> Iterator[str]:
    """A tiny OpenAI-shaped HTTP server on a free port (the target of ``Sim.set_service_backend``)."""
    with OpenAIStub(model) as stub:
        yield stub.url


@pytest.fixture(name="sim")
def sim_fixture() -> Iterator[Sim]:
    """The simulated cluster with ``NODES``."""
    with run_sim(nodes=NODES) as running:
        yield running


@pytest.fixture(name="shimlet")
async def shimlet_fixture(sim: Sim, tmp_path: Path) -> AsyncIterator[K8sShimlet]:
    """A started k8s shimlet on ``sim``."""
    async with shimlet_on(sim, tmp_path) as running:
        yield running

