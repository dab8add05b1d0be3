"""What a service looks like on the cluster: the manifests ``create`` applies, a Deployment
(or StatefulSet) and a ClusterIP Service, the validation Job, and the endpoint URL.
The pod spec pieces they share (scheduling, resources, model volume, probes) are in
:mod:`.podspec`.

Choices worth knowing:

* ``strategy: Recreate`` when the pods ask for GPUs: a rolling update would need
  a second set of GPUs for the new pod while the old one still holds its own,
  which a small cluster rarely has; Recreate frees them first.
* ``enableServiceLinks: false``: Kubernetes would otherwise inject
  ``<SERVICE>_PORT=tcp://...`` variables for every Service in the namespace, and
  vLLM reads ``VLLM_PORT`` — a Service named ``vllm`` breaks it.
* ``automountServiceAccountToken: false``: a model server needs no API access.
* ``progressDeadlineSeconds`` covers the startup timeout, so ``kubectl rollout
  status`` does not call a big model's normal load time a failure.
* StatefulSets use ``podManagementPolicy: Parallel``: replicas of a model
  server do not depend on each other, and ordered start-up would multiply
  the load time by the replica count.
* The validation Job runs ``python -m modserv_shim.modelinfo`` once
  (``backoffLimit: 0``: a broken model does not get better on a retry), ends
  itself after ``validation_timeout`` (``activeDeadlineSeconds``) and is
  removed by the TTL controller even if the shim dies before deleting it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from modserv_shim.plugins import DeployContext
from modserv_shim.shimlets.k8s import naming, podspec
from modserv_shim.shimlets.k8s.naming import (
    APP_NAME,
    COMPONENT,
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    MODEL_FILE_ANNOTATION,
    SERVICE_ID_ANNOTATION,
    SERVICE_ID_LABEL,
    VALIDATION_LABEL,
)
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.spec import DeploySpec, redact

VALIDATION_TTL_SECONDS = 600
TERMINATION_LOG = "/dev/termination-log"


def labels(ctx: DeployContext, name: str) -> dict[str, str]:
    """The request's labels (values made valid, invalid keys dropped) plus ours, which win."""
    out = {key: naming.label_value(str(value)) for key, value in ctx.labels.items() if naming.is_label_key(key)}
    out.update({
        APP_NAME: naming.label_value(ctx.spec.modelName),
        INSTANCE: name,
        MANAGED_BY: MANAGER,
        COMPONENT: naming.SERVER_COMPONENT,
        SERVICE_ID_LABEL: naming.label_value(ctx.service_id),
    })
    return out


def _metadata(ctx: DeployContext, name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(ctx, name),
            "annotations": {SERVICE_ID_ANNOTATION: ctx.service_id, MODEL_FILE_ANNOTATION: ctx.spec.modelFile}}


def pod_template(ctx: DeployContext, name: str, options: K8sOptions) -> dict[str, Any]:
    rr = ctx.spec.resourceRequirements
    volume, mount = podspec.model_volume(options.model_volume, ctx.spec.modelFile)
    volumes, mounts = [volume], [mount]
    if rr.acceleratorCount > 1:  # tensor parallel workers talk through shared memory
        volumes.append({"name": podspec.SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": podspec.SHM_VOLUME, "mountPath": "/dev/shm"})
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        **podspec.scheduling(rr, options),
        "containers": [podspec.server_container(ctx.launch, rr, options, mounts)],
        "volumes": volumes,
    }
    return {"metadata": {"labels": labels(ctx, name)}, "spec": spec}


def workload(ctx: DeployContext, name: str, namespace: str, options: K8sOptions) -> dict[str, Any]:
    """The Deployment (default) or StatefulSet (``workloadType``) of the service."""
    kind = ctx.spec.workloadType
    spec: dict[str, Any] = {"replicas": ctx.replicas, "selector": {"matchLabels": naming.selector(name)}}
    gpus = ctx.spec.resourceRequirements.acceleratorCount > 0
    if kind == "StatefulSet":
        spec.update(serviceName=name, podManagementPolicy="Parallel", updateStrategy={"type": "RollingUpdate"})
    else:
        spec["strategy"] = {"type": "Recreate" if gpus else "RollingUpdate"}
        spec["progressDeadlineSeconds"] = max(600, math.ceil(ctx.launch.startup_timeout) + 60)
    spec["template"] = pod_template(ctx, name, options)
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": _metadata(ctx, name, namespace), "spec": spec}


def service(ctx: DeployContext, name: str, namespace: str) -> dict[str, Any]:
    port = ctx.launch.container_port
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(ctx, name, namespace),
        "spec": {"type": "ClusterIP", "selector": naming.selector(name),
                 "ports": [{"name": podspec.PORT_NAME, "port": port, "targetPort": podspec.PORT_NAME,
                            "protocol": "TCP"}]},
    }


