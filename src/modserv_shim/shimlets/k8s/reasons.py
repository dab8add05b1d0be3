"""What is wrong with a pod, in words a person reads, and whether waiting can fix it.

Kubernetes spreads the reason a model server is not up over pod conditions
(``PodScheduled=False/Unschedulable`` with the scheduler's message) and
container states (``waiting.reason`` such as ``ImagePullBackOff``,
``lastState.terminated`` with the exit code or ``OOMKilled``).  A user who
asked for "llama-3-8b on an H20" should not have to know that; they should
read "cannot be scheduled: not enough free nvidia.com/gpu (the pod asks for 4)
on nodes with nvidia.com/gpu.product=NVIDIA-H20; the scheduler says: 0/3 nodes
are available: ...".  Each text keeps the Kubernetes term (``OOMKilled``,
``CrashLoopBackOff``...) next to the plain words, so it can be searched for.

:class:`Problem` ``kind`` lets :mod:`.status` decide the phase.  Image and
container-config errors never fix themselves for a workload we created (we
reference no secrets or config maps; the image name is ours), so they are
``permanent``.  Crashes count restarts; unschedulable pods may be waiting for
capacity.  Functions here read pod dicts (the API's JSON) and never fail on
missing fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Obj = Mapping[str, Any]

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
OOM_HINT = "raise resourceRequirements.memory or use a smaller model, quantization or context length"


class ProblemKind(StrEnum):
    UNSCHEDULABLE = "unschedulable"
    IMAGE = "image"
    CONFIG = "config"
    CRASH = "crash"
    POD_FAILED = "pod-failed"


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    text: str
    restarts: int = 0

    @property
    def permanent(self) -> bool:
        """True when waiting cannot fix it (before the workload was ever ready, it is FAILED at once)."""
        return self.kind in (ProblemKind.IMAGE, ProblemKind.CONFIG)


def _get(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def container_statuses(pod: Obj) -> list[Obj]:
    status = _get(pod, "status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def is_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in _get(pod, "status", "conditions") or [])


def restarts(pod: Obj) -> int:
    return max((int(cs.get("restartCount") or 0) for cs in container_statuses(pod)), default=0)


def diagnose(pod: Obj, gpu_resource: str = "nvidia.com/gpu") -> Problem | None:
    """The most serious problem of ``pod``, or None when it is fine or just starting."""
    status = _get(pod, "status") or {}
    if status.get("phase") == "Failed":
        why = ": ".join(str(x) for x in (status.get("reason"), status.get("message")) if x) or "no reason given"
        return Problem(ProblemKind.POD_FAILED, f"pod {_get(pod, 'metadata', 'name')} failed ({why})")
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return Problem(ProblemKind.UNSCHEDULABLE, unschedulable_text(pod, str(scheduled.get("message") or ""),
                                                                     gpu_resource))
    found: list[Problem] = []
    for cs in container_statuses(pod):
        waiting = _get(cs, "state", "waiting") or {}
        reason, message = waiting.get("reason"), str(waiting.get("message") or "").strip()
        if reason in IMAGE_ERRORS:
            found.append(Problem(ProblemKind.IMAGE, f"cannot pull the image {cs.get('image') or ''} ({reason})"
                                                    + (f": {message}" if message else "")))
        elif reason in CONFIG_ERRORS:
            found.append(Problem(ProblemKind.CONFIG, f"the container cannot be created ({reason})"
                                                     + (f": {message}" if message else "")))
        elif (text := crash_text(cs)) is not None:
            found.append(Problem(ProblemKind.CRASH, text, int(cs.get("restartCount") or 0)))
    order = (ProblemKind.IMAGE, ProblemKind.CONFIG, ProblemKind.CRASH)
    return min(found, key=lambda p: order.index(p.kind)) if found else None


def crash_text(cs: Obj) -> str | None:
    """How a container that exited is doing: exit code, OOM, restarts; None if it never exited."""
    count = int(cs.get("restartCount") or 0)
    term = _get(cs, "state", "terminated") or _get(cs, "lastState", "terminated")
    if not term or (count == 0 and int(term.get("exitCode") or 0) == 0):
        return None
    code, why = term.get("exitCode"), term.get("reason")
    if why == "OOMKilled":
        last = f"killed for running out of memory (OOMKilled, exit code {code}); {OOM_HINT}"
    else:
        last = f"exit code {code}" + (f" ({why})" if why and why != "Error" else "")
    message = str(term.get("message") or "").strip()
    if message:
        last += f"; it said: {message[-300:]}"
    if _get(cs, "state", "waiting", "reason") == "CrashLoopBackOff":
        return f"the server keeps crashing (CrashLoopBackOff, {count} restarts); last exit: {last}"
    return f"the server exited ({count} restarts so far); last exit: {last}"


def unschedulable_text(pod: Obj, message: str, gpu_resource: str) -> str:
    """The scheduler's verdict with what the pod asked for, e.g. how many GPUs of which kind."""
    core = message.split(" preemption:", 1)[0].strip().rstrip(".")
    selector = _get(pod, "spec", "nodeSelector") or {}
    where = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
    total = _count(r"0/(\d+) nodes", core)
    hints: list[str] = []
    for resource, amount in sorted(_requests(pod).items()):
        if f"Insufficient {resource}" in core:
            what = f"{amount} x {resource}" if resource == gpu_resource else f"{resource} {amount}"
            hints.append(f"no node has {what} free" + (f" among the nodes with {where}" if where else ""))
    # A cause only some nodes have is not the answer: the others failed for the reasons above.
    everywhere = {
        r"(\d+) node\(s\) didn't match Pod's node affinity/selector": f"no node matches {where or 'its selector'}",
        r"(\d+) node\(s\) had untolerated taint": "every node carries a taint the pod does not tolerate",
        r"(\d+) node\(s\) were unschedulable": "every node is cordoned",
        r"(\d+) Too many pods": "every node holds as many pods as it may",
    }
    for pattern, hint in everywhere.items():
        count = _count(pattern, core)
        if count is not None and count == total:
            hints.append(hint)
    lead = "; ".join(hints) if hints else "no node can run the pod"
    return f"cannot be scheduled: {lead} (the scheduler says: {core or 'no reason given'})"


def _count(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def _requests(pod: Obj) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in _get(pod, "spec", "containers") or []:
        res = c.get("resources") or {}
        out.update({**(res.get("limits") or {}), **(res.get("requests") or {})})
    return out


def progress(pod: Obj) -> str:
    """What a pod without a problem is busy with."""
    status = _get(pod, "status") or {}
    node = _get(pod, "spec", "nodeName")
    if not node:
        return "waiting for the scheduler"
    if not container_statuses(pod):
        return f"starting on node {node}"
    for cs in container_statuses(pod):
        waiting = _get(cs, "state", "waiting", "reason")
        if waiting == "ContainerCreating":
            return f"creating the container (pulling {cs.get('image') or 'the image'} if needed)"
        if waiting:
            return f"container waiting ({waiting})"
    if status.get("phase") == "Running" and not is_ready(pod):
        containers = _get(pod, "spec", "containers") or [{}]
        path = _get(containers[0], "readinessProbe", "httpGet", "path") or "its ready path"
        return f"the server is starting (loading the model; waiting for {path} to answer)"
    return str(status.get("phase") or "starting").lower()
