"""Options of the k8s shimlet (``shimlets.k8s.options`` in the config file).

Every key, its type, default and meaning is declared once, in :class:`K8sOptions`
(and :class:`ModelVolume` for ``model_volume``); docs/kubernetes.md shows the tables
:meth:`~modserv_shim.kit.options.PluginOptions.markdown_table` makes of them.
Unknown keys and wrong types are refused (:class:`~modserv_shim.errors.ValidationFailed`),
so a typo in the config file is reported instead of silently ignored.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from modserv_shim import __version__
from modserv_shim.errors import PermanentStepError
from modserv_shim.kit.options import PluginOptions

DEFAULT_VALIDATION_IMAGE = f"ghcr.io/modserv-shim/modserv-shim:{__version__.split('+')[0]}"
PVC_MOUNT_PATH = "/models"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _absolute(value: str) -> bool:
    p = PurePosixPath(value)
    return p.is_absolute() and ".." not in p.parts


def _absolute_path(value: str | None) -> str | None:
    if value is not None and not _absolute(value):
        raise ValueError(f"must be an absolute path without '..', got {value!r}")
    return value


def _label_map(value: Any) -> Any:
    """A mapping of strings to non-empty strings (checked before pydantic, for one sentence)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                              for k, v in value.items()):
        raise ValueError(f"must be a mapping of strings to non-empty strings, got {value!r}")
    return value


class ModelVolume(PluginOptions):
    """Where the model files are, as a volume the pods mount read-only.

    * ``{type: hostPath}`` (default): ``modelFile`` is a path on the node; that
      path is mounted at the same place in the pod.  With ``path`` set, that node
      directory is mounted instead (at ``mount_path``, default ``path``) and
      ``modelFile`` must lie under it.
    * ``{type: pvc, claim_name: models}``: the claim is mounted at ``mount_path``
      (default ``/models``, optionally only ``sub_path`` of it); ``modelFile``
      must lie under ``mount_path``.
    """

    label: ClassVar[str] = "k8s shimlet model_volume"

    type: Literal["hostPath", "pvc"] = Field(
        "hostPath", description="`hostPath`: a directory of the node; `pvc`: a PersistentVolumeClaim")
    path: str | None = Field(
        None, description="hostPath only: the node directory to mount; unset: each model's own path")
    claim_name: str | None = Field(None, description="pvc only (required): the PersistentVolumeClaim's name")
    mount_path: str | None = Field(
        None, description="where the pods see the volume; default: `path` (hostPath), `/models` (pvc)")
    sub_path: str | None = Field(None, description="pvc only: the directory of the claim to mount")

    _absolute_paths = field_validator("path", "mount_path")(_absolute_path)

    @field_validator("claim_name")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.match(value):
            raise ValueError(f"must be the name of a PersistentVolumeClaim, got {value!r}")
        return value

    @field_validator("sub_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in PurePosixPath(value).parts):
            raise ValueError(f"must be a relative path without '..', got {value!r}")
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        if self.type == "pvc":
            if not self.claim_name:
                raise ValueError("of type pvc needs claim_name, the name of a PersistentVolumeClaim")
            if self.path is not None:
                raise ValueError("of type pvc takes no path (path applies to hostPath volumes only)")
        elif self.claim_name is not None or self.sub_path is not None:
            raise ValueError("of type hostPath takes no claim_name or sub_path (they apply to pvc volumes only)")
        elif self.mount_path is not None and self.path is None:
            raise ValueError("of type hostPath needs path when mount_path is set")
        return self

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
                f" ({self.place()}); put the model under {root} or change the k8s shimlet's model_volume")
        return target.relative_to(root)

    def place(self) -> str:
        """The volume in words: "PersistentVolumeClaim models", "node directory /srv/models"."""
        if self.type == "pvc":
            sub = f", sub-path {self.sub_path}" if self.sub_path else ""
            return f"PersistentVolumeClaim {self.claim_name}{sub}"
        return f"node directory {self.path}" if self.path else "the node's own filesystem (hostPath)"




