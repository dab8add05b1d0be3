"""vLLM: the runtime for Hugging Face folders on NVIDIA GPUs.

Started through ``python -m vllm.entrypoints.openai.api_server`` (the entry
point of the official ``vllm/vllm-openai`` image) rather than ``vllm serve``,
because ``--model`` works the same on every vLLM release we support while the
positional model argument of ``vllm serve`` changed over time.

``/v1/models`` answers only once the engine is up, so it is the ready path;
``/health`` is the cheap liveness path.
"""

from __future__ import annotations

from typing import ClassVar

from modserv_shim.runtimes.base import HOST, PORT, LaunchParams, ModelFormat, Runtime, Target, flag, python_module

VLLM_IMAGE = "vllm/vllm-openai:v0.8.5"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"


class VllmRuntime(Runtime):
    name = "vllm"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"hf"})
    default_image = VLLM_IMAGE
    container_command = ("python3", "-m", VLLM_MODULE)
    # The model is a local path: never reach out to the Hub, never phone home.
    base_env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

    def local_command(self, *, target: Target) -> tuple[str, ...]:
        return python_module(VLLM_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target) -> list[str]:
        args = ["--model", params.model_path, "--served-model-name", params.served_model_name]
        if params.accelerator_count > 0:
            flag(args, "--tensor-parallel-size", params.accelerator_count)
        flag(args, "--max-model-len", params.context_length)
        flag(args, "--dtype", params.dtype)
        flag(args, "--gpu-memory-utilization", params.gpu_memory_utilization)
        args += ["--host", HOST, "--port", PORT]
        return args

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a GGUF file; the vLLM runtime here serves Hugging Face folders only."
            ' Deploy the GGUF with runtime "llama.cpp" (or "auto"), or point modelFile at the'
            " original Hugging Face folder to use vLLM."
        )
