"""Kubernetes names and labels for a service: deterministic, valid, collision-resistant.

The resource id of a k8s service is its *service id* (as for the local
shimlet), so ``delete`` by service id and by resource id are the same call.
The Kubernetes objects are named after it:

* A service id that already is a DNS-1035 label of at most
  :data:`MAX_NAME` characters is used as it is, so ``kubectl get deploy``
  shows the id people see in the API.
* Anything else is lower-cased, cleaned, cut and suffixed with 8 hex digits
  of its SHA-256 (``<cleaned prefix>-<hash>``), so two long ids that share a
  prefix still get different names, and the same id always gets the same name.

Why 52 and not 63: a StatefulSet's pods carry the label
``controller-revision-hash: <name>-<10 characters>``, and label values stop at
63 characters.  Services need a DNS-1035 label (a letter first); Deployments,
Jobs and their pods are happy with that too.  The full service id is kept in
the annotation :data:`SERVICE_ID_ANNOTATION`, which has no length rule.

Label *values* have rules of their own (63 characters, alphanumeric at both
ends); :func:`label_value` applies the same cut-and-hash to values that break them.
"""

from __future__ import annotations

import hashlib
import re
import secrets

MANAGER = "modserv-shim"
MANAGED_BY = "app.kubernetes.io/managed-by"
INSTANCE = "app.kubernetes.io/instance"
APP_NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
SERVICE_ID_LABEL = "modserv-shim/service-id"
VALIDATION_LABEL = "modserv-shim/validation-job"
SERVICE_ID_ANNOTATION = "modserv-shim/service-id"
MODEL_FILE_ANNOTATION = "modserv-shim/model-file"
SERVER_COMPONENT = "inference-server"
VALIDATION_COMPONENT = "model-validation"
TASK_COMPONENT = "model-task"  # a VolumeTask's Job (quantization); its pods carry VALIDATION_LABEL too
JOB_COMPONENTS = (VALIDATION_COMPONENT, TASK_COMPONENT)

MAX_NAME = 52
MAX_LABEL_VALUE = 63
_HASH = 8
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH]


def workload_name(service_id: str) -> str:
    """The name of the Deployment/StatefulSet and the Service of ``service_id``."""
    if len(service_id) <= MAX_NAME and _DNS1035.match(service_id):
        return service_id
    base = re.sub(r"[^a-z0-9]+", "-", service_id.lower()).strip("-")
    if not base or not base[0].isalpha():
        base = f"ms-{base}"
    base = base[: MAX_NAME - _HASH - 1].rstrip("-")
    return f"{base}-{_digest(service_id)}"


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_LABEL_VALUE and bool(_LABEL_VALUE.match(value))


def is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))
            and (not prefix or (len(prefix) <= 253 and bool(_PREFIX.match(prefix)))))


def label_value(value: str) -> str:
    """``value`` if it is a valid label value, else a cleaned, cut version ending in a hash of it."""
    if is_label_value(value):
        return value
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)
    base = re.sub(r"^[^A-Za-z0-9]+", "", base)[: MAX_LABEL_VALUE - _HASH - 1]
    base = re.sub(r"[^A-Za-z0-9]+$", "", base)
    return f"{base}-{_digest(value)}" if base else _digest(value)


def selector(name: str) -> dict[str, str]:
    """The (immutable) selector of a workload: never change it, or updates are refused."""
    return {MANAGED_BY: MANAGER, INSTANCE: name}


def validation_job_name(model_name: str, kind: str = "check") -> str:
    """A fresh name per validation (or task, ``kind``): two deploys of one model may validate at the same time."""
    base = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[:40].rstrip("-") or "model"
    if not base[0].isalpha():
        base = f"m-{base}"[:40]
    word = re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")[:10].rstrip("-") or "task"
    return f"{base}-{word}-{secrets.token_hex(3)}"
