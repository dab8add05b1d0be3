"""A custom pipeline: the default flow plus a model-quantization step (llama.cpp's quantizer).

Load it without a restart (as an admin), then deploy with ``"pipeline": "quantllm"``:

    cp examples/plugins/quant_pipeline.py <data-dir>/plugins/
    curl -X POST localhost:8080/api/v1/plugins/load -H 'Content-Type: application/json' \\
      -d '{"kind": "pipeline", "name": "quantllm", "file": "quant_pipeline.py", "attr": "QuantLLMPipeline"}'
"""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

from modserv_shim.errors import PermanentStepError
from modserv_shim.kit.pipeline import step
from modserv_shim.modelinfo import inspect_model
from modserv_shim.pipelines.opensourcellm import MODEL, MODEL_FILE, OpenSourceLLMPipeline
from modserv_shim.plugins import StepContext

TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def quantize(src: str, dst: str, kind: str) -> None:
    import llama_cpp  # the llama.cpp library that serves the model also quantizes it

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[kind])
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise PermanentStepError(f"llama.cpp could not quantize {src} to {kind}")


class QuantLLMPipeline(OpenSourceLLMPipeline):
    """The default pipeline's steps, and one more after model-validation."""

    name = "quantllm"

    @step("model-quantization", after="model-validation", timeout=3600, writes=(MODEL_FILE, MODEL))
    async def quantize_model(self, ctx: StepContext) -> None:
        kind = ctx.spec.env.get("QUANTIZE", "Q8_0")  # per deploy: "env": {"QUANTIZE": "Q4_0"}
        if kind not in TYPES:
            raise PermanentStepError(f"QUANTIZE must be one of {', '.join(TYPES)}, got {kind!r}")
        src = ctx.spec.modelFile
        if not src.endswith(".gguf"):
            raise PermanentStepError("model-quantization takes a GGUF file")
        dst = str(ctx.data_dir / "quantized" / f"{ctx.service_id}.{kind}.gguf")
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        ctx.log(f"quantizing {src} to {kind}")
        await asyncio.to_thread(quantize, src, dst, kind)  # idempotent: same input, same output
        facts = await asyncio.to_thread(inspect_model, dst)
        ctx.log(f"quantized: {facts.weights_bytes / 2**20:.1f} MiB of {facts.dtype} weights")
        MODEL_FILE.set(ctx, dst)  # config-rendering and resource-deployment serve this file
        MODEL.set(ctx, facts)
