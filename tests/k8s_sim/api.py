"""REST semantics of the simulated API server, independent of HTTP.

:class:`ObjectAPI` implements what a kube-apiserver does for one request -- create, get, list,
replace, patch (merge, strategic, JSON, server-side apply), delete and the ``/status`` and
``/scale`` subresources -- on top of :class:`~.store.Store`: metadata (uid, generation,
creationTimestamp, generateName), defaulting, validation, optimistic concurrency on
``resourceVersion``, field ownership, no-op detection, dry-run, namespace existence and deletion
propagation.  Controllers use the ``internal_*`` methods, which skip validation and ownership
tracking like the real controllers' status writes skip admission.
"""

from __future__ import annotations

import base64
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import yaml

from . import resources as r
from .defaults import apply_defaults
from .errors import StatusError
from .managed import (
    ManagerEntry,
    changed_paths,
    delete_path,
    field_set,
    read_managers,
    render_path,
    value_at,
    write_managers,
)
from .merge import apply_json_patch, json_merge_patch, strategic_merge
from .selection import FieldSelector, LabelSelector
from .store import Obj, Store
from .util import clone, rfc3339, sim_uuid, suffix
from .validation import validate_object, validate_update

__all__ = ["ObjectAPI", "WriteOptions"]

_IDENTITY = ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds",
             "generation")
_APPLY_STRIP = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds", "selfLink")


@dataclass(frozen=True)
class WriteOptions:
    """How a write is made: by a client (``manager`` set, validated) or by a controller."""

    manager: str | None = None
    dry_run: bool = False
    validate: bool = True
    force: bool = False

    @property
    def internal(self) -> bool:
        return self.manager is None


INTERNAL = WriteOptions(validate=False)


def _bare(obj: Obj) -> Obj:
    """``obj`` without its resourceVersion, for no-op detection."""
    out = clone(obj)
    out["metadata"].pop("resourceVersion", None)
    return out