class K8sOptions(PluginOptions):
    """Every option of the k8s shimlet."""

    label: ClassVar[str] = "k8s shimlet"

    kubeconfig: str | None = Field(
        None, description="kubeconfig file; unset: the in-cluster service account if present, else `$KUBECONFIG`,"
        " else `~/.kube/config`")
    context: str | None = Field(None, description="kubeconfig context; unset: the current one")
    in_cluster: bool = Field(False, description="use the pod's service account, never a file")
    namespace: str | None = Field(
        None, description="where workloads live; unset: the context's or service account's namespace,"
        " else `default`")
    field_manager: str = Field("modserv-shim", min_length=1, description="server-side apply field manager")
    trust_env: bool = Field(True, description="honour `HTTPS_PROXY`/`NO_PROXY`/`SSL_CERT_FILE`")
    images: dict[str, str] = Field(
        default_factory=dict, description="runtime name → image (`{vllm: registry.local/vllm-openai:v0.8.5}`),"
        " overriding the runtime's default")
    model_volume: ModelVolume = Field(
        default_factory=ModelVolume, description="where the model is: the volume the pods mount (see below)")
    model_root: str | None = Field(
        None, description="where the shim itself sees the model volume's root: model-validation reads it"
        " directly; unset: a validation Job")
    validation_image: str | None = Field(
        None, description="image of the validation Job (needs Python and `modserv_shim`);"
        " unset: `ghcr.io/modserv-shim/modserv-shim:<version>`")
    validation_timeout: float = Field(300.0, gt=0, description="seconds the validation Job may take")
    accelerator_labels: dict[str, str] = Field(
        default_factory=dict, description="`acceleratorType` → node label value; default: spaces become `-`"
        " (`NVIDIA H20` → `NVIDIA-H20`, as GPU feature discovery labels nodes)")
    gpu_product_label: str = Field("nvidia.com/gpu.product", description="node label selected by `acceleratorType`")
    gpu_resource: str = Field(
        "nvidia.com/gpu", description="extended resource requested (request = limit = `acceleratorCount`)")
    gpu_toleration: bool = Field(True, description="tolerate the `<gpu_resource>:NoSchedule` taint of GPU nodes")
    endpoint_access: Literal["proxy", "direct"] = Field(
        "proxy", description="how the shim reaches a model server: `proxy` (API server service proxy; works from"
        " outside) or `direct` (cluster DNS; in-cluster)")
    cluster_domain: str = Field("cluster.local", description="DNS suffix of endpoint URLs")
    max_start_failures: int = Field(
        3, gt=0, description="container exits before it was ever ready, before the deploy is FAILED")
    unschedulable_grace: float = Field(
        0.0, ge=0, description="seconds a never-ready workload may stay unschedulable before it is FAILED (raise"
        " it on clusters whose autoscaler adds GPU nodes)")
    api_timeout: float = Field(10.0, gt=0, description="seconds one API request may take")
    api_retries: int = Field(5, gt=0, description="attempts per API call on 429/5xx/connection errors")
    api_backoff: float = Field(
        0.2, ge=0, description="first retry delay in seconds (doubling, jittered); a `Retry-After` from the"
        " server wins (up to 60 s)")
    api_backoff_max: float = Field(10.0, ge=0, description="cap of the retry delay we choose ourselves, in seconds")
    watch_timeout: float = Field(300.0, gt=0, description="seconds one watch request lasts, then it resumes")
    sync_timeout: float = Field(30.0, gt=0, description="seconds `start()` waits for the first lists")
    delete_wait: float = Field(30.0, ge=0, description="seconds `delete()` waits for the pods to be gone")
    probe_timeout: float = Field(
        60.0, gt=0, description="seconds one request to a model server may take (health check); through the"
        " service proxy, also how long the API server's own failures are retried")

    _label_maps = field_validator("images", "accelerator_labels", mode="before")(_label_map)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _DNS_LABEL.match(value)):
            raise ValueError(f"must be a namespace name (lowercase letters, digits, '-'), got {value!r}")
        return value

    @field_validator("in_cluster")
    @classmethod
    def _one_source(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("kubeconfig"):
            raise ValueError("and kubeconfig exclude each other: set one")
        return value

    @field_validator("model_root")
    @classmethod
    def _model_root(cls, value: str | None) -> str | None:
        return _absolute_path(value)

    @property
    def job_image(self) -> str:
        """The validation Job's image: ``validation_image``, or this project's image of this version."""
        return self.validation_image or DEFAULT_VALIDATION_IMAGE
