"""llama.cpp: the runtime for GGUF files, on CPU or GPU.

Two programs speak for llama.cpp:

* ``llama-server`` — llama.cpp's own server.  It is the entry point of the
  ``ghcr.io/ggml-org/llama.cpp:server`` image, and the local shimlet uses it
  when a ``llama-server`` binary is on ``PATH``.  It answers ``/health`` with
  200 only once the model is loaded (503 while loading), so that is the ready
  path.
* llama-cpp-python's server (``python -m llama_cpp.server``) — the local
  fallback, installed with ``pip install 'llama-cpp-python[server]'``.  It has
  no ``/health``; ``/v1/models`` answers once the model is loaded (the server
  loads it before it starts listening).

Their flags differ (``--alias`` vs ``--model_alias``, ``--ctx-size`` vs
``--n_ctx``), hence the ``target`` argument of :meth:`Runtime.render`.
``dtype`` and ``gpu_memory_utilization`` do not apply: a GGUF file carries its
own quantization and llama.cpp sizes its buffers from the context length.
With accelerators, every layer is offloaded to the GPUs.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from typing import ClassVar, Literal

from modserv_shim.plugins import LaunchSpec
from modserv_shim.runtimes.base import HOST, PORT, LaunchParams, ModelFormat, Runtime, Target, flag, python_module

LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
LLAMA_SERVER = "llama-server"
PYTHON_SERVER_MODULE = "llama_cpp.server"

Flavour = Literal["llama-server", "llama-cpp-python"]


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"gguf"})
    default_image = LLAMACPP_IMAGE
    container_command = ("/app/llama-server",)
    ready_path = "/health"
    health_path = "/health"

    def flavour(self, target: Target) -> Flavour:
        """Which program serves: always ``llama-server`` in a container, locally if it is on PATH."""
        if target == "container" or shutil.which(LLAMA_SERVER):
            return "llama-server"
        return "llama-cpp-python"

    def local_command(self, *, target: Target) -> tuple[str, ...]:
        if self.flavour(target) == "llama-server":
            return (shutil.which(LLAMA_SERVER) or LLAMA_SERVER,)
        return python_module(PYTHON_SERVER_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target) -> list[str]:
        gpu = params.accelerator_count > 0
        if self.flavour(target) == "llama-server":
            args = ["--model", params.model_path, "--alias", params.served_model_name]
            flag(args, "--ctx-size", params.context_length)
            if gpu:
                args += ["--n-gpu-layers", "999"]
        else:
            args = ["--model", params.model_path, "--model_alias", params.served_model_name]
            flag(args, "--n_ctx", params.context_length)
            if gpu:
                args += ["--n_gpu_layers", "-1"]
        args += ["--host", HOST, "--port", PORT]
        return args

    def render(self, params: LaunchParams, *, target: Target) -> LaunchSpec:
        spec = super().render(params, target=target)
        if self.flavour(target) == "llama-server":
            return spec
        # llama-cpp-python flags: this spec must never reach the llama-server image.
        return replace(spec, image="", container_command=(), ready_path="/v1/models", health_path="/v1/models")

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a Hugging Face folder; llama.cpp serves GGUF files only. Convert it with"
            " llama.cpp's convert_hf_to_gguf.py (e.g. `python convert_hf_to_gguf.py <folder> --outfile"
            ' model.gguf --outtype q8_0`) and deploy the .gguf, or use runtime "vllm" on a GPU.'
        )
