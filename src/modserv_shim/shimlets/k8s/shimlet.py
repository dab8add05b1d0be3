"""The ``k8s`` shimlet: each service is a Deployment (or StatefulSet) plus a ClusterIP Service.

Contracts (see :class:`~modserv_shim.plugins.Shimlet`) and how they are kept:

* ``create`` applies the Service and the workload with server-side apply under
  our field manager: the first call creates them, an identical call changes
  nothing (not even ``metadata.generation``), a changed spec is an update.
  The resource id is the service id; Kubernetes names derive from it
  (:mod:`.naming`).  ``create`` on a FAILED workload is a retry: the spec is
  re-applied and its pods are deleted, so the controller starts fresh ones
  (image pulls and crash back-offs start over).
* ``status`` answers from the watch cache (:mod:`.cache`), never from the API;
  see :mod:`.status` for the phases and :mod:`.reasons` for the words.
* ``delete`` (idempotent; takes the resource id, which is the service id)
  deletes everything labelled ``app.kubernetes.io/instance=<name>``: the
  workload (either kind) and the Service, all called ``<name>``, with background
  cascade (ReplicaSets and pods go with them); then it waits up to
  ``delete_wait`` seconds, on the pod watch, for the pods to be gone, so that a
  redeploy right after finds the GPUs free.  It deletes by name rather than
  ``deletecollection`` with the selector: Services have no ``deletecollection``
  before Kubernetes 1.23/1.24, and the Role needs one verb less.
* ``scale`` goes through the ``/scale`` subresource; ``logs`` reads each pod
  (``[pod] line``; a crash-looping container's previous run); ``request`` reaches
  the service through the API server's service proxy (or directly, in-cluster);
  through the proxy, the API server's own failures are retried for up to
  ``probe_timeout``, not only ``api_retries`` times.
* ``watch`` streams ``(service id, status)`` for every change of every service,
  fed by three label-selected watches shared by all services (:mod:`.informer`);
  any number of consumers, each from the moment it called ``watch()``, in order,
  until ``close`` (a :class:`~modserv_shim.kit.shimlet.WatchHub`).
* ``start`` lists and watches before it returns, so the workloads of an earlier
  run are *adopted* from the cluster by their labels, not recreated, and the
  validation Jobs an earlier run left when it was killed are deleted; ``close``
  stops watching and leaves every workload running.
* ``inspect_model`` validates the model where the pods will see it (:mod:`.validation`).
* ``shared_model_volume`` and ``run_volume_task``: a pipeline's program (quantization) runs as a
  task Job on the model volume, mounted read-write, and what it writes there the pods see
  (:mod:`.tasks`).
* ``render`` returns the manifests ``create`` would apply (for ``dryRun``).
* ``capacity`` sums the allocatable CPU, memory and GPUs of the schedulable, ready nodes
  (:mod:`.nodes`; one list of the nodes per call, which the server makes in the background).

The public methods start the shimlet themselves if the server forgot to, and refuse
once it is closed (:class:`~modserv_shim.kit.shimlet.ShimletBase`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2

from modserv_shim.errors import (
    BackendUnavailable,
    NotFound,
    PermanentStepError,
    ShimError,
    StateConflict,
    ValidationFailed,
)
from modserv_shim.kit.shimlet import Event, ShimletBase, WatchHub
from modserv_shim.plugins import (
    Capacity,
    DeployContext,
    PluginContext,
    ResourcePhase,
    ResourceStatus,
    SharedModelVolume,
    VolumeTask,
    VolumeTaskResult,
)
from modserv_shim.shimlets.k8s import naming, render, tasks
from modserv_shim.shimlets.k8s.cache import KINDS, WORKLOAD_KINDS, ClusterCache
from modserv_shim.shimlets.k8s.informer import Informer
from modserv_shim.shimlets.k8s.kube import KubeApi, load_config
from modserv_shim.shimlets.k8s.nodes import node_capacity
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.shimlets.k8s.podspec import PORT_NAME
from modserv_shim.shimlets.k8s.status import Track, summarize
from modserv_shim.shimlets.k8s.validation import ValidationJob, inspect
from modserv_shim.spec import DeploySpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _meta(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, dict) else {}


def owner_of(workload: Mapping[str, Any]) -> str:
    """The service id a workload belongs to (its annotation; the name for foreign objects)."""
    meta = _meta(workload)
    return str((meta.get("annotations") or {}).get(naming.SERVICE_ID_ANNOTATION) or meta.get("name"))


class K8sShimlet(ShimletBase):
    """Runs each service as a Kubernetes workload.  See the module docstring."""

    name = "k8s"
    launch_target = "container"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__()
        self.options = K8sOptions.parse(ctx.options)
        self._namespace: str | None = self.options.namespace
        self._kube: KubeApi | None = None
        self._direct: httpx2.AsyncClient | None = None
        self._job: ValidationJob | None = None
        self._cache = ClusterCache(self._on_change)
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._tracks: dict[str, Track] = {}
        self._statuses: dict[str, ResourceStatus] = {}
        self._owners: dict[str, str] = {}  # workload name -> service id
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._creating: set[str] = set()  # names whose create() runs: a vanishing old kind is no NOT_FOUND
        self._hub = WatchHub()

    # ------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        """Connect, list and watch (``start``); returns once the cache holds what exists."""
        config = load_config(self.options)
        namespace = self.options.namespace or config.namespace
        kube = KubeApi(config, namespace, self.options)
        informers = [Informer(kind, self._cache, kube.list_kind, kube.watch, kube.backoff) for kind in KINDS]
        self._kube, self._namespace, self._informers = kube, namespace, informers
        self._tasks = [asyncio.create_task(i.run(), name=f"k8s-informer-{i.kind}") for i in informers]
        try:
            async with asyncio.timeout(self.options.sync_timeout):
                await asyncio.gather(*(i.synced.wait() for i in informers))
        except TimeoutError:
            await self._stop_watching()
            errors = "; ".join(f"{i.kind}: {i.last_error}" for i in informers if i.last_error)
            raise BackendUnavailable(
                f"the Kubernetes API at {config.cluster.server} did not answer the first lists within"
                f" {self.options.sync_timeout:g} s (namespace {namespace})"
                + (f"; last errors: {errors}" if errors else "")) from None
        if self.options.endpoint_access == "direct":
            self._direct = httpx2.AsyncClient(trust_env=False, timeout=self.options.probe_timeout)
        self._job = ValidationJob(kube, self._cache, self.options)
        self._job.clean_up()  # validation Jobs of a run that was killed mid-validation
        log.info("k8s shimlet: watching namespace %s on %s; %d workload(s) adopted", namespace,
                 config.cluster.server, len(self._cache.workload_names()))

    async def _shut(self) -> None:
        """Stop watching (``close``); every workload keeps running for the next ``start``."""
        try:
            await self._stop_watching()
            if self._direct is not None:
                await self._direct.aclose()
        finally:
            self._hub.close()

    async def _stop_watching(self) -> None:
        if self._job is not None:
            await self._job.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._kube is not None:
            await self._kube.close()

    # ------------------------------------------------------------- Shimlet

    async def create(self, ctx: DeployContext) -> str:
        if ctx.replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        kube = await self._ready()
        rid, name = ctx.service_id, naming.workload_name(ctx.service_id)
        service = render.service(ctx, name, kube.namespace)
        workload = render.workload(ctx, name, kube.namespace, self.options)
        async with self._lock(name):
            existing = self._cache.workloads(name)
            for obj in existing.values():
                if owner_of(obj) != rid:
                    raise PermanentStepError(f"the Kubernetes name {name} already belongs to {owner_of(obj)!r}")
            self._creating.add(name)
            try:
                await self._apply(kube, name, rid, service, workload, existing)
            finally:
                self._creating.discard(name)
            self._refresh(name)
        return rid

    async def _apply(self, kube: KubeApi, name: str, rid: str, service: Obj, workload: Obj,
                     existing: Mapping[str, Obj]) -> None:
        kind = str(workload["kind"])
        for other in set(existing) - {kind}:  # the workload type changed: the old kind goes
            await kube.delete(other, name)
        before = existing.get(kind)
        track = self._tracks.setdefault(name, Track())
        failed = track.failed_reason is not None
        old_pods = self._cache.pods_of(name)
        self._owners[name] = rid
        await kube.apply(service)
        applied = await kube.apply(workload)
        if before is None or _template(applied) != _template(before):
            track.restart(str(_meta(p).get("uid")) for p in old_pods)  # new pods: earlier verdicts are void
        elif failed:
            track.restart(str(_meta(p).get("uid")) for p in old_pods)
            for pod in old_pods:  # retry: fresh pods, fresh image pulls and crash back-offs
                await kube.delete("Pod", str(_meta(pod).get("name")))
        self._cache.put(applied)

    async def status(self, resource_id: str) -> ResourceStatus:
        await self._ready()
        name = naming.workload_name(resource_id)
        status = self._statuses.get(name)
        if status is None or self._owners.get(name) != resource_id:
            return ResourceStatus(ResourcePhase.NOT_FOUND, reason=f"no workload for {resource_id!r} in namespace"
                                                                  f" {self._namespace}")
        return status

    async def delete(self, resource_id: str) -> None:
        """Delete what ``create`` made, by name (see the module docstring for why not by collection)."""
        kube = await self._ready()
        name = naming.workload_name(resource_id)
        owner = self._owners.get(name)
        if owner is not None and owner != resource_id:
            log.warning("k8s shimlet: not deleting %s: it belongs to %s, not %s", name, owner, resource_id)
            return
        async with self._lock(name):
            for kind in (*WORKLOAD_KINDS, "Service"):
                await kube.delete(kind, name)

            def gone() -> bool:
                return self._cache.workload(name) is None and not self._cache.pods_of(name)

            if not await self._cache.wait_until(gone, self.options.delete_wait):
                log.warning("k8s shimlet: pods of %s still terminating after %g s", name, self.options.delete_wait)

    # -------------------------------------------------------- capabilities

    async def scale(self, resource_id: str, replicas: int) -> None:
        if replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        kube = await self._ready()
        name = naming.workload_name(resource_id)
        async with self._lock(name):
            workload = self._workload(resource_id)
            track = self._tracks.get(name)
            if track is not None and track.failed_reason:
                raise StateConflict(f"{resource_id} has failed; delete it and deploy again before scaling")
            kind = str(workload["kind"])
            scale = await kube.scale(kind, name, replicas)
            self._cache.patch_replicas(kind, name, replicas, _meta(scale).get("resourceVersion"))

    async def logs(self, resource_id: str, tail: int = 100) -> list[str]:
        kube = await self._ready()
        name = naming.workload_name(resource_id)
        self._workload(resource_id)
        lines: list[str] = []
        for pod in sorted(self._cache.pods_of(name), key=lambda p: str(_meta(p).get("name"))):
            pod_name = str(_meta(pod).get("name"))
            try:
                own = await kube.logs(pod_name, tail, previous=_crash_looping(pod))
            except ShimError as exc:
                own = [f"(no logs: {exc})"]
            lines += [f"[{pod_name}] {line}" for line in own[-tail:]] if tail > 0 else []
        return lines

    def watch(self) -> AsyncIterator[Event]:
        return self._hub.watch()

    def render(self, ctx: DeployContext) -> dict[str, Any]:
        """The manifests ``create`` would apply (no cluster needed)."""
        return render.render(ctx, naming.workload_name(ctx.service_id), self._render_namespace(), self.options)

    async def inspect_model(self, spec: DeploySpec) -> Mapping[str, Any]:
        if not self.options.model_root:
            await self._ready()
        return await inspect(spec, self.options, self._job)

    def shared_model_volume(self, spec: DeploySpec) -> SharedModelVolume:
        """The model volume as the pods see it (reached by task Jobs only: ``run_volume_task``)."""
        volume = self.options.model_volume
        if volume.type == "hostPath" and volume.path is None:
            raise ValidationFailed(
                "the k8s shimlet's model_volume mounts each model's own path (hostPath without path), so the pods"
                " see only that file, not a copy made for them: set model_volume to a PersistentVolumeClaim"
                " ({type: pvc, claim_name: models}) or a node directory ({type: hostPath, path: /srv/models})")
        try:
            volume.relative(spec.modelFile)
        except PermanentStepError as exc:
            raise ValidationFailed(str(exc)) from None
        return SharedModelVolume(workload_root=volume.mount_root)

    async def run_volume_task(self, task: VolumeTask) -> VolumeTaskResult:
        """``task`` as a Job on the model volume, mounted read-write (:mod:`.tasks`)."""
        kube = await self._ready()
        assert self._job is not None
        return await tasks.run(self._job, self._cache, self.options, kube.namespace, task)

    async def request(self, resource_id: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        """``method path`` on the service's endpoint: via the API server's service proxy, or directly."""
        kube = await self._ready()
        name = naming.workload_name(resource_id)
        if self._direct is None:
            return await kube.through_proxy(method, name, PORT_NAME, path, json_body=json)
        url = f"{self._endpoint(name, self._cache.workload(name))}/{path.lstrip('/')}"
        what = f"{method} {path} on service {kube.namespace}/{name}"
        return await kube.raw_request(method, url, what=what, json_body=json, client=self._direct)

    async def capacity(self) -> Capacity:
        """The schedulable, ready nodes' allocatable CPU, memory and GPUs (:mod:`.nodes`)."""
        kube = await self._ready()
        hosts = [node_capacity(node, self.options) for node in await kube.list_nodes()]
        return Capacity(tuple(h for h in hosts if h is not None))

    def resource_ids(self) -> list[str]:
        """Ids of every service this shimlet sees (after ``start``)."""
        return sorted(self._owners[n] for n in self._statuses if n in self._owners)

    # ------------------------------------------------------------ helpers

    async def _ready(self) -> KubeApi:
        await self._ensure_started()
        assert self._kube is not None
        return self._kube

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _workload(self, resource_id: str) -> Obj:
        name = naming.workload_name(resource_id)
        workload = self._cache.workload(name)
        if workload is None or owner_of(workload) != resource_id:
            raise NotFound(f"no Kubernetes workload for {resource_id!r} in namespace {self._namespace}")
        return workload

    def _render_namespace(self) -> str:
        if self._namespace is None:
            try:
                self._namespace = load_config(self.options).namespace
            except ShimError:
                self._namespace = "default"
        return self._namespace

    def _endpoint(self, name: str, workload: Mapping[str, Any] | None) -> str:
        return render.endpoint(name, str(self._namespace), workload, self.options.cluster_domain)

    def _on_change(self, names: set[str]) -> None:
        for name in names:
            self._refresh(name)

    def _refresh(self, name: str) -> None:
        """Recompute one workload's status from the cache; tell the watchers when it changed."""
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        workload = self._cache.workload(name)
        if workload is None:
            if name in self._creating:
                return
            if self._statuses.pop(name, None) is not None:
                self._tracks.pop(name, None)
                self._hub.gone(self._owners.pop(name, name))
            return
        rid = self._owners.setdefault(name, owner_of(workload))
        track = self._tracks.get(name)
        if track is None:  # first seen in this run, not created by it: adopted
            track = self._tracks[name] = Track()
            track.adopt(workload)
        loop = asyncio.get_running_loop()
        status, recheck = summarize(workload, self._cache.pods_of(name), track, now=loop.time(),
                                    options=self.options, endpoint=self._endpoint(name, workload))
        self._statuses[name] = status
        if recheck is not None:
            self._timers[name] = loop.call_at(recheck, self._refresh, name)
        self._hub.publish(rid, status)  # only when it changed


def _template(workload: Mapping[str, Any]) -> Any:
    """The pod template: when it changes the controller replaces the pods (a replica count does not)."""
    return (workload.get("spec") or {}).get("template")


def _crash_looping(pod: Mapping[str, Any]) -> bool:
    """Its current container has not started (back-off): the interesting lines are the last run's."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if int(cs.get("restartCount") or 0) > 0 and not (cs.get("state") or {}).get("running"):
            return True
    return False
