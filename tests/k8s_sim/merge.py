"""Patch algorithms: JSON merge patch, an approximation of strategic merge patch, and JSON patch.

* ``application/merge-patch+json`` is RFC 7386, exactly.
* ``application/strategic-merge-patch+json`` and server-side apply merge maps recursively and merge
  the lists Kubernetes declares as *maps keyed by a field* (containers by ``name``, ports by
  ``containerPort``/``port`` + ``protocol``, env by ``name``, ...) item by item; every other list is
  replaced whole.  Patch directives (``$patch``, ``$setElementOrder``, ``$retainKeys``) are not
  supported -- the simplification is documented in the package docstring.
* ``application/json-patch+json`` is RFC 6902 (add, remove, replace, move, copy, test).
"""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["apply_json_patch", "json_merge_patch", "list_key", "strategic_merge"]

# list field name -> candidate key fields; the first candidate present in the items wins.
LIST_MAP_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "containers": (("name",),),
    "initContainers": (("name",),),
    "ephemeralContainers": (("name",),),
    "env": (("name",),),
    "volumes": (("name",),),
    "volumeMounts": (("mountPath",),),
    "volumeDevices": (("devicePath",),),
    "imagePullSecrets": (("name",),),
    "ports": (("containerPort", "protocol"), ("port", "protocol")),
    "conditions": (("type",),),
    "hostAliases": (("ip",),),
    "resourceClaims": (("name",),),
    "ownerReferences": (("uid",),),
    "topologySpreadConstraints": (("topologyKey", "whenUnsatisfiable"),),
}
_KEY_DEFAULTS = {"protocol": "TCP"}


def list_key(field: str, items: list[Any]) -> tuple[str, ...] | None:
    """The merge key of list ``field`` when every item is an object carrying it, else ``None``."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for candidate in LIST_MAP_KEYS.get(field, ()):
        primary = candidate[0]
        if all(primary in i for i in items):
            return candidate
    return None


def item_key(item: dict[str, Any], key: tuple[str, ...]) -> str:
    """Canonical identity of a keyed list item, as JSON (the ``k:{...}`` form of managedFields)."""
    return json.dumps({k: item.get(k, _KEY_DEFAULTS.get(k)) for k in key}, sort_keys=True,
                      separators=(",", ":"))


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch; returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Merge ``patch`` into ``target`` treating keyed lists as maps; ``null`` deletes a map key."""
    if isinstance(patch, dict):
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge(result.get(key), value, key)
        return result
    if isinstance(patch, list) and isinstance(target, list):
        key = list_key(field, patch)
        if key is not None and list_key(field, target) == key:
            merged = [copy.deepcopy(i) for i in target]
            index = {item_key(i, key): n for n, i in enumerate(merged)}
            for item in patch:
                ident = item_key(item, key)
                if ident in index:
                    merged[index[ident]] = strategic_merge(merged[index[ident]], item)
                else:
                    index[ident] = len(merged)
                    merged.append(copy.deepcopy(item))
            return merged
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        parent[last] = value
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        return parent.pop(int(last))
    return parent.pop(last)


def apply_json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch; raises ``ValueError`` on a failed ``test`` or a bad path."""
    doc = copy.deepcopy(doc)
    try:
        for op in ops:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                _remove(doc, parts)
            elif kind == "replace":
                _remove(doc, parts)
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "move":
                value = _remove(doc, _pointer(op["from"]))
                doc = _add(doc, parts, value)
            elif kind == "copy":
                doc = _add(doc, parts, copy.deepcopy(_walk(doc, _pointer(op["from"]))))
            elif kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ValueError(f"testing value {op['path']} failed")
            else:
                raise ValueError(f"Unexpected kind: {kind}")
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"the server rejected our request due to an error in our request: {exc}") from exc
    return doc
