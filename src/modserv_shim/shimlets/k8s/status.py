"""How a workload and its pods add up to one :class:`ResourceStatus`.

* READY    — ``readyReplicas`` reached ``spec.replicas`` and the controller has
             rolled out the current spec (``observedGeneration`` and
             ``updatedReplicas`` caught up), so an update is not READY on old pods.
* FAILED   — the workload was never ready and will not get there by waiting:
             an image that cannot be pulled or a container that cannot be
             created (at once), a server that exited ``max_start_failures``
             times (crash loop, OOMKilled), or pods unschedulable for longer
             than ``unschedulable_grace`` (default 0: at once).  FAILED is
             latched: the deploy failed, and only ``create`` (a retry) or a
             new spec clears it — a crash-looping pod that briefly shows
             ``Running`` must not make a failed deploy look alive.
* DEGRADED — the workload was ready once and now has a problem, or fewer
             ready replicas than when it was last READY (a pod lost).  Nothing
             is FAILED after the first READY: capacity may come back, a crash
             may be a one-off; the reason says what is going on.
* PENDING  — anything else (starting, pulling, loading, scaling up), with what
             the pods are busy with as the reason.

Why unschedulable is FAILED at once by default: on a fixed GPU pool "no node
has 1 free NVIDIA H20" will not change while the deploy waits, and a user
should read that within seconds, not after a 20-minute health-check timeout.
Clusters with a GPU autoscaler set ``unschedulable_grace`` to the time a new
node takes; until then the reason already says what the pod is waiting for.

Everything here is computed from the watch cache: no API request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modserv_shim.plugins import ResourcePhase, ResourceStatus
from modserv_shim.shimlets.k8s import reasons
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.shimlets.k8s.reasons import Obj, Problem, ProblemKind


@dataclass
class Track:
    """What the shimlet remembers about one workload between events (memory only; see ``adopt``)."""

    was_ready: bool = False
    ready_high: int = 0  # ready replicas when it was last READY
    failed_reason: str | None = None
    unschedulable_since: float | None = None
    ignored_pods: set[str] = field(default_factory=set)  # uids of pods from before a redeploy

    def restart(self, ignore: Iterable[str]) -> None:
        """A new deploy of the workload: forget the verdicts about the pods it replaces."""
        self.was_ready, self.ready_high, self.failed_reason, self.unschedulable_since = False, 0, None, None
        self.ignored_pods = set(ignore)

    def adopt(self, workload: Obj) -> None:
        """Guess ``was_ready`` for a workload found at start (the last run's memory is gone).

        A Deployment whose ``Progressing`` condition says ``NewReplicaSetAvailable``
        completed a rollout; any workload with ready replicas is serving.  An
        adopted StatefulSet with no ready pod counts as never ready.
        """
        status = workload.get("status") or {}
        conditions = status.get("conditions") or []
        rolled = any(c.get("type") == "Progressing" and c.get("reason") == "NewReplicaSetAvailable"
                     for c in conditions)
        ready = int(status.get("readyReplicas") or 0)
        if rolled or ready:
            self.was_ready = True
            self.ready_high = ready if ready else int((workload.get("spec") or {}).get("replicas") or 0)


def summarize(workload: Obj, pods: Iterable[Obj], track: Track, *, now: float, options: K8sOptions,
              endpoint: str | None) -> tuple[ResourceStatus, float | None]:
    """The status of ``workload``, and when to look again (a grace period ending) or None."""
    meta, spec, st = workload.get("metadata") or {}, workload.get("spec") or {}, workload.get("status") or {}
    desired = int(spec["replicas"]) if spec.get("replicas") is not None else 1
    ready, updated = int(st.get("readyReplicas") or 0), int(st.get("updatedReplicas") or 0)
    generation, observed = meta.get("generation"), st.get("observedGeneration")
    live = sorted((p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")
                   and (p.get("metadata") or {}).get("uid") not in track.ignored_pods),
                  key=lambda p: str((p.get("metadata") or {}).get("name")))
    diagnosed = [(p, reasons.diagnose(p, options.gpu_resource)) for p in live]
    problems = [pr for _, pr in diagnosed if pr is not None]
    detail: dict[str, Any] = {
        "kind": workload.get("kind"), "name": meta.get("name"), "namespace": meta.get("namespace"),
        "generation": generation, "observedGeneration": observed, "updatedReplicas": updated,
        "pods": [_pod_detail(p, pr) for p, pr in diagnosed],
    }

    def out(phase: ResourcePhase, reason: str | None) -> ResourceStatus:
        return ResourceStatus(phase, ready, desired, endpoint, reason, detail)

    if meta.get("deletionTimestamp"):
        return out(ResourcePhase.PENDING, "the workload is being deleted"), None
    if track.failed_reason:
        return out(ResourcePhase.FAILED, track.failed_reason), None
    rolled_out = generation is None or (observed is not None and observed >= generation and updated >= desired)
    if ready >= desired and rolled_out:
        track.was_ready, track.ready_high, track.unschedulable_since = True, ready, None
        return out(ResourcePhase.READY, None), None

    unschedulable = [p for p in problems if p.kind is ProblemKind.UNSCHEDULABLE]
    if not unschedulable:
        track.unschedulable_since = None
    elif track.unschedulable_since is None:
        track.unschedulable_since = now
    text = _join(problems)
    busy = _progress(live, ready, desired, rollout=not rolled_out and observed is not None)

    if track.was_ready:
        if problems:
            return out(ResourcePhase.DEGRADED, text), None
        if ready < track.ready_high:
            return out(ResourcePhase.DEGRADED, f"lost {track.ready_high - ready} ready replica(s); {busy}"), None
        return out(ResourcePhase.PENDING, busy), None

    fatal = next((p for p in problems if p.permanent or (p.kind is ProblemKind.CRASH
                                                         and p.restarts >= options.max_start_failures)), None)
    since = track.unschedulable_since
    if fatal is None and unschedulable and since is not None and now - since >= options.unschedulable_grace:
        fatal = unschedulable[0]
    if fatal is not None:
        track.failed_reason = fatal.text
        return out(ResourcePhase.FAILED, fatal.text), None
    if since is not None:
        text += f" (the deploy fails if no capacity appears within {options.unschedulable_grace:g} s)"
        return out(ResourcePhase.PENDING, text), since + options.unschedulable_grace
    if problems:  # a crash, not yet repeated max_start_failures times
        text += f"; the deploy fails after {options.max_start_failures} exits before ready"
    return out(ResourcePhase.PENDING, text or busy), None


def _join(problems: Iterable[Problem]) -> str:
    return "; ".join(dict.fromkeys(p.text for p in problems))


def _progress(live: list[Obj], ready: int, desired: int, *, rollout: bool) -> str:
    head = f"{ready} of {desired} replicas ready" + (", rolling out" if rollout else "")
    busy = list(dict.fromkeys(reasons.progress(p) for p in live if not reasons.is_ready(p)))
    if not busy and ready < desired:
        busy = ["waiting for the controller to count the ready pods" if live else "waiting for pods to be created"]
    return f"{head}: {'; '.join(busy)}" if busy else head


def _pod_detail(pod: Obj, problem: Problem | None) -> dict[str, Any]:
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return {"name": meta.get("name"), "phase": st.get("phase"), "ready": reasons.is_ready(pod),
            "restarts": reasons.restarts(pod), "node": spec.get("nodeName"),
            "problem": problem.text if problem else None}
