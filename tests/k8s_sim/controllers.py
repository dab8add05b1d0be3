"""Simulated kube-controller-manager and kube-scheduler loops.

* Deployment -> ReplicaSets (``<name>-<pod-template-hash>``, revision annotations) -> Pods
  (``<rs>-<5 chars>``), with ``Recreate`` (old pods gone before new ones are made) and a simplified
  ``RollingUpdate`` (the new ReplicaSet is scaled up at once, old ones down as new pods become
  available -- i.e. maxSurge 100 %, maxUnavailable 0).  Status carries replicas, updated, ready,
  available and unavailable counts (zero counts omitted, as the real API does), observedGeneration
  and the ``Available``/``Progressing`` conditions including ``ProgressDeadlineExceeded``.
* StatefulSet -> Pods ``<name>-<ordinal>`` (OrderedReady or Parallel), rolling update from the
  highest ordinal, revisions in ``controller-revision-hash``.
* Job -> one pod at a time (``parallelism``/``completions`` honoured), retries up to
  ``backoffLimit`` without back-off delay, ``activeDeadlineSeconds``, and the real conditions
  (``SuccessCriteriaMet`` + ``Complete``, or ``FailureTarget`` + ``Failed``).
* Garbage collector: objects whose owners are all gone are deleted (background propagation).
* Scheduler: binds pending pods or marks them ``PodScheduled=False/Unschedulable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import resources as r
from .faults import PodFaultKind
from .kubelet import conditions as pod_conditions
from .kubelet import qos_class
from .scheduler import schedule
from .store import Obj
from .util import clone, rfc3339, safe_hash, suffix

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Controllers"]


def owner_ref(owner: Obj) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def is_active(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and \
        (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def is_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _omit_zero(status: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    for key in keys:
        if not status.get(key):
            status.pop(key, None)
    return status


def _condition(previous: list[dict[str, Any]] | None, type_: str, status: str, reason: str, message: str,
               *, with_update_time: bool = False, probe_time: bool = False) -> dict[str, Any]:
    prev = next((c for c in previous or [] if c.get("type") == type_), None)
    now = rfc3339()
    cond: dict[str, Any] = {"type": type_, "status": status}
    same = prev is not None and (prev.get("status"), prev.get("reason"), prev.get("message")) == \
        (status, reason, message)
    if with_update_time:
        cond["lastUpdateTime"] = prev.get("lastUpdateTime", now) if same and prev else now
    if probe_time:
        cond["lastProbeTime"] = prev.get("lastProbeTime", now) if same and prev else now
    cond["lastTransitionTime"] = prev["lastTransitionTime"] if prev and prev.get("status") == status \
        and prev.get("lastTransitionTime") else now
    cond["reason"], cond["message"] = reason, message
    return cond


def _percent(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return int(-(-exact // 1)) if round_up else int(exact)
    return int(value or 0)


class Controllers:
    """All controllers and the scheduler; ``sync`` runs one pass over everything."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.api = cluster.api
        self._progress: dict[str, tuple[tuple[int, ...], float]] = {}
        self._job_started: dict[str, float] = {}

    def sync(self, now: float) -> float | None:
        due: list[float] = []
        self.garbage_collect()
        for d in self.api.store.items(r.DEPLOYMENT):
            deadline = self.deployment(d, now)
            if deadline is not None:
                due.append(deadline)
        for rs in self.api.store.items(r.REPLICASET):
            self.replicaset(rs)
        for sts in self.api.store.items(r.STATEFULSET):
            self.statefulset(sts)
        for job in self.api.store.items(r.JOB):
            deadline = self.job(job, now)
            if deadline is not None:
                due.append(deadline)
        self.schedule_pods()
        return min(due) if due else None

    # -- helpers ----------------------------------------------------------------------------------

    def _event(self, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
        self.cluster.events.record(obj, type_, reason, message, component=component)

    def _new_pod(self, owner: Obj, name: str, template: dict[str, Any], labels: dict[str, str],
                 spec_extra: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> Obj:
        meta = template.get("metadata") or {}
        pod_meta: dict[str, Any] = {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": {**(meta.get("labels") or {}), **labels},
            "ownerReferences": [owner_ref(owner)],
        }
        merged_annotations = {**(meta.get("annotations") or {}), **(annotations or {})}
        if merged_annotations:
            pod_meta["annotations"] = merged_annotations
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
               "spec": {**clone(template.get("spec") or {}), **(spec_extra or {})}}
        return self.api.internal_create(r.POD, pod)

    def _unique_name(self, ns: str, prefix: str) -> str:
        while True:
            name = f"{prefix}-{suffix(self.cluster.rng)}"
            if self.api.store.get(r.POD, ns, name) is None:
                return name

    def _pods_of(self, owner: Obj) -> list[Obj]:
        return self.api.store.controlled(r.POD, owner["metadata"]["uid"])

    def _delete_pod(self, owner: Obj, pod: Obj, component: str) -> None:
        self.api.delete(r.POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._event(owner, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", component)

    # -- garbage collector --------------------------------------------------------------------------

    def garbage_collect(self) -> None:
        uids = {o["metadata"]["uid"] for _, o in self.api.store.all_items()}
        for rt, obj in list(self.api.store.all_items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and not any(ref.get("uid") in uids for ref in refs):
                meta = obj["metadata"]
                if self.api.store.get(rt, meta.get("namespace"), meta["name"]) is not None:
                    self.api.delete(rt, meta.get("namespace"), meta["name"], propagation="Background")

    # -- Deployment -----------------------------------------------------------------------------------

    def deployment(self, d: Obj, now: float) -> float | None:
        meta, spec = d["metadata"], d.get("spec") or {}
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            return None
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        pod_hash = safe_hash(template)
        all_rs = self.api.store.controlled(r.REPLICASET, uid)
        new_rs = next((rs for rs in all_rs
                       if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == pod_hash), None)
        old_rs = [rs for rs in all_rs if rs is not new_rs]
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        old_pods_alive = any(self._pods_of(rs) for rs in old_rs)
        if not spec.get("paused"):
            new_target = 0 if recreate and old_pods_alive else desired
            if new_rs is None:
                new_rs = self._create_rs(d, template, pod_hash, all_rs, new_target)
            else:
                self._scale_rs(d, new_rs, new_target)
            available_new = int((new_rs.get("status") or {}).get("availableReplicas", 0))
            budget = 0 if recreate else max(0, desired - available_new)
            for rs in sorted(old_rs, key=_revision, reverse=True):
                current = int((rs.get("spec") or {}).get("replicas", 0))
                keep = min(current, budget)
                budget -= keep
                self._scale_rs(d, rs, keep)
            revision = (new_rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
            if revision and (meta.get("annotations") or {}).get("deployment.kubernetes.io/revision") != revision:
                updated = clone(d)
                updated["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = revision
                d = self.api.internal_update(r.DEPLOYMENT, d, updated)
        return self._deployment_status(d, new_rs, old_rs, desired, now)

    def _create_rs(self, d: Obj, template: dict[str, Any], pod_hash: str, existing: list[Obj],
                   replicas: int) -> Obj:
        name = f"{d['metadata']['name']}-{pod_hash}"
        revision = max((_revision(rs) for rs in existing), default=0) + 1
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": pod_hash}
        rs_template = clone(template)
        rs_template.setdefault("metadata", {})["labels"] = labels
        selector = clone(d["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        rs = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": d["metadata"]["namespace"], "labels": labels,
                         "annotations": {"deployment.kubernetes.io/revision": str(revision),
                                         "deployment.kubernetes.io/desired-replicas": str(d["spec"].get("replicas", 1)),
                                         "deployment.kubernetes.io/max-replicas": str(d["spec"].get("replicas", 1))},
                         "ownerReferences": [owner_ref(d)]},
            "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
        }
        created = self.api.internal_create(r.REPLICASET, rs)
        self._event(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {name} from 0 to {replicas}",
                    "deployment-controller")
        return created

    def _scale_rs(self, d: Obj, rs: Obj, replicas: int) -> None:
        current = int((rs.get("spec") or {}).get("replicas", 0))
        desired_note = str((d.get("spec") or {}).get("replicas", 1))
        annotations = rs["metadata"].get("annotations") or {}
        if current == replicas and annotations.get("deployment.kubernetes.io/desired-replicas") == desired_note:
            return
        new = clone(rs)
        new["spec"]["replicas"] = replicas
        new["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = desired_note
        self.api.internal_update(r.REPLICASET, rs, new)
        if current != replicas:
            verb = "up" if replicas > current else "down"
            self._event(d, "Normal", "ScalingReplicaSet",
                        f"Scaled {verb} replica set {rs['metadata']['name']} from {current} to {replicas}",
                        "deployment-controller")

    def _deployment_status(self, d: Obj, new_rs: Obj | None, old_rs: list[Obj], desired: int,
                           now: float) -> float | None:
        spec, meta = d.get("spec") or {}, d["metadata"]
        every = ([new_rs] if new_rs else []) + old_rs
        # Count from the pods themselves so status is fresh within one pass.
        pods = [p for rs in every for p in self._pods_of(rs) if is_active(p)]
        new_pods = [p for p in self._pods_of(new_rs) if is_active(p)] if new_rs else []
        ready = sum(1 for p in pods if is_ready(p))
        available = ready
        updated = len(new_pods)
        previous = (d.get("status") or {}).get("conditions")
        strategy = spec.get("strategy") or {}
        max_unavailable = 0
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            max_unavailable = _percent((strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"),
                                       desired, round_up=False)
        has_min = available >= desired - max_unavailable
        available_cond = _condition(previous, "Available", "True" if has_min else "False",
                                    "MinimumReplicasAvailable" if has_min else "MinimumReplicasUnavailable",
                                    "Deployment has minimum availability." if has_min else
                                    "Deployment does not have minimum availability.", with_update_time=True)
        rs_name = new_rs["metadata"]["name"] if new_rs else meta["name"]
        complete = updated == desired and len(pods) == desired and available == desired
        signature = (int(meta.get("generation", 1)), updated, ready, available, len(pods))
        seen = self._progress.get(meta["uid"])
        if seen is None or seen[0] != signature:
            self._progress[meta["uid"]] = (signature, now)
        last_progress = self._progress[meta["uid"]][1]
        deadline = last_progress + float(spec.get("progressDeadlineSeconds", 600))
        prev_progressing = next((c for c in previous or [] if c.get("type") == "Progressing"), None)
        was_complete = prev_progressing is not None and prev_progressing.get("reason") == "NewReplicaSetAvailable" \
            and (d.get("status") or {}).get("observedGeneration") == meta.get("generation")
        due: float | None = None
        if complete or was_complete:
            progressing = _condition(previous, "Progressing", "True", "NewReplicaSetAvailable",
                                     f'ReplicaSet "{rs_name}" has successfully progressed.', with_update_time=True)
        elif now >= deadline:
            progressing = _condition(previous, "Progressing", "False", "ProgressDeadlineExceeded",
                                     f'ReplicaSet "{rs_name}" has timed out progressing.', with_update_time=True)
        else:
            progressing = _condition(previous, "Progressing", "True", "ReplicaSetUpdated",
                                     f'ReplicaSet "{rs_name}" is progressing.', with_update_time=True)
            due = deadline
        status = _omit_zero({
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": max(0, desired - available),
            "conditions": [available_cond, progressing],
        }, ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"))
        self.api.set_status(r.DEPLOYMENT, d, status)
        return due

    # -- ReplicaSet -------------------------------------------------------------------------------------

    def replicaset(self, rs: Obj) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        pods = [p for p in self._pods_of(rs) if is_active(p)]
        want = int(spec.get("replicas", 1))
        if len(pods) < want:
            for _ in range(want - len(pods)):
                name = self._unique_name(meta["namespace"], meta["name"])
                pods.append(self._new_pod(rs, name, spec.get("template") or {}, {}))
                self._event(rs, "Normal", "SuccessfulCreate", f"Created pod: {name}", "replicaset-controller")
        elif len(pods) > want:
            # Prefer deleting unscheduled, then not-ready, then the newest pods.
            ranked = sorted(pods, key=lambda p: (bool((p.get("spec") or {}).get("nodeName")), is_ready(p),
                                                 -int(p["metadata"]["resourceVersion"])))
            for pod in ranked[: len(pods) - want]:
                self._delete_pod(rs, pod, "replicaset-controller")
                pods.remove(pod)
        ready = sum(1 for p in pods if is_ready(p))
        status = _omit_zero({"replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": ready,
                             "availableReplicas": ready, "observedGeneration": meta.get("generation", 1)},
                            ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"))
        self.api.set_status(r.REPLICASET, rs, status)

    # -- StatefulSet ------------------------------------------------------------------------------------

    def statefulset(self, sts: Obj) -> None:
        meta, spec = sts["metadata"], sts.get("spec") or {}
        name = meta["name"]
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        revision = f"{name}-{safe_hash(template)}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods: dict[int, Obj] = {}
        for pod in self._pods_of(sts):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            ordinal = pod["metadata"]["name"].rsplit("-", 1)[-1]
            if ordinal.isdigit():
                pods[int(ordinal)] = pod
        for i, pod in list(pods.items()):
            if (pod.get("status") or {}).get("phase") == "Failed":
                self._delete_pod(sts, pod, "statefulset-controller")
                del pods[i]
        for i in range(replicas):
            if i in pods:
                if ordered and not is_ready(pods[i]):
                    break
                continue
            pod_name = f"{name}-{i}"
            labels = {"controller-revision-hash": revision, "statefulset.kubernetes.io/pod-name": pod_name,
                      "apps.kubernetes.io/pod-index": str(i)}
            extra = {"hostname": pod_name}
            if spec.get("serviceName"):
                extra["subdomain"] = spec["serviceName"]
            pods[i] = self._new_pod(sts, pod_name, template, labels, extra)
            self._event(sts, "Normal", "SuccessfulCreate", f"create Pod {pod_name} in StatefulSet {name} successful",
                        "statefulset-controller")
            if ordered:
                break
        surplus = sorted((i for i in pods if i >= replicas), reverse=True)
        for i in surplus[:1] if ordered else surplus:
            self._delete_pod(sts, pods.pop(i), "statefulset-controller")
        strategy = spec.get("updateStrategy") or {}
        partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
        in_range = [pods[i] for i in range(replicas) if i in pods]
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and len(in_range) == replicas \
                and all(is_ready(p) for p in in_range):
            outdated = [i for i in range(replicas - 1, partition - 1, -1)
                        if pods[i]["metadata"]["labels"].get("controller-revision-hash") != revision]
            if outdated:
                self._delete_pod(sts, pods.pop(outdated[0]), "statefulset-controller")
        live = list(pods.values())
        updated = sum(1 for p in live if p["metadata"]["labels"].get("controller-revision-hash") == revision)
        previous = sts.get("status") or {}
        current_rev = revision if updated == len(live) else previous.get("currentRevision", revision)
        current = sum(1 for p in live if p["metadata"]["labels"].get("controller-revision-hash") == current_rev)
        ready = sum(1 for p in live if is_ready(p))
        status = _omit_zero({"observedGeneration": meta.get("generation", 1), "replicas": len(live),
                             "readyReplicas": ready, "currentReplicas": current, "updatedReplicas": updated,
                             "currentRevision": current_rev, "updateRevision": revision, "collisionCount": 0,
                             "availableReplicas": ready},
                            ("readyReplicas", "currentReplicas", "updatedReplicas"))
        self.api.set_status(r.STATEFULSET, sts, status)

    # -- Job ----------------------------------------------------------------------------------------------

    def job(self, job: Obj, now: float) -> float | None:
        meta, spec = job["metadata"], job.get("spec") or {}
        status = clone(job.get("status") or {})
        finished = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                       for c in status.get("conditions") or [])
        pods = self._pods_of(job)
        active = [p for p in pods if is_active(p)]
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        completions = int(spec.get("completions") or 1)
        due: float | None = None
        if not finished and not spec.get("suspend"):
            started = self._job_started.setdefault(meta["uid"], now)
            status.setdefault("startTime", rfc3339())
            deadline_s = spec.get("activeDeadlineSeconds")
            conditions = status.get("conditions") or []
            if succeeded >= completions:
                conditions = [_condition(conditions, "SuccessCriteriaMet", "True", "CompletionsReached",
                                         "Reached expected number of succeeded pods", probe_time=True),
                              _condition(conditions, "Complete", "True", "CompletionsReached",
                                         "Reached expected number of succeeded pods", probe_time=True)]
                status["completionTime"] = rfc3339()
                self._event(job, "Normal", "Completed", "Job completed", "job-controller")
            elif failed > int(spec.get("backoffLimit", 6)) or (deadline_s and now - started >= deadline_s):
                reason, message = ("BackoffLimitExceeded", "Job has reached the specified backoff limit") \
                    if failed > int(spec.get("backoffLimit", 6)) else \
                    ("DeadlineExceeded", "Job was active longer than specified deadline")
                conditions = [_condition(conditions, "FailureTarget", "True", reason, message, probe_time=True),
                              _condition(conditions, "Failed", "True", reason, message, probe_time=True)]
                for pod in active:
                    self._delete_pod(job, pod, "job-controller")
                active = []
                self._event(job, "Warning", reason, message, "job-controller")
            else:
                want = min(int(spec.get("parallelism", 1)), completions - succeeded)
                for _ in range(want - len(active)):
                    name = self._unique_name(meta["namespace"], meta["name"])
                    active.append(self._new_pod(job, name, spec.get("template") or {}, {},
                                                annotations={"batch.kubernetes.io/job-tracking": ""}))
                    self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {name}", "job-controller")
                if deadline_s:
                    due = started + float(deadline_s)
            if conditions:
                status["conditions"] = conditions
        status.update({"active": len(active), "succeeded": succeeded, "failed": failed,
                       "ready": sum(1 for p in active if is_ready(p)), "terminating": 0,
                       "uncountedTerminatedPods": {}})
        self.api.set_status(r.JOB, job, _omit_zero(status, ("active", "succeeded", "failed")))
        return due

    # -- scheduler ----------------------------------------------------------------------------------------

    def schedule_pods(self) -> None:
        nodes = self.api.store.items(r.NODE)
        pods = self.api.store.items(r.POD)
        bound = [p for p in pods if (p.get("spec") or {}).get("nodeName")
                 and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        pending = [p for p in pods if not (p.get("spec") or {}).get("nodeName")
                   and not p["metadata"].get("deletionTimestamp")
                   and (p.get("spec") or {}).get("schedulerName", "default-scheduler") == "default-scheduler"]
        for pod in sorted(pending, key=lambda p: int(p["metadata"]["resourceVersion"])):
            fault = self.cluster.faults.pod_fault(pod, PodFaultKind.NO_CAPACITY)
            placement = schedule(pod, nodes, bound, no_capacity=fault is not None)
            previous = (pod.get("status") or {}).get("conditions")
            if placement.node is not None:
                updated = clone(pod)
                updated["spec"]["nodeName"] = placement.node
                bound_pod = self.api.internal_update(r.POD, pod, updated)
                bound.append(bound_pod)
                status = clone(bound_pod.get("status") or {})
                status["conditions"] = pod_conditions(previous, [("PodScheduled", "True", "", "")])
                self.api.set_status(r.POD, bound_pod, status)
                meta = bound_pod["metadata"]
                self.cluster.events.record(bound_pod, "Normal", "Scheduled",
                                           f"Successfully assigned {meta['namespace']}/{meta['name']} to "
                                           f"{placement.node}", component="default-scheduler")
                continue
            status = {"phase": "Pending",
                      "conditions": pod_conditions(previous, [("PodScheduled", "False", "Unschedulable",
                                                               placement.message)]),
                      "qosClass": qos_class(pod)}
            if self.api.set_status(r.POD, pod, status):
                self.cluster.events.record(pod, "Warning", "FailedScheduling", placement.message,
                                           component="default-scheduler")


def _revision(rs: Obj) -> int:
    value = (rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", "0")
    return int(value) if str(value).isdigit() else 0

