"""A kube-scheduler stand-in: filters nodes like the default plugins and explains failures.

Filters, in the real plugin order, stopping at the first failure for a node:
``NodeUnschedulable`` (cordoned), ``NodeAffinity`` (``nodeSelector`` and required node affinity),
``TaintToleration`` (NoSchedule/NoExecute taints) and ``NodeResourcesFit`` (cpu, memory, pods and
extended resources such as ``nvidia.com/gpu``, against allocatable minus the requests of the pods
already bound).  A pod that fits nowhere gets the real scheduler's message, e.g.
``0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available:
3 No preemption victims found for incoming pod.``  Feasible nodes are scored "least allocated",
ties broken by name, so placement is deterministic.  Preemption and affinity between pods are not
simulated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .quantity import parse_quantity
from .store import Obj

__all__ = ["Placement", "pod_requests", "schedule"]


@dataclass(frozen=True)
class Placement:
    node: str | None
    message: str = ""


def _sum_requests(containers: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for c in containers:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, value in merged.items():
            total[name] += parse_quantity(value)  # type: ignore[assignment]
    return total


def pod_requests(pod: Obj) -> dict[str, Fraction]:
    """Effective requests: sum over containers, at least the largest init container, plus one pod."""
    spec = pod.get("spec") or {}
    total = _sum_requests(spec.get("containers") or [])
    for init in spec.get("initContainers") or []:
        for name, value in _sum_requests([init]).items():
            total[name] = max(total[name], value)
    out = {k: Fraction(v) for k, v in total.items() if v}
    out["pods"] = Fraction(1)
    return out


def _node_selector_ok(pod: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(_term_ok(term, labels, node["metadata"]["name"]) for term in terms)


def _term_ok(term: dict[str, Any], labels: dict[str, str], node_name: str) -> bool:
    exprs = [(e, labels) for e in term.get("matchExpressions") or []]
    exprs += [(e, {"metadata.name": node_name}) for e in term.get("matchFields") or []]
    if not exprs:
        return False
    for expr, source in exprs:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present, value = key in source, source.get(key)
        ok = {
            "In": present and value in values,
            "NotIn": not present or value not in values,
            "Exists": present,
            "DoesNotExist": not present,
            "Gt": present and _int(value) is not None and values and _int(value) > int(values[0]),  # type: ignore[operator]
            "Lt": present and _int(value) is not None and values and _int(value) < int(values[0]),  # type: ignore[operator]
        }.get(op, False)
        if not ok:
            return False
    return True


def _int(value: str | None) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _untolerated_taint(pod: Obj, node: Obj) -> dict[str, Any] | None:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
            return taint  # type: ignore[no-any-return]
    return None


def _allocatable(node: Obj) -> dict[str, Fraction]:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    return {k: parse_quantity(v) for k, v in alloc.items()}


def schedule(pod: Obj, nodes: list[Obj], bound_pods: list[Obj], *, no_capacity: bool = False) -> Placement:
    """Pick a node for ``pod`` or explain why none fits.

    ``bound_pods`` are the non-terminated pods already assigned to nodes.  ``no_capacity`` (an
    injected fault) makes every node short of what the pod requests.
    """
    if not nodes:
        return Placement(None, "no nodes available to schedule pods")
    wants = pod_requests(pod)
    used: dict[str, Counter[str]] = {}
    for other in bound_pods:
        node_name = (other.get("spec") or {}).get("nodeName")
        if node_name:
            counter = used.setdefault(node_name, Counter())
            for name, value in pod_requests(other).items():
                counter[name] += value  # type: ignore[assignment]
    reasons: Counter[str] = Counter()
    resource_only = 0
    feasible: list[tuple[Fraction, str]] = []
    for node in nodes:
        name = node["metadata"]["name"]
        if (node.get("spec") or {}).get("unschedulable"):
            reasons["node(s) were unschedulable"] += 1
            continue
        if not _node_selector_ok(pod, node):
            reasons["node(s) didn't match Pod's node affinity/selector"] += 1
            continue
        taint = _untolerated_taint(pod, node)
        if taint is not None:
            reasons[f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"] += 1
            continue
        alloc, node_used = _allocatable(node), used.get(name, Counter())
        if no_capacity:
            short = [k for k in sorted(wants) if k != "pods"] or ["pods"]
        else:
            short = [k for k, amount in sorted(wants.items())
                     if amount > alloc.get(k, Fraction(0)) - node_used[k]]
        if short:
            resource_only += 1
            for resource in short:
                reasons["Too many pods" if resource == "pods" else f"Insufficient {resource}"] += 1
            continue
        score = sum(((node_used[k] + wants.get(k, 0)) / alloc[k] for k in ("cpu", "memory", "nvidia.com/gpu")
                     if alloc.get(k)), Fraction(0))
        feasible.append((score, name))
    if feasible:
        return Placement(min(feasible)[1])
    total = len(nodes)
    listed = ", ".join(sorted(f"{count} {reason}" for reason, count in reasons.items()))
    preempt = []
    if resource_only:
        preempt.append(f"{resource_only} No preemption victims found for incoming pod")
    if total - resource_only:
        preempt.append(f"{total - resource_only} Preemption is not helpful for scheduling")
    return Placement(None, f"0/{total} nodes are available: {listed}. preemption: 0/{total} nodes are "
                           f"available: {', '.join(sorted(preempt))}.")
