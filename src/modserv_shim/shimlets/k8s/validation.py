"""Validating a model where the pods will see it (the shimlet's ModelInspector).

``modelFile`` names a path *inside the pod*: on a node (hostPath) or in a
PersistentVolumeClaim, which the shim usually cannot read.  Skipping
validation would let a typo surface 20 minutes later as a crash loop, so:

* with ``model_root`` (the same volume mounted into the shim's own pod, or a
  shared filesystem) the files are read directly, translated to
  ``model_root / <modelFile relative to the volume's root>``;
* otherwise a short **validation Job** mounts the model volume read-only on the
  nodes the server would use and runs ``python -m modserv_shim.modelinfo PATH
  --termination-log /dev/termination-log`` in ``validation_image``.  The report
  (one JSON line, see :mod:`modserv_shim.modelinfo.__main__`) comes back as the
  pod's termination message — no log scraping, no extra RBAC.  The Job's pod is
  followed through the shimlet's pod watch (no polling); an image that cannot
  be pulled or a pod nobody can schedule ends the wait with that reason.  The
  Job is deleted afterwards (cascade Background, so its pod goes too).

A Job whose shim was killed mid-validation is never deleted by that run, and
the resumed step starts a Job of its own (names are random): so the pods of
validation Jobs this run did not create are swept, their Jobs deleted, when
the shimlet starts and after each validation (:meth:`ValidationJob.sweep`).
Validations never outlive the process that started them, so such a Job is
always a leftover (one namespace per shim, see docs/kubernetes.md).  A Job
whose own delete failed (the API kept failing) becomes a leftover too; while
there are leftovers a background task sweeps again, backing off, until they
are gone (:meth:`ValidationJob.clean_up`).

A model that is not there is "model not found on the volume", a permanent error.

Task Jobs (:mod:`.tasks`: a pipeline's program on the volume, such as quantization) go through
:meth:`ValidationJob.run_job` too: the same wait on the pod watch, the same delete and sweep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from modserv_shim.errors import BackendUnavailable, PermanentStepError, ShimError, StepError
from modserv_shim.modelinfo import ModelFacts, ModelInvalid, inspect_model
from modserv_shim.shimlets.k8s import naming, reasons, render
from modserv_shim.shimlets.k8s.cache import ClusterCache
from modserv_shim.shimlets.k8s.kube import KubeApi
from modserv_shim.shimlets.k8s.options import K8sOptions
from modserv_shim.spec import DeploySpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]
WAIT_TICK = 0.5  # re-check the unschedulable grace period this often while waiting


def not_found(spec: DeploySpec, options: K8sOptions, how: str) -> PermanentStepError:
    volume = options.model_volume
    return PermanentStepError(
        f"model not found on the volume: {spec.modelFile} does not exist on {volume.place()}"
        f" (mounted at {volume.mount_root} in the pods; {how})",
        details={"problem": "not_found", "path": spec.modelFile})


def read_directly(spec: DeploySpec, options: K8sOptions) -> dict[str, Any]:
    """Inspect the model through ``model_root``; facts carry the path as the pods see it."""
    assert options.model_root is not None
    local = Path(options.model_root) / options.model_volume.relative(spec.modelFile)
    try:
        facts = inspect_model(local)
    except ModelInvalid as exc:
        if exc.problem == "not_found":
            raise not_found(spec, options, f"looked for {local} through model_root") from exc
        raise
    return replace(facts, path=spec.modelFile).to_dict()


class ValidationJob:
    """Runs one validation Job and turns its pod's termination message into facts or an error."""

    def __init__(self, kube: KubeApi, cache: ClusterCache, options: K8sOptions) -> None:
        self.kube, self.cache, self.options = kube, cache, options
        self._ours: set[str] = set()  # Jobs this run created and is in charge of deleting (never swept)
        self._swept: set[str] = set()  # leftovers already deleted
        self._cleaner: asyncio.Task[None] | None = None

    async def run(self, spec: DeploySpec) -> dict[str, Any]:
        name = naming.validation_job_name(spec.modelName)
        manifest = render.validation_job(spec, name, self.kube.namespace, self.options)
        log.info("k8s shimlet: validation Job %s/%s checks %s", self.kube.namespace, name, spec.modelFile)
        pod = await self.run_job(name, manifest, "model validation Job", self.options.validation_timeout)
        return self._verdict(spec, name, pod)

    async def run_job(self, name: str, manifest: Obj, what: str, timeout: float) -> Obj:
        """Apply the one-pod Job ``manifest``, wait for its container to end, delete the Job: its pod.
        ``what`` names it in errors ("model validation Job"); validation Jobs and task Jobs (:mod:`.tasks`)
        are kept and swept alike."""
        self._ours.add(name)  # before the apply: its pod may show up before the apply returns
        try:
            # Inside the try: an apply that failed may still have created the Job (its answer was lost).
            await self.kube.apply(manifest)
            return await self._wait(name, what, timeout)
        finally:
            try:
                await self.kube.delete("Job", name)
            except ShimError as exc:  # the verdict stands; the Job is swept later
                log.warning("k8s shimlet: cannot delete the %s %s now, trying again later: %s", what, name, exc)
                self._ours.discard(name)
            self.clean_up()

    def leftovers(self) -> set[str]:
        """Validation Jobs with pods in the cache that nobody is deleting: left by an earlier run, or whose
        delete failed."""
        return self.cache.validation_jobs() - self._ours - self._swept

    def clean_up(self) -> None:
        """Sweep in the background while there are leftovers (at start and after each validation)."""
        if self.leftovers() and (self._cleaner is None or self._cleaner.done()):
            self._cleaner = asyncio.create_task(self._sweep_until_clean(), name="k8s-validation-sweep")

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            await asyncio.gather(self._cleaner, return_exceptions=True)

    async def _sweep_until_clean(self) -> None:
        failures = 0
        while await self.sweep() or self.leftovers():
            if self.leftovers():  # some deletes failed: the API is in trouble, back off
                failures += 1
                await asyncio.sleep(self.kube.backoff.delay(failures))

    async def sweep(self) -> int:
        """Delete the leftover validation Jobs once; how many were deleted (failed ones stay leftovers)."""
        deleted = 0
        for name in sorted(self.leftovers()):
            self._swept.add(name)
            try:
                await self.kube.delete("Job", name)
            except ShimError as exc:
                self._swept.discard(name)
                log.warning("k8s shimlet: cannot delete the leftover validation Job %s yet: %s", name, exc)
                continue
            deleted += 1
            log.info("k8s shimlet: deleted the leftover validation Job %s/%s", self.kube.namespace, name)
        return deleted

    async def _wait(self, name: str, what: str, timeout: float) -> Obj:
        """The Job's pod once its container has terminated; errors for pods that cannot get there."""
        started = time.monotonic()
        outcome: dict[str, Any] = {}

        def done() -> bool:
            for pod in self.cache.validation_pods(name):
                if _terminated(pod) is not None:
                    outcome["pod"] = pod
                    return True
                problem = reasons.diagnose(pod, self.options.gpu_resource)
                if problem is None:
                    continue
                waited = time.monotonic() - started
                if problem.permanent or (problem.kind is reasons.ProblemKind.UNSCHEDULABLE
                                         and waited >= self.options.unschedulable_grace):
                    outcome["problem"] = problem
                    return True
                outcome["last"] = problem
            return False

        finished = await self.cache.wait_until(done, timeout + 10, tick=WAIT_TICK)
        if "problem" in outcome:
            raise PermanentStepError(f"the {what} {name} cannot run: {outcome['problem'].text}")
        if not finished:
            last = outcome.get("last")
            raise StepError(f"the {what} {name} did not finish within {timeout:g} s"
                            + (f"; last: {last.text}" if last else ""))
        pod: Obj = outcome["pod"]
        return pod

    def _verdict(self, spec: DeploySpec, name: str, pod: Obj) -> dict[str, Any]:
        term = _terminated(pod) or {}
        message, code = str(term.get("message") or "").strip(), term.get("exitCode")
        try:
            report = json.loads(message) if message.startswith("{") else None
        except ValueError:
            report = None
        if not isinstance(report, Mapping):
            oom = " (OOMKilled: raise the Job's memory limit)" if term.get("reason") == "OOMKilled" else ""
            raise PermanentStepError(
                f"the model validation Job {name} ({self.options.job_image}) failed with exit code {code}"
                f"{oom}: {message[-500:] or 'no report'}; is modserv_shim installed in that image?")
        if report.get("ok"):
            try:
                facts = ModelFacts.from_dict(report.get("facts") or {})
            except (TypeError, ValueError) as exc:
                raise PermanentStepError(f"the model validation Job {name} reported malformed facts: {exc}") from exc
            return facts.to_dict()
        node = (pod.get("spec") or {}).get("nodeName") or "a node"
        if report.get("problem") == "not_found":
            raise not_found(spec, self.options, f"checked by Job {name} on {node}")
        raise PermanentStepError(str(report.get("message") or f"the model at {spec.modelFile} is not valid"),
                                 details=dict(report))


def _terminated(pod: Obj) -> Obj | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


async def inspect(spec: DeploySpec, options: K8sOptions, job: ValidationJob | None) -> dict[str, Any]:
    """Facts of ``spec.modelFile`` as the pods will see it (direct read or validation Job)."""
    options.model_volume.relative(spec.modelFile)  # outside the volume: nothing to validate, say so
    if options.model_root:
        return await asyncio.to_thread(read_directly, spec, options)
    if job is None:  # pragma: no cover - the shimlet always passes one once started
        raise BackendUnavailable("the k8s shimlet is not started")
    return await job.run(spec)