class ObjectAPI:
    """Object operations with real API semantics, shared by the HTTP layer and the controllers."""

    def __init__(self, store: Store, *, schema_version: str, rng: random.Random,
                 pod_grace_seconds: float = 0.0) -> None:
        self.store = store
        self.schema_version = schema_version
        self.rng = rng
        self.pod_grace_seconds = pod_grace_seconds
        self.pod_deadlines: dict[str, float] = {}  # uid -> monotonic time the pod is removed
        self._next_ip = 10
        self._next_node_port = 30000

    # -- reads ------------------------------------------------------------------------------

    def get(self, rt: r.ResourceType, ns: str | None, name: str) -> Obj:
        obj = self.store.get(rt, ns, name)
        if obj is None:
            raise StatusError.not_found(rt, name)
        return clone(obj)

    def try_get(self, rt: r.ResourceType, ns: str | None, name: str) -> Obj | None:
        obj = self.store.get(rt, ns, name)
        return clone(obj) if obj is not None else None

    def select(self, rt: r.ResourceType, ns: str | None, labels: LabelSelector | None = None,
               fields: FieldSelector | None = None) -> list[Obj]:
        """Matching stored objects (shared references: do not modify)."""
        return [o for o in self.store.items(rt, ns)
                if (labels is None or labels.matches(o["metadata"].get("labels")))
                and (fields is None or fields.matches(o))]

    def list_collection(self, rt: r.ResourceType, ns: str | None, labels: LabelSelector, fields: FieldSelector,
             limit: int | None = None, continue_token: str | None = None) -> Obj:
        """A ``<Kind>List`` with ``metadata.resourceVersion`` (and ``continue`` when paginated)."""
        matched = self.select(rt, ns if rt.namespaced else None, labels, fields)
        start, list_rv = 0, self.store.rv
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start, list_rv = int(token["start"]), int(token["rv"])
            except (ValueError, KeyError) as exc:
                raise StatusError.bad_request("continue key is not valid: incorrect encoded start "
                                              "resourceVersion (version meta.k8s.io/v1)") from exc
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        items = matched[start:]
        if limit and len(items) > limit:
            items = items[:limit]
            token = {"rv": list_rv, "start": start + limit}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(matched) - start - limit
        out_items = []
        for stored in items:
            item = clone(stored)
            item.pop("apiVersion", None)  # typed lists carry the kind on the list only
            item.pop("kind", None)
            out_items.append(item)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": out_items}

    # -- helpers ------------------------------------------------------------------------------

    def _require_namespace(self, ns: str) -> None:
        namespace = self.store.get(r.NAMESPACE, None, ns)
        if namespace is None:
            raise StatusError.not_found(r.NAMESPACE, ns)
        if namespace["metadata"].get("deletionTimestamp"):
            raise StatusError(403, f'{ns} is forbidden: unable to create new content in namespace {ns} '
                                   f"because it is being terminated", reason="Forbidden")

    def _check_body(self, rt: r.ResourceType, ns: str | None, body: Any, *, name: str | None = None,
                    require_type: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise StatusError.bad_request("the object provided is unrecognized (must be of type "
                                          f"{rt.kind}): body is not an object")
        obj: Obj = clone(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if require_type and (not api_version or not kind):
            raise StatusError.bad_request("apiVersion and kind must be set in an apply request")
        if api_version and api_version != rt.api_version:
            raise StatusError.bad_request(f"the API version in the data ({api_version}) does not match the "
                                          f"expected API version ({rt.api_version})")
        if kind and kind != rt.kind:
            raise StatusError.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                          f"({rt.kind})")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError.bad_request("metadata must be an object")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise StatusError.bad_request("the namespace of the provided object does not match the namespace "
                                          "sent on the request")
        if name is not None and meta.get("name") and meta["name"] != name:
            raise StatusError.bad_request(f"the name of the object ({meta['name']}) does not match the name on "
                                          f"the URL ({name})")
        if name is not None:
            meta["name"] = name
        return obj

    def _precondition(self, rt: r.ResourceType, old: Obj, body: Obj) -> None:
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise StatusError.modified(rt, old["metadata"]["name"])

    def _allocate_ip(self) -> str:
        n = self._next_ip
        self._next_ip += 1
        return f"10.96.{n // 256}.{n % 256}"

    def _on_create(self, rt: r.ResourceType, obj: Obj) -> None:
        """Kind-specific work the API server does on create (IP allocation, Job selectors)."""
        spec = obj.get("spec")
        if rt is r.SERVICE and isinstance(spec, dict):
            if not spec.get("clusterIP"):
                spec["clusterIP"] = self._allocate_ip()
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            if spec.get("type") in ("NodePort", "LoadBalancer"):
                spec.setdefault("externalTrafficPolicy", "Cluster")
                for port in spec.get("ports") or []:
                    if "nodePort" not in port:
                        port["nodePort"] = self._next_node_port
                        self._next_node_port += 1
        if rt is r.JOB and isinstance(spec, dict) and not spec.get("manualSelector"):
            uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
            labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                      "controller-uid": uid, "job-name": name}
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template = spec.setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)

    # -- create -------------------------------------------------------------------------------

    def create(self, rt: r.ResourceType, ns: str | None, body: Any, opts: WriteOptions,
               *, operation: str = "Update") -> Obj:
        obj = self._check_body(rt, ns, body)
        meta = obj["metadata"]
        if rt.namespaced:
            assert ns is not None
            self._require_namespace(ns)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise StatusError.invalid(rt, rt.kind, "", [("metadata.name", "Required value: name or "
                                                                                "generateName is required")])
            meta["name"] = meta["generateName"] + suffix(self.rng)
        if self.store.get(rt, ns if rt.namespaced else None, meta["name"]) is not None:
            raise StatusError.already_exists(rt, meta["name"])
        if meta.get("managedFields") and not opts.internal:
            raise StatusError.bad_request("metadata.managedFields must be nil")
        applied_paths = field_set(obj)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                    "managedFields"):
            meta.pop(key, None)
        meta["uid"] = sim_uuid(self.rng)
        meta["creationTimestamp"] = rfc3339()
        if rt.has_generation:
            meta["generation"] = 1
        if "status" in rt.subresources and not opts.internal:
            obj.pop("status", None)  # status is owned by controllers, reset on create
        self._on_create(rt, obj)
        apply_defaults(rt, obj)
        if opts.validate:
            validate_object(rt, obj, self.schema_version)
        if opts.manager:
            entry = ManagerEntry(opts.manager, operation, rt.api_version, rfc3339(), applied_paths)
            write_managers(obj, [entry])
        if opts.dry_run:
            return obj
        return clone(self.store.put(rt, obj))

    # -- update -------------------------------------------------------------------------------

    def _commit(self, rt: r.ResourceType, old: Obj, new: Obj, opts: WriteOptions, *,
                subresource: str | None = None, entries: list[ManagerEntry] | None = None) -> Obj:
        """Write ``new`` over ``old``: identity, status rules, defaults, validation, generation,
        ownership, and no-op detection."""
        meta = new.setdefault("metadata", {})
        for key in _IDENTITY:
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if subresource == "status":
            status = new.get("status")
            new = clone(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif "status" in rt.subresources and not opts.internal:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        apply_defaults(rt, new)
        if opts.validate and subresource != "status":
            validate_object(rt, new, self.schema_version)
            validate_update(rt, old, new)
        if rt.has_generation:
            def spec_part(o: Obj) -> Obj:
                return {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}

            if spec_part(old) != spec_part(new):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if entries is not None:
            write_managers(new, entries)
        elif opts.manager and subresource != "status":
            entries = read_managers(old)
            changed, removed = changed_paths(old, new)
            if changed or removed:
                mine = next((e for e in entries if e.manager == opts.manager and e.operation == "Update"
                             and e.subresource == subresource), None)
                for entry in entries:
                    entry.paths -= changed | removed
                if changed:
                    if mine is None:
                        mine = ManagerEntry(opts.manager, "Update", rt.api_version, "", set(), subresource)
                        entries.append(mine)
                    mine.paths |= changed
                    mine.time = rfc3339()
            write_managers(new, entries)
        elif "managedFields" in old["metadata"]:
            meta["managedFields"] = clone(old["metadata"]["managedFields"])
        else:
            meta.pop("managedFields", None)
        if _bare(new) == _bare(old):
            return clone(old)  # no-op: resourceVersion unchanged, no watch event
        if opts.dry_run:
            return new
        return clone(self.store.put(rt, new))

    def replace(self, rt: r.ResourceType, ns: str | None, name: str, body: Any, opts: WriteOptions,
                *, subresource: str | None = None) -> Obj:
        old = self.get(rt, ns, name)
        new = self._check_body(rt, ns, body, name=name)
        self._precondition(rt, old, new)
        return self._commit(rt, old, new, opts, subresource=subresource)

    def patch(self, rt: r.ResourceType, ns: str | None, name: str, raw: bytes, content_type: str,
              opts: WriteOptions, *, subresource: str | None = None) -> tuple[Obj, bool]:
        """Any PATCH; returns ``(object, created)`` (only apply can create)."""
        media = content_type.split(";", maxsplit=1)[0].strip().lower()
        if media == "application/apply-patch+yaml":
            if subresource not in (None, "status"):
                raise StatusError.method_not_allowed()
            return self.apply(rt, ns, name, raw, opts, subresource=subresource)
        old = self.get(rt, ns, name)
        try:
            patch = json.loads(raw or b"null")
        except ValueError as exc:
            raise StatusError.bad_request(f"error decoding patch: {exc}") from exc
        if media == "application/merge-patch+json":
            new = json_merge_patch(old, patch)
        elif media == "application/strategic-merge-patch+json":
            new = strategic_merge(old, patch)
        elif media == "application/json-patch+json":
            if not isinstance(patch, list):
                raise StatusError.bad_request("json patch must be a list of operations")
            try:
                new = apply_json_patch(old, patch)
            except ValueError as exc:
                raise StatusError(422, str(exc), reason="Invalid") from exc
        else:
            raise StatusError.unsupported_patch(content_type)
        if not isinstance(new, dict):
            raise StatusError.bad_request("patch produced a non-object")
        new = self._check_body(rt, ns, new, name=name)
        if isinstance(patch, dict):
            self._precondition(rt, old, patch)
        return self._commit(rt, old, new, opts, subresource=subresource), False

    # -- server-side apply --------------------------------------------------------------------

    def apply(self, rt: r.ResourceType, ns: str | None, name: str, raw: bytes, opts: WriteOptions,
              *, subresource: str | None = None) -> tuple[Obj, bool]:
        if not opts.manager:
            raise StatusError.bad_request("PATCH, application/apply-patch+yaml requests must supply a "
                                          "fieldManager parameter")
        try:
            applied_raw = yaml.safe_load(raw.decode() if raw else "")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise StatusError.bad_request(f"error decoding YAML: {exc}") from exc
        applied = self._check_body(rt, ns, applied_raw, name=name, require_type=True)
        meta = applied["metadata"]
        if meta.get("managedFields"):
            raise StatusError.bad_request("metadata.managedFields must be nil")
        old = self.store.get(rt, ns if rt.namespaced else None, name)
        if old is not None:
            self._precondition(rt, old, applied)
        for key in _APPLY_STRIP:
            meta.pop(key, None)
        if rt.namespaced:
            meta["namespace"] = ns
        if subresource is None and "status" in rt.subresources:
            applied.pop("status", None)
        elif subresource == "status":
            applied = {"apiVersion": applied["apiVersion"], "kind": applied["kind"],
                       "metadata": {"name": name}, "status": applied.get("status") or {}}
        if old is None:
            if subresource == "status":
                raise StatusError.not_found(rt, name)
            return self.create(rt, ns, applied, opts, operation="Apply"), True
        old = clone(old)
        paths = field_set(applied) if subresource is None else set()
        entries = read_managers(old)
        # Keyed list items ("k:" markers) only record membership; their fields are compared one by one.
        conflicts = [(e, p) for e in entries if e.manager != opts.manager for p in sorted(paths & e.paths)
                     if p[-1].startswith("f:") and value_at(old, p) != value_at(applied, p)]
        if conflicts and not opts.force:
            raise self._apply_conflict(rt, name, conflicts)
        for entry, path in conflicts:
            entry.paths.discard(path)
        mine = next((e for e in entries if e.manager == opts.manager and e.operation == "Apply"), None)
        others: set[tuple[str, ...]] = set().union(*(e.paths for e in entries if e is not mine))
        base = clone(old)
        if mine is not None:
            for path in sorted(mine.paths - paths - others, key=len, reverse=True):
                delete_path(base, path)
        merged = strategic_merge(base, applied)
        if subresource is None:
            if mine is None:
                mine = ManagerEntry(opts.manager, "Apply", rt.api_version, rfc3339(), set())
                entries.append(mine)
            if mine.paths != paths:
                mine.paths = set(paths)
                mine.time = rfc3339()
        return self._commit(rt, old, merged, opts, subresource=subresource, entries=entries), False

    @staticmethod
    def _apply_conflict(rt: r.ResourceType, name: str,
                        conflicts: list[tuple[ManagerEntry, tuple[str, ...]]]) -> StatusError:
        lines = [f'conflict with "{e.manager}" using {e.api_version}: {render_path(p)}' for e, p in conflicts]
        count = len(conflicts)
        text = f"Apply failed with {count} conflict{'s' if count > 1 else ''}: " + "; ".join(lines)
        causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{e.manager}" using '
                   f"{e.api_version}", "field": render_path(p)} for e, p in conflicts]
        return StatusError(409, text, reason="Conflict",
                           details={"name": name, "group": rt.group, "kind": rt.plural, "causes": causes})

    # -- scale ----------------------------------------------------------------------------------

    def get_scale(self, rt: r.ResourceType, ns: str | None, name: str) -> Obj:
        obj = self.get(rt, ns, name)
        meta = obj["metadata"]
        selector = (obj.get("spec") or {}).get("selector")
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": int((obj.get("spec") or {}).get("replicas", 0))},
            "status": {"replicas": int((obj.get("status") or {}).get("replicas", 0)),
                       "selector": str(LabelSelector.from_spec(selector))},
        }

    def update_scale(self, rt: r.ResourceType, ns: str | None, name: str, scale: Any,
                     opts: WriteOptions) -> Obj:
        obj = self.get(rt, ns, name)
        if not isinstance(scale, dict):
            raise StatusError.bad_request("body must be a Scale object")
        wanted_rv = (scale.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
            raise StatusError.modified(rt, name)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise StatusError.invalid(None, "Scale.autoscaling", name, [
                ("spec.replicas", f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0")])
        new = clone(obj)
        new["spec"]["replicas"] = replicas
        self._commit(rt, obj, new, opts, subresource=None)
        return self.get_scale(rt, ns, name)

    def patch_scale(self, rt: r.ResourceType, ns: str | None, name: str, raw: bytes, content_type: str,
                    opts: WriteOptions) -> Obj:
        scale = self.get_scale(rt, ns, name)
        media = content_type.split(";", maxsplit=1)[0].strip().lower()
        try:
            if media == "application/apply-patch+yaml":
                patch = yaml.safe_load(raw.decode())
            else:
                patch = json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise StatusError.bad_request(f"error decoding patch: {exc}") from exc
        if media == "application/json-patch+json":
            try:
                scale = apply_json_patch(scale, patch)
            except ValueError as exc:
                raise StatusError(422, str(exc), reason="Invalid") from exc
        elif media in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                       "application/apply-patch+yaml"):
            scale = strategic_merge(scale, patch)
        else:
            raise StatusError.unsupported_patch(content_type)
        return self.update_scale(rt, ns, name, scale, opts)

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, rt: r.ResourceType, ns: str | None, name: str, *, propagation: str | None = None,
               grace_seconds: float | None = None, dry_run: bool = False,
               preconditions: dict[str, Any] | None = None) -> Obj:
        """Delete with the real default propagation (``Orphan`` for batch/v1 Jobs, else ``Background``).

        Dependents are removed by the garbage collector in the cluster loop, like on a real cluster;
        ``Foreground`` is treated as ``Background``.  Pods honour a grace period when the simulator is
        configured with one (``pod_grace_seconds``): they get ``deletionTimestamp`` and disappear later.
        """
        obj = self.get(rt, ns, name)
        meta = obj["metadata"]
        for key, value in (preconditions or {}).items():
            if value and meta.get(key) != value:
                raise StatusError.conflict(rt, name, f"Precondition failed: {key} in precondition: {value}, "
                                                     f"{key} in object meta: {meta.get(key)}")
        if dry_run:
            return obj
        policy = propagation or ("Orphan" if rt is r.JOB else "Background")
        if policy not in ("Orphan", "Background", "Foreground"):
            raise StatusError.bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        if policy == "Orphan":
            self._orphan_dependents(meta.get("namespace"), meta["uid"])
        if rt is r.NAMESPACE:
            for other_rt, other in list(self.store.all_items()):
                if other_rt.namespaced and other["metadata"].get("namespace") == name:
                    self.remove(other_rt, name, other["metadata"]["name"])
        grace = self.pod_grace_seconds if grace_seconds is None else min(grace_seconds, self.pod_grace_seconds)
        if rt is r.POD and grace > 0:
            if meta.get("deletionTimestamp"):
                return obj
            new = clone(obj)
            new["metadata"]["deletionTimestamp"] = rfc3339(time.time() + grace)
            new["metadata"]["deletionGracePeriodSeconds"] = max(1, round(grace))
            self.pod_deadlines[meta["uid"]] = time.monotonic() + grace
            return clone(self.store.put(rt, new))
        return self.remove(rt, ns, name) or obj

    def remove(self, rt: r.ResourceType, ns: str | None, name: str) -> Obj | None:
        """Remove an object now (the end of a graceful deletion, or a garbage collection)."""
        obj = self.store.remove(rt, ns if rt.namespaced else None, name)
        if obj is not None:
            self.pod_deadlines.pop(obj["metadata"]["uid"], None)
        return obj

    def _orphan_dependents(self, ns: str | None, uid: str) -> None:
        for rt, obj in list(self.store.all_items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs) and obj["metadata"].get("namespace") == ns:
                new = clone(obj)
                kept = [ref for ref in refs if ref.get("uid") != uid]
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences")
                self.internal_update(rt, obj, new)

    def delete_collection(self, rt: r.ResourceType, ns: str | None, labels: LabelSelector, fields: FieldSelector,
                          *, propagation: str | None = None, dry_run: bool = False) -> Obj:
        deleted = []
        for obj in list(self.select(rt, ns if rt.namespaced else None, labels, fields)):
            deleted.append(self.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                       propagation=propagation, dry_run=dry_run))
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted}

    # -- controller-side writes -------------------------------------------------------------------

    def internal_create(self, rt: r.ResourceType, obj: Obj) -> Obj:
        return self.create(rt, obj["metadata"].get("namespace"), obj, INTERNAL)

    def internal_update(self, rt: r.ResourceType, old: Obj, new: Obj) -> Obj:
        """Write ``new`` (a modified copy of ``old``) unless nothing changed."""
        return self._commit(rt, old, clone(new), INTERNAL)

    def set_status(self, rt: r.ResourceType, obj: Obj, status: dict[str, Any]) -> bool:
        """Replace ``.status`` of a stored object; returns whether anything was written."""
        current = self.store.get(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if current is None or current.get("status") == status:
            return False
        new = clone(current)
        new["status"] = clone(status)
        self.store.put(rt, new)
        return True
