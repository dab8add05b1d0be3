"""Options of the k8s shimlet (``PluginContext.options``), with their defaults.

=========================  ==========================  ==============================================
key                        default                     meaning
=========================  ==========================  ==============================================
``kubeconfig``             (auto)                      kubeconfig file; unset: the in-cluster service
                                                       account if present, else ``$KUBECONFIG``, else
                                                       ``~/.kube/config``
``context``                (current)                   kubeconfig context to use
``in_cluster``             false                       use the pod's service account, never a file
``namespace``              (from the config)           where workloads live; unset: the context's or
                                                       service account's namespace, else ``default``
``field_manager``          ``modserv-shim``            server-side apply field manager
``trust_env``              true                        honour ``HTTPS_PROXY``/``NO_PROXY``/``SSL_CERT_FILE``
``images``                 {}                          runtime name -> image, overriding the runtime's
``model_volume``           ``{type: hostPath}``        where the model is (see :class:`ModelVolume`)
``model_root``             (none)                      where the shim itself sees the model volume's
                                                       root; set: model-validation reads it directly,
                                                       unset: it runs a validation Job in the cluster
``validation_image``       this project's image        image of the validation Job (needs Python and
                                                       ``modserv_shim``)
``validation_timeout``     300 s                       how long the validation Job may take
``accelerator_labels``     {}                          acceleratorType -> node label value overrides;
                                                       default: spaces become ``-`` ("NVIDIA H20" ->
                                                       "NVIDIA-H20", as GPU feature discovery writes it)
``gpu_product_label``      ``nvidia.com/gpu.product``  node label selected by ``acceleratorType``
``gpu_resource``           ``nvidia.com/gpu``          extended resource requested per accelerator
``gpu_toleration``         true                        tolerate the ``<gpu_resource>:NoSchedule`` taint
``endpoint_access``        ``proxy``                   how the shim reaches a service: ``proxy`` (the API
                                                       server's service proxy, works from outside the
                                                       cluster) or ``direct`` (cluster DNS; in-cluster)
``cluster_domain``         ``cluster.local``           DNS suffix in endpoint URLs
``max_start_failures``     3                           container exits before ever being ready, before
                                                       the workload is FAILED
``unschedulable_grace``    0 s                         how long a never-ready workload may stay
                                                       unschedulable before it is FAILED (raise it on
                                                       clusters whose autoscaler adds GPU nodes)
``api_timeout``            10 s                        timeout of one API request
``api_retries``            5                           attempts per API call on 429/5xx/connection errors
``api_backoff``            0.2 s                       first retry delay (doubles; ``Retry-After`` wins)
``api_backoff_max``        10 s                        cap of the retry delay we choose ourselves
``watch_timeout``          300 s                       server-side lifetime of one watch request
``sync_timeout``           30 s                        ``start()`` waits this long for the first lists
``delete_wait``            30 s                        ``delete()`` waits this long for the pods to go
``probe_timeout``          60 s                        timeout of one request to a service's endpoint;
                                                       through the service proxy, also how long the API
                                                       server's own failures are retried
=========================  ==========================  ==============================================

Unknown keys are refused (:class:`~modserv_shim.errors.ValidationFailed`), so a
typo in the config file is reported instead of silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any, cast

from modserv_shim import __version__
from modserv_shim.errors import PermanentStepError, ValidationFailed

DEFAULT_VALIDATION_IMAGE = f"ghcr.io/modserv-shim/modserv-shim:{__version__.split('+')[0]}"
PVC_MOUNT_PATH = "/models"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VOLUME_TYPES = ("hostPath", "pvc")


def _fail(key: str, expected: str, value: Any) -> ValidationFailed:
    return ValidationFailed(f"k8s shimlet option {key} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class ModelVolume:
    """Where the model files are, as a volume the pods mount read-only.

    * ``{type: hostPath}`` (default): ``modelFile`` is a path on the node; that
      path is mounted at the same place in the pod.  With ``path`` set, that node
      directory is mounted instead (at ``mount_path``, default ``path``) and
      ``modelFile`` must lie under it.
    * ``{type: pvc, claim_name: models}``: the claim is mounted at ``mount_path``
      (default ``/models``, optionally only ``sub_path`` of it); ``modelFile``
      must lie under ``mount_path``.
    """

    type: str = "hostPath"
    path: str | None = None
    claim_name: str | None = None
    mount_path: str | None = None
    sub_path: str | None = None

    def __post_init__(self) -> None:
        if self.type not in _VOLUME_TYPES:
            raise _fail("model_volume.type", " or ".join(_VOLUME_TYPES), self.type)
        for key in ("path", "mount_path"):
            value = getattr(self, key)
            if value is not None and not _absolute(value):
                raise _fail(f"model_volume.{key}", "an absolute path without '..'", value)
        if self.type == "pvc":
            if not self.claim_name or not _DNS_SUBDOMAIN.match(self.claim_name):
                raise _fail("model_volume.claim_name", "the name of a PersistentVolumeClaim", self.claim_name)
            if self.path is not None:
                raise ValidationFailed("k8s shimlet option model_volume.path applies to hostPath volumes only")
        elif self.claim_name is not None or self.sub_path is not None:
            raise ValidationFailed("k8s shimlet options model_volume.claim_name/sub_path apply to pvc volumes only")
        elif self.mount_path is not None and self.path is None:
            raise ValidationFailed("k8s shimlet option model_volume.mount_path needs model_volume.path (hostPath)")
        if self.sub_path is not None and (self.sub_path.startswith("/") or ".." in PurePosixPath(self.sub_path).parts):
            raise _fail("model_volume.sub_path", "a relative path without '..'", self.sub_path)

    @classmethod
    def from_mapping(cls, value: Any) -> ModelVolume:
        if not isinstance(value, Mapping):
            raise _fail("model_volume", "a mapping such as {type: pvc, claim_name: models}", value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValidationFailed(f"unknown k8s shimlet model_volume key(s): {', '.join(unknown)}; known: "
                                   f"{', '.join(sorted(known))}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise _fail(f"model_volume.{key}", "a string", item)
        return cls(**value)

    @property
    def mount_root(self) -> str:
        """The path in the pod where the volume's root appears (``/`` for a per-model hostPath)."""
        if self.type == "pvc":
            return self.mount_path or PVC_MOUNT_PATH
        if self.path is None:
            return "/"
        return self.mount_path or self.path

    def relative(self, model_file: str) -> PurePosixPath:
        """``model_file`` relative to the volume's root; PermanentStepError when it lies outside."""
        root, target = PurePosixPath(self.mount_root), PurePosixPath(model_file)
        if target != root and root not in target.parents:
            raise PermanentStepError(
                f"modelFile {model_file} is not on the model volume, which the pods see at {root}"
                f" ({self.describe()}); put the model under {root} or change the k8s shimlet's model_volume")
        return target.relative_to(root)

    def describe(self) -> str:
        if self.type == "pvc":
            sub = f", sub-path {self.sub_path}" if self.sub_path else ""
            return f"PersistentVolumeClaim {self.claim_name}{sub}"
        return f"node directory {self.path}" if self.path else "the node's own filesystem (hostPath)"


