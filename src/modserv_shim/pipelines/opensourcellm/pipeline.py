"""``opensourcellm``: turn a GGUF file or a Hugging Face folder into a running OpenAI service.

1. ``model-validation``  the model exists and is complete, and fits the hardware
   (:mod:`modserv_shim.modelinfo`); fails early, with numbers and a suggestion.
2. ``config-rendering``  picks the runtime and renders its command line
   (:mod:`modserv_shim.runtimes`) and the shimlet's workload; ``dryRun`` stops here.
3. ``resource-deployment``  ``shimlet.create`` (idempotent for the service id).
4. ``health-check``  waits for ready replicas, then checks that ``/v1/models``
   lists the served model and that a one-token completion answers.  Its timeout
   grows with the model (see :func:`health_timeout`) unless the config file or
   the request (``healthCheckTimeout``) fixes it.

Every step is idempotent: after a crash of the server the step in flight runs again.

Extending it: declare a step placed ``before=`` / ``after=`` one of these
(:mod:`modserv_shim.kit.pipeline`; examples/plugins/quant_pipeline.py).  A step that
produces another model file sets the output ``MODEL_FILE`` (and ``MODEL``, the new
file's facts); rendering and deployment then use it.  The outputs are declared in
:mod:`.outputs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
from pydantic import Field

from modserv_shim.allowlist import refuse
from modserv_shim.errors import PermanentStepError, StepError, ValidationFailed
from modserv_shim.kit.options import PluginOptions
from modserv_shim.kit.pipeline import DeclaredPipeline, step
from modserv_shim.modelinfo import FitResult, ModelFacts, check_fit, default_context_length, inspect_model
from modserv_shim.modelinfo.facts import GIB, format_count, gib
from modserv_shim.pipelines.opensourcellm import probe
from modserv_shim.pipelines.opensourcellm.outputs import ENDPOINT, FIT, LAUNCH, MODEL, MODEL_FILE, WORKLOAD
from modserv_shim.plugins import (
    API_KEY_OUTPUT,
    DeployContext,
    LaunchSpec,
    ModelInspector,
    Phase,
    PluginContext,
    ResourcePhase,
    RetryPolicy,
    Shimlet,
    StepContext,
    Watchable,
    WorkloadRenderer,
    launch_target,
    runtime_program,
)
from modserv_shim.runtimes import LaunchParams, Runtime, Target, get_runtime, is_vllm_installed, select_runtime
from modserv_shim.spec import DeploySpec

MODEL_VALIDATION = "model-validation"
CONFIG_RENDERING = "config-rendering"
RESOURCE_DEPLOYMENT = "resource-deployment"
HEALTH_CHECK = "health-check"

MODEL_FILE_OUTPUT = MODEL_FILE.key  # kept for older plugins: the output a step sets to replace the model file

HEALTH_BASE_SECONDS = 120.0
HEALTH_SECONDS_PER_GIB = 60.0
HEALTH_MAX_SECONDS = 3600.0
POLL_SECONDS = 0.05  # status() is cached in memory by contract: polling it is cheap
WATCH_RECHECK = 1.0  # with a watch stream, still look now and then (a missed event must not stall us)


def health_timeout(weights_bytes: int) -> float:
    """Default health-check timeout: 2 minutes + 1 minute per GiB of weights, at most an hour.

    Loading is dominated by reading the weights (and, on GPUs, copying them);
    a 98 MB GGUF gets ~2 minutes, a 16 GiB 8B model ~18 minutes, a 140 GiB
    70B model the full hour.
    """
    return min(HEALTH_BASE_SECONDS + HEALTH_SECONDS_PER_GIB * weights_bytes / GIB, HEALTH_MAX_SECONDS)


class OpenSourceLLMOptions(PluginOptions):
    """Options of the default pipeline (config ``pipelines.opensourcellm.options``)."""

    label: ClassVar[str] = "opensourcellm pipeline"

    images: dict[str, str] = Field(default_factory=dict, description="runtime name -> container image")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory a runtime may use")
    probe_prompt: str = Field("Hello", description="prompt of the health check's one-token completion")


# Optional request fields that only some pipelines act on, and the built-in pipeline that does.
EXTENSION_FIELDS: Mapping[str, str] = {"quantization": "quant", "modelSource": "privatellm"}


class OpenSourceLLMPipeline(DeclaredPipeline):
    """The default deploy flow; options: :class:`OpenSourceLLMOptions`."""

    name = "opensourcellm"
    Options = OpenSourceLLMOptions
    options: OpenSourceLLMOptions
    uses_fields: ClassVar[frozenset[str]] = frozenset()
    """Which of :data:`EXTENSION_FIELDS` this pipeline acts on; a request setting another is refused (422)."""

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self._http: httpx.AsyncClient | None = None

    @property
    def images(self) -> Mapping[str, str]:
        return self.options.images

    @property
    def gpu_memory_utilization(self) -> float:
        return self.options.gpu_memory_utilization

    @property
    def probe_prompt(self) -> str:
        return self.options.probe_prompt

    # ------------------------------------------------- what a request may ask (RequestChecker, ScaleChecker)

    def check_request(self, spec: DeploySpec, shimlet: Shimlet) -> None:
        """``env`` and ``runtimeArgs`` must pass the allowlist of the runtime that will serve the model.

        With ``runtime: auto`` the runtime is known only once the model is read: a ``.gguf`` path
        means llama.cpp; anything else may be a GGUF file or a Hugging Face folder (vLLM), so the
        request passes if either runtime accepts it, and rendering checks again with the runtime
        actually chosen.  The flags are those of the program the shimlet runs for the runtime
        (:func:`~modserv_shim.plugins.runtime_program`; llama.cpp has two).
        """
        for name, used_by in EXTENSION_FIELDS.items():
            if getattr(spec, name) is not None and name not in self.uses_fields:
                raise refuse(name, f"the {self.name} pipeline does not use {name}; it is for the {used_by}"
                             f' pipeline ("pipeline": "{used_by}")')
        target: Target = "local" if launch_target(shimlet) == "local" else "container"
        first: ValidationFailed | None = None
        for runtime in _candidates(spec):
            try:
                runtime.check_request(spec.env, spec.runtimeArgs, self.policy, target=target,
                                      program=_program(shimlet, runtime))
                return
            except ValidationFailed as exc:
                first = first or exc
        assert first is not None
        raise first

    def check_scale(self, spec: DeploySpec, outputs: Mapping[str, object], replicas: int, shimlet: Shimlet) -> None:
        """Scaling up runs the fit check a deploy runs, for the replicas added (those running hold their memory)."""
        added = replicas - spec.replicaCount
        rr = spec.resourceRequirements
        if added <= 0 or not isinstance(outputs.get(MODEL.key), Mapping):
            return
        if launch_target(shimlet) == "container" and rr.acceleratorType is None and rr.memory is None:
            return  # as at deploy: nothing to check against
        fit = check_fit(MODEL.read(outputs), rr, context_length=spec.contextLength, replicas=added,
                        gpu_memory_utilization=self.gpu_memory_utilization)
        if not fit.fits:
            more = "1 more replica" if added == 1 else f"{added} more replicas"
            raise ValidationFailed(f"cannot scale {spec.modelName} from {spec.replicaCount} to {replicas} replicas:"
                                   f" {more} would not fit: {fit.message}")

    async def start(self) -> None:
        _ = self.http  # built now (it loads the CA bundle: ~50 ms), not during the first health check

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        return self._http

    # ------------------------------------------------------------ 1. validate

    @step(MODEL_VALIDATION, phase=Phase.PIPELINE, timeout=300, retry=RetryPolicy(attempts=2, backoff=2),
          description="model is complete and fits", writes=(MODEL, FIT))
    async def validate(self, ctx: StepContext) -> None:
        spec = ctx.spec
        ctx.set_params(modelFile=spec.modelFile, resourceRequirements=spec.resourceRequirements.model_dump())
        rr = spec.resourceRequirements
        fit_check = functools.partial(check_fit, requirements=rr, context_length=spec.contextLength,
                                      replicas=spec.replicaCount, gpu_memory_utilization=self.gpu_memory_utilization)
        skip_fit = launch_target(ctx.shimlet) == "container" and rr.acceleratorType is None and rr.memory is None
        fit: FitResult | None = None
        if isinstance(ctx.shimlet, ModelInspector):
            ctx.log("inspecting the model where the workload will see it", shimlet=ctx.shimlet.name)
            facts = ModelFacts.from_dict(await ctx.shimlet.inspect_model(spec))
        else:  # both read files: one trip to a worker thread
            facts, fit = await asyncio.to_thread(_inspect_and_fit, spec.modelFile, None if skip_fit else fit_check)
        ctx.log(
            f"{facts.format.upper()} model {facts.name or facts.architecture}: {facts.architecture},"
            f" {format_count(facts.parameter_count)} parameters, {facts.dtype}, {gib(facts.weights_bytes)} of weights,"
            f" trained context {facts.context_length} tokens",
        )
        MODEL.set(ctx, facts)
        if skip_fit:
            ctx.log("no memory request and no accelerator: the fit check needs one of them; skipped",
                    level="warning")
            return
        if fit is None:
            fit = await asyncio.to_thread(fit_check, facts)
        if not fit.fits:
            fit = await asyncio.to_thread(_with_quant_hint, fit, facts, fit_check)
        FIT.set(ctx, fit.to_dict())
        for w in fit.warnings:
            ctx.log(w, level="warning")
        ctx.log(fit.message, level="info" if fit.fits else "error")
        fit.raise_if_not_fits()

    # -------------------------------------------------------------- 2. render

    @step(CONFIG_RENDERING, phase=Phase.PIPELINE, timeout=60, description="runtime command line and workload",
          reads=(MODEL,), writes=(LAUNCH, WORKLOAD))
    async def render(self, ctx: StepContext) -> None:
        spec = ctx.spec
        facts = MODEL.get(ctx)
        rr = spec.resourceRequirements
        target = launch_target(ctx.shimlet)
        runtime = select_runtime(
            spec.runtime, facts.format,
            gpu_available=rr.acceleratorType is not None,
            vllm_installed=is_vllm_installed(),
            images=self.images,
            model_path=spec.modelFile,
        )
        timeout = spec.healthCheckTimeout or health_timeout(facts.weights_bytes)
        params = LaunchParams(
            served_model_name=spec.modelName,
            model_path=MODEL_FILE.get(ctx, spec.modelFile),
            accelerator_count=rr.acceleratorCount,
            context_length=default_context_length(facts, spec.contextLength),
            gpu_memory_utilization=self.gpu_memory_utilization if rr.acceleratorType else None,
            extra_args=tuple(spec.runtimeArgs),
            env=dict(spec.env),
            startup_timeout=timeout,
            policy=self.policy,
            api_key_file=api_key_file(ctx.outputs),
        )
        program = _program(ctx.shimlet, runtime)
        launch = runtime.render(params, target="local" if target == "local" else "container", program=program)
        ctx.set_params(runtime=runtime.name, target=target, context_length=params.context_length,
                       **({} if program is None else {"program": program}))
        LAUNCH.set(ctx, launch)
        name = runtime.name if program is None else f"{runtime.name} ({program})"
        if target == "local":
            ctx.log(f"runtime {name} ({target}): {' '.join([*launch.local_command, *launch.args])}")
        else:  # an empty image: the shimlet fills in its own (one the runtime's default would not match)
            image = launch.image or "(the shimlet's own)"
            ctx.log(f"runtime {name}: image {image}, args {' '.join(launch.args)}")
        if isinstance(ctx.shimlet, WorkloadRenderer):
            workload = ctx.shimlet.render(self._deploy_context(ctx, launch))
            WORKLOAD.set(ctx, dict(workload))
            ctx.log("workload rendered", shimlet=ctx.shimlet.name)

    @staticmethod
    def _deploy_context(ctx: StepContext, launch: LaunchSpec) -> DeployContext:
        return DeployContext(
            service_id=ctx.service_id,
            spec=ctx.spec,
            launch=launch,
            replicas=ctx.spec.replicaCount,
            labels={"modserv-shim/service-id": ctx.service_id, "modserv-shim/model": ctx.spec.modelName},
            log=ctx.log,  # the shimlet's progress (an image pull) in this step's log
        )

    # -------------------------------------------------------------- 3. deploy

    @step(RESOURCE_DEPLOYMENT, phase=Phase.DEPLOYING, timeout=300,
          retry=RetryPolicy(attempts=3, backoff=2, max_delay=30), description="shimlet.create", reads=(LAUNCH,))
    async def deploy(self, ctx: StepContext) -> None:
        launch = LAUNCH.get(ctx)
        rid = await ctx.shimlet.create(self._deploy_context(ctx, launch))
        ctx.log(f"workload created on {ctx.shimlet.name}: {rid}")  # stamped when create returned
        await ctx.set_resource(rid)
        ctx.set_params(resource_id=rid, replicas=ctx.spec.replicaCount)

    # -------------------------------------------------------- 4. health-check

    @step(HEALTH_CHECK, phase=Phase.HEALTH_CHECKING, timeout=HEALTH_MAX_SECONDS,
          description="ready replicas, /v1/models, a one-token completion", reads=(LAUNCH,), writes=(ENDPOINT,))
    async def health_check(self, ctx: StepContext) -> None:
        launch = LAUNCH.get(ctx)
        if ctx.spec.healthCheckTimeout:
            ctx.set_timeout(ctx.spec.healthCheckTimeout, force=True)
        else:
            ctx.set_timeout(launch.startup_timeout)
        rid = ctx.resource_id
        if rid is None:
            raise StepError("no workload was recorded for this service")
        endpoint = await self._wait_ready(ctx, rid)
        name = launch.served_model_name
        try:
            key = await asyncio.to_thread(launch.read_api_key)
        except OSError as exc:
            raise PermanentStepError(f"the service's API key file cannot be read: {exc.strerror}") from None
        if key is not None:
            ctx.log("the endpoint requires the service's API key: the checks send it")
        prober = probe.Prober(ctx.shimlet, rid, endpoint, self.http, api_key=key)
        t0 = time.monotonic()
        (status, body), (c_status, c_body) = await asyncio.gather(  # independent: ask both at once
            prober.request("GET", "/v1/models"),
            prober.request("POST", "/v1/completions", {"model": name, "prompt": self.probe_prompt, "max_tokens": 1}),
        )
        listed = probe.served_models(body)
        if status != 200 or name not in listed:
            raise StepError(f"GET /v1/models answered {status} and lists {listed or 'no model'}, not {name!r}")
        ctx.log(f"/v1/models lists {name}")
        status, body = c_status, c_body
        text = probe.completion_text(body)
        if status != 200 or text is None:
            raise StepError(f"a one-token completion answered {status}: {str(body)[:300]}")
        ctx.log(f"a one-token completion answered in {1000 * (time.monotonic() - t0):.0f} ms", text=text)
        ENDPOINT.set(ctx, endpoint)

    async def _wait_ready(self, ctx: StepContext, rid: str) -> str | None:
        """Until the shimlet says ready; woken by its watch stream when it has one, else polling."""
        changed = asyncio.Event()
        follower = asyncio.create_task(_follow(ctx.shimlet, rid, changed)) if isinstance(
            ctx.shimlet, Watchable) else None
        last_reason: str | None = None
        try:
            while True:
                changed.clear()
                st = await ctx.shimlet.status(rid)
                if st.phase is ResourcePhase.READY:
                    ctx.log(f"{st.ready_replicas}/{st.desired_replicas} replicas ready at {st.endpoint}")
                    return st.endpoint
                if st.phase is ResourcePhase.FAILED:
                    raise PermanentStepError(st.reason or "the workload failed before becoming ready",
                                             details=dict(st.detail))
                if st.phase is ResourcePhase.NOT_FOUND:
                    raise StepError("the workload disappeared while starting")
                reason = st.reason or f"{st.ready_replicas}/{st.desired_replicas} replicas ready"
                if reason != last_reason:
                    ctx.log(f"waiting: {reason}")
                    last_reason = reason
                with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow our step timeout
                    async with asyncio.timeout(POLL_SECONDS if follower is None else WATCH_RECHECK):
                        await changed.wait()
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower


def api_key_file(outputs: Mapping[str, Any]) -> str | None:
    """The key file the core made for this service (pipelines that ``issues_api_keys``), if any."""
    info = outputs.get(API_KEY_OUTPUT)
    return str(info["file"]) if isinstance(info, Mapping) and info.get("file") else None


def _candidates(spec: DeploySpec) -> list[Runtime]:
    if spec.runtime != "auto":
        return [get_runtime(spec.runtime)]
    if spec.modelFile.lower().endswith(".gguf"):
        return [get_runtime("llama.cpp")]
    return [get_runtime("vllm"), get_runtime("llama.cpp")]


def _program(shimlet: Shimlet, runtime: Runtime) -> str | None:
    """The program ``shimlet`` runs for ``runtime`` (None: the runtime's default); a name it does not know is
    a :class:`PermanentStepError` naming the shimlet and the runtime's programs."""
    program = runtime_program(shimlet, runtime.name)
    if program is not None and program not in runtime.programs:
        raise PermanentStepError(
            f"the {shimlet.name} shimlet says its image for runtime {runtime.name!r} runs {program!r},"
            f" a program the shim does not know for {runtime.name}; known: {', '.join(runtime.programs)}")
    return program


def _inspect_and_fit(
    model_file: str, fit_check: Callable[[ModelFacts], FitResult] | None
) -> tuple[ModelFacts, FitResult | None]:
    facts = inspect_model(model_file)
    return facts, fit_check(facts) if fit_check is not None else None


def _with_quant_hint(fit: FitResult, facts: ModelFacts, fit_check: Callable[[ModelFacts], FitResult]) -> FitResult:
    """A fit failure that also names the quantization type that would fit
    (``...; or use pipeline quant with Q4_K_M: 4.9 GiB fits``), when one would."""
    from modserv_shim.pipelines.quant.types import quant_hint  # quant extends this pipeline: imported late

    hint = quant_hint(facts, fit_check)
    if hint is None:
        return fit
    return dataclasses.replace(fit, message=f"{fit.message}; or {hint}", suggestions=(*fit.suggestions, hint))


async def _follow(shimlet: Watchable, rid: str, changed: asyncio.Event) -> None:
    stream = shimlet.watch()
    try:
        async for resource_id, _ in stream:
            if resource_id == rid:
                changed.set()
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
