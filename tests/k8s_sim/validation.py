"""Validation of written objects: official JSON schemas (strict) plus the API server's key checks.

Schema validation uses ``kubernetes-validate`` in strict mode (unknown fields are errors), against
the Kubernetes version the simulator pretends to be.  On top of that come the semantic checks the
schemas cannot express and that client code most often trips over: object names, label syntax,
selector-vs-template labels, restart policies per workload kind, GPU requests vs limits, and
immutable fields.  Every failure is a ``422 Invalid`` Status whose message follows the real server's
``<Kind> "<name>" is invalid: <field>: <reason>`` format.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from . import resources as r
from .errors import StatusError
from .quantity import parse_quantity
from .selection import LabelSelector
from .store import Obj

__all__ = ["latest_schema_version", "validate_object", "validate_update"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL_KINDS = {"Namespace", "Service"}
# Resources whose requests must equal their limits (not overcommittable).
_STANDARD = {"cpu", "memory", "ephemeral-storage"}

Cause = tuple[str, str]


def latest_schema_version() -> str:
    """Newest Kubernetes version whose schemas ship with the installed kubernetes-validate."""
    return str(kv_utils.latest_version())


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


@functools.lru_cache(maxsize=8)
def _definitions(folder: str, version: str) -> Registry:  # type: ignore[type-arg, unused-ignore]
    """The shared ``_definitions.json`` of one schema folder, parsed once."""
    contents = kv_utils.schema_contents(f"{folder}/_definitions.json", version)
    return Resource.from_contents(contents) @ Registry()  # type: ignore[no-any-return, unused-ignore]


@functools.lru_cache(maxsize=64)
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """A strict-schema validator from kubernetes-validate's bundled files, built once per kind.

    ``kubernetes_validate.validate()`` re-reads the 2 MB definitions file on every call (~25 ms);
    the simulator validates every write, so it keeps the parsed schemas instead.  The file layout
    and version choice (newest shipped version not newer than the requested one) are the package's.
    """
    shipped = [v for v in kv_utils.all_versions() if _minor(v) <= _minor(version)]
    if not shipped:
        raise ValueError(f"kubernetes-validate ships no schemas for Kubernetes {version}")
    folder = f"kubernetes-json-schema/v{shipped[-1]}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv_utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    return jsonschema.Draft202012Validator(schema, registry=_definitions(folder, version))


@functools.lru_cache(maxsize=512)
def _schema_errors(doc: str, version: str) -> tuple[Cause, ...]:
    """Schema-validate a JSON document (cached: steady-state re-applies are cheap)."""
    data = json.loads(doc)
    validator = _validator(version, str(data.get("apiVersion", "")), str(data.get("kind", "")))
    if validator is None:
        return ()
    exc = best_match(validator.iter_errors(data))
    if exc is None:
        return ()
    path = list(exc.path)
    if exc.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", exc.message)
        return ((_field([*path, *missing[:1]]), "Required value"),)
    if exc.validator == "additionalProperties":
        unknown = re.findall(r"'([^']+)' was unexpected", exc.message)
        return tuple((_field([*path, u]), f'Invalid value: unknown field "{_field([*path, u])}"')
                     for u in unknown or ["?"])
    return ((_field(path), f"Invalid value: {json.dumps(exc.instance)}: {exc.message}"),)


def _name_causes(kind: str, name: str) -> list[Cause]:
    if kind in _DNS_LABEL_KINDS:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                     "lower case alphanumeric characters or '-', and must start and end with an alphanumeric "
                     "character (e.g. 'my-name',  or '123-abc', regex used for validation is "
                     "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")]
    elif kind != "Event" and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        return [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                 "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                 "character (e.g. 'example.com', regex used for validation is "
                 r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")]
    return []


def _label_causes(field: str, labels: Any) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(labels, dict):
        return causes
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not _LABEL_NAME.match(name) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            causes.append((field, f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                           "'-', '_' or '.', and must start and end with an alphanumeric character"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append((field, f"Invalid value: {json.dumps(value)}: a valid label must be an empty string "
                           "or consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                           "an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
                           "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
    return causes


def _pod_spec_causes(field: str, spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        return [(f"{field}.containers", "Required value")]
    seen: set[str] = set()
    for i, c in enumerate(containers):
        where = f"{field}.containers[{i}]"
        name = c.get("name", "")
        if name in seen:
            causes.append((f"{where}.name", f'Duplicate value: "{name}"'))
        seen.add(name)
        if not _DNS_LABEL.match(str(name)):
            causes.append((f"{where}.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must '
                           "consist of lower case alphanumeric characters or '-'"))
        if not c.get("image"):
            causes.append((f"{where}.image", "Required value"))
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for value in {**limits, **requests}.values():
            try:
                parse_quantity(value)
            except ValueError as exc:
                causes.append((f"{where}.resources", f"Invalid value: {json.dumps(value)}: {exc}"))
                return causes
        for rname, value in requests.items():
            if rname in limits and parse_quantity(value) > parse_quantity(limits[rname]):
                causes.append((f"{where}.resources.requests",
                               f'Invalid value: "{value}": must be less than or equal to {rname} limit of '
                               f"{limits[rname]}"))
            if rname not in _STANDARD and "/" in rname:
                if rname not in limits:
                    causes.append((f"{where}.resources.limits",
                                   "Required value: Limit must be set for non overcommitable resources"))
                elif parse_quantity(value) != parse_quantity(limits[rname]):
                    causes.append((f"{where}.resources.requests",
                                   f'Invalid value: "{value}": must be equal to {rname} limit of '
                                   f"{limits[rname]}"))
    return causes


def _workload_causes(rt: r.ResourceType, obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    causes = _label_causes("spec.template.metadata.labels", (template.get("metadata") or {}).get("labels"))
    selector = spec.get("selector")
    if rt is not r.JOB:
        if not selector:
            causes.append(("spec.selector", "Required value"))
        elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
            causes.append(("spec.selector", "Invalid value: {}: empty selector is invalid for deployment"))
        else:
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not LabelSelector.from_spec(selector).matches(labels):
                causes.append(("spec.template.metadata.labels",
                               f"Invalid value: {json.dumps(labels, sort_keys=True)}: `selector` does not match "
                               "template `labels`"))
    policy = (template.get("spec") or {}).get("restartPolicy", "Always")
    if rt is r.JOB and policy not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy",
                       f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"'))
    elif rt is not r.JOB and policy != "Always":
        causes.append(("spec.template.spec.restartPolicy",
                       f'Unsupported value: "{policy}": supported values: "Always"'))
    if isinstance(template.get("spec"), dict):
        causes += _pod_spec_causes("spec.template.spec", template["spec"])
    return causes


def validate_object(rt: r.ResourceType, obj: Obj, version: str) -> None:
    """Raise ``422 Invalid`` when ``obj`` (the object about to be stored) is not acceptable."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    causes: list[Cause] = _name_causes(rt.kind, name)
    causes += _label_causes("metadata.labels", meta.get("labels"))
    if rt in (r.DEPLOYMENT, r.STATEFULSET, r.REPLICASET, r.JOB):
        causes += _workload_causes(rt, obj)
    elif rt is r.POD:
        causes += _pod_spec_causes("spec", obj.get("spec") or {})
    elif rt is r.SERVICE:
        spec = obj.get("spec") or {}
        if not spec.get("ports") and spec.get("clusterIP") != "None":
            causes.append(("spec.ports", "Required value"))
    if not causes:
        causes = list(_schema_errors(json.dumps(obj, sort_keys=True), version))
    if causes:
        raise StatusError.invalid(rt, rt.kind, name, causes)


