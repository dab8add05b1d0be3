"""The pieces of a pod spec that follow from a deploy request, shared by workloads and the validation Job.

* **Scheduling** — ``acceleratorType`` selects nodes by the GPU feature discovery
  label (``nvidia.com/gpu.product=NVIDIA-H20``); pods that ask for GPUs tolerate
  the GPU taint (``nvidia.com/gpu:NoSchedule``, which GPU node pools usually
  carry so that CPU pods stay off them).
* **Resources** — cpu/memory requests and limits are the request's values;
  GPUs are an extended resource, for which Kubernetes demands request == limit.
* **The model volume** is mounted read-only, so ``modelFile`` resolves inside
  the pod exactly as the request spelled it.
* **Probes** — the startup probe gets the whole ``startup_timeout`` (loading
  70 GB of weights takes minutes); only after it passes do the readiness and
  liveness probes start, with the short periods that detect a hung server.

Every function is pure (dicts in, dicts out): the same input renders the same
manifest byte for byte, which is what makes a repeated server-side apply a no-op.
"""

from __future__ import annotations

import math
import re
from typing import Any

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import LaunchSpec
from modserv_shim.shimlets.k8s.naming import is_label_value
from modserv_shim.shimlets.k8s.options import K8sOptions, ModelVolume
from modserv_shim.spec import ResourceRequirements

PORT_NAME = "http"
MODEL_VOLUME = "model"
SHM_VOLUME = "dshm"
LISTEN_HOST = "0.0.0.0"
STARTUP_PERIOD = 10


def accelerator_label(accelerator_type: str, options: K8sOptions) -> str:
    """The node label value for ``acceleratorType`` ("NVIDIA H20" -> "NVIDIA-H20")."""
    value = options.accelerator_labels.get(accelerator_type) or re.sub(r"\s+", "-", accelerator_type.strip())
    if not is_label_value(value):
        raise PermanentStepError(
            f"acceleratorType {accelerator_type!r} gives the node label value {value!r}, which Kubernetes does not"
            " accept; map it in the k8s shimlet option accelerator_labels")
    return value


def scheduling(rr: ResourceRequirements, options: K8sOptions) -> dict[str, Any]:
    """``nodeSelector`` and ``tolerations`` for the accelerator (empty for CPU-only)."""
    out: dict[str, Any] = {}
    if rr.acceleratorType is not None:
        out["nodeSelector"] = {options.gpu_product_label: accelerator_label(rr.acceleratorType, options)}
        if options.gpu_toleration:
            out["tolerations"] = [{"key": options.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return out


def resources(rr: ResourceRequirements, options: K8sOptions) -> dict[str, Any]:
    requests: dict[str, str] = {}
    if rr.cpu:
        requests["cpu"] = rr.cpu
    if rr.memory:
        requests["memory"] = rr.memory
    if rr.acceleratorCount > 0:
        requests[options.gpu_resource] = str(rr.acceleratorCount)
    return {"requests": requests, "limits": dict(requests)} if requests else {}


def model_volume(volume: ModelVolume, model_file: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume and its read-only mount that make ``model_file`` visible in the pod."""
    volume.relative(model_file)  # refuses a modelFile outside the volume
    mount: dict[str, Any] = {"name": MODEL_VOLUME, "mountPath": volume.mount_root, "readOnly": True}
    if volume.type == "pvc":
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}}
        if volume.sub_path:
            mount["subPath"] = volume.sub_path
    elif volume.path is None:  # this model's own path on the node, at the same place in the pod
        source = {"hostPath": {"path": model_file}}
        mount["mountPath"] = model_file
    else:
        source = {"hostPath": {"path": volume.path, "type": "Directory"}}
    return {"name": MODEL_VOLUME, **source}, mount


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def probes(launch: LaunchSpec) -> dict[str, Any]:
    startup_failures = max(1, math.ceil(launch.startup_timeout / STARTUP_PERIOD))
    return {
        "startupProbe": _http_probe(launch.ready_path, STARTUP_PERIOD, startup_failures),
        "readinessProbe": _http_probe(launch.ready_path, 5, 3),
        "livenessProbe": _http_probe(launch.health_path, 10, 3),
    }


def image_for(launch: LaunchSpec, options: K8sOptions) -> str:
    image = options.images.get(launch.runtime) or launch.image
    if not image:
        raise PermanentStepError(
            f"the {launch.runtime} launch spec has no container image (it was rendered for local processes);"
            f" set the k8s shimlet option images.{launch.runtime}")
    return image


def server_container(launch: LaunchSpec, rr: ResourceRequirements, options: K8sOptions,
                     mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The inference server's container: the runtime's command, our port, resources, probes and mounts."""
    port = str(launch.container_port)
    container: dict[str, Any] = {"name": "server", "image": image_for(launch, options)}
    if launch.container_command:
        container["command"] = list(launch.container_command)
    container["args"] = [a.replace("{host}", LISTEN_HOST).replace("{port}", port) for a in launch.args]
    container["ports"] = [{"name": PORT_NAME, "containerPort": launch.container_port, "protocol": "TCP"}]
    if launch.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    res = resources(rr, options)
    if res:
        container["resources"] = res
    container.update(probes(launch))
    container["volumeMounts"] = mounts
    return container
