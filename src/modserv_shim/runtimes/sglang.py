"""SGLang: an alternative GPU runtime for Hugging Face folders, chosen only on request.

Started with ``python -m sglang.launch_server`` (the ``lmsysorg/sglang`` image
has no entry point of its own).  Tensor parallel is ``--tp``, the context
length ``--context-length`` and the share of GPU memory it may take
``--mem-fraction-static`` (SGLang's counterpart of vLLM's
``--gpu-memory-utilization``).
"""

from __future__ import annotations

from typing import ClassVar

from modserv_shim.runtimes.base import HOST, PORT, LaunchParams, ModelFormat, Runtime, Target, flag, python_module

SGLANG_IMAGE = "lmsysorg/sglang:v0.4.6.post1-cu124"
SGLANG_MODULE = "sglang.launch_server"


class SglangRuntime(Runtime):
    name = "sglang"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"hf"})
    default_image = SGLANG_IMAGE
    container_command = ("python3", "-m", SGLANG_MODULE)
    base_env = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}

    def local_command(self, *, target: Target) -> tuple[str, ...]:
        return python_module(SGLANG_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target) -> list[str]:
        args = ["--model-path", params.model_path, "--served-model-name", params.served_model_name]
        if params.accelerator_count > 0:
            flag(args, "--tp", params.accelerator_count)
        flag(args, "--context-length", params.context_length)
        flag(args, "--dtype", params.dtype)
        flag(args, "--mem-fraction-static", params.gpu_memory_utilization)
        args += ["--host", HOST, "--port", PORT]
        return args

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a GGUF file; the SGLang runtime here serves Hugging Face folders only."
            ' Deploy the GGUF with runtime "llama.cpp" (or "auto"), or point modelFile at the'
            " original Hugging Face folder."
        )
