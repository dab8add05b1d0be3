"""Where model-quantization runs and where its output goes, per shimlet (docs/pipelines.md, "Where it runs").

* **local** (``launch_target == "local"``): on the shim's host, into ``cache_dir``; the
  replicas are processes of this host and read the file where it is.
* **a shared host folder** (a shimlet with :class:`~modserv_shim.plugins.ModelVolumeSharer`
  whose :class:`~modserv_shim.plugins.SharedModelVolume` has a ``host_root``: the docker
  shimlet with a bound host folder on a local Engine): on the shim's host too, but the input
  is read through the host path and the cache is ``<host folder>/.modserv-quant/``; the
  runtime is handed the file as the containers see it (``<target>/.modserv-quant/<name>``).
* **a task on the volume** (the volume has no ``host_root`` and the shimlet is a
  :class:`~modserv_shim.plugins.VolumeTaskRunner`: the k8s shimlet): the same worker runs in a
  Job with the volume mounted read-write (:mod:`.task`), cache ``<mount path>/.modserv-quant/``,
  its report read from the termination message.

Anything else is refused before the deploy is accepted, with the shimlet's reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from modserv_shim.errors import PermanentStepError, StepError, ValidationFailed
from modserv_shim.modelinfo import ModelFacts
from modserv_shim.plugins import (
    ModelVolumeSharer,
    SharedModelVolume,
    Shimlet,
    StepContext,
    VolumeTask,
    VolumeTaskRunner,
    launch_target,
)
from modserv_shim.spec import DeploySpec

VOLUME_CACHE = ".modserv-quant"
"""The cache's folder on a shared model volume: hidden, next to the models the workloads see."""

WORKER = ("python", "-m", "modserv_shim.pipelines.quant.worker")


@dataclass(frozen=True)
class Placement:
    """Where one deploy's quantization reads, writes and runs."""

    cache: Path | None
    """The cache on the shim's host; None: on the volume, reached by ``runner`` only."""
    volume: SharedModelVolume | None = None
    runner: VolumeTaskRunner | None = None

    def source(self, model_file: str) -> Path | None:
        """The input as the shim reads it; None when only a task on the volume can."""
        if self.volume is None:
            return Path(model_file)
        if self.volume.host_root is None:
            return None
        try:
            return self.volume.on_host(model_file)
        except ValueError as exc:
            raise PermanentStepError(f"modelFile {model_file}: {exc}") from None

    def served(self, final: Path) -> str:
        """``final`` (a file in ``cache``) as the workloads see it."""
        return str(final) if self.volume is None else self.volume.in_workload(final)

    @property
    def volume_cache(self) -> str:
        """The cache as the task on the volume sees it."""
        assert self.volume is not None
        return f"{self.volume.workload_root.rstrip('/')}/{VOLUME_CACHE}"


def place(shimlet: Shimlet, spec: DeploySpec, cache_dir: Path, *, strict: bool = True) -> Placement:
    """The placement for ``spec`` on ``shimlet``; ValidationFailed (a 422) with the reason when there is none.

    ``strict=False`` (the step): a shimlet without the capabilities gets the shim's own cache, as a local
    one; a real deploy never gets there (``check_request`` refused it), a step run by a test double does.
    """
    if launch_target(shimlet) == "local" or (not strict and not isinstance(shimlet, ModelVolumeSharer)):
        return Placement(cache=cache_dir)
    why = (f"the quant pipeline puts the quantized model where the {shimlet.name} shimlet's workloads read it, and"
           " cannot here: ")
    if not isinstance(shimlet, ModelVolumeSharer):
        raise ValidationFailed(why + f"the {shimlet.name} shimlet shares no model volume (it has no"
                               " shared_model_volume capability); deploy with the local, docker or k8s shimlet")
    try:
        volume = shimlet.shared_model_volume(spec)
    except ValidationFailed as exc:
        raise ValidationFailed(why + exc.message, details=exc.details) from None
    try:
        volume.relative(spec.modelFile)
    except ValueError as exc:
        raise ValidationFailed(why + f"modelFile {exc}") from None
    if volume.host_root is not None:
        return Placement(cache=volume.host_root / VOLUME_CACHE, volume=volume)
    if isinstance(shimlet, VolumeTaskRunner):
        return Placement(cache=None, volume=volume, runner=shimlet)
    raise ValidationFailed(why + f"the shim cannot write to {volume.workload_root} and the {shimlet.name} shimlet"
                           " cannot run a task there (no volume-task capability)")


@dataclass(frozen=True)
class VolumeOutcome:
    """What the task on the volume made: the input's SHA-256, the file as the workloads see it, its facts."""

    sha256: str
    file: str
    facts: ModelFacts
    cached: bool
    seconds: float | None
    removed_partial: bool


async def quantize_on_volume(ctx: StepContext, placement: Placement, kind: str, ftype: int, allow: bool,
                             threads: int, need: int, timeout: float) -> VolumeOutcome:
    """Run the worker as a task on the volume (:mod:`.task`); its report, or the error in words."""
    assert placement.runner is not None
    spec = ctx.spec
    request = {"src": spec.modelFile, "cache": placement.volume_cache, "type": kind, "ftype": ftype,
               "allow_requantize": allow, "threads": threads, "need": need}
    ctx.log(f"quantizing {spec.modelFile} to {kind} in a task on the model volume (cache {placement.volume_cache}):"
            " it hashes the input, uses the cached file when there is one, else quantizes")
    result = await placement.runner.run_volume_task(VolumeTask(
        kind="quantize", spec=spec, command=(*WORKER, json.dumps(request, separators=(",", ":"))), timeout=timeout,
        log=ctx.log))
    text = result.report.strip()
    try:
        report = json.loads(text) if text.startswith("{") else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        if result.reason == "OOMKilled":
            raise PermanentStepError(f"the quantization {result.where} ran out of memory (OOMKilled, exit code"
                                     f" {result.exit_code}): raise resourceRequirements.memory, which the Job gets")
        if result.reason == "DeadlineExceeded":
            raise StepError(f"the quantization {result.where} did not finish within {timeout:.0f} s")
        raise PermanentStepError(
            f"the quantization {result.where} ended with exit code {result.exit_code} without a report"
            f" ({text[-500:] or 'no output'}); its image needs Python with modserv_shim and llama-cpp-python")
    if not report.get("ok"):
        reason = str(report.get("reason") or "no reason given")
        problem = report.get("problem")
        if problem == "not_found":
            raise PermanentStepError(f"model not found on the volume: {reason} (checked by {result.where})")
        if problem == "no_space":
            raise PermanentStepError(f"{reason} ({result.where}); free some space on the model volume")
        raise PermanentStepError(f"llama.cpp could not quantize {spec.modelFile} to {kind} ({result.where}):"
                                 f" {reason}")
    try:
        facts = ModelFacts.from_dict(report["facts"])
        outcome = VolumeOutcome(sha256=str(report["sha256"]), file=str(report["file"]), facts=facts,
                                cached=bool(report.get("cached")), seconds=report.get("seconds"),
                                removed_partial=bool(report.get("removed_partial")))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentStepError(f"the quantization {result.where} sent a malformed report ({exc}):"
                                 f" {text[:500]}") from None
    return replace(outcome, facts=replace(facts, path=outcome.file))
