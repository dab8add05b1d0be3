"""The simulated cluster: configuration, bootstrap objects and the reconcile loop.

:class:`Cluster` owns the store, the REST semantics (:class:`~.api.ObjectAPI`), the controllers,
the scheduler and the kubelet.  Everything runs on one asyncio loop; a write from any client or
controller wakes the loop, which runs controller passes until nothing changes any more and then
sleeps until the next timed transition (a pod becoming ready, a back-off ending, ...).  A cluster
at rest therefore does no work and writes nothing -- which keeps request counts in benchmarks
meaningful.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import resources as r
from .api import ObjectAPI
from .controllers import Controllers
from .events import EventRecorder
from .faults import FaultBook
from .kubelet import JobHandler, JobResult, Kubelet, LogBook
from .selection import LabelSelector
from .store import Obj, Store
from .util import clone
from .validation import latest_schema_version

__all__ = ["Cluster", "NodeSpec", "SimConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSpec:
    """A fake node. ``gpus`` > 0 adds ``nvidia.com/gpu`` capacity and GPU feature discovery labels."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    gpu_product: str | None = None  # label nvidia.com/gpu.product, e.g. "NVIDIA-H20"
    gpu_memory_mib: int | None = None  # label nvidia.com/gpu.memory
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    unschedulable: bool = False
    pods: int = 110


@dataclass
class SimConfig:
    """Knobs of the simulated cluster (all durations in seconds)."""

    nodes: list[NodeSpec] | None = None  # None: one CPU node "sim-node-1"
    pod_start_delay: float = 0.05  # bound -> container running
    pod_ready_delay: float = 0.05  # running -> Ready
    crash_after: float = 0.05  # how long a crash-looping container runs
    backoff_base: float = 0.1  # first back-off (image pull, crash loop, config error re-check)
    job_run_seconds: float = 0.05  # how long a Job's container runs by default
    pod_grace_seconds: float = 0.0  # >0: deleted pods linger with deletionTimestamp this long
    bookmark_interval: float = 0.5  # idle time between BOOKMARK events on watches that allow them
    watch_history: int = 1000  # events kept for watch resumption; older resourceVersions get 410
    kubernetes_version: str | None = None  # schema version to validate against; default: newest shipped
    token: str | None = "k8s-sim-token"  # bearer token required by the server (None: no auth)
    seed: int = 0  # seeds uids, generated names and API fault ratios
    namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public", "kube-node-lease")
    proxy_timeout: float = 30.0


