"""SGLang: an alternative GPU runtime for Hugging Face folders, chosen only on request.

Started with ``python -m sglang.launch_server`` (the ``lmsysorg/sglang`` image
has no entry point of its own).  Tensor parallel is ``--tp``, the context
length ``--context-length`` and the share of GPU memory it may take
``--mem-fraction-static`` (SGLang's counterpart of vLLM's
``--gpu-memory-utilization``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from modserv_shim.allowlist import FLAG, TOKEN, ArgRule, choice, integer
from modserv_shim.runtimes.base import (
    HOST,
    PORT,
    LaunchParams,
    ModelFormat,
    Runtime,
    Target,
    Why,
    flag,
    python_module,
    refusing,
)

SGLANG_IMAGE = "lmsysorg/sglang:v0.4.6.post1-cu124"
SGLANG_MODULE = "sglang.launch_server"

SGLANG_ARGS: Mapping[str, ArgRule] = {
    "--max-running-requests": integer(1, 1 << 16), "--max-total-tokens": integer(1, 1 << 26),
    "--chunked-prefill-size": integer(-1, 1 << 24), "--schedule-policy": choice("lpm", "random", "fcfs", "dfs-weight"),
    "--kv-cache-dtype": choice("auto", "fp8_e5m2", "fp8_e4m3"), "--quantization": TOKEN,
    "--dtype": choice("auto", "half", "float16", "bfloat16", "float", "float32"), "--disable-radix-cache": FLAG,
    "--disable-cuda-graph": FLAG, "--enable-torch-compile": FLAG, "--random-seed": integer(0, 2**32),
    "--log-level": choice("debug", "info", "warning", "error"), "--attention-backend": TOKEN,
    "--stream-interval": integer(1, 1024), "--cuda-graph-max-bs": integer(1, 4096),
}
SGLANG_REFUSED: Mapping[str, str] = refusing(
    (Why.LISTEN, ("--host", "--port")),
    (Why.MODEL, ("--model-path",)),
    (Why.NAME, ("--served-model-name",)),
    (Why.CONTEXT, ("--context-length",)),
    (Why.PARALLEL, ("--tp", "--tp-size", "--dp")),
    (Why.GPU_SHARE, ("--mem-fraction-static",)),
    (Why.LOADS_CODE, ("--trust-remote-code", "--chat-template")),
    (Why.LOADS_FILES, ("--tokenizer-path", "--download-dir", "--load-format", "--lora-paths")),
    (Why.EXPOSES, ("--api-key",)),
    (Why.DOWNLOADS, ("--revision",)),
)


class SglangRuntime(Runtime):
    name = "sglang"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"hf"})
    programs = ("sglang",)
    default_image = SGLANG_IMAGE
    container_command = ("python3", "-m", SGLANG_MODULE)
    base_env = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}

    def local_command(self, *, target: Target, program: str | None = None) -> tuple[str, ...]:
        return python_module(SGLANG_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target, program: str | None = None) -> list[str]:
        args = ["--model-path", params.model_path, "--served-model-name", params.served_model_name]
        if params.accelerator_count > 0:
            flag(args, "--tp", params.accelerator_count)
        flag(args, "--context-length", params.context_length)
        flag(args, "--dtype", params.dtype)
        flag(args, "--mem-fraction-static", params.gpu_memory_utilization)
        args += ["--host", HOST, "--port", PORT]
        return args

    def arg_rules(self, *, target: Target, program: str | None = None) -> Mapping[str, ArgRule]:
        return SGLANG_ARGS

    def refused_args(self, *, target: Target, program: str | None = None) -> Mapping[str, str]:
        return SGLANG_REFUSED

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a GGUF file; the SGLang runtime here serves Hugging Face folders only."
            ' Deploy the GGUF with runtime "llama.cpp" (or "auto"), or point modelFile at the'
            " original Hugging Face folder."
        )
