"""A pipeline's program run on the model volume (the shimlet's VolumeTaskRunner): a task Job.

Like the validation Job (:mod:`.validation`) and run by the same code: one pod,
``restartPolicy: Never``, ``backoffLimit: 0``, ``activeDeadlineSeconds`` = the task's timeout,
``ttlSecondsAfterFinished``, on the nodes the server would use, in ``validation_image``,
its report returned as the container's termination message (``$MODSERV_TASK_REPORT`` =
``/dev/termination-log``; ``FallbackToLogsOnError``).  What differs:

* the model volume is mounted **read-write** (the task writes next to the model: the quant
  pipeline's quantized file), so a PersistentVolumeClaim must allow writing from that node;
* the pod gets the deploy's cpu and memory (requests and limits, no GPU): the task does real
  work (quantizing reads the whole model);
* the label ``app.kubernetes.io/component=model-task``; its pods carry the validation Jobs'
  ``modserv-shim/validation-job`` label, so the cache follows them and a Job a killed shim left
  is swept at the next start, as validation Jobs are;
* while it runs, the task's ``log`` gets the Job's phase every ``progress_seconds`` (from the
  pod watch: its logs are not read, which would need the ``pods/log`` permission on Jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from modserv_shim.plugins import TASK_REPORT_ENV, VolumeTask, VolumeTaskResult
from modserv_shim.shimlets.k8s import naming, podspec
from modserv_shim.shimlets.k8s.cache import ClusterCache
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.shimlets.k8s.render import TERMINATION_LOG, model_volume_job
from modserv_shim.shimlets.k8s.validation import ValidationJob

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def task_job(task: VolumeTask, name: str, namespace: str, options: K8sOptions) -> Obj:
    """The Job of ``task``: its command on the model volume, mounted read-write."""
    spec = task.spec
    volume, mount = podspec.model_volume(options.model_volume, spec.modelFile)
    mount = {**mount, "readOnly": False}
    if "persistentVolumeClaim" in volume:
        volume = {**volume, "persistentVolumeClaim": {**volume["persistentVolumeClaim"], "readOnly": False}}
    rr = spec.resourceRequirements
    requests: dict[str, str] = {"cpu": rr.cpu or "500m", "memory": rr.memory or "1Gi"}
    limits = {"memory": rr.memory} if rr.memory else {}
    return model_volume_job(
        spec, name, namespace, options, component=naming.TASK_COMPONENT,
        container=naming.label_value(task.kind)[:63] or "task", command=list(task.command),
        env=[{"name": TASK_REPORT_ENV, "value": TERMINATION_LOG}],
        resources={"requests": requests, **({"limits": limits} if limits else {})},
        volume=volume, mount=mount, timeout=task.timeout)


def pod_phase(pods: list[Obj]) -> str:
    """The Job's pod in a few words: ``Pending (ContainerCreating)``, ``Running on node-1``, ``no pod yet``."""
    if not pods:
        return "no pod yet"
    pod = pods[-1]
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    phase = str(status.get("phase") or "Pending")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            phase += f" ({waiting['reason']})"
    node = spec.get("nodeName")
    return f"{phase} on {node}" if node else phase


async def run(jobs: ValidationJob, cache: ClusterCache, options: K8sOptions, namespace: str,
              task: VolumeTask) -> VolumeTaskResult:
    """Run ``task`` as a Job (:meth:`ValidationJob.run_job`), logging its phase; its pod's end."""
    name = naming.validation_job_name(task.spec.modelName, task.kind)
    manifest = task_job(task, name, namespace, options)
    log.info("k8s shimlet: %s Job %s/%s on %s", task.kind, namespace, name, options.model_volume.place())
    if task.log is not None:
        task.log(f"{task.kind} Job {name} on {options.model_volume.place()} (image {options.job_image})")
    ticker = asyncio.create_task(_tick(task, name, cache)) if task.log is not None else None
    try:
        pod = await jobs.run_job(name, manifest, f"{task.kind} Job", task.timeout)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    term: Obj = {}
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = dict((cs.get("state") or {}).get("terminated") or {})
    node = (pod.get("spec") or {}).get("nodeName") or "a node"
    code = term.get("exitCode")
    reason = term.get("reason")
    return VolumeTaskResult(exit_code=int(code) if code is not None else None, report=str(term.get("message") or ""),
                            where=f"Job {name} on {node} (image {options.job_image})",
                            reason=None if reason in (None, "Completed") else str(reason))


async def _tick(task: VolumeTask, name: str, cache: ClusterCache) -> None:
    assert task.log is not None
    t0 = time.monotonic()
    while True:
        await asyncio.sleep(task.progress_seconds)
        task.log(f"{task.kind} Job {name}: {pod_phase(cache.validation_pods(name))}, {time.monotonic() - t0:.0f} s")
