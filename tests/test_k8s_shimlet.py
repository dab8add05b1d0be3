"""The k8s shimlet against the simulated cluster (tests/k8s_sim), through the real lightkube client over HTTP.

The shared helpers are in tests/helpers/k8s_shimlet.py.  This module holds the
shimlet contract suite and the lifecycle tests: a GPU
deploy, StatefulSets, idempotent and changed creates, re-adoption after a
restart, scale, delete, logs, the service proxy and the "status never calls
the API" promise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from modserv_shim.errors import NotFound
from modserv_shim.plugins import (
    DeployContext,
    LaunchSpec,
    PluginContext,
    ResourcePhase,
    launch_target,
    shimlet_capabilities,
)
from modserv_shim.shimlets.k8s import K8sShimlet
from modserv_shim.shimlets.k8s.naming import INSTANCE, workload_name
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.shimlet_contract import ContextFactory, ShimletContract
from tests.helpers.k8s_shimlet import (
    context,
    llama3_context,
    openai_backend,
    pods_of,
    shimlet_fixture,  # noqa: F401
    shimlet_on,
    sim_fixture,  # noqa: F401
    tiny_launch,
    wait_phase,
)
from tests.k8s_sim import Sim

# -- the contract every shimlet keeps -------------------------------------------------------------------------------


class TestK8sShimletContract(ShimletContract):
    ready_timeout = 10.0

    @pytest.fixture
    async def shimlet(self, sim: Sim, tmp_path: Path) -> AsyncIterator[K8sShimlet]:
        async with shimlet_on(sim, tmp_path) as running:
            yield running

    @pytest.fixture
    def make_context(self) -> ContextFactory:
        return context


def test_plugin_surface(tmp_path: Path) -> None:
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, {}))
    assert shimlet.name == "k8s"
    assert launch_target(shimlet) == "container"
    assert set(shimlet_capabilities(shimlet)) == {"scale", "logs", "watch", "render", "inspect-model", "probe",
                                                  "shared-model-volume", "volume-task", "capacity"}


# -- lifecycle on the simulated cluster -----------------------------------------------------------------------------


async def test_llama3_8b_on_an_h20_node_becomes_ready(sim: Sim, shimlet: K8sShimlet) -> None:
    ctx = llama3_context("llama-3-8b-123e4567-e89b-12d3-a456-426614174000")
    rid = await shimlet.create(ctx)
    status = await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=1, desired_replicas=1)
    assert status.endpoint == "http://llama-3-8b-123e4567-e89b-12d3-a456-426614174000.default.svc.cluster.local:8000"

    dep = sim.get("Deployment", workload_name(rid))
    assert dep is not None
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H20"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    container = pod_spec["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v0.8.5"
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert container["args"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    assert "--tensor-parallel-size" in container["args"]
    assert container["startupProbe"]["httpGet"] == {"path": "/v1/models", "port": "http", "scheme": "HTTP"}
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 1080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "model", "mountPath": "/models/llama-3-8b", "readOnly": True} in container["volumeMounts"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    assert not any(v["name"] == "dshm" for v in pod_spec["volumes"])  # one GPU: no tensor-parallel shm
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modserv-shim"
    assert dep["metadata"]["annotations"]["modserv-shim/service-id"] == rid

    (pod,) = pods_of(sim, rid)
    assert pod["spec"]["nodeName"] == "h20-1"
    svc = sim.get("Service", workload_name(rid))
    assert svc is not None and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"][0]["port"] == 8000
    # dryRun shows exactly what was applied.
    rendered = shimlet.render(ctx)["objects"]
    assert [o["kind"] for o in rendered] == ["Service", "Deployment"]
    assert rendered[1]["spec"]["template"]["spec"]["containers"][0]["args"] == container["args"]


async def test_tensor_parallel_gets_two_gpus_and_shared_memory(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(llama3_context("llama-tp2", acceleratorCount=2))
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    pod_spec = sim.get("Deployment", "llama-tp2")["spec"]["template"]["spec"]  # type: ignore[index]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod_spec["volumes"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


async def test_statefulset_workload(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-sts", 2, workloadType="StatefulSet"))
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=2)
    assert sim.get("Deployment", "tiny-sts") is None
    sts = sim.get("StatefulSet", "tiny-sts")
    assert sts is not None and sts["spec"]["serviceName"] == "tiny-sts"
    assert sorted(p["metadata"]["name"] for p in pods_of(sim, rid)) == ["tiny-sts-0", "tiny-sts-1"]
    await shimlet.scale(rid, 1)
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=1, desired_replicas=1)
    await shimlet.delete(rid)
    assert sim.get("StatefulSet", "tiny-sts") is None and not pods_of(sim, rid)


async def test_repeated_create_is_a_noop_and_a_changed_spec_is_an_update(sim: Sim, shimlet: K8sShimlet) -> None:
    ctx = context("tiny-update")
    rid = await shimlet.create(ctx)
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    before = sim.get("Deployment", "tiny-update")
    assert before is not None and before["metadata"]["generation"] == 1
    assert await shimlet.create(ctx) == rid
    same = sim.get("Deployment", "tiny-update")
    assert same is not None and same["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    old_pods = {p["metadata"]["name"] for p in pods_of(sim, rid)}

    changed = context("tiny-update", launch=tiny_launch(), env={"LLAMA_ARG_THREADS": "4"})
    changed = DeployContext(changed.service_id, changed.spec,
                            LaunchSpec.from_dict({**ctx.launch.to_dict(), "env": {"LLAMA_ARG_THREADS": "4"}}),
                            1, changed.labels)
    await shimlet.create(changed)
    after = sim.get("Deployment", "tiny-update")
    assert after is not None and after["metadata"]["generation"] == 2
    status = await wait_phase(shimlet, rid, ResourcePhase.READY)
    assert {p["name"] for p in status.detail["pods"]}.isdisjoint(old_pods)


async def test_switching_the_workload_type_replaces_the_workload(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-switch"))
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    await shimlet.create(context("tiny-switch", workloadType="StatefulSet"))
    assert sim.get("Deployment", "tiny-switch") is None
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    status = await shimlet.status(rid)
    assert status.detail["kind"] == "StatefulSet"


async def test_restart_adopts_existing_workloads_without_touching_them(sim: Sim, tmp_path: Path) -> None:
    ctx = llama3_context("llama-adopt")
    async with shimlet_on(sim, tmp_path) as first:
        rid = await first.create(ctx)
        await wait_phase(first, rid, ResourcePhase.READY)
    before = sim.get("Deployment", "llama-adopt")
    assert before is not None
    pods = {p["metadata"]["uid"] for p in pods_of(sim, rid)}

    t0 = time.monotonic()
    async with shimlet_on(sim, tmp_path) as second:
        status = await second.status(rid)  # known at once: start() listed what exists
        assert (status.phase, status.ready_replicas) == (ResourcePhase.READY, 1)
        assert second.resource_ids() == [rid]
        assert await second.create(ctx) == rid
        after = sim.get("Deployment", "llama-adopt")
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert {p["metadata"]["uid"] for p in pods_of(sim, rid)} == pods
        writes = [r for r in sim.requests if r.monotonic >= t0 and r.method not in ("GET",)]
        assert {(r.method, r.status) for r in writes} == {("PATCH", 200)}  # two no-op applies, nothing created
        await second.delete(rid)


async def test_scale_goes_through_the_scale_subresource(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-scale"))
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    t0 = time.monotonic()
    await shimlet.scale(rid, 3)
    assert sim.request_count(method="PATCH", path_contains="/deployments/tiny-scale/scale", since=t0) == 1
    assert sim.request_count(method="PUT", since=t0) == 0
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=3, desired_replicas=3)
    assert len(pods_of(sim, rid)) == 3
    await shimlet.scale(rid, 0)
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=0, desired_replicas=0)
    with pytest.raises(NotFound):
        await shimlet.scale("never-created", 1)


async def test_delete_removes_workload_service_and_pods(sim: Sim, shimlet: K8sShimlet) -> None:
    long_id = "a-model-name-that-is-long-enough-to-need-hashing-" + "0123456789abcdef" * 3
    rid = await shimlet.create(context(long_id, 2))
    name = workload_name(long_id)
    assert len(name) <= 52 and name != long_id
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=2)
    assert sim.get("Service", name) is not None
    await shimlet.delete(rid)
    assert sim.get("Deployment", name) is None
    assert sim.get("Service", name) is None
    assert not pods_of(sim, rid)  # delete waits for the pods
    assert not sim.list("ReplicaSet", "default", f"{INSTANCE}={name}")
    assert (await shimlet.status(rid)).phase is ResourcePhase.NOT_FOUND
    await shimlet.delete(rid)  # idempotent


async def test_logs_of_every_pod(sim: Sim, shimlet: K8sShimlet) -> None:
    sim.set_pod_logs("INFO loading model\nINFO listening on 0.0.0.0:8080\n", selector=f"{INSTANCE}=tiny-logs")
    rid = await shimlet.create(context("tiny-logs", 2))
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=2)
    lines = await shimlet.logs(rid, tail=1)
    assert len(lines) == 2
    assert all(line.startswith("[tiny-logs-") and line.endswith("] INFO listening on 0.0.0.0:8080")
               for line in lines)
    everything = await shimlet.logs(rid)
    assert sum("INFO loading model" in line for line in everything) == 2


async def test_requests_reach_the_service_through_the_api_server_proxy(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-proxy"))
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    with openai_backend() as url:
        sim.set_service_backend("default", "tiny-proxy", url)
        code, body = await shimlet.request(rid, "GET", "/v1/models")
        assert code == 200 and body["data"][0]["id"] == "tiny"
        code, body = await shimlet.request(rid, "POST", "/v1/completions",
                                           {"model": "tiny", "prompt": "Hello", "max_tokens": 1})
        assert code == 200 and body["choices"][0]["text"] == "Hello"  # the stub echoes: the body went through
    assert sim.request_count(path_contains="/services/tiny-proxy:http/proxy/v1/models") == 1


async def test_status_and_watch_cost_no_api_requests(sim: Sim, shimlet: K8sShimlet) -> None:
    rids = [await shimlet.create(context(f"tiny-quiet-{i}")) for i in range(5)]
    for rid in rids:
        await wait_phase(shimlet, rid, ResourcePhase.READY)
    t0 = time.monotonic()
    for _ in range(200):
        for rid in rids:
            assert (await shimlet.status(rid)).phase is ResourcePhase.READY
    assert sim.request_count(since=t0) == 0
    watches = sim.open_watches()
    assert sorted(w["kind"] or "" for w in watches) == ["Deployment", "Pod", "StatefulSet"]
    assert {w["labelSelector"] for w in watches} == {"app.kubernetes.io/managed-by=modserv-shim"}


async def test_replicas_zero_and_validation(shimlet: K8sShimlet) -> None:
    from modserv_shim.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        await shimlet.create(context("tiny-neg", -1))
    with pytest.raises(ValidationFailed):
        await shimlet.scale("tiny-neg", -1)
    rid = await shimlet.create(context("tiny-zero", 0))
    status = await wait_phase(shimlet, rid, ResourcePhase.READY, desired_replicas=0)
    assert status.ready_replicas == 0


def test_startup_probe_covers_the_startup_timeout(tmp_path: Path) -> None:
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, {"namespace": "models"}))
    launch = LaunchSpec.from_dict({**tiny_launch().to_dict(), "startup_timeout": 3601.0})
    rendered = shimlet.render(context("tiny", launch=launch))
    probe = rendered["objects"][1]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] == math.ceil(3601 / probe["periodSeconds"])
    assert rendered["namespace"] == "models"
    assert rendered["objects"][1]["spec"]["progressDeadlineSeconds"] >= 3601


# -- RBAC: deploy/kubernetes/rbac.yaml allows exactly what the shimlet does -------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def rbac_rules() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((REPO / "deploy/kubernetes/rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def needed_permissions(method: str, path: str, query: str, status: int) -> set[tuple[str, str, str]]:
    """The (apiGroup, resource, verb) triples kube-apiserver checks for one request."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    if method == "GET":
        verb = "get" if named else ("watch" if "watch=true" in query else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if named else "deletecollection"}[method]
    if resource.endswith("/proxy"):
        verb = "get" if method == "GET" else "create"
    needed = {(group, resource, verb)}
    if method == "PATCH" and status == 201:  # a server-side apply that creates needs "create" too
        needed.add((group, resource, "create"))
    return needed


