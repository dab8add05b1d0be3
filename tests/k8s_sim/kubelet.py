"""A simulated kubelet: drives bound pods through their lifecycle and writes ``pod.status``.

Each pod bound to a node walks a small state machine (one stage for all its containers):

``Creating`` -(start delay)-> ``Running`` -(ready delay)-> Ready, or, with an injected fault,
``CreateContainerConfigError``; ``ErrImagePull`` <-> ``ImagePullBackOff``; ``Running`` -> crash
(``Error``/``OOMKilled``) -> ``CrashLoopBackOff`` -> ``Running`` ...; or Running but never Ready.
Pods owned by a Job run for a short time and then succeed or fail as the test's job handler says,
with the handler's text as the container's termination message.

Status is rendered from the stage every tick and written only when it changed, so a steady cluster
produces no writes.  Conditions keep their ``lastTransitionTime`` until their status flips.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from . import resources as r
from .faults import PodFault, PodFaultKind
from .store import Obj
from .util import rfc3339

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["JobResult", "Kubelet", "LogBook"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """What a Job's pod "does", as decided by a test's job handler."""

    succeeded: bool = True
    message: str = ""  # becomes state.terminated.message (the termination message)
    exit_code: int | None = None  # default 0 on success, 1 on failure
    logs: str = ""
    duration: float | None = None  # seconds the container runs; default SimConfig.job_run_seconds


JobHandler = Callable[[Obj], JobResult]
LogSource = str | Callable[[Obj], str]


class Stage(Enum):
    CREATING = "ContainerCreating"
    CONFIG_ERROR = "CreateContainerConfigError"
    PULL_ERROR = "ErrImagePull"
    PULL_BACKOFF = "ImagePullBackOff"
    RUNNING = "Running"
    CRASH_BACKOFF = "CrashLoopBackOff"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass
class PodRuntime:
    """What the kubelet remembers about one pod between ticks."""

    stage: Stage
    since: float  # monotonic time the stage was entered
    started_wall: float  # wall-clock start of the current (or last) container run
    pulls: int = 0
    restarts: int = 0
    ready: bool = False
    fault: PodFault | None = None
    job: JobResult | None = None
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    container_id: str = ""
    unhealthy_reported: bool = False


@dataclass
class LogBook:
    """Container logs per pod uid, filled when containers start, crash or finish."""

    sources: list[tuple[str, LogSource]] = field(default_factory=list)  # (label selector, text or fn)
    lines: dict[str, list[str]] = field(default_factory=dict)

    def text_for(self, pod: Obj) -> str | None:
        from .selection import LabelSelector

        for selector, source in reversed(self.sources):
            if LabelSelector.parse(selector).matches(pod["metadata"].get("labels")):
                return source(pod) if callable(source) else source
        return None

    def append(self, uid: str, text: str) -> None:
        if text:
            self.lines.setdefault(uid, []).extend(text.splitlines(keepends=True))

    def read(self, uid: str) -> list[str]:
        return list(self.lines.get(uid, []))


def _backoff(base: float, n: int) -> float:
    return float(base * (2 ** min(max(n - 1, 0), 5)))


class Kubelet:
    """Advances every bound pod; one instance serves all simulated nodes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.runtimes: dict[str, PodRuntime] = {}

    # -- driving ------------------------------------------------------------------------------

    def sync(self, now: float) -> float | None:
        """Advance all pods to ``now``; returns the next time something is due."""
        api = self.cluster.api
        next_due: list[float] = []
        live: set[str] = set()
        for pod in list(api.store.items(r.POD)):
            uid = pod["metadata"]["uid"]
            live.add(uid)
            if pod["metadata"].get("deletionTimestamp"):
                deadline = api.pod_deadlines.get(uid, now)
                if now >= deadline:
                    self._kill(pod)
                    api.remove(r.POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
                else:
                    next_due.append(deadline)
                continue
            if not (pod.get("spec") or {}).get("nodeName"):
                continue
            runtime = self.runtimes.get(uid)
            if runtime is None:
                runtime = self.runtimes[uid] = PodRuntime(Stage.CREATING, now, time.time())
            due = self._advance(pod, runtime, now)
            if due is not None:
                next_due.append(due)
            api.set_status(r.POD, pod, self._render(pod, runtime))
        for uid in set(self.runtimes) - live:
            del self.runtimes[uid]
        return min(next_due) if next_due else None

    def _enter(self, runtime: PodRuntime, stage: Stage, now: float) -> None:
        runtime.stage, runtime.since = stage, now

    def _advance(self, pod: Obj, rt: PodRuntime, now: float) -> float | None:
        """Apply every transition that is due; return when the next one is."""
        for _ in range(100):  # bounded catch-up
            due = self._due(rt, pod)
            if due is None or now < due:
                return due
            self._transition(pod, rt, due)
        return now  # pragma: no cover - runaway guard

    def _due(self, rt: PodRuntime, pod: Obj) -> float | None:
        cfg = self.cluster.config
        stage = rt.stage
        if stage is Stage.CREATING:
            return rt.since + cfg.pod_start_delay
        if stage is Stage.CONFIG_ERROR:
            return rt.since + cfg.backoff_base
        if stage is Stage.PULL_ERROR:
            return rt.since + cfg.backoff_base
        if stage is Stage.PULL_BACKOFF:
            return rt.since + _backoff(cfg.backoff_base, rt.pulls)
        if stage is Stage.CRASH_BACKOFF:
            return rt.since + _backoff(cfg.backoff_base, rt.restarts)
        if stage is Stage.RUNNING:
            if rt.job is not None:
                return rt.since + (rt.job.duration if rt.job.duration is not None else cfg.job_run_seconds)
            if rt.fault is not None and rt.fault.kind in (PodFaultKind.CRASH_LOOP, PodFaultKind.OOM_KILLED):
                return rt.since + cfg.crash_after
            if rt.fault is not None and rt.fault.kind is PodFaultKind.NOT_READY:
                return rt.since + cfg.backoff_base  # the failing readiness probe is retried
            if not rt.ready:
                return rt.since + cfg.pod_ready_delay
        return None

    def _transition(self, pod: Obj, rt: PodRuntime, at: float) -> None:
        stage = rt.stage
        if stage in (Stage.CREATING, Stage.CONFIG_ERROR, Stage.PULL_BACKOFF, Stage.CRASH_BACKOFF):
            self._try_start(pod, rt, at)
        elif stage is Stage.PULL_ERROR:
            self._enter(rt, Stage.PULL_BACKOFF, at)
            image = self._image(pod)
            self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"')
            self._event(pod, "Warning", "Failed", "Error: ImagePullBackOff")
        elif stage is Stage.RUNNING:
            if rt.job is not None:
                self._finish_job(pod, rt, at)
            elif rt.fault is not None and rt.fault.kind in (PodFaultKind.CRASH_LOOP, PodFaultKind.OOM_KILLED):
                self._crash(pod, rt, at)
            elif rt.fault is not None and rt.fault.kind is PodFaultKind.NOT_READY:
                rt.since = at
                if self.cluster.faults.pod_fault(pod, PodFaultKind.NOT_READY) is None:
                    rt.fault = None  # the probe passes from now on
            else:
                rt.ready = True
                rt.since = at  # nothing else due while healthy

    def _try_start(self, pod: Obj, rt: PodRuntime, at: float) -> None:
        faults = self.cluster.faults
        image = self._image(pod)
        config = faults.pod_fault(pod, PodFaultKind.CONFIG_ERROR)
        if config is not None:
            if rt.stage is not Stage.CONFIG_ERROR:
                self._event(pod, "Warning", "Failed", f"Error: {self._config_message(config)}")
            rt.fault = config
            self._enter(rt, Stage.CONFIG_ERROR, at)
            return
        bad_image = faults.pod_fault(pod, PodFaultKind.BAD_IMAGE)
        if bad_image is not None:
            rt.fault = bad_image
            rt.pulls += 1
            self._enter(rt, Stage.PULL_ERROR, at)
            self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
            reason = self._pull_message(pod, bad_image)
            self._event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {reason}')
            self._event(pod, "Warning", "Failed", "Error: ErrImagePull")
            return
        rt.fault = faults.pod_fault(pod, PodFaultKind.CRASH_LOOP, PodFaultKind.OOM_KILLED, PodFaultKind.NOT_READY)
        rt.ready = False
        rt.started_wall = time.time()
        rt.container_id = "containerd://" + hashlib.sha256(
            f"{pod['metadata']['uid']}/{rt.restarts}".encode()).hexdigest()
        if rt.restarts == 0:
            self._event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine')
        name = self._container_names(pod)[0]
        self._event(pod, "Normal", "Created", f"Created container: {name}")
        self._event(pod, "Normal", "Started", f"Started container {name}")
        logs = self.cluster.logs
        text = logs.text_for(pod)
        node = pod["spec"].get("nodeName")
        logs.append(pod["metadata"]["uid"], text if text is not None else
                    f"[k8s-sim] container {name} started on {node} (image {image})\n")
        if self._owner_kind(pod) == "Job":
            rt.job = self._job_result(pod, rt)
        if rt.fault is not None and rt.fault.kind is PodFaultKind.NOT_READY and not rt.unhealthy_reported:
            rt.unhealthy_reported = True
            self._event(pod, "Warning", "Unhealthy",
                        rt.fault.message or "Readiness probe failed: HTTP probe failed with statuscode: 503")
        self._enter(rt, Stage.RUNNING, at)

    def _job_result(self, pod: Obj, rt: PodRuntime) -> JobResult:
        if rt.fault is not None and rt.fault.kind in (PodFaultKind.CRASH_LOOP, PodFaultKind.OOM_KILLED):
            oom = rt.fault.kind is PodFaultKind.OOM_KILLED
            return JobResult(False, rt.fault.message or "", rt.fault.exit_code or (137 if oom else 1))
        try:
            return self.cluster.job_result(pod)
        except Exception as exc:  # a broken test hook must not kill the simulator
            log.exception("job handler failed for pod %s", pod["metadata"]["name"])
            return JobResult(False, f"k8s-sim job handler raised: {exc!r}", 1)

    def _finish_job(self, pod: Obj, rt: PodRuntime, at: float) -> None:
        job = rt.job
        assert job is not None
        code = job.exit_code if job.exit_code is not None else (0 if job.succeeded else 1)
        oom = rt.fault is not None and rt.fault.kind is PodFaultKind.OOM_KILLED
        reason = "Completed" if job.succeeded else ("OOMKilled" if oom else "Error")
        rt.terminated = {"exitCode": code, "reason": reason, "startedAt": rfc3339(rt.started_wall),
                         "finishedAt": rfc3339(), "containerID": rt.container_id}
        if job.message:
            rt.terminated["message"] = job.message
        self.cluster.logs.append(pod["metadata"]["uid"], job.logs)
        rt.ready = False
        self._enter(rt, Stage.SUCCEEDED if job.succeeded else Stage.FAILED, at)

    def _crash(self, pod: Obj, rt: PodRuntime, at: float) -> None:
        fault = rt.fault
        assert fault is not None
        oom = fault.kind is PodFaultKind.OOM_KILLED
        code = fault.exit_code if fault.exit_code is not None else (137 if oom else 1)
        terminated = {"exitCode": code, "reason": "OOMKilled" if oom else "Error",
                      "startedAt": rfc3339(rt.started_wall), "finishedAt": rfc3339(),
                      "containerID": rt.container_id}
        if fault.message:
            terminated["message"] = fault.message
        self.cluster.logs.append(pod["metadata"]["uid"], (fault.message or "") + "\n" if fault.message else
                                 f"[k8s-sim] container exited with code {code}\n")
        rt.ready = False
        if (pod.get("spec") or {}).get("restartPolicy") == "Never":
            rt.terminated = terminated
            self._enter(rt, Stage.FAILED, at)
            return
        rt.last_terminated = terminated
        rt.restarts += 1
        self._enter(rt, Stage.CRASH_BACKOFF, at)
        name = self._container_names(pod)[0]
        meta = pod["metadata"]
        self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {name} in pod "
                                               f"{meta['name']}_{meta['namespace']}({meta['uid']})")

    def _kill(self, pod: Obj) -> None:
        for name in self._container_names(pod):
            self._event(pod, "Normal", "Killing", f"Stopping container {name}")

    # -- rendering ------------------------------------------------------------------------------

    @staticmethod
    def _image(pod: Obj) -> str:
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        return str(containers[0].get("image", ""))

    @staticmethod
    def _container_names(pod: Obj) -> list[str]:
        return [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []] or [""]

    @staticmethod
    def _owner_kind(pod: Obj) -> str | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                return str(ref.get("kind"))
        return None

    @staticmethod
    def _config_message(fault: PodFault) -> str:
        return fault.message or 'configmap "model-config" not found'

    def _pull_message(self, pod: Obj, fault: PodFault) -> str:
        image = self._image(pod)
        return fault.message or (f'failed to pull and unpack image "{image}": failed to resolve reference '
                                 f'"{image}": {image}: not found')

    def _event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        name = self._container_names(pod)[0]
        self.cluster.events.record(pod, type_, reason, message, component="kubelet",
                                   field_path=f"spec.containers{{{name}}}",
                                   host=(pod.get("spec") or {}).get("nodeName"))

    def _waiting(self, pod: Obj, rt: PodRuntime) -> dict[str, Any] | None:
        stage, image = rt.stage, self._image(pod)
        if stage is Stage.CREATING:
            return {"reason": "ContainerCreating"}
        if stage is Stage.CONFIG_ERROR and rt.fault is not None:
            return {"reason": "CreateContainerConfigError", "message": self._config_message(rt.fault)}
        if stage is Stage.PULL_ERROR and rt.fault is not None:
            return {"reason": "ErrImagePull", "message": self._pull_message(pod, rt.fault)}
        if stage is Stage.PULL_BACKOFF and rt.fault is not None:
            return {"reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}": ErrImagePull: {self._pull_message(pod, rt.fault)}'}
        if stage is Stage.CRASH_BACKOFF:
            meta = pod["metadata"]
            delay = min(10 * 2 ** (rt.restarts - 1), 300)
            name = self._container_names(pod)[0]
            return {"reason": "CrashLoopBackOff",
                    "message": f"back-off {delay // 60}m{delay % 60}s restarting failed container={name} "
                               f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"
                    if delay >= 60 else
                    f"back-off {delay}s restarting failed container={name} "
                    f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"}
        return None

    def _render(self, pod: Obj, rt: PodRuntime) -> dict[str, Any]:
        old = pod.get("status") or {}
        spec = pod.get("spec") or {}
        node = self.cluster.api.store.get(r.NODE, None, spec.get("nodeName", ""))
        stage = rt.stage
        phase = {Stage.SUCCEEDED: "Succeeded", Stage.FAILED: "Failed", Stage.RUNNING: "Running",
                 Stage.CRASH_BACKOFF: "Running"}.get(stage, "Pending")
        waiting = self._waiting(pod, rt)
        statuses = []
        for c in spec.get("containers") or []:
            image = c.get("image", "")
            status: dict[str, Any] = {"name": c.get("name"), "image": image, "ready": rt.ready,
                                      "restartCount": rt.restarts, "started": stage is Stage.RUNNING,
                                      "imageID": "", "lastState": {}}
            if stage in (Stage.RUNNING, Stage.CRASH_BACKOFF, Stage.SUCCEEDED, Stage.FAILED):
                status["imageID"] = f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"
                status["containerID"] = rt.container_id
            if waiting is not None:
                status["state"] = {"waiting": waiting}
            elif stage is Stage.RUNNING:
                status["state"] = {"running": {"startedAt": rfc3339(rt.started_wall)}}
            else:
                status["state"] = {"terminated": rt.terminated or {}}
            if rt.last_terminated:
                status["lastState"] = {"terminated": rt.last_terminated}
            statuses.append(status)
        names = [c.get("name") for c in spec.get("containers") or []]
        done = stage in (Stage.SUCCEEDED, Stage.FAILED)
        not_ready = "" if rt.ready else ("PodCompleted" if done else "ContainersNotReady")
        wanted = [
            ("PodReadyToStartContainers", "False" if done else "True", "", ""),
            ("Initialized", "True", "PodCompleted" if done else "", ""),
            ("Ready", "True" if rt.ready else "False", not_ready,
             "" if rt.ready or done else f"containers with unready status: [{' '.join(names)}]"),
            ("ContainersReady", "True" if rt.ready else "False", not_ready,
             "" if rt.ready or done else f"containers with unready status: [{' '.join(names)}]"),
            ("PodScheduled", "True", "", ""),
        ]
        status_out: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions(old.get("conditions"), wanted),
            "hostIP": _node_ip(node),
            "hostIPs": [{"ip": _node_ip(node)}],
            "podIP": old.get("podIP") or self.cluster.allocate_pod_ip(spec.get("nodeName", "")),
            "startTime": old.get("startTime") or rfc3339(),
            "containerStatuses": statuses,
            "qosClass": qos_class(pod),
        }
        status_out["podIPs"] = [{"ip": status_out["podIP"]}]
        return status_out


def _node_ip(node: Obj | None) -> str:
    for address in ((node or {}).get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address["address"])
    return ""


def conditions(previous: list[dict[str, Any]] | None, wanted: list[tuple[str, str, str, str]]) -> list[dict[str, Any]]:
    """Pod-style conditions; ``lastTransitionTime`` is kept while a condition's status is unchanged."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for type_, status, reason, message in wanted:
        prev = before.get(type_)
        cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                                "lastTransitionTime": prev["lastTransitionTime"]
                                if prev and prev.get("status") == status else rfc3339()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        out.append(cond)
    return out


def qos_class(pod: Obj) -> str:
    """Guaranteed / Burstable / BestEffort from the containers' cpu and memory requests and limits."""
    containers = (pod.get("spec") or {}).get("containers") or []
    any_set, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if any(k in req or k in lim for k in ("cpu", "memory")):
            any_set = True
        for key in ("cpu", "memory"):
            if key not in lim or req.get(key, lim.get(key)) != lim.get(key):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
