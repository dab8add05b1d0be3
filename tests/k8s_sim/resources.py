"""The resource kinds the simulated API server knows, and how they are addressed.

A :class:`ResourceType` carries what the real API server's discovery documents say about
a kind: group, version, plural, whether it is namespaced, its subresources, and whether
``metadata.generation`` is maintained for it.  Every handler in the simulator is generic
over this table, so adding a kind is one line here (plus defaults or a controller if it
needs behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["REGISTRY", "ResourceType", "by_kind", "lookup"]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource (``deployments.apps/v1`` and so on)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    subresources: frozenset[str] = field(default_factory=frozenset)
    has_generation: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_plural(self) -> str:
        """The name used in Status messages, e.g. ``deployments.apps`` or ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """The kind as used in ``Invalid`` messages, e.g. ``Deployment.apps`` or ``Pod``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.qualified_plural}/{self.version}"


_STATUS = frozenset({"status"})
_SCALABLE = frozenset({"status", "scale"})

NAMESPACE = ResourceType("", "v1", "Namespace", "namespaces", namespaced=False, subresources=_STATUS,
                         short_names=("ns",))
NODE = ResourceType("", "v1", "Node", "nodes", namespaced=False, subresources=_STATUS, short_names=("no",))
POD = ResourceType("", "v1", "Pod", "pods", subresources=frozenset({"status", "log"}), short_names=("po",))
SERVICE = ResourceType("", "v1", "Service", "services", subresources=frozenset({"status", "proxy"}),
                       short_names=("svc",))
EVENT = ResourceType("", "v1", "Event", "events", short_names=("ev",))
CONFIGMAP = ResourceType("", "v1", "ConfigMap", "configmaps", short_names=("cm",))
SECRET = ResourceType("", "v1", "Secret", "secrets")
PVC = ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", subresources=_STATUS,
                   short_names=("pvc",))
SERVICE_ACCOUNT = ResourceType("", "v1", "ServiceAccount", "serviceaccounts", short_names=("sa",))
DEPLOYMENT = ResourceType("apps", "v1", "Deployment", "deployments", subresources=_SCALABLE,
                          has_generation=True, short_names=("deploy",))
REPLICASET = ResourceType("apps", "v1", "ReplicaSet", "replicasets", subresources=_SCALABLE,
                          has_generation=True, short_names=("rs",))
STATEFULSET = ResourceType("apps", "v1", "StatefulSet", "statefulsets", subresources=_SCALABLE,
                           has_generation=True, short_names=("sts",))
JOB = ResourceType("batch", "v1", "Job", "jobs", subresources=_STATUS, has_generation=True)

REGISTRY: tuple[ResourceType, ...] = (
    NAMESPACE, NODE, POD, SERVICE, EVENT, CONFIGMAP, SECRET, PVC, SERVICE_ACCOUNT,
    DEPLOYMENT, REPLICASET, STATEFULSET, JOB,
)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in REGISTRY}
_BY_KIND = {(rt.api_version, rt.kind): rt for rt in REGISTRY}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at ``/apis/{group}/{version}/{plural}`` (group ``""`` for ``/api``)."""
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    """The resource for an object's ``apiVersion`` and ``kind``."""
    return _BY_KIND.get((api_version, kind))


def groups() -> dict[str, list[str]]:
    """Map of API group (``""`` for core) to its served versions."""
    out: dict[str, list[str]] = {}
    for rt in REGISTRY:
        versions = out.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)
    return out
