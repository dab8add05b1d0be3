"""Inference runtimes: how vLLM, SGLang and llama.cpp are launched and probed.

Use :func:`select_runtime` to pick one for a model, then
:meth:`Runtime.render` to get the :class:`~modserv_shim.plugins.LaunchSpec` a
shimlet runs::

    runtime = select_runtime("auto", "gguf", gpu_available=False, vllm_installed=False)
    launch = runtime.render(LaunchParams("tiny", "/models/tiny.gguf", context_length=2048), target="local")
"""

from modserv_shim.runtimes.base import LaunchParams, ModelFormat, Runtime, Target
from modserv_shim.runtimes.llamacpp import LlamaCppRuntime
from modserv_shim.runtimes.registry import RUNTIMES, get_runtime, is_vllm_installed, select_runtime
from modserv_shim.runtimes.sglang import SglangRuntime
from modserv_shim.runtimes.vllm import VllmRuntime

__all__ = [
    "RUNTIMES",
    "LaunchParams",
    "LlamaCppRuntime",
    "ModelFormat",
    "Runtime",
    "SglangRuntime",
    "Target",
    "VllmRuntime",
    "get_runtime",
    "is_vllm_installed",
    "select_runtime",
]