def render(ctx: DeployContext, name: str, namespace: str, options: K8sOptions) -> dict[str, Any]:
    """What ``create`` applies, for dry runs: the objects and one YAML document of them all."""
    objects = [service(ctx, name, namespace), workload(ctx, name, namespace, options)]
    return {
        "kind": "kubernetes-manifests",
        "resourceId": ctx.service_id,
        "namespace": namespace,
        "name": name,
        "objects": objects,
        # The text is for people: secret values are masked in it (the API masks them in "objects").
        "yaml": yaml.safe_dump_all(redact(objects), sort_keys=False),
    }


def endpoint(name: str, namespace: str, workload: Mapping[str, Any] | None, cluster_domain: str) -> str:
    """The service's URL in cluster DNS, on the port the workload's server container names ``http``."""
    port = 8000
    template = ((workload or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == podspec.PORT_NAME:
                port = int(p.get("containerPort") or port)
    return f"http://{name}.{namespace}.svc.{cluster_domain}:{port}"


def validation_job(spec: DeploySpec, name: str, namespace: str, options: K8sOptions) -> dict[str, Any]:
    """A one-shot Job that inspects ``spec.modelFile`` on the model volume and reports in its termination message."""
    volume, mount = podspec.model_volume(options.model_volume, spec.modelFile)
    return model_volume_job(
        spec, name, namespace, options, component=naming.VALIDATION_COMPONENT, container="modelinfo",
        command=["python", "-m", "modserv_shim.modelinfo", spec.modelFile, "--termination-log", TERMINATION_LOG],
        resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        volume=volume, mount=mount, timeout=options.validation_timeout)


def model_volume_job(spec: DeploySpec, name: str, namespace: str, options: K8sOptions, *, component: str,
                     container: str, command: list[str], resources: dict[str, Any], volume: dict[str, Any],
                     mount: dict[str, Any], timeout: float, env: list[dict[str, str]] | None = None,
                     ) -> dict[str, Any]:
    """A one-shot Job of one container in ``options.job_image`` with the model volume mounted, on the nodes the
    server would use, that reports in its termination message: the validation Job and the task Jobs
    (:mod:`.tasks`); ``timeout`` is its ``activeDeadlineSeconds``."""
    job_labels = {MANAGED_BY: MANAGER, COMPONENT: component, APP_NAME: naming.label_value(spec.modelName),
                  VALIDATION_LABEL: name}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The same nodes as the server: a hostPath model exists on the GPU nodes, maybe only there.
        **podspec.scheduling(spec.resourceRequirements, options),
        "containers": [{
            "name": container,
            "image": options.job_image,
            "command": command,
            **({"env": env} if env is not None else {}),
            "terminationMessagePath": TERMINATION_LOG,
            # If the program dies before writing its report, the end of its output becomes the message.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": resources,
            "securityContext": {"allowPrivilegeEscalation": False},
            "volumeMounts": [mount],
        }],
        "volumes": [volume],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": job_labels,
                     "annotations": {MODEL_FILE_ANNOTATION: spec.modelFile}},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": max(1, math.ceil(timeout)),
                 "ttlSecondsAfterFinished": VALIDATION_TTL_SECONDS,
                 "template": {"metadata": {"labels": job_labels}, "spec": pod_spec}},
    }
