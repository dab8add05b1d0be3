"""Failures in plain words, and API faults that must not fail a deploy.

Each pod failure the simulator can inject becomes FAILED (never ready) or
DEGRADED (was ready) with a reason a person reads, within 2 seconds of the
injection.  API faults (a share of 500/429, dropped watches, 410 Expired) are
absorbed by retries, watch resumption and relisting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from modserv_shim.errors import BackendUnavailable, PermanentStepError, StateConflict
from modserv_shim.plugins import ResourcePhase
from modserv_shim.shimlets.k8s import K8sShimlet
from modserv_shim.shimlets.k8s.naming import INSTANCE
from tests.helpers.k8s_shimlet import (
    context,
    llama3_context,
    pods_of,
    shimlet_fixture,  # noqa: F401
    shimlet_on,
    sim_fixture,  # noqa: F401
    wait_phase,
)
from tests.k8s_sim import ApiFault, PodFault, Sim

LIMIT = 2.0  # seconds from the injection to the shimlet's verdict


async def verdict_within(shimlet: K8sShimlet, rid: str, phase: ResourcePhase, since: float) -> str:
    status = await wait_phase(shimlet, rid, phase, timeout=LIMIT + 3)
    elapsed = time.monotonic() - since
    assert elapsed < LIMIT, f"{phase} after {elapsed:.2f} s: {status.reason}"
    assert status.reason
    return status.reason


FAULTS: list[tuple[str, Callable[[str], PodFault], tuple[str, ...]]] = [
    ("no-capacity", PodFault.no_capacity, ("cannot be scheduled: no node has cpu 1 free; no node has memory 2Gi free",
                                                  "0/2 nodes are available", "Insufficient cpu")),
    ("bad-image", PodFault.bad_image, ("cannot pull the image ghcr.io/ggml-org/llama.cpp:server", "ErrImagePull",
                                       "not found")),
    ("crash-loop", PodFault.crash_loop, ("keeps crashing", "CrashLoopBackOff", "exit code 1")),
    ("oom", PodFault.oom_killed, ("running out of memory", "OOMKilled", "exit code 137",
                                  "raise resourceRequirements.memory")),
    ("config-error", PodFault.config_error, ("cannot be created", "CreateContainerConfigError",
                                             'configmap "model-config" not found')),
]


@pytest.mark.parametrize(("label", "fault", "words"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_pod_failure_before_ready_is_failed_with_the_reason(
    sim: Sim, shimlet: K8sShimlet, label: str, fault: Callable[[str], PodFault], words: tuple[str, ...]
) -> None:
    rid = f"tiny-{label}"
    t0 = time.monotonic()
    sim.inject(fault(f"{INSTANCE}={rid}"))
    await shimlet.create(context(rid, resourceRequirements={"cpu": "1", "memory": "2Gi"}))
    reason = await verdict_within(shimlet, rid, ResourcePhase.FAILED, t0)
    for word in words:
        assert word in reason, reason


async def test_not_enough_gpus_names_what_the_pod_asked_for(shimlet: K8sShimlet) -> None:
    t0 = time.monotonic()
    rid = await shimlet.create(llama3_context("llama-4gpu", acceleratorCount=4))
    reason = await verdict_within(shimlet, rid, ResourcePhase.FAILED, t0)
    assert reason.startswith("cannot be scheduled: no node has 4 x nvidia.com/gpu free among the nodes with"
                             " nvidia.com/gpu.product=NVIDIA-H20"), reason
    assert "Insufficient nvidia.com/gpu" in reason
    assert "no node matches" not in reason  # the H20 node matches; only the CPU node does not
    assert "preemption" not in reason


async def test_an_accelerator_no_node_has(shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(llama3_context("llama-a100", acceleratorType="NVIDIA A100"))
    status = await wait_phase(shimlet, rid, ResourcePhase.FAILED)
    assert "no node matches nvidia.com/gpu.product=NVIDIA-A100" in (status.reason or "")


async def test_unschedulable_waits_for_the_grace_period(sim: Sim, tmp_path: Path) -> None:
    async with shimlet_on(sim, tmp_path, unschedulable_grace=0.6) as shimlet:
        rid = await shimlet.create(llama3_context("llama-wait", acceleratorCount=4))
        reason = await wait_for_reason(shimlet, rid, "cannot be scheduled")
        assert (await shimlet.status(rid)).phase is ResourcePhase.PENDING
        assert "the deploy fails if no capacity appears within 0.6 s" in reason
        t0 = time.monotonic()
        failed = await wait_phase(shimlet, rid, ResourcePhase.FAILED, timeout=3)  # a timer, no new event
        assert time.monotonic() - t0 < 1.5
        assert "Insufficient nvidia.com/gpu" in (failed.reason or "")


async def test_a_crash_is_pending_until_it_repeats(sim: Sim, tmp_path: Path) -> None:
    async with shimlet_on(sim, tmp_path, max_start_failures=4) as shimlet:
        sim.inject(PodFault.crash_loop(f"{INSTANCE}=tiny-crashy"))
        rid = await shimlet.create(context("tiny-crashy"))
        seen: list[str] = []
        deadline = time.monotonic() + 5
        while (status := await shimlet.status(rid)).phase is not ResourcePhase.FAILED:
            assert time.monotonic() < deadline, status
            seen.append(status.reason or "")
            await asyncio.sleep(0.01)
        assert any("the deploy fails after 4 exits before ready" in r for r in seen), seen
        assert "4 restarts" in (status.reason or ""), status.reason


async def test_a_ready_workload_that_loses_a_replica_is_degraded(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-degrade", 2))
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=2)
    fault = sim.inject(PodFault.crash_loop(f"{INSTANCE}=tiny-degrade", message="CUDA error: illegal memory access"))
    victim = pods_of(sim, rid)[0]["metadata"]["name"]
    t0 = time.monotonic()
    async with sim.async_client() as client:
        await client.delete(Pod, victim)
    reason = await verdict_within(shimlet, rid, ResourcePhase.DEGRADED, t0)
    assert "CUDA error: illegal memory access" in reason or "lost 1 ready replica" in reason, reason
    status = await wait_phase(shimlet, rid, ResourcePhase.DEGRADED, timeout=3)
    assert status.ready_replicas == 1
    await wait_for_reason(shimlet, rid, "CrashLoopBackOff")
    fault.remove()
    await wait_phase(shimlet, rid, ResourcePhase.READY, timeout=5, ready_replicas=2)


async def wait_for_reason(shimlet: K8sShimlet, rid: str, word: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while word not in (reason := (await shimlet.status(rid)).reason or ""):
        assert time.monotonic() < deadline, f"no {word!r} in {reason!r}"
        await asyncio.sleep(0.01)
    return reason


async def test_create_retries_a_failed_deploy_with_fresh_pods(sim: Sim, shimlet: K8sShimlet) -> None:
    fault = sim.inject(PodFault.bad_image(f"{INSTANCE}=tiny-retry"))
    ctx = context("tiny-retry")
    rid = await shimlet.create(ctx)
    await wait_phase(shimlet, rid, ResourcePhase.FAILED)
    with pytest.raises(StateConflict):
        await shimlet.scale(rid, 2)
    first = {p["metadata"]["uid"] for p in pods_of(sim, rid)}
    fault.remove()
    await shimlet.create(ctx)  # same spec: a retry
    status = await wait_phase(shimlet, rid, ResourcePhase.READY)
    assert {p["metadata"]["uid"] for p in pods_of(sim, rid)}.isdisjoint(first)
    assert status.reason is None


async def test_logs_of_a_crash_looping_pod_come_from_its_last_run(sim: Sim, shimlet: K8sShimlet) -> None:
    sim.inject(PodFault.crash_loop(f"{INSTANCE}=tiny-crashlog", message="ValueError: bad --ctx-size"))
    rid = await shimlet.create(context("tiny-crashlog"))
    await wait_phase(shimlet, rid, ResourcePhase.FAILED)
    lines = await shimlet.logs(rid, tail=3)
    assert any(line.endswith("ValueError: bad --ctx-size") for line in lines), lines
    assert sim.request_count(path_contains="/log") >= 1


# -- API faults --------------------------------------------------------------------------------------------------


async def test_a_share_of_500_and_429_does_not_fail_create_status_scale_delete(sim: Sim, shimlet: K8sShimlet) -> None:
    sim.inject(ApiFault(status=500, count=None, ratio=0.3))
    sim.inject(ApiFault(status=429, count=None, ratio=0.2, retry_after=0))
    sim.drop_watches()
    rids = [await shimlet.create(context(f"tiny-flaky-{i}")) for i in range(3)]
    sim.expire_watches()
    for rid in rids:
        await wait_phase(shimlet, rid, ResourcePhase.READY, timeout=10)
    await shimlet.scale(rids[0], 2)
    sim.drop_watches()
    await wait_phase(shimlet, rids[0], ResourcePhase.READY, timeout=10, ready_replicas=2)
    for rid in rids:
        await shimlet.delete(rid)
        await wait_phase(shimlet, rid, ResourcePhase.NOT_FOUND, timeout=10)
    failed = [r for r in sim.requests if r.status in (429, 500)]
    assert len(failed) >= 5  # the faults did fire


async def test_retry_after_is_honoured(sim: Sim, shimlet: K8sShimlet) -> None:
    sim.inject(ApiFault(status=429, count=1, retry_after=1, method="PATCH"))
    t0 = time.monotonic()
    rid = await shimlet.create(context("tiny-polite"))
    assert time.monotonic() - t0 >= 1.0
    await wait_phase(shimlet, rid, ResourcePhase.READY)


async def test_exhausted_retries_are_backend_unavailable(sim: Sim, tmp_path: Path) -> None:
    async with shimlet_on(sim, tmp_path, api_retries=2) as shimlet:
        sim.inject(ApiFault(status=503, count=None, method="PATCH"))
        with pytest.raises(BackendUnavailable, match="the Kubernetes API answered 503"):
            await shimlet.create(context("tiny-down"))


async def test_forbidden_is_permanent_and_points_at_rbac(sim: Sim, shimlet: K8sShimlet) -> None:
    sim.inject(ApiFault(status=403, count=1, method="PATCH", message='services "x" is forbidden: User "shim"'
                                                                     ' cannot patch resource "services"'))
    with pytest.raises(PermanentStepError, match=r"deploy/kubernetes/rbac.yaml"):
        await shimlet.create(context("tiny-forbidden"))


async def test_a_dropped_watch_resumes_without_relisting(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-drop"))
    await wait_phase(shimlet, rid, ResourcePhase.READY)
    lists = [i.lists for i in shimlet._informers]
    assert sim.drop_watches() == 3
    await shimlet.scale(rid, 2)
    await wait_phase(shimlet, rid, ResourcePhase.READY, ready_replicas=2)
    assert [i.lists for i in shimlet._informers] == lists


async def test_an_expired_watch_relists_and_notices_what_was_deleted_meanwhile(sim: Sim, shimlet: K8sShimlet) -> None:
    rid = await shimlet.create(context("tiny-gone"))
    keep = await shimlet.create(context("tiny-kept"))
    for r in (rid, keep):
        await wait_phase(shimlet, r, ResourcePhase.READY)
    outage = sim.inject(ApiFault(status=500, count=None, method="GET"))  # the shim sees nothing for a while
    sim.drop_watches()
    async with sim.async_client() as client:
        await client.delete(Deployment, "tiny-gone")
    sim.compact()  # ... and the history it would resume from is gone
    outage.remove()
    await wait_phase(shimlet, rid, ResourcePhase.NOT_FOUND, timeout=5)
    assert (await shimlet.status(keep)).phase is ResourcePhase.READY
    lists = {i.kind: i.lists for i in shimlet._informers}
    assert lists["Deployment"] >= 2, lists  # 410 on resumption -> a fresh list, which lacks tiny-gone


async def test_status_before_start_starts_the_shimlet(sim: Sim, tmp_path: Path) -> None:
    from modserv_shim.plugins import PluginContext
    from tests.helpers.k8s_shimlet import options_for

    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, options_for(sim, tmp_path)))
    try:
        assert (await shimlet.status("nothing")).phase is ResourcePhase.NOT_FOUND
    finally:
        await shimlet.close()
    with pytest.raises(BackendUnavailable):
        await shimlet.status("nothing")


async def test_unreachable_api_fails_start_with_a_clear_error(tmp_path: Path) -> None:
    kubeconfig: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    import yaml

    from modserv_shim.plugins import PluginContext

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, {"kubeconfig": str(path), "trust_env": False,
                                                         "sync_timeout": 0.3, "api_backoff": 0.01}))
    with pytest.raises(BackendUnavailable,
                       match=r"did not answer the first lists within 0.3 s .*last errors: Deployment: ConnectError"):
        await shimlet.start()
    await shimlet.close()
    missing = K8sShimlet(PluginContext("k8s", tmp_path, {"kubeconfig": str(tmp_path / "nope")}))
    with pytest.raises(BackendUnavailable, match="cannot load the Kubernetes configuration"):
        await missing.start()


async def test_informer_resumes_from_its_version_and_relists_on_410() -> None:
    """The reflector loop on its own: drop -> resume from the last version; 410 -> relist; no hot loop."""
    import httpx2
    from lightkube.core.exceptions import ApiError
    from lightkube.models.meta_v1 import Status

    from modserv_shim.shimlets.k8s.cache import ClusterCache
    from modserv_shim.shimlets.k8s.informer import Informer
    from modserv_shim.shimlets.k8s.kube import Backoff

    def dep(name: str, rv: str) -> dict[str, Any]:
        return {"kind": "Deployment", "metadata": {"name": name, "resourceVersion": rv}}

    def expired() -> ApiError:
        return ApiError(status=Status(code=410, reason="Expired", message="too old resource version"))

    calls: list[str] = []
    lists = iter([("10", [dep("a", "5"), dep("b", "6")]), ("20", [dep("a", "15")]), ("30", [dep("a", "15")])])

    async def lister(kind: str) -> tuple[str, list[dict[str, Any]]]:
        calls.append("list")
        return next(lists)

    async def watcher(kind: str, rv: str) -> Any:
        calls.append(f"watch@{rv}")
        if rv == "10":
            yield "MODIFIED", dep("a", "11")
            raise httpx2.ReadError("connection dropped")
        if rv in ("11", "20"):  # the history is gone; then even the fresh list's version has expired
            raise expired()
        await asyncio.sleep(3600)
        yield "ADDED", dep("never", "99")  # pragma: no cover

    changed: list[set[str]] = []
    cache = ClusterCache(changed.append)
    for kind in ("StatefulSet", "Pod"):
        cache.replace(kind, [], "1")
    informer = Informer("Deployment", cache, lister, watcher, Backoff(0.001, 0.01))
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(200):
            if calls[-1:] == ["watch@30"]:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == ["list", "watch@10", "watch@11", "list", "watch@20", "list", "watch@30"]
    assert cache.workload_names() == {"a"}  # b vanished while the watch was down: the relist noticed
    assert informer.lists == 3 and informer.resumes >= 2
    assert any("b" in names for names in changed[2:])  # ... and reported it
