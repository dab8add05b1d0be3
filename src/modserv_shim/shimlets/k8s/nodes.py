"""The cluster's capacity, from its nodes' ``status.allocatable`` (the capacity metrics).

Only nodes a pod can land on count: schedulable (not cordoned) and ``Ready``.  CPU and memory are
the allocatable quantities; accelerators are ``nvidia.com/gpu``, named by the node's GPU product
label (``gpu_product_label``, ``NVIDIA-H20``; mapped back through ``accelerator_labels`` to the
``acceleratorType`` a deploy uses when one is configured), or ``nvidia.com/gpu`` when the node has
no such label.  Listing nodes needs a ClusterRole (``list`` on ``nodes``: deploy/kubernetes/rbac.yaml);
without it the capacity is unknown and the rest of the shimlet works as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modserv_shim.plugins import HostCapacity
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.spec import cpu_cores, memory_bytes

GPU_RESOURCE = "nvidia.com/gpu"


def _usable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict))


def _number(parse: Any, value: Any) -> Any:
    try:
        return parse(str(value)) if value is not None else None
    except ValueError:
        return None


def node_capacity(node: Mapping[str, Any], options: K8sOptions) -> HostCapacity | None:
    """What one node offers pods, or None when no pod can be scheduled on it."""
    if not _usable(node):
        return None
    meta = node.get("metadata") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    accelerators: dict[str, int] = {}
    gpus = _number(int, allocatable.get(GPU_RESOURCE))
    if gpus:
        product = (meta.get("labels") or {}).get(options.gpu_product_label)
        by_label = {v: k for k, v in options.accelerator_labels.items()}
        accelerators[by_label.get(product, product) if product else GPU_RESOURCE] = gpus
    return HostCapacity(str(meta.get("name") or "?"), _number(cpu_cores, allocatable.get("cpu")),
                        _number(memory_bytes, allocatable.get("memory")), accelerators)
