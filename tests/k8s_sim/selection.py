"""Label and field selectors, in their string form (``?labelSelector=``) and as ``LabelSelector`` objects.

Label selectors support everything the API server does: ``k=v``, ``k==v``, ``k!=v``,
``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists) and ``!k`` (does not exist), and the object form
with ``matchLabels``/``matchExpressions`` (``In``, ``NotIn``, ``Exists``, ``DoesNotExist``).
Field selectors support ``=``, ``==`` and ``!=`` on the fields each kind allows; an unsupported
field is a 400, as on a real cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StatusError
from .resources import ResourceType

__all__ = ["FieldSelector", "LabelSelector", "Requirement"]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_TERM = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector."""

    key: str
    op: str  # "in", "notin", "exists", "!exists" ("=" is "in" with one value, "!=" is "notin")
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # notin


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t for t in (t.strip() for t in terms) if t]


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse the query-string form; raises a 400 ``StatusError`` when malformed."""
        if not text:
            return cls()
        reqs = []
        for term in _split_terms(text):
            if m := _SET_TERM.match(term):
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append(Requirement(m.group(1), m.group(2), values))
            elif m := _EQ_TERM.match(term):
                op = "notin" if m.group(2) == "!=" else "in"
                reqs.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
            elif m := _EXISTS_TERM.match(term):
                reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
            else:
                raise StatusError.bad_request(f"unable to parse requirement: found '{term}', expected: "
                                              f"'=', '!=', '==', 'in', notin'")
        return cls(tuple(reqs))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> LabelSelector:
        """Build from a ``metav1.LabelSelector`` object (``matchLabels`` + ``matchExpressions``)."""
        if not spec:
            return cls()
        reqs = [Requirement(k, "in", frozenset({str(v)})) for k, v in (spec.get("matchLabels") or {}).items()]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        for expr in spec.get("matchExpressions") or []:
            reqs.append(Requirement(expr["key"], ops[expr["operator"]], frozenset(expr.get("values") or ())))
        return cls(tuple(reqs))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op == "exists":
                parts.append(r.key)
            elif r.op == "!exists":
                parts.append(f"!{r.key}")
            elif len(r.values) == 1:
                parts.append(f"{r.key}{'=' if r.op == 'in' else '!='}{next(iter(r.values))}")
            else:
                parts.append(f"{r.key} {r.op} ({','.join(sorted(r.values))})")
        return ",".join(parts)


# Field selectors each kind accepts beyond metadata.name / metadata.namespace (as in the real server).
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"),
    "Event": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
              "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
              "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
    "Namespace": ("status.phase",),
    "Node": ("spec.unschedulable",),
    "Job": ("status.successful",),
    "Secret": ("type",),
    "ReplicaSet": ("status.replicas",),
}


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    if path == "source":
        return str((obj.get("source") or {}).get("component", ""))
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@dataclass(frozen=True)
class FieldSelector:
    """``field=value`` / ``field!=value`` clauses, all of which must hold."""

    clauses: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None, rt: ResourceType) -> FieldSelector:
        if not text:
            return cls()
        allowed = {"metadata.name", "metadata.namespace", *_EXTRA_FIELDS.get(rt.kind, ())}
        clauses = []
        for term in _split_terms(text):
            m = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
            if not m:
                raise StatusError.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            if m.group(1) not in allowed:
                raise StatusError.bad_request(f'field label not supported: {m.group(1)}')
            clauses.append((m.group(1), m.group(2) != "!=", m.group(3)))
        return cls(tuple(clauses))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, f) == v) == eq for f, eq, v in self.clauses)