async def test_rbac_role_allows_exactly_what_the_shimlet_does(sim: Sim, tmp_path: Path) -> None:
    from tests.k8s_sim import JobResult, PodFault

    facts = {"format": "gguf", "path": "/models/tiny.gguf", "architecture": "llama", "name": "tiny",
             "parameter_count": 1, "weights_bytes": 1, "context_length": 2048, "layers": 1, "hidden_size": 8,
             "heads": 1, "kv_heads": 1, "head_dim": 8, "dtype": "F16"}
    sim.set_job_handler(lambda pod: JobResult(succeeded=True, message=json.dumps({"ok": True, "facts": facts})))
    crash = sim.inject(PodFault.crash_loop(f"{INSTANCE}=tiny-rbac-crash"))
    async with shimlet_on(sim, tmp_path) as shimlet:
        await shimlet.inspect_model(DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf"))
        rid = await shimlet.create(context("tiny-rbac"))
        await shimlet.create(context("tiny-rbac"))
        await wait_phase(shimlet, rid, ResourcePhase.READY)
        await shimlet.scale(rid, 2)
        sts = await shimlet.create(context("tiny-rbac-sts", workloadType="StatefulSet"))
        await wait_phase(shimlet, sts, ResourcePhase.READY)
        await shimlet.scale(sts, 2)
        await shimlet.logs(rid)
        with openai_backend() as url:
            sim.set_service_backend("default", "tiny-rbac", url)
            await shimlet.request(rid, "GET", "/v1/models")
            await shimlet.request(rid, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
        broken = await shimlet.create(context("tiny-rbac-crash"))
        await wait_phase(shimlet, broken, ResourcePhase.FAILED)
        await shimlet.logs(broken)  # previous run's logs
        crash.remove()
        await shimlet.create(context("tiny-rbac-crash"))  # retry: deletes the failed pods
        for r in (rid, sts, broken):
            await shimlet.delete(r)
    used: set[tuple[str, str, str]] = set()
    for r in sim.requests:
        if r.path.startswith(("/api/", "/apis/")) and r.status < 400:
            used |= needed_permissions(r.method, r.path, r.query, r.status)
    allowed = rbac_rules()
    assert used - allowed == set(), "the Role misses permissions the shimlet uses"
    assert allowed - used == set(), "the Role grants permissions the shimlet never uses"


async def test_direct_endpoint_access_uses_cluster_dns(sim: Sim, tmp_path: Path) -> None:
    import httpx2

    seen: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return httpx2.Response(200, json={"object": "list", "data": [{"id": "tiny"}]})

    async with shimlet_on(sim, tmp_path, endpoint_access="direct", cluster_domain="example.internal") as shimlet:
        rid = await shimlet.create(context("tiny-direct", launch=tiny_launch()))
        status = await wait_phase(shimlet, rid, ResourcePhase.READY)
        assert status.endpoint == "http://tiny-direct.default.svc.example.internal:8000"
        assert shimlet._direct is not None
        await shimlet._direct.aclose()
        shimlet._direct = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
        assert await shimlet.request(rid, "GET", "/v1/models") == (200, {"object": "list", "data": [{"id": "tiny"}]})
    assert seen == ["http://tiny-direct.default.svc.example.internal:8000/v1/models"]
    assert sim.request_count(path_contains="/proxy/") == 0
