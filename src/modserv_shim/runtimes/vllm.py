"""vLLM: the runtime for Hugging Face folders on NVIDIA GPUs.

Started through ``python -m vllm.entrypoints.openai.api_server`` (the entry
point of the official ``vllm/vllm-openai`` image) rather than ``vllm serve``,
because ``--model`` works the same on every vLLM release we support while the
positional model argument of ``vllm serve`` changed over time.

``/v1/models`` answers only once the engine is up, so it is the ready path;
``/health`` is the cheap liveness path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from modserv_shim.allowlist import FLAG, TOKEN, ArgRule, choice, integer, number
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

VLLM_IMAGE = "vllm/vllm-openai:v0.8.5"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"

DTYPES = choice("auto", "half", "float16", "bfloat16", "float", "float32")
QUANTIZATIONS = choice("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "fp8", "bitsandbytes", "gguf",
                       "compressed-tensors", "experts_int8", "fbgemm_fp8", "modelopt", "moe_wna16")

VLLM_ARGS: Mapping[str, ArgRule] = {
    "--max-num-seqs": integer(1, 1 << 16), "--max-num-batched-tokens": integer(1, 1 << 24),
    "--enforce-eager": FLAG, "--kv-cache-dtype": choice("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "--quantization": QUANTIZATIONS, "--dtype": DTYPES, "--enable-prefix-caching": FLAG,
    "--no-enable-prefix-caching": FLAG, "--enable-chunked-prefill": FLAG, "--swap-space": number(0, 1024),
    "--cpu-offload-gb": number(0, 4096), "--block-size": choice("8", "16", "32", "64", "128"),
    "--seed": integer(0, 2**32), "--disable-log-requests": FLAG, "--disable-log-stats": FLAG,
    "--tokenizer-mode": choice("auto", "slow", "mistral"), "--max-logprobs": integer(0, 1 << 16),
    "--num-scheduler-steps": integer(1, 1024), "--guided-decoding-backend": TOKEN,
    "--enable-auto-tool-choice": FLAG, "--tool-call-parser": TOKEN, "--reasoning-parser": TOKEN,
    "--generation-config": choice("auto", "vllm"), "--max-seq-len-to-capture": integer(1, 1 << 24),
    "--disable-custom-all-reduce": FLAG,
}
VLLM_REFUSED: Mapping[str, str] = refusing(
    (Why.LISTEN, ("--host", "--port", "--uds")),
    (Why.MODEL, ("--model",)),
    (Why.NAME, ("--served-model-name",)),
    (Why.CONTEXT, ("--max-model-len",)),
    (Why.PARALLEL, ("--tensor-parallel-size", "--pipeline-parallel-size")),
    (Why.GPU_SHARE, ("--gpu-memory-utilization",)),
    (Why.LOADS_CODE, ("--trust-remote-code", "--middleware", "--tool-parser-plugin", "--worker-cls",
        "--worker-extension-cls", "--chat-template", "--hf-overrides", "--logits-processor-pattern")),
    (Why.LOADS_FILES, ("--config", "--tokenizer", "--download-dir", "--load-format", "--lora-modules",
        "--prompt-adapters", "--allowed-local-media-path")),
    (Why.EXPOSES, ("--api-key", "--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs", "--allowed-origins",
        "--allow-credentials", "--root-path")),
    (Why.DOWNLOADS, ("--revision", "--tokenizer-revision", "--code-revision")),
)


class VllmRuntime(Runtime):
    name = "vllm"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"hf"})
    programs = ("vllm",)
    default_image = VLLM_IMAGE
    container_command = ("python3", "-m", VLLM_MODULE)
    # The model is a local path: never reach out to the Hub, never phone home.
    base_env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    # Not VLLM_PLUGINS or VLLM_LOGGING_CONFIG_PATH: they load code.
    env_names = frozenset({"VLLM_ATTENTION_BACKEND", "VLLM_USE_V1", "VLLM_LOGGING_LEVEL",
                           "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
                           "VLLM_USE_TRITON_FLASH_ATTN", "VLLM_FLASH_ATTN_VERSION",
                           "VLLM_ENGINE_ITERATION_TIMEOUT_S", "VLLM_RPC_TIMEOUT", "VLLM_SKIP_P2P_CHECK",
                           "PYTORCH_CUDA_ALLOC_CONF"})

    def api_key(self, key_file: str, *, target: Target, program: str) -> tuple[list[str], str]:
        """vLLM's OpenAI server reads ``VLLM_API_KEY`` when ``--api-key`` is not given."""
        return [], "VLLM_API_KEY"

    def local_command(self, *, target: Target, program: str | None = None) -> tuple[str, ...]:
        return python_module(VLLM_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target, program: str | None = None) -> list[str]:
        args = ["--model", params.model_path, "--served-model-name", params.served_model_name]
        if params.accelerator_count > 0:
            flag(args, "--tensor-parallel-size", params.accelerator_count)
        flag(args, "--max-model-len", params.context_length)
        flag(args, "--dtype", params.dtype)
        flag(args, "--gpu-memory-utilization", params.gpu_memory_utilization)
        args += ["--host", HOST, "--port", PORT]
        return args

    def arg_rules(self, *, target: Target, program: str | None = None) -> Mapping[str, ArgRule]:
        return VLLM_ARGS

    def refused_args(self, *, target: Target, program: str | None = None) -> Mapping[str, str]:
        return VLLM_REFUSED

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a GGUF file; the vLLM runtime here serves Hugging Face folders only."
            ' Deploy the GGUF with runtime "llama.cpp" (or "auto"), or point modelFile at the'
            " original Hugging Face folder to use vLLM."
        )