_STS_MUTABLE = {"replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds"}


def validate_update(rt: r.ResourceType, old: Obj, new: Obj) -> None:
    """Immutable-field checks between the stored object and its replacement."""
    o, n = old.get("spec") or {}, new.get("spec") or {}
    name = new["metadata"]["name"]
    causes: list[Cause] = []
    if rt in (r.DEPLOYMENT, r.REPLICASET, r.STATEFULSET) and o.get("selector") != n.get("selector"):
        causes.append(("spec.selector", f"Invalid value: {json.dumps(n.get('selector'))}: field is immutable"))
    if rt is r.STATEFULSET and not causes:
        changed = {k for k in set(o) | set(n) if o.get(k) != n.get(k)} - _STS_MUTABLE
        if changed:
            causes.append(("spec", "Forbidden: updates to statefulset spec for fields other than 'replicas', "
                           "'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' "
                           "and 'minReadySeconds' are forbidden"))
    if rt is r.JOB and (o.get("template") != n.get("template") or o.get("selector") != n.get("selector")):
        causes.append(("spec.template", "Invalid value: ...: field is immutable"))
    if rt is r.SERVICE and o.get("clusterIP") and n.get("clusterIP") != o.get("clusterIP"):
        causes.append(("spec.clusterIP", f'Invalid value: "{n.get("clusterIP")}": field is immutable'))
    if rt is r.POD:
        def strip(spec: dict[str, Any]) -> dict[str, Any]:
            spec = json.loads(json.dumps(spec))
            for c in spec.get("containers") or []:
                c.pop("image", None)
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            return spec

        if strip(o) != strip(n):
            causes.append(("spec", "Forbidden: pod updates may not change fields other than "
                           "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                           "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
                           "tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                           "was previously negative)"))
    if causes:
        raise StatusError.invalid(rt, rt.kind, name, causes)