def _absolute(value: str) -> bool:
    p = PurePosixPath(value)
    return p.is_absolute() and ".." not in p.parts


def _str_map(key: str) -> Callable[[Any], dict[str, str]]:
    def check(value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                     for k, v in value.items()):
            raise _fail(key, "a mapping of strings to non-empty strings", value)
        return dict(value)

    return check


def _of(key: str, kinds: tuple[type, ...], expected: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise _fail(key, expected, value)
        return float(cast(float, value)) if float in kinds and not isinstance(value, bool) else value

    return check


@dataclass(frozen=True)
class K8sOptions:
    """Every option of the k8s shimlet; see the module docstring for the meaning of each."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str | None = None
    field_manager: str = "modserv-shim"
    trust_env: bool = True
    images: Mapping[str, str] = field(default_factory=dict)
    model_volume: ModelVolume = field(default_factory=ModelVolume)
    model_root: str | None = None
    validation_image: str = DEFAULT_VALIDATION_IMAGE
    validation_timeout: float = 300.0
    accelerator_labels: Mapping[str, str] = field(default_factory=dict)
    gpu_product_label: str = "nvidia.com/gpu.product"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_toleration: bool = True
    endpoint_access: str = "proxy"
    cluster_domain: str = "cluster.local"
    max_start_failures: int = 3
    unschedulable_grace: float = 0.0
    api_timeout: float = 10.0
    api_retries: int = 5
    api_backoff: float = 0.2
    api_backoff_max: float = 10.0
    watch_timeout: float = 300.0
    sync_timeout: float = 30.0
    delete_wait: float = 30.0
    probe_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.namespace is not None and (len(self.namespace) > 63 or not _DNS_LABEL.match(self.namespace)):
            raise _fail("namespace", "a namespace name (lowercase letters, digits, '-')", self.namespace)
        if self.endpoint_access not in ("proxy", "direct"):
            raise _fail("endpoint_access", "'proxy' or 'direct'", self.endpoint_access)
        if self.in_cluster and self.kubeconfig:
            raise ValidationFailed("k8s shimlet options in_cluster and kubeconfig exclude each other")
        if self.model_root is not None and not _absolute(self.model_root):
            raise _fail("model_root", "an absolute path", self.model_root)
        if not self.field_manager:
            raise _fail("field_manager", "a non-empty string", self.field_manager)
        positive = ("validation_timeout", "max_start_failures", "api_timeout", "api_retries", "watch_timeout",
                    "sync_timeout", "probe_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValidationFailed(f"k8s shimlet option {name} must be > 0")
        for name in ("unschedulable_grace", "api_backoff", "api_backoff_max", "delete_wait"):
            if getattr(self, name) < 0:
                raise ValidationFailed(f"k8s shimlet option {name} must be >= 0")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> K8sOptions:
        checks = _checks()
        unknown = sorted(set(options) - set(checks))
        if unknown:
            raise ValidationFailed(f"unknown k8s shimlet option(s): {', '.join(unknown)}; known: "
                                   f"{', '.join(checks)}")
        return cls(**{key: checks[key](value) for key, value in options.items()})


def _checks() -> dict[str, Callable[[Any], Any]]:
    """One converter per option: the value's type is checked here, its range in ``__post_init__``."""
    text, maybe_text = (str,), (str, type(None))
    out: dict[str, Callable[[Any], Any]] = {}
    for f in fields(K8sOptions):
        kind = str(f.type)
        if kind == "str":
            out[f.name] = _of(f.name, text, "a string")
        elif kind == "str | None":
            out[f.name] = _of(f.name, maybe_text, "a string")
        elif kind == "bool":
            out[f.name] = _of(f.name, (bool,), "true or false")
        elif kind == "int":
            out[f.name] = _of(f.name, (int,), "an integer")
        elif kind == "float":
            out[f.name] = _of(f.name, (int, float), "a number")
        elif kind == "Mapping[str, str]":
            out[f.name] = _str_map(f.name)
        elif kind == "ModelVolume":
            out[f.name] = ModelVolume.from_mapping
        else:  # pragma: no cover - a new field with a new type must be added here
            raise TypeError(f"K8sOptions.{f.name}: no converter for {kind}")
    return out
