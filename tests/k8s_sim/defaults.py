"""Server-side defaulting, a subset of what the real API server fills in.

Defaults are applied after every write and only fill fields that are missing, so they are
idempotent: re-applying an unchanged manifest yields an unchanged object (which is what makes a
repeated server-side apply a no-op).  Pod-only admission behaviour (the default service account,
the not-ready/unreachable tolerations, requests copied from limits) is included because client code
reading pods back sees it on a real cluster.
"""

from __future__ import annotations

from typing import Any

from . import resources as r
from .store import Obj

__all__ = ["apply_defaults"]


def _probe(probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        probe.setdefault(key, value)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")
        probe["httpGet"].setdefault("path", "/")


def _container(c: dict[str, Any], *, is_pod: bool) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    resources = c.setdefault("resources", {})
    if is_pod and resources.get("limits"):
        requests = resources.setdefault("requests", {})
        for name, value in resources["limits"].items():
            requests.setdefault(name, value)
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c.get(probe))


def pod_spec_defaults(spec: dict[str, Any], *, is_pod: bool) -> None:
    """Defaults for a PodSpec, inside a template (``is_pod=False``) or a Pod."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in spec.get("containers") or []:
        _container(c, is_pod=is_pod)
    for c in spec.get("initContainers") or []:
        _container(c, is_pod=is_pod)
    if is_pod:
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        tolerations = spec.setdefault("tolerations", [])
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == key and t.get("effect") == "NoExecute" for t in tolerations):
                tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": 300})


def _template(spec: dict[str, Any]) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        pod_spec_defaults(template.setdefault("spec", {}), is_pod=False)


def apply_defaults(rt: r.ResourceType, obj: Obj) -> None:
    """Fill the defaults of ``obj`` in place."""
    spec = obj.get("spec")
    if rt is r.DEPLOYMENT and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _template(spec)
    elif rt is r.STATEFULSET and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        strategy = spec.setdefault("updateStrategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("persistentVolumeClaimRetentionPolicy",
                        {"whenDeleted": "Retain", "whenScaled": "Retain"})
        _template(spec)
    elif rt is r.REPLICASET and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _template(spec)
    elif rt is r.JOB and isinstance(spec, dict):
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        _template(spec)
    elif rt is r.POD and isinstance(spec, dict):
        pod_spec_defaults(spec, is_pod=True)
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif rt is r.SERVICE and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj.setdefault("status", {}).setdefault("loadBalancer", {})
    elif rt is r.NAMESPACE:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif rt is r.SECRET:
        obj.setdefault("type", "Opaque")
    elif rt is r.PVC and isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Bound")
        status.setdefault("accessModes", spec.get("accessModes", []))
        status.setdefault("capacity", (spec.get("resources") or {}).get("requests", {}))
