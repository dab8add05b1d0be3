"""An approximation of server-side apply's field ownership (``metadata.managedFields``).

Fields are tracked as paths of ``f:<field>`` and ``k:{<key>}`` segments (keyed list items), the
same vocabulary as ``fieldsV1``.  What is modelled:

* an apply records the set of fields in the applied configuration as owned by that manager
  (operation ``Apply``); fields it owned before and no longer applies are removed from the object
  unless another manager owns them;
* a conflicting apply (another manager owns a field with a different value) fails with 409 unless
  ``force=true``, which transfers ownership;
* updates (PUT, non-apply PATCH, ``/scale``) give the changed fields to the request's manager
  (operation ``Update``) and take them away from everyone else;
* ``managedFields`` is rendered in the real ``FieldsV1`` shape so clients can read it.

Not modelled: sets (``v:`` entries), granular ownership inside atomic structs, the ``.`` markers of
maps, and per-subresource status ownership (status is not tracked).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from .merge import item_key, list_key
from .store import Obj

__all__ = ["ManagerEntry", "Path", "delete_path", "field_set", "read_managers", "render_path", "value_at",
           "write_managers"]

Path = tuple[str, ...]
_UNTRACKED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                   "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName"}
_MISSING = object()


def _fields(value: Any, name: str, prefix: Path, out: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _fields(sub, key, (*prefix, f"f:{key}"), out)
        return
    if isinstance(value, list):
        key = list_key(name, value)
        if key is not None:
            for item in value:
                item_path = (*prefix, f"k:{item_key(item, key)}")
                out.add(item_path)
                for sub_key, sub in item.items():
                    _fields(sub, sub_key, (*item_path, f"f:{sub_key}"), out)
            return
    out.add(prefix)


def field_set(obj: Obj) -> set[Path]:
    """The leaf fields set in ``obj`` (identity metadata, apiVersion, kind and status excluded)."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            for mkey, mvalue in (value or {}).items():
                if mkey not in _UNTRACKED_META:
                    _fields(mvalue, mkey, ("f:metadata", f"f:{mkey}"), out)
            continue
        _fields(value, key, (f"f:{key}",), out)
    return out


def _step(node: Any, segment: str, parent_field: str) -> Any:
    if segment.startswith("f:"):
        return node.get(segment[2:], _MISSING) if isinstance(node, dict) else _MISSING
    if isinstance(node, list):
        key = list_key(parent_field, node)
        if key is not None:
            for item in node:
                if f"k:{item_key(item, key)}" == segment:
                    return item
    return _MISSING


def value_at(obj: Obj, path: Path) -> Any:
    """The value at ``path`` or a sentinel when absent (compare with ``==`` only)."""
    node: Any = obj
    parent = ""
    for segment in path:
        node = _step(node, segment, parent)
        if node is _MISSING:
            return _MISSING
        if segment.startswith("f:"):
            parent = segment[2:]
    return node


def delete_path(obj: Obj, path: Path) -> None:
    """Remove the field or keyed list item at ``path`` if present."""
    node: Any = obj
    parent = ""
    for segment in path[:-1]:
        node = _step(node, segment, parent)
        if node is _MISSING:
            return
        if segment.startswith("f:"):
            parent = segment[2:]
    last = path[-1]
    if last.startswith("f:") and isinstance(node, dict):
        node.pop(last[2:], None)
    elif isinstance(node, list):
        target = _step(node, last, parent)
        if target is not _MISSING:
            node.remove(target)


def render_path(path: Path) -> str:
    """``.spec.template.spec.containers[name="vllm"].image`` style, as in apply conflict messages."""
    out = ""
    for segment in path:
        if segment.startswith("f:"):
            out += "." + segment[2:]
        else:
            key = json.loads(segment[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
    return out


def _to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for segment in path:
            node = node.setdefault(segment, {})
        if path and path[-1].startswith("k:"):
            node["."] = {}
    return tree


def _from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for segment, sub in tree.items():
        if segment == ".":
            out.add(prefix)
        elif isinstance(sub, dict) and sub:
            out |= _from_fields_v1(sub, (*prefix, segment))
        else:
            out.add((*prefix, segment))
    return out


@dataclass
class ManagerEntry:
    """One ``managedFields`` entry."""

    manager: str
    operation: str
    api_version: str
    time: str
    paths: set[Path] = field(default_factory=set)
    subresource: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation,
                               "apiVersion": self.api_version, "time": self.time, "fieldsType": "FieldsV1",
                               "fieldsV1": _to_fields_v1(self.paths)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def read_managers(obj: Obj | None) -> list[ManagerEntry]:
    if not obj:
        return []
    entries = []
    for raw in obj.get("metadata", {}).get("managedFields") or []:
        entries.append(ManagerEntry(raw.get("manager", ""), raw.get("operation", "Update"),
                                    raw.get("apiVersion", ""), raw.get("time", ""),
                                    _from_fields_v1(copy.deepcopy(raw.get("fieldsV1") or {})),
                                    raw.get("subresource")))
    return entries


def write_managers(obj: Obj, entries: list[ManagerEntry]) -> None:
    kept = [e.render() for e in entries if e.paths]
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def changed_paths(old: Obj, new: Obj) -> tuple[set[Path], set[Path]]:
    """(fields set or changed in ``new``, fields removed from ``old``)."""
    old_paths, new_paths = field_set(old), field_set(new)
    changed = {p for p in new_paths if p not in old_paths or value_at(old, p) != value_at(new, p)}
    return changed, old_paths - new_paths