class Cluster:
    """State and behaviour of the simulated cluster; lives on the simulator's event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.schema_version = config.kubernetes_version or latest_schema_version()
        self.store = Store(config.watch_history)
        self.api = ObjectAPI(self.store, schema_version=self.schema_version, rng=self.rng,
                             pod_grace_seconds=config.pod_grace_seconds)
        self.events = EventRecorder(self.api)
        self.faults = FaultBook(random.Random(config.seed + 1))
        self.logs = LogBook()
        self.job_handlers: list[tuple[str, JobHandler]] = []
        self.service_backends: dict[tuple[str, str], str] = {}
        self.kubelet = Kubelet(self)
        self.controllers = Controllers(self)
        self._pod_ips: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self.store.listeners.append(lambda _event: self.kick())
        for ns in config.namespaces:
            self.api.internal_create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        nodes = config.nodes if config.nodes is not None else [NodeSpec("sim-node-1")]
        for node in nodes:
            self.add_node(node)

    # -- nodes ----------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> Obj:
        index = len(self.store.items(r.NODE)) + 1
        labels = {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": "sim"}
        capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": str(spec.pods), "ephemeral-storage": "100Gi"}
        if spec.gpus:
            capacity["nvidia.com/gpu"] = str(spec.gpus)
            labels["nvidia.com/gpu.present"] = "true"
            labels["nvidia.com/gpu.count"] = str(spec.gpus)
            if spec.gpu_product:
                labels["nvidia.com/gpu.product"] = spec.gpu_product
            if spec.gpu_memory_mib:
                labels["nvidia.com/gpu.memory"] = str(spec.gpu_memory_mib)
        labels.update(spec.labels)
        node_spec: dict[str, Any] = {"podCIDR": f"10.244.{index}.0/24"}
        if spec.taints:
            node_spec["taints"] = [dict(t) for t in spec.taints]
        if spec.unschedulable:
            node_spec["unschedulable"] = True
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels},
            "spec": node_spec,
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status"}],
                "addresses": [{"type": "InternalIP", "address": f"192.168.100.{index}"},
                              {"type": "Hostname", "address": spec.name}],
                "nodeInfo": {"kubeletVersion": f"v{self.schema_version}", "containerRuntimeVersion": "containerd://sim",
                             "operatingSystem": "linux", "architecture": "amd64", "osImage": "k8s-sim",
                             "kernelVersion": "sim", "machineID": "", "systemUUID": "", "bootID": "",
                             "kubeProxyVersion": ""},
            },
        }
        return self.api.internal_create(r.NODE, node)

    def remove_node(self, name: str) -> None:
        self.api.delete(r.NODE, None, name)

    def allocate_pod_ip(self, node_name: str) -> str:
        node = self.store.get(r.NODE, None, node_name)
        cidr = ((node or {}).get("spec") or {}).get("podCIDR", "10.244.0.0/24")
        base = cidr.rsplit(".", 1)[0]
        self._pod_ips[node_name] = self._pod_ips.get(node_name, 1) + 1
        return f"{base}.{self._pod_ips[node_name]}"

    # -- hooks ----------------------------------------------------------------------------------

    def job_result(self, pod: Obj) -> JobResult:
        labels = pod["metadata"].get("labels")
        for selector, handler in reversed(self.job_handlers):
            if LabelSelector.parse(selector).matches(labels):
                return handler(pod)
        return JobResult()

    def ready_endpoints(self, service: Obj) -> list[Obj]:
        """Ready, non-terminating pods selected by the service (what an EndpointSlice would list)."""
        selector = (service.get("spec") or {}).get("selector")
        if not selector:
            return []
        ns = service["metadata"]["namespace"]
        return [p for p in self.store.items(r.POD, ns)
                if not p["metadata"].get("deletionTimestamp")
                and LabelSelector.from_spec({"matchLabels": selector}).matches(p["metadata"].get("labels"))
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (p.get("status") or {}).get("conditions") or [])]

    # -- loop -----------------------------------------------------------------------------------

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def reconcile(self) -> float | None:
        """Run controller and kubelet passes until the store stops changing; return the next due time."""
        due: float | None = None
        for _ in range(50):
            before = self.store.rv
            now = time.monotonic()
            candidates = [d for d in (self.controllers.sync(now), self.kubelet.sync(now)) if d is not None]
            due = min(candidates) if candidates else None
            if self.store.rv == before:
                return due
        log.warning("k8s-sim: reconcile did not settle after 50 passes")
        return due

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while not self._stopping:
            try:
                due = self.reconcile()
            except Exception:  # keep the simulated cluster alive; the test will see the symptom
                log.exception("k8s-sim: reconcile failed")
                due = time.monotonic() + 0.5
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        self._stopping = True
        self.kick()

    # -- conveniences for the Sim facade ----------------------------------------------------------

    def find(self, kind: str, namespace: str | None = None, selector: str = "") -> list[Obj]:
        rt = next((t for t in r.REGISTRY if kind in (t.kind, t.plural, *t.short_names)), None)
        if rt is None:
            raise KeyError(f"unknown kind {kind!r}")
        return [clone(o) for o in self.api.select(rt, namespace if rt.namespaced else None,
                                                  LabelSelector.parse(selector))]

    def set_job_handler(self, handler: JobHandler | Callable[[Obj], JobResult], selector: str = "") -> None:
        self.job_handlers.append((selector, handler))
