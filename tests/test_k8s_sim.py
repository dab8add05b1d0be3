"""Tests of the simulated Kubernetes cluster (tests/k8s_sim), driven by the REAL lightkube async client.

These pin down the API semantics the future ``k8s`` shimlet relies on: Status errors surfacing as
``lightkube.ApiError`` with the right code, server-side apply, watches (selectors, 410, bookmarks),
the Deployment/Job controllers, the scheduler's messages and every injectable fault.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.autoscaling_v1 import ScaleSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace, Node, Pod, Service
from lightkube.types import CascadeType, OnErrorAction, OnErrorResult, PatchType

from tests.k8s_sim import ApiFault, JobResult, PodFault, Sim, eventually, run_sim

FIELD_MANAGER = "modserv-shim"


# -- fixtures and builders -------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Sim]:
    with run_sim() as running:
        yield running


@pytest.fixture
async def client(sim: Sim, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_file(sim.write_kubeconfig(tmp_path / "kubeconfig"))
    async with AsyncClient(config, trust_env=False, field_manager=FIELD_MANAGER) as kube:
        yield kube


def deployment_dict(name: str = "llm", *, replicas: int = 1, image: str = "vllm/vllm-openai:v0.6.3",
                    labels: dict[str, str] | None = None, gpus: int = 0,
                    node_selector: dict[str, str] | None = None,
                    tolerations: list[dict[str, Any]] | None = None, strategy: str | None = None) -> dict[str, Any]:
    labels = labels or {"app": name, "app.kubernetes.io/managed-by": "modserv-shim"}
    container: dict[str, Any] = {"name": "server", "image": image, "ports": [{"containerPort": 8000}]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": labels},
                            "template": {"metadata": {"labels": labels}, "spec": pod_spec}}
    if strategy:
        spec["strategy"] = {"type": strategy}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": spec}


def deployment(name: str = "llm", **kw: Any) -> Deployment:
    return Deployment.from_dict(deployment_dict(name, **kw))


async def pods_of(client: AsyncClient, selector: dict[str, str]) -> list[Pod]:
    return [p async for p in client.list(Pod, labels=selector)]


async def wait_ready(client: AsyncClient, name: str, replicas: int, timeout: float = 5.0) -> Deployment:
    async def probe() -> Deployment | None:
        dep = await client.get(Deployment, name)
        return dep if dep.status and dep.status.readyReplicas == replicas else None

    return await eventually(probe, timeout)


async def first_pod_where(client: AsyncClient, selector: dict[str, str], check: Any, timeout: float = 5.0) -> Pod:
    async def probe() -> Pod | None:
        return next((p for p in await pods_of(client, selector) if check(p)), None)

    return await eventually(probe, timeout)


def waiting_reason(pod: Pod) -> str | None:
    statuses = pod.status.containerStatuses if pod.status else None
    if statuses and statuses[0].state and statuses[0].state.waiting:
        return statuses[0].state.waiting.reason
    return None


def condition(pod: Pod, type_: str) -> Any:
    return next((c for c in (pod.status.conditions or []) if c.type == type_), None) if pod.status else None


# -- CRUD and Status errors -------------------------------------------------------------------------------


async def test_create_get_list_delete_and_status_errors(client: AsyncClient) -> None:
    created = await client.create(ConfigMap(metadata=ObjectMeta(name="cfg", labels={"team": "a"}), data={"k": "v"}))
    assert created.metadata.uid and created.metadata.creationTimestamp
    assert int(created.metadata.resourceVersion) > 0
    await client.create(ConfigMap(metadata=ObjectMeta(name="other", labels={"team": "b"})))

    fetched = await client.get(ConfigMap, "cfg")
    assert fetched.data == {"k": "v"}
    assert [c.metadata.name async for c in client.list(ConfigMap, labels={"team": "a"})] == ["cfg"]
    listing = client.list(ConfigMap, fields={"metadata.name": "other"})
    assert [c.metadata.name async for c in listing] == ["other"]
    assert int(listing.resourceVersion) >= int(created.metadata.resourceVersion)

    with pytest.raises(ApiError) as conflict:
        await client.create(ConfigMap(metadata=ObjectMeta(name="cfg")))
    assert conflict.value.status.code == 409
    assert conflict.value.status.reason == "AlreadyExists"
    assert conflict.value.status.message == 'configmaps "cfg" already exists'

    with pytest.raises(ApiError) as missing:
        await client.get(Deployment, "nope")
    assert missing.value.status.code == 404
    assert missing.value.status.message == 'deployments.apps "nope" not found'

    with pytest.raises(ApiError) as no_namespace:
        await client.create(ConfigMap(metadata=ObjectMeta(name="x")), namespace="ghost")
    assert no_namespace.value.status.code == 404
    assert no_namespace.value.status.message == 'namespaces "ghost" not found'

    stale = ConfigMap(metadata=ObjectMeta(name="cfg", resourceVersion=created.metadata.resourceVersion),
                      data={"k": "v2"})
    await client.replace(ConfigMap(metadata=ObjectMeta(name="cfg"), data={"k": "v1"}))
    with pytest.raises(ApiError) as modified:
        await client.replace(stale)
    assert modified.value.status.code == 409
    assert "the object has been modified" in modified.value.status.message

    await client.delete(ConfigMap, "cfg")
    with pytest.raises(ApiError) as gone:
        await client.delete(ConfigMap, "cfg")
    assert gone.value.status.code == 404


async def test_namespaces_get_and_create(client: AsyncClient) -> None:
    default = await client.get(Namespace, "default")
    assert default.status.phase == "Active"
    created = await client.create(Namespace(metadata=ObjectMeta(name="models")))
    assert created.metadata.labels["kubernetes.io/metadata.name"] == "models"
    await client.create(ConfigMap(metadata=ObjectMeta(name="in-models")), namespace="models")
    with pytest.raises(ApiError) as bad_name:
        await client.create(Namespace(metadata=ObjectMeta(name="Bad_Name")))
    assert bad_name.value.status.code == 422


async def test_schema_validation_rejects_invalid_objects(sim: Sim, client: AsyncClient) -> None:
    bad = deployment()
    bad.spec = DeploymentSpec(replicas="two", selector=bad.spec.selector, template=bad.spec.template)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as invalid:
        await client.create(bad)
    assert invalid.value.status.code == 422
    assert invalid.value.status.reason == "Invalid"
    assert invalid.value.status.message.startswith(
        'Deployment.apps "llm" is invalid: spec.replicas: Invalid value: "two"')

    # Unknown fields are rejected (strict schema), also through server-side apply.
    manifest = deployment_dict()
    manifest["spec"]["template"]["spec"]["containers"][0]["gpuCount"] = 1
    async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {sim.token}"}) as raw:
        response = await raw.patch("/apis/apps/v1/namespaces/default/deployments/llm",
                                   params={"fieldManager": FIELD_MANAGER, "force": "true"},
                                   content=json.dumps(manifest),
                                   headers={"Content-Type": "application/apply-patch+yaml"})
    assert response.status_code == 422
    assert "spec.template.spec.containers[0].gpuCount" in response.json()["message"]

    mismatched = deployment_dict()
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiError) as selector_error:
        await client.create(Deployment.from_dict(mismatched))
    assert "`selector` does not match template `labels`" in selector_error.value.status.message

    with pytest.raises(ApiError) as gpu_error:
        bad_gpu = deployment_dict()
        bad_gpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
        await client.create(Deployment.from_dict(bad_gpu))
    assert "Limit must be set for non overcommitable resources" in gpu_error.value.status.message


# -- server-side apply -------------------------------------------------------------------------------------


async def test_server_side_apply_create_noop_and_change(client: AsyncClient) -> None:
    first = await client.apply(deployment(), field_manager=FIELD_MANAGER, force=True)
    assert first.metadata.generation == 1
    assert [m.manager for m in first.metadata.managedFields] == [FIELD_MANAGER]
    await wait_ready(client, "llm", 1)
    settled = await client.get(Deployment, "llm")

    again = await client.apply(deployment(), field_manager=FIELD_MANAGER, force=True)
    assert again.metadata.generation == 1
    assert again.metadata.resourceVersion == settled.metadata.resourceVersion  # a true no-op

    changed = await client.apply(deployment(image="vllm/vllm-openai:v0.7.0"), field_manager=FIELD_MANAGER, force=True)
    assert changed.metadata.generation == 2
    assert changed.spec.template.spec.containers[0].image == "vllm/vllm-openai:v0.7.0"

    # Labels only: metadata changes do not bump the generation.
    relabelled = deployment(image="vllm/vllm-openai:v0.7.0")
    relabelled.metadata.labels = {**relabelled.metadata.labels, "tier": "gold"}
    after_label = await client.apply(relabelled, field_manager=FIELD_MANAGER, force=True)
    assert after_label.metadata.generation == 2
    # A field the manager stops applying is removed.
    dropped = await client.apply(deployment(image="vllm/vllm-openai:v0.7.0"), field_manager=FIELD_MANAGER, force=True)
    assert "tier" not in dropped.metadata.labels


async def test_apply_conflicts_between_managers(client: AsyncClient) -> None:
    await client.apply(deployment(replicas=1), field_manager=FIELD_MANAGER)
    with pytest.raises(ApiError) as conflict:
        await client.apply(deployment(replicas=3), field_manager="someone-else")
    assert conflict.value.status.code == 409
    assert conflict.value.status.message == \
        'Apply failed with 1 conflict: conflict with "modserv-shim" using apps/v1: .spec.replicas'
    forced = await client.apply(deployment(replicas=3), field_manager="someone-else", force=True)
    assert forced.spec.replicas == 3
    assert forced.metadata.generation == 2


async def test_merge_and_strategic_patches(client: AsyncClient) -> None:
    await client.create(deployment())
    patched = await client.patch(Deployment, "llm", {"metadata": {"annotations": {"a": "1"}}},
                                 patch_type=PatchType.MERGE)
    assert patched.metadata.annotations["a"] == "1"
    assert patched.metadata.generation == 1
    strategic = await client.patch(Deployment, "llm", {"spec": {"template": {"spec": {"containers": [
        {"name": "server", "image": "vllm/vllm-openai:v0.8.0"}]}}}})
    container = strategic.spec.template.spec.containers[0]
    assert container.image == "vllm/vllm-openai:v0.8.0"
    assert container.ports[0].containerPort == 8000  # strategic merge keeps the other fields of the item
    assert strategic.metadata.generation == 2


# -- watches ------------------------------------------------------------------------------------------------


async def test_label_selected_watch_sees_added_modified_deleted(client: AsyncClient) -> None:
    listing = client.list(ConfigMap, labels={"app.kubernetes.io/managed-by": "modserv-shim"})
    assert [c async for c in listing] == []
    events: list[tuple[str, str]] = []

    async def consume() -> None:
        async for kind, obj in client.watch(ConfigMap, labels={"app.kubernetes.io/managed-by": "modserv-shim"},
                                            resource_version=listing.resourceVersion):
            events.append((kind, obj.metadata.name))
            if len(events) == 4:
                return

    task = asyncio.create_task(consume())
    managed = {"app.kubernetes.io/managed-by": "modserv-shim"}
    await client.create(ConfigMap(metadata=ObjectMeta(name="a", labels=managed)))
    await client.create(ConfigMap(metadata=ObjectMeta(name="unrelated")))
    await client.patch(ConfigMap, "a", {"data": {"x": "1"}})
    await client.create(ConfigMap(metadata=ObjectMeta(name="b", labels=managed)))
    await client.delete(ConfigMap, "a")
    await asyncio.wait_for(task, 5)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_watch_selector_transition_and_set_based_selector(client: AsyncClient) -> None:
    from lightkube import operators

    start = client.list(ConfigMap)
    _ = [c async for c in start]
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async for kind, obj in client.watch(ConfigMap, labels={"tier": operators.in_(["gpu", "cpu"])},
                                            resource_version=start.resourceVersion):
            seen.append((kind, obj.metadata.name))
            if len(seen) == 2:
                return

    task = asyncio.create_task(consume())
    await client.create(ConfigMap(metadata=ObjectMeta(name="m", labels={"tier": "gpu"})))
    await client.patch(ConfigMap, "m", {"metadata": {"labels": {"tier": "tpu"}}}, patch_type=PatchType.MERGE)
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "m"), ("DELETED", "m")]  # leaving the selector is a DELETED event


async def test_watch_with_expired_resource_version_gets_410() -> None:
    with run_sim(watch_history=5) as sim:
        async with sim.async_client() as client:
            first = await client.create(ConfigMap(metadata=ObjectMeta(name="c0")))
            for i in range(1, 10):
                await client.create(ConfigMap(metadata=ObjectMeta(name=f"c{i}")))
            with pytest.raises(ApiError) as expired:
                async for _ in client.watch(ConfigMap, resource_version=first.metadata.resourceVersion):
                    pass
            assert expired.value.status.code == 410
            assert expired.value.status.reason == "Expired"
            assert expired.value.status.message.startswith("too old resource version")


async def test_expired_watch_is_resumed_by_relisting(sim: Sim, client: AsyncClient) -> None:
    await client.create(ConfigMap(metadata=ObjectMeta(name="before")))
    errors: list[int] = []

    def retry(exc: Exception, count: int) -> OnErrorResult:
        errors.append(exc.status.code if isinstance(exc, ApiError) else 0)
        return OnErrorResult(OnErrorAction.RETRY)

    names: list[tuple[str, str]] = []

    async def consume() -> None:
        async for kind, obj in client.watch(ConfigMap, on_error=retry):
            names.append((kind, obj.metadata.name))
            if ("ADDED", "after") in names:
                return

    task = asyncio.create_task(consume())
    await eventually(lambda: _true_async(("ADDED", "before") in names))
    await client.create(ConfigMap(metadata=ObjectMeta(name="during")))
    await eventually(lambda: _true_async(("ADDED", "during") in names))
    sim.expire_watches()  # compaction + closed stream: resuming from the last version is 410
    await eventually(lambda: _true_async(410 in errors))
    await client.create(ConfigMap(metadata=ObjectMeta(name="after")))
    await asyncio.wait_for(task, 5)
    assert names.count(("ADDED", "before")) == 2  # re-listed from scratch after the 410


async def _true_async(value: bool) -> bool:
    return value


async def test_watch_bookmarks() -> None:
    # lightkube's watch() cannot ask for bookmarks, so this speaks HTTP directly.
    with run_sim(bookmark_interval=0.05) as sim:
        await _read_one_bookmark(sim)


async def _read_one_bookmark(sim: Sim) -> None:
    headers = {"Authorization": f"Bearer {sim.token}"}
    async with httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=5) as raw:
        rv = (await raw.get("/api/v1/namespaces/default/pods")).json()["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with raw.stream("GET", "/api/v1/namespaces/default/pods", params=params) as stream:
            async for line in stream.aiter_lines():
                event = json.loads(line)
                assert event["type"] == "BOOKMARK"
                assert event["object"]["kind"] == "Pod"
                assert int(event["object"]["metadata"]["resourceVersion"]) >= int(rv)
                break


async def test_dropped_watch_connection(sim: Sim, client: AsyncClient) -> None:
    received: list[str] = []

    async def consume() -> None:
        async for _, obj in client.watch(ConfigMap):
            received.append(obj.metadata.name)

    task = asyncio.create_task(consume())
    await client.create(ConfigMap(metadata=ObjectMeta(name="one")))
    await eventually(lambda: _true_async("one" in received))
    assert sim.drop_watches() == 1
    with pytest.raises(Exception, match=r"incomplete chunked read|peer closed connection"):
        await asyncio.wait_for(task, 5)


# -- workloads --------------------------------------------------------------------------------------------------


async def test_deployment_creates_ready_pods_and_reports_status(sim: Sim, client: AsyncClient) -> None:
    await client.apply(deployment(replicas=2), field_manager=FIELD_MANAGER)
    available = await asyncio.wait_for(client.wait(Deployment, "llm", for_conditions=["Available"]), 5)
    assert available.status.availableReplicas == 2
    dep = await wait_ready(client, "llm", 2)
    assert dep.status.availableReplicas == 2
    assert dep.status.updatedReplicas == 2
    assert dep.status.observedGeneration == dep.metadata.generation
    assert {c.type: c.status for c in dep.status.conditions} == {"Available": "True", "Progressing": "True"}

    pods = await pods_of(client, {"app": "llm"})
    assert len(pods) == 2
    replica_sets = [rs async for rs in client.list(ReplicaSet, labels={"app": "llm"})]
    assert len(replica_sets) == 1
    pod_hash = replica_sets[0].metadata.labels["pod-template-hash"]
    for pod in pods:
        assert pod.metadata.name.startswith(f"llm-{pod_hash}-")
        assert pod.metadata.ownerReferences[0].kind == "ReplicaSet"
        assert pod.status.phase == "Running"
        assert condition(pod, "Ready").status == "True"
        assert pod.spec.nodeName == "sim-node-1"
        assert pod.status.podIP

    events = [e async for e in client.list(Event, fields={"involvedObject.name": pods[0].metadata.name})]
    assert {"Scheduled", "Created", "Started"} <= {e.reason for e in events}

    await client.delete(Deployment, "llm")
    await eventually(lambda: _empty(client, {"app": "llm"}))  # pods are garbage-collected


async def _empty(client: AsyncClient, selector: dict[str, str]) -> bool:
    return not await pods_of(client, selector)


async def test_status_omits_zero_counts_while_nothing_is_ready(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.not_ready("app=llm"))
    await client.create(deployment())
    pod = await first_pod_where(client, {"app": "llm"}, lambda p: p.status and p.status.phase == "Running")
    assert condition(pod, "Ready").status == "False"
    dep = await client.get(Deployment, "llm")
    assert dep.status.readyReplicas is None  # absent, as on a real API server
    assert dep.status.unavailableReplicas == 1


async def test_scale_subresource(client: AsyncClient) -> None:
    await client.create(deployment(replicas=1))
    scale = await client.get(Deployment.Scale, "llm")
    assert scale.spec.replicas == 1
    assert scale.status.selector == "app=llm,app.kubernetes.io/managed-by=modserv-shim"
    updated = await client.replace(Deployment.Scale(metadata=ObjectMeta(name="llm", namespace="default"),
                                                    spec=ScaleSpec(replicas=3)), "llm")
    assert updated.spec.replicas == 3
    dep = await wait_ready(client, "llm", 3)
    assert dep.metadata.generation == 2
    assert len(await pods_of(client, {"app": "llm"})) == 3
    await client.patch(Deployment.Scale, "llm", {"spec": {"replicas": 0}}, patch_type=PatchType.MERGE)
    await eventually(lambda: _empty(client, {"app": "llm"}))


async def test_recreate_rollout_replaces_pods(client: AsyncClient) -> None:
    await client.apply(deployment(strategy="Recreate"), field_manager=FIELD_MANAGER)
    await wait_ready(client, "llm", 1)
    old = {p.metadata.name for p in await pods_of(client, {"app": "llm"})}
    await client.apply(deployment(strategy="Recreate", image="vllm/vllm-openai:v0.9.0"), field_manager=FIELD_MANAGER)

    async def rolled() -> bool:
        dep = await client.get(Deployment, "llm")
        pods = await pods_of(client, {"app": "llm"})
        return bool(dep.status.observedGeneration == 2 and dep.status.updatedReplicas == 1
                    and dep.status.readyReplicas == 1 and len(pods) == 1 and pods[0].metadata.name not in old)

    await eventually(rolled)


async def test_statefulset_ordinal_pods(client: AsyncClient) -> None:
    manifest = deployment_dict("db", replicas=2)
    manifest.update(kind="StatefulSet")
    manifest["spec"].update(serviceName="db")
    await client.apply(StatefulSet.from_dict(manifest), field_manager=FIELD_MANAGER)

    async def ready() -> StatefulSet | None:
        sts = await client.get(StatefulSet, "db")
        return sts if sts.status and sts.status.readyReplicas == 2 else None

    sts = await eventually(ready)
    assert sts.status.currentRevision == sts.status.updateRevision
    pods = sorted(await pods_of(client, {"app": "db"}), key=lambda p: p.metadata.name)
    assert [p.metadata.name for p in pods] == ["db-0", "db-1"]
    assert pods[1].metadata.labels["apps.kubernetes.io/pod-index"] == "1"
    assert pods[1].spec.hostname == "db-1" and pods[1].spec.subdomain == "db"
    await client.patch(StatefulSet.Scale, "db", {"spec": {"replicas": 1}}, patch_type=PatchType.MERGE)

    async def scaled_down() -> bool:
        return [p.metadata.name for p in await pods_of(client, {"app": "db"})] == ["db-0"]

    await eventually(scaled_down)


# -- scheduling -------------------------------------------------------------------------------------------------


async def test_unschedulable_when_gpus_are_short() -> None:
    nodes = [{"name": f"gpu-{i}", "gpus": 1, "gpu_product": "NVIDIA-H20"} for i in range(3)]
    with run_sim(nodes=nodes) as sim:
        async with sim.async_client() as client:
            await client.create(deployment(gpus=2, node_selector={"nvidia.com/gpu.product": "NVIDIA-H20"}))
            pod = await first_pod_where(client, {"app": "llm"}, lambda p: condition(p, "PodScheduled"))
            scheduled = condition(pod, "PodScheduled")
            assert scheduled.status == "False"
            assert scheduled.reason == "Unschedulable"
            assert scheduled.message.startswith("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
            assert pod.status.phase == "Pending"
            events = [e async for e in client.list(Event, fields={"reason": "FailedScheduling"})]
            assert events and events[0].type == "Warning"

            sim.add_node("gpu-big", gpus=2, gpu_product="NVIDIA-H20")
            await wait_ready(client, "llm", 1)
            assert (await pods_of(client, {"app": "llm"}))[0].spec.nodeName == "gpu-big"


async def test_scheduler_honours_selectors_and_taints() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    nodes = [{"name": "cpu-1"}, {"name": "l4-1", "gpus": 1, "gpu_product": "NVIDIA-L4", "taints": (taint,)}]
    with run_sim(nodes=nodes) as sim:
        async with sim.async_client() as client:
            await client.create(deployment("a", gpus=1, node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"}))
            pod = await first_pod_where(client, {"app": "a"}, lambda p: condition(p, "PodScheduled"))
            assert condition(pod, "PodScheduled").message.startswith(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                "1 node(s) had untolerated taint {nvidia.com/gpu: present}.")
            tolerate = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            await client.create(deployment("b", gpus=1, node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"},
                                           tolerations=tolerate))
            await wait_ready(client, "b", 1)
            l4_nodes = client.list(Node, labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
            assert [n.metadata.name async for n in l4_nodes] == ["l4-1"]


# -- faults ------------------------------------------------------------------------------------------------------


async def test_fault_bad_image(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.bad_image("app=llm"))
    await client.create(deployment(image="registry.invalid/nope:1"))
    pulled = await first_pod_where(client, {"app": "llm"}, lambda p: waiting_reason(p) == "ErrImagePull")
    assert "registry.invalid/nope:1" in pulled.status.containerStatuses[0].state.waiting.message
    backoff = await first_pod_where(client, {"app": "llm"}, lambda p: waiting_reason(p) == "ImagePullBackOff")
    assert backoff.status.containerStatuses[0].state.waiting.message.startswith(
        'Back-off pulling image "registry.invalid/nope:1"')
    assert backoff.status.phase == "Pending"


async def test_fault_crash_loop(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.crash_loop("app=llm", message="CUDA error: no kernel image"))
    await client.create(deployment())
    pod = await first_pod_where(client, {"app": "llm"},
                                lambda p: waiting_reason(p) == "CrashLoopBackOff"
                                and p.status.containerStatuses[0].restartCount >= 2)
    status = pod.status.containerStatuses[0]
    assert status.lastState.terminated.exitCode == 1
    assert status.lastState.terminated.reason == "Error"
    assert status.state.waiting.message.startswith("back-off ")
    assert pod.status.phase == "Running"
    assert condition(pod, "Ready").status == "False"


async def test_fault_oom_killed(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.oom_killed("app=llm"))
    await client.create(deployment())
    pod = await first_pod_where(client, {"app": "llm"},
                                lambda p: bool(p.status and p.status.containerStatuses
                                               and p.status.containerStatuses[0].lastState
                                               and p.status.containerStatuses[0].lastState.terminated))
    terminated = pod.status.containerStatuses[0].lastState.terminated
    assert (terminated.reason, terminated.exitCode) == ("OOMKilled", 137)


async def test_fault_config_error_and_recovery(sim: Sim, client: AsyncClient) -> None:
    handle = sim.inject(PodFault.config_error("app=llm", message='secret "hf-token" not found'))
    await client.create(deployment())
    pod = await first_pod_where(client, {"app": "llm"}, lambda p: waiting_reason(p) == "CreateContainerConfigError")
    assert pod.status.containerStatuses[0].state.waiting.message == 'secret "hf-token" not found'
    handle.remove()
    await wait_ready(client, "llm", 1)


async def test_fault_no_capacity(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.no_capacity())
    await client.create(deployment(gpus=1))
    pod = await first_pod_where(client, {"app": "llm"}, lambda p: condition(p, "PodScheduled"))
    assert condition(pod, "PodScheduled").message.startswith(
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


async def test_api_faults_500_and_429(sim: Sim, client: AsyncClient) -> None:
    sim.inject(ApiFault(status=500, count=2, method="GET"))
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            await client.get(Namespace, "default")
        assert err.value.status.code == 500
    assert (await client.get(Namespace, "default")).metadata.name == "default"

    sim.inject(ApiFault(status=429, count=1, retry_after=2, path_contains="/configmaps"))
    with pytest.raises(ApiError) as throttled:
        await client.create(ConfigMap(metadata=ObjectMeta(name="x")))
    assert throttled.value.status.code == 429
    assert throttled.value.status.reason == "TooManyRequests"
    assert throttled.value.response.headers["Retry-After"] == "2"
    await client.create(ConfigMap(metadata=ObjectMeta(name="x")))


async def test_api_fault_ratio_is_seeded(sim: Sim, client: AsyncClient) -> None:
    sim.inject(ApiFault(status=503, count=None, ratio=0.5, path_contains="/configmaps"))
    failures = 0
    for _ in range(20):
        try:
            _ = [c async for c in client.list(ConfigMap)]
        except ApiError as exc:
            assert exc.status.code == 503
            failures += 1
    assert 3 <= failures <= 17
    sim.clear_faults()
    _ = [c async for c in client.list(ConfigMap)]


# -- jobs, logs, proxy ---------------------------------------------------------------------------------------------


def job_obj(name: str = "validate", backoff_limit: int = 0) -> Job:
    return Job.from_dict({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "model-validation"}},
        "spec": {"backoffLimit": backoff_limit, "template": {
            "metadata": {"labels": {"app.kubernetes.io/component": "model-validation"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "check", "image": "modserv-shim/validator:1",
                                     "args": ["/models/qwen"]}]}}},
    })


async def test_job_success_reports_termination_message(sim: Sim, client: AsyncClient) -> None:
    report = json.dumps({"ok": True, "architecture": "Qwen2ForCausalLM", "bytes": 1234})
    sim.set_job_handler(lambda pod: JobResult(succeeded=True, message=report, logs="checked 3 shards\n"))
    await client.create(job_obj())

    async def complete() -> Job | None:
        job = await client.get(Job, "validate")
        return job if job.status and job.status.succeeded == 1 else None

    job = await eventually(complete)
    assert {c.type for c in job.status.conditions} == {"SuccessCriteriaMet", "Complete"}
    pods = await pods_of(client, {"job-name": "validate"})
    assert len(pods) == 1
    terminated = pods[0].status.containerStatuses[0].state.terminated
    assert (terminated.reason, terminated.exitCode) == ("Completed", 0)
    assert json.loads(terminated.message)["architecture"] == "Qwen2ForCausalLM"
    assert pods[0].status.phase == "Succeeded"
    log_lines = [line async for line in client.log(pods[0].metadata.name)]
    assert log_lines[-1] == "checked 3 shards\n"

    # batch/v1 Jobs orphan their pods by default; Background removes them.
    await client.delete(Job, "validate", cascade=CascadeType.BACKGROUND)
    await eventually(lambda: _empty(client, {"job-name": "validate"}))


async def test_job_failure_hits_backoff_limit(sim: Sim, client: AsyncClient) -> None:
    sim.set_job_handler(lambda pod: JobResult(succeeded=False, message="config.json not found", exit_code=2))
    await client.create(job_obj(backoff_limit=1))

    async def failed() -> Job | None:
        job = await client.get(Job, "validate")
        conds = {c.type: c for c in (job.status.conditions or [])} if job.status else {}
        return job if "Failed" in conds else None

    job = await eventually(failed)
    assert job.status.failed == 2
    assert {c.type: c.reason for c in job.status.conditions}["Failed"] == "BackoffLimitExceeded"
    pods = await pods_of(client, {"job-name": "validate"})
    assert {p.status.containerStatuses[0].state.terminated.message for p in pods} == {"config.json not found"}

    await client.delete(Job, "validate")  # default propagation: Orphan
    assert len(await pods_of(client, {"job-name": "validate"})) == 2


async def test_pod_logs(sim: Sim, client: AsyncClient) -> None:
    sim.set_pod_logs("INFO loading weights\nINFO Uvicorn running on http://0.0.0.0:8000\n", selector="app=llm")
    await client.create(deployment())
    await wait_ready(client, "llm", 1)
    pod = (await pods_of(client, {"app": "llm"}))[0]
    lines = [line async for line in client.log(pod.metadata.name)]
    assert lines == ["INFO loading weights\n", "INFO Uvicorn running on http://0.0.0.0:8000\n"]
    assert [line async for line in client.log(pod.metadata.name, tail_lines=1)] == lines[-1:]
    with pytest.raises(ApiError) as missing:
        _ = [line async for line in client.log("no-such-pod")]
    assert missing.value.status.code == 404


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "qwen"}], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_service_proxy_reaches_backend(sim: Sim, client: AsyncClient, backend: str) -> None:
    svc = Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llm"},
                             "spec": {"selector": {"app": "llm"}, "ports": [{"name": "http", "port": 8000}]}})
    created = await client.create(svc)
    assert created.spec.clusterIP.startswith("10.96.")
    sim.set_service_backend("default", "llm", backend)
    proxy = "/api/v1/namespaces/default/services/llm:8000/proxy/v1/models"
    async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {sim.token}"}) as raw:
        unavailable = await raw.get(proxy)
        assert unavailable.status_code == 503
        assert unavailable.json()["message"].startswith('no endpoints available for service "llm:8000"')
        await client.create(deployment())
        await wait_ready(client, "llm", 1)
        ok = await raw.get(proxy, params={"x": "1"})
        assert ok.status_code == 200
        assert ok.json()["data"][0]["id"] == "qwen"
        assert ok.json()["path"] == "/v1/models?x=1"
        by_name = await raw.get("/api/v1/namespaces/default/services/http:llm:http/proxy/v1/models")
        assert by_name.status_code == 200


# -- plumbing ------------------------------------------------------------------------------------------------------


async def test_request_log_discovery_and_auth(sim: Sim, client: AsyncClient) -> None:
    sim.clear_requests()
    since = time.monotonic()
    await client.get(Namespace, "default")
    await client.apply(deployment(), field_manager=FIELD_MANAGER)
    assert sim.request_count(since=since) == 2
    assert sim.request_count(method="PATCH", path_contains="/deployments/llm") == 1
    record = sim.requests[-1]
    assert (record.method, record.status) == ("PATCH", 201)
    assert "fieldManager=modserv-shim" in record.query

    async with httpx.AsyncClient(base_url=sim.url) as raw:
        version = (await raw.get("/version")).json()
        assert version["major"] == "1" and int(version["minor"]) >= 29
        assert (await raw.get("/apis")).status_code == 401
        authed = {"Authorization": f"Bearer {sim.token}"}
        groups = (await raw.get("/apis", headers=authed)).json()
        assert {g["name"] for g in groups["groups"]} >= {"apps", "batch"}
        resources = (await raw.get("/apis/apps/v1", headers=authed)).json()["resources"]
        assert "deployments/scale" in {res["name"] for res in resources}


def test_sync_helpers_and_kubeconfig(tmp_path: Path) -> None:
    with run_sim(nodes=[{"name": "n1", "gpus": 8, "gpu_product": "NVIDIA-H20"}]) as sim:
        path = sim.write_kubeconfig(tmp_path / "kc.yaml", namespace="models")
        config = KubeConfig.from_file(path)
        assert config.get().namespace == "models"
        assert config.get().cluster.server == sim.url
        node = sim.get("Node", "n1", namespace=None)
        assert node is not None
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H20"
        assert sim.add_node(gpus=1) == "sim-node-2"
        assert len(sim.list("nodes")) == 2


# -- more API semantics ---------------------------------------------------------------------------------------------


async def test_watch_connections_are_released(sim: Sim, client: AsyncClient) -> None:
    async def consume() -> None:
        async for _ in client.watch(Pod, labels={"app.kubernetes.io/managed-by": "modserv-shim"}):
            pass

    task = asyncio.create_task(consume())
    watches = await eventually(lambda: _value_async(sim.open_watches()))
    assert watches == [{"kind": "Pod", "namespace": "default",
                        "labelSelector": "app.kubernetes.io/managed-by=modserv-shim", "fieldSelector": None}]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: _true_async(not sim.open_watches()))


async def _value_async(value: Any) -> Any:
    return value


async def test_pagination_dry_run_generate_name_and_deletecollection(sim: Sim, client: AsyncClient) -> None:
    for i in range(5):
        await client.create(ConfigMap(metadata=ObjectMeta(name=f"page-{i}", labels={"batch": "x"})))
    assert len([c async for c in client.list(ConfigMap, labels={"batch": "x"}, chunk_size=2)]) == 5

    dry = await client.create(ConfigMap(metadata=ObjectMeta(name="dry")), dry_run=True)
    assert dry.metadata.name == "dry"
    with pytest.raises(ApiError):
        await client.get(ConfigMap, "dry")

    generated = await client.create(ConfigMap(metadata=ObjectMeta(generateName="gen-")))
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == len("gen-") + 5

    # lightkube's deletecollection() takes no selector; the API does.
    async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {sim.token}"}) as raw:
        deleted = await raw.delete("/api/v1/namespaces/default/configmaps", params={"labelSelector": "batch=x"})
    assert len(deleted.json()["items"]) == 5
    assert [c async for c in client.list(ConfigMap, labels={"batch": "x"})] == []

    with pytest.raises(ApiError) as bad_field:
        _ = [c async for c in client.list(ConfigMap, fields={"spec.nodeName": "n"})]
    assert bad_field.value.status.code == 400
    assert bad_field.value.status.message == "field label not supported: spec.nodeName"


async def test_status_subresource_is_separate_from_spec(client: AsyncClient) -> None:
    await client.create(deployment(replicas=0))
    current = await client.get(Deployment, "llm")
    current.status.observedGeneration = 42
    replaced = await client.replace(current)
    assert replaced.status.observedGeneration != 42  # main-resource writes ignore status
    patched = await client.patch(Deployment.Status, "llm", {"status": {"observedGeneration": 42}},
                                 patch_type=PatchType.MERGE)
    assert patched.status.observedGeneration == 42
    assert patched.metadata.generation == 1


async def test_graceful_pod_deletion_and_replacement() -> None:
    with run_sim(pod_grace_seconds=0.3) as sim:
        async with sim.async_client() as client:
            await client.create(deployment())
            await wait_ready(client, "llm", 1)
            victim = (await pods_of(client, {"app": "llm"}))[0]
            await client.delete(Pod, victim.metadata.name)
            terminating = await client.get(Pod, victim.metadata.name)
            assert terminating.metadata.deletionTimestamp is not None

            async def replaced() -> bool:
                names = {p.metadata.name for p in await pods_of(client, {"app": "llm"})}
                return victim.metadata.name not in names and len(names) == 1

            await eventually(replaced)
            await wait_ready(client, "llm", 1)
            kills = [e async for e in client.list(Event, fields={"reason": "Killing"})]
            assert kills and kills[0].involvedObject.name == victim.metadata.name


async def test_logs_of_a_container_that_never_started(sim: Sim, client: AsyncClient) -> None:
    sim.inject(PodFault.bad_image("app=llm"))
    await client.create(deployment())
    pod = await first_pod_where(client, {"app": "llm"}, lambda p: waiting_reason(p) in ("ErrImagePull",
                                                                                        "ImagePullBackOff"))
    with pytest.raises(ApiError) as err:
        _ = [line async for line in client.log(pod.metadata.name)]
    assert err.value.status.code == 400
    assert f'container "server" in pod "{pod.metadata.name}" is waiting to start' in err.value.status.message


async def test_deleting_a_namespace_removes_its_content(client: AsyncClient) -> None:
    await client.create(Namespace(metadata=ObjectMeta(name="scratch")))
    await client.create(ConfigMap(metadata=ObjectMeta(name="c")), namespace="scratch")
    await client.delete(Namespace, "scratch")
    assert [c async for c in client.list(ConfigMap, namespace="scratch")] == []
    with pytest.raises(ApiError) as gone:
        await client.get(Namespace, "scratch")
    assert gone.value.status.code == 404


async def test_cluster_at_rest_writes_nothing(sim: Sim, client: AsyncClient) -> None:
    await client.create(deployment(replicas=2))
    await wait_ready(client, "llm", 2)

    async def settled() -> bool:
        before = sim.resource_version
        await asyncio.sleep(0.2)
        return sim.resource_version == before

    await eventually(settled)
    since = time.monotonic()
    for _ in range(3):
        await client.get(Deployment, "llm")
    assert sim.request_count(since=since) == 3
    assert sim.request_rate(since) > 0
