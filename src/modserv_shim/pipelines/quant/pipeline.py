"""``quant``: opensourcellm with a ``model-quantization`` step (llama.cpp's own quantizer).

model-validation -> **model-quantization** -> config-rendering -> resource-deployment -> health-check

The request names the type: ``"quantization": {"type": "Q4_K_M", "allowRequantize": false}``
(any llama.cpp type, or ``"auto"``: the largest type whose memory estimate fits the requested
resources).  The step

1. refuses what cannot work before any work: an input that is not a GGUF file, a type whose
   estimate does not fit (naming one that does), an already quantized file without
   ``allowRequantize`` (with it: a warning that quality drops), too little free disk;
2. names the output by the input's SHA-256 and the type, in the cache directory (option
   ``cache_dir``): a second deploy of the same model and type finds it there (a cache hit,
   logged, no work);
3. runs ``llama_model_quantize`` in a child process (:mod:`.worker`) writing to
   ``<name>.partial``, logging tensors done / total every 2 s, then renames the file.  A
   cancelled step kills the child and removes the partial file; a shim killed mid-way takes the
   child with it (``PR_SET_PDEATHSIG``) and the next attempt removes the leftover.  One lock
   file per output (``flock``, held by the step and the child) keeps two deploys of the same
   model and type from writing the same file;
4. sets ``model_file`` (the quantized file), ``model`` (its facts) and ``fit`` (the fit check of
   the quantized model), so config-rendering and resource-deployment serve it.

The step's timeout grows with the input: 120 s + ``seconds_per_gib`` per GiB.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modserv_shim.errors import PermanentStepError, StepError, ValidationFailed
from modserv_shim.kit.files import publish
from modserv_shim.kit.pipeline import step
from modserv_shim.modelinfo import FitResult, ModelDoesNotFit, ModelFacts, check_fit, inspect_model
from modserv_shim.modelinfo.facts import GIB, gib
from modserv_shim.modelinfo.gguf_layout import read_layout
from modserv_shim.pipelines.opensourcellm import FIT, MODEL, MODEL_FILE, MODEL_VALIDATION, OpenSourceLLMPipeline
from modserv_shim.pipelines.quant.cache import Hashing, Work, cached, locked, remove_leftover, writing
from modserv_shim.pipelines.quant.convert import convert_hf_folder
from modserv_shim.pipelines.quant.options import QuantOptions
from modserv_shim.pipelines.quant.outputs import QUANTIZATION
from modserv_shim.pipelines.quant.placement import Placement, place, quantize_on_volume
from modserv_shim.pipelines.quant.types import (
    AUTO,
    LlamaCppMissing,
    check_type,
    choose_auto,
    estimate_file_bytes,
    llama_ftypes,
    quant_hint,
    quantized_facts,
    valid_types,
)
from modserv_shim.plugins import RetryPolicy, Shimlet, StepContext
from modserv_shim.spec import DeploySpec

MODEL_QUANTIZATION = "model-quantization"
BASE_SECONDS = 120.0
PROGRESS_SECONDS = 2.0
STDERR_LINES = 20
QUANTIZING = Work(verb="quantize", doing="quantizing", done="quantized",
                  another="quantization of the same model and type", origin="was made from the same input")


@dataclass
class _Progress:
    done: int = 0
    total: int = 0
    seconds: float | None = None
    reason: str | None = None


class QuantPipeline(OpenSourceLLMPipeline):
    """opensourcellm + model-quantization; options: :class:`QuantOptions`."""

    name = "quant"
    uses_fields = frozenset({"quantization"})
    Options = QuantOptions
    options: QuantOptions

    @property
    def cache_dir(self) -> Path:
        if self.options.cache_dir is None:
            return self.context.data_dir / "quant" / "cache"
        return self.context.data_dir / Path(self.options.cache_dir).expanduser()  # an absolute path stays as it is

    # --------------------------------------------------------------- requests

    def check_request(self, spec: DeploySpec, shimlet: Shimlet) -> None:
        """opensourcellm's checks, a ``quantization`` with a type llama.cpp knows, and a shimlet whose workloads
        can read what the step makes (:func:`.placement.place`)."""
        super().check_request(spec, shimlet)
        q = spec.quantization
        try:
            if q is None:
                raise ValidationFailed(
                    'the quant pipeline needs "quantization": {"type": "Q4_K_M"} (a llama.cpp type, or "auto":'
                    f" the largest type that fits the resources); valid types: {', '.join(valid_types())}")
            check_type(q.type)
        except ValueError as exc:
            raise ValidationFailed(str(exc), details={"field": "quantization.type", "valid": valid_types()}) from None
        except LlamaCppMissing as exc:
            raise ValidationFailed(str(exc)) from None
        place(shimlet, spec, self.cache_dir)

    # ---------------------------------------------------- 1. model-validation

    async def validate(self, ctx: StepContext) -> None:
        """opensourcellm's validation; a model too big as it is goes on: quantized it may fit."""
        try:
            await super().validate(ctx)
        except ModelDoesNotFit:
            ctx.log("the model does not fit as it is: model-quantization checks the quantized model against"
                    " the same resources")

    # --------------------------------------------------- 2. model-quantization

    @step(MODEL_QUANTIZATION, after=MODEL_VALIDATION, timeout=3600, retry=RetryPolicy(attempts=2, backoff=2),
          description="llama.cpp's llama_model_quantize into the cache (input SHA-256 + type)",
          reads=(MODEL,), writes=(MODEL_FILE, MODEL, FIT, QUANTIZATION))
    async def quantize_model(self, ctx: StepContext) -> None:
        spec = ctx.spec
        if spec.quantization is None:
            raise PermanentStepError('the quant pipeline needs "quantization": {"type": ...}')
        try:
            kind = check_type(spec.quantization.type)
        except ValueError as exc:
            raise PermanentStepError(str(exc)) from None
        allow = spec.quantization.allowRequantize
        facts = MODEL.get(ctx)
        where = place(ctx.shimlet, spec, self.cache_dir, strict=False)
        readable = where.source(spec.modelFile)  # None: only a task on the model volume reads it
        src = readable or Path(spec.modelFile)
        hf_bytes = 0  # a Hugging Face folder is converted to an F16 GGUF file first (.convert)
        if facts.format != "gguf" or (readable is not None and not await asyncio.to_thread(src.is_file)):
            if readable is None:
                raise PermanentStepError(
                    f"{spec.modelFile} is a Hugging Face folder, and on the {ctx.shimlet.name} shimlet the quant"
                    " pipeline takes GGUF files only (it converts folders on the shim's host): convert it with"
                    " llama.cpp's convert_hf_to_gguf.py first, or deploy it with the opensourcellm pipeline")
            def record_served(c: StepContext, k: str | None, _src: str | Path, digest: str | None, f: ModelFacts,
                              fit: FitResult, final: str | Path | None = None) -> None:
                """A dry run's record, with paths as the workloads see them (a container's /models/...)."""
                self._record(c, k, spec.modelFile, digest, f, fit, None if final is None else where.served(Path(final)))

            converted = await convert_hf_folder(ctx, src, cache=where.cache or self.cache_dir, options=self.options,
                                                kind=kind, fit_check=self._fit_check(spec), record=record_served)
            if converted is None:
                return  # a dry run: what it would convert and serve is recorded
            src, facts, hf_bytes = converted.file, converted.facts, converted.input_bytes
        size = (await asyncio.to_thread(src.stat)).st_size if readable else facts.weights_bytes
        ctx.set_timeout(BASE_SECONDS + self.options.seconds_per_gib * (size + hf_bytes) / GIB)
        layout = await asyncio.to_thread(read_layout, src) if readable else None
        tensors = layout.tensors if layout is not None else None
        shown = spec.modelFile if src == readable or readable is None else where.served(src)  # as workloads see it
        fit_check = self._fit_check(spec)

        if kind == AUTO:
            choice = await asyncio.to_thread(choose_auto, facts, fit_check, tensors)
            if choice is None:
                raise ModelDoesNotFit(f"no quantization type makes {spec.modelName} fit:"
                                      f" {(await asyncio.to_thread(fit_check, facts)).message}")
            for other, fit in choice.tried[:-1]:
                ctx.log(f"auto: {other} does not fit: {fit.message}")
            if choice.kind is None:
                ctx.log(f"auto: the model fits as it is ({facts.dtype}): nothing to quantize")
                self._record(ctx, None, shown, None, facts, choice.fit)
                return
            kind = choice.kind
            ctx.log(f"auto: {kind} is the largest type that fits: {choice.fit.message}")
        elif kind == facts.dtype:
            ctx.log(f"{src} is {kind} already: nothing to quantize")
            self._record(ctx, None, shown, None, facts, await asyncio.to_thread(fit_check, facts))
            return
        else:
            estimate = quantized_facts(facts, kind, tensors)
            fit = await asyncio.to_thread(fit_check, estimate)
            if not fit.fits:
                hint = quant_hint(facts, fit_check)
                raise ModelDoesNotFit(f"as {kind} (weights about {gib(estimate.weights_bytes)}) {fit.message}"
                                      + (f"; or {hint}" if hint else ""), details=fit.to_dict())
        if facts.quantization is not None:
            if not allow:
                raise PermanentStepError(
                    f"{src} is quantized already ({facts.dtype}); quantizing it again to {kind} loses more quality"
                    " than quantizing the F16/BF16 original: deploy the original, or set"
                    " quantization.allowRequantize: true")
            ctx.log(f"re-quantizing {facts.dtype} to {kind} (allowRequantize): quality drops, the errors of both"
                    " quantizations add up; quantize the F16/BF16 original when you have it", level="warning")

        if where.cache is None:
            await self._on_volume(ctx, where, facts, kind, allow, size, fit_check)
            return
        cache = where.cache
        await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)
        digest = await Hashing(ctx, str(src), size, QUANTIZING).sha256(src, cache)
        final = cache / f"{digest}.{kind}.gguf"
        async with locked(ctx, cache / f"{digest}.{kind}.lock", QUANTIZING) as lock_fd:
            quantized = await cached(ctx, final, kind, digest, QUANTIZING)
            if quantized is None and ctx.dry_run:
                estimate = quantized_facts(facts, kind, tensors)
                ctx.log(f"dry run: would quantize {src} to {kind} as {final}"
                        f" (weights about {gib(estimate.weights_bytes)})")
                self._record(ctx, kind, shown, digest, estimate, await asyncio.to_thread(fit_check, estimate),
                             where.served(final))
                return
            if quantized is None:
                assert layout is not None
                need = estimate_file_bytes(facts, kind, layout.tensors, layout.data_offset)
                free = (await asyncio.to_thread(shutil.disk_usage, cache)).free
                if free < need:
                    raise PermanentStepError(
                        f"not enough disk space for the quantized model in {cache}: {kind} needs about {gib(need)},"
                        f" {gib(free)} is free; free some, or point the quant pipeline's cache_dir at a larger disk",
                        details={"cache_dir": str(cache), "needed_bytes": need, "free_bytes": free})
                await self._quantize(ctx, src, final, kind, allow, lock_fd, need)
                quantized = await asyncio.to_thread(inspect_model, final)
                ctx.log(f"{gib(facts.weights_bytes)} of {facts.dtype} weights ({facts.bits_per_weight:.2f} bits per"
                        f" weight) -> {gib(quantized.weights_bytes)} of {kind} ({quantized.bits_per_weight:.2f});"
                        f" file {gib(size)} -> {gib((await asyncio.to_thread(final.stat)).st_size)}")
        fit = await asyncio.to_thread(fit_check, quantized)
        ctx.log(fit.message, level="info" if fit.fits else "error")
        self._record(ctx, kind, shown, digest, quantized, fit, where.served(final))
        fit.raise_if_not_fits()

    async def _on_volume(self, ctx: StepContext, where: Placement, facts: ModelFacts, kind: str, allow: bool,
                         size: int, fit_check: Callable[[ModelFacts], FitResult]) -> None:
        """The cache and the quantizer are on the model volume: a task there does the work (:mod:`.placement`)."""
        spec = ctx.spec
        estimate = quantized_facts(facts, kind)
        if ctx.dry_run:
            ctx.log(f"dry run: would quantize {spec.modelFile} to {kind} in a task on the model volume, into"
                    f" {where.volume_cache}/<input SHA-256>.{kind}.gguf (weights about {gib(estimate.weights_bytes)})")
            self._record(ctx, kind, spec.modelFile, None, estimate, await asyncio.to_thread(fit_check, estimate))
            return
        need = estimate_file_bytes(facts, kind, [], 0)
        outcome = await quantize_on_volume(ctx, where, kind, llama_ftypes()[kind], allow, self.options.threads, need,
                                           BASE_SECONDS + self.options.seconds_per_gib * size / GIB)
        quantized = outcome.facts
        if outcome.cached:
            ctx.log(f"cache hit: {outcome.file} ({kind}, {gib(quantized.weights_bytes)}) was made from the same"
                    f" input (SHA-256 {outcome.sha256[:16]}...): nothing to quantize")
        else:
            if outcome.removed_partial:
                ctx.log("the task removed a partial file left by an attempt that did not finish")
            ctx.log(f"quantized to {kind} in {outcome.seconds or 0:.1f} s (llama.cpp, in the task): {outcome.file};"
                    f" {gib(facts.weights_bytes)} of {facts.dtype} weights -> {gib(quantized.weights_bytes)} of {kind}")
        fit = await asyncio.to_thread(fit_check, quantized)
        ctx.log(fit.message, level="info" if fit.fits else "error")
        self._record(ctx, kind, spec.modelFile, outcome.sha256, quantized, fit, outcome.file)
        fit.raise_if_not_fits()

    def _fit_check(self, spec: DeploySpec) -> Callable[[ModelFacts], FitResult]:
        return functools.partial(check_fit, requirements=spec.resourceRequirements, context_length=spec.contextLength,
                                 replicas=spec.replicaCount, gpu_memory_utilization=self.gpu_memory_utilization)

    @staticmethod
    def _record(ctx: StepContext, kind: str | None, src: str | Path, digest: str | None, facts: ModelFacts,
                fit: FitResult, final: str | Path | None = None) -> None:
        """``src`` and ``final``: paths as the workloads see them (the input, the file they serve)."""
        served = str(final or src)
        MODEL_FILE.set(ctx, served)
        MODEL.set(ctx, replace(facts, path=served) if facts.path != served else facts)
        FIT.set(ctx, fit.to_dict())
        QUANTIZATION.set(ctx, {"type": kind, "source": str(src), "source_sha256": digest, "file": served,
                               "weights_bytes": facts.weights_bytes})
        ctx.set_params(quantization=kind, model_file=served)

    # ---------------------------------------------------------------- helpers

    async def _quantize(self, ctx: StepContext, src: Path, final: Path, kind: str, allow: bool, lock_fd: int,
                        need: int) -> None:
        partial = final.with_name(final.name + ".partial")
        await remove_leftover(ctx, partial)
        threads = self.options.threads or os.cpu_count() or 1
        request = {"parent": os.getpid(), "src": str(src), "dst": str(partial), "ftype": llama_ftypes()[kind],
                   "allow_requantize": allow, "threads": threads}
        ctx.log(f"quantizing {src} to {kind} with llama.cpp ({threads} threads) into {partial.name}")
        progress = _Progress()
        stderr: deque[str] = deque(maxlen=STDERR_LINES)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modserv_shim.pipelines.quant.worker", json.dumps(request),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            pass_fds=(lock_fd,))
        assert proc.stdout is not None and proc.stderr is not None
        events = asyncio.create_task(_read_events(proc.stdout, progress, ctx))
        errors = asyncio.create_task(_tail(proc.stderr, stderr))
        try:
            async with writing(proc, partial):
                while not events.done():
                    await asyncio.wait({events}, timeout=PROGRESS_SECONDS)
                    if not events.done():
                        ctx.log(f"quantizing to {kind}: {progress.done}/{progress.total or '?'} tensors,"
                                f" {time.monotonic() - t0:.0f} s")
                await events
                await errors
                rc = await proc.wait()
        finally:
            for task in (events, errors):
                task.cancel()
        if rc != 0:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            at = f"at tensor {progress.done}/{progress.total or '?'}"
            if rc < 0:
                raise StepError(f"the quantizer was killed by signal {-rc} {at}; its partial file was removed")
            reason = progress.reason or (stderr[-1] if stderr else f"exit code {rc}")
            free = (await asyncio.to_thread(shutil.disk_usage, final.parent)).free
            if free < need // 4 or "No space left" in reason:
                raise PermanentStepError(f"the disk of {final.parent} filled up while quantizing ({gib(free)} free):"
                                         f" {reason}")
            raise PermanentStepError(f"llama.cpp could not quantize {src} to {kind} {at}: {reason}")
        await asyncio.to_thread(publish, partial, final)
        ctx.log(f"quantized {progress.done}/{progress.total} tensors to {kind} in {time.monotonic() - t0:.1f} s"
                f" (llama.cpp: {progress.seconds or 0:.1f} s): {final}")


async def _read_events(stream: asyncio.StreamReader, progress: _Progress, ctx: StepContext) -> None:
    async for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        kind = event.get("event")
        if kind == "start":
            progress.total = int(event["tensors"])
        elif kind == "tensor":
            progress.done, progress.total = int(event["done"]), int(event["total"])
        elif kind == "log":
            text = str(event.get("text", "")).removeprefix("llama_model_quantize_impl: ")
            ctx.log(f"llama.cpp: {' '.join(text.split())}", level=str(event.get("level", "info")))
        elif kind == "done":
            progress.seconds = float(event["seconds"])
        elif kind == "failed":
            progress.reason = str(event.get("reason", ""))


async def _tail(stream: asyncio.StreamReader, lines: deque[str]) -> None:
    async for raw in stream:
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            lines.append(line)

