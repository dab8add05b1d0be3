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
``--n_ctx``), hence the ``target`` argument of :meth:`Runtime.render`: a
container runs ``llama-server`` and a local process whichever is installed,
unless the caller names the program (``program="llama-cpp-python"``), as a
shimlet whose image holds llama-cpp-python does (``programs`` in
:mod:`modserv_shim.plugins`).  Such a container is started with
``python3 -m llama_cpp.server`` in the image the operator gives: the default
image is llama-server's, so none is filled in (the shimlet supplies its own).
``dtype`` and ``gpu_memory_utilization`` do not apply: a GGUF file carries its
own quantization and llama.cpp sizes its buffers from the context length.
With accelerators, every layer is offloaded to the GPUs.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar, Final, Literal

from modserv_shim.allowlist import FLAG, TOKEN, ArgRule, choice, integer, number
from modserv_shim.plugins import LaunchSpec
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

LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
LLAMA_SERVER: Final = "llama-server"  # the program's name, and its binary's
LLAMA_CPP_PYTHON: Final = "llama-cpp-python"
PYTHON_SERVER_MODULE = "llama_cpp.server"
PYTHON_CONTAINER_COMMAND = ("python3", "-m", PYTHON_SERVER_MODULE)

Flavour = Literal["llama-server", "llama-cpp-python"]

_BOOL = choice("true", "false", "True", "False", "1", "0")
_KV_TYPES = choice("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# llama.cpp's own server: tuning of threads, batching, offload, KV cache and sampling defaults.
LLAMA_SERVER_ARGS: Mapping[str, ArgRule] = {
    "--threads": integer(1, 1024), "--threads-batch": integer(1, 1024), "--threads-http": integer(1, 1024),
    "--batch-size": integer(1, 1 << 20), "--ubatch-size": integer(1, 1 << 20), "--parallel": integer(1, 256),
    "--cont-batching": FLAG, "--no-cont-batching": FLAG, "--flash-attn": choice("on", "off", "auto"),
    "--n-gpu-layers": integer(-1, 9999), "--main-gpu": integer(0, 64), "--split-mode": choice("none", "layer", "row"),
    "--cache-type-k": _KV_TYPES, "--cache-type-v": _KV_TYPES, "--mlock": FLAG, "--no-mmap": FLAG,
    "--keep": integer(-1, 1 << 24), "--cache-reuse": integer(0, 1 << 24), "--defrag-thold": number(-1, 1),
    "--n-predict": integer(-2, 1 << 24), "--temp": number(0, 10), "--top-k": integer(0, 1 << 20),
    "--top-p": number(0, 1), "--min-p": number(0, 1), "--repeat-penalty": number(0, 10), "--seed": integer(-1, 2**32),
    "--rope-scaling": choice("none", "linear", "yarn"), "--rope-freq-base": number(0, 1e9),
    "--rope-freq-scale": number(0, 1e3), "--jinja": FLAG, "--reasoning-format": choice("none", "deepseek", "auto"),
    "--metrics": FLAG, "--no-webui": FLAG, "--timeout": integer(1, 86400), "--embedding": FLAG,
    "--pooling": choice("none", "mean", "cls", "last", "rank"), "--verbose": FLAG, "--log-disable": FLAG,
}
LLAMA_SERVER_REFUSED: Mapping[str, str] = refusing(
    (Why.LISTEN, ("--host", "--port", "--reuse-port")),
    (Why.MODEL, ("--model",)),
    (Why.NAME, ("--alias",)),
    (Why.CONTEXT, ("--ctx-size",)),
    (Why.EXPOSES, ("--api-key", "--api-key-file", "--ssl-key-file", "--ssl-cert-file", "--path", "--api-prefix",
        "--props", "--slots", "--rpc")),
    (Why.LOADS_FILES, ("--slot-save-path", "--log-file", "--grammar-file", "--lora", "--lora-scaled",
        "--control-vector", "--mmproj", "--model-draft")),
    (Why.LOADS_CODE, ("--chat-template", "--chat-template-file")),
    (Why.DOWNLOADS, ("--hf-repo", "--hf-file", "--model-url", "--hf-token")),
)

# llama-cpp-python's server (the local fallback): its flags are its settings' field names.
PYTHON_SERVER_ARGS: Mapping[str, ArgRule] = {
    "--n_gpu_layers": integer(-1, 9999), "--main_gpu": integer(0, 64), "--n_threads": integer(1, 1024),
    "--n_threads_batch": integer(1, 1024), "--n_batch": integer(1, 1 << 20), "--n_ubatch": integer(1, 1 << 20),
    "--flash_attn": _BOOL, "--offload_kqv": _BOOL, "--use_mmap": _BOOL, "--use_mlock": _BOOL,
    "--seed": integer(-1, 2**32), "--rope_freq_base": number(0, 1e9), "--rope_freq_scale": number(0, 1e3),
    "--chat_format": TOKEN, "--cache": _BOOL, "--cache_size": integer(0, 1 << 36), "--verbose": _BOOL,
    "--embedding": _BOOL, "--logits_all": _BOOL, "--type_k": integer(0, 64), "--type_v": integer(0, 64),
}
PYTHON_SERVER_REFUSED: Mapping[str, str] = refusing(
    (Why.LISTEN, ("--host", "--port")),
    (Why.MODEL, ("--model",)),
    (Why.NAME, ("--model_alias",)),
    (Why.CONTEXT, ("--n_ctx",)),
    (Why.EXPOSES, ("--api_key", "--ssl_keyfile", "--ssl_certfile")),
    (Why.LOADS_FILES, ("--config_file", "--cache_type", "--clip_model_path", "--lora_path", "--lora_base")),
    (Why.DOWNLOADS, ("--hf_pretrained_model_name_or_path", "--hf_model_repo_id")),
)


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({"gguf"})
    programs = (LLAMA_SERVER, LLAMA_CPP_PYTHON)
    default_image = LLAMACPP_IMAGE
    container_command = ("/app/llama-server",)
    ready_path = "/health"
    health_path = "/health"
    env_names = frozenset({"GGML_CUDA_ENABLE_UNIFIED_MEMORY", "GGML_CUDA_NO_PINNED", "GGML_SCHED_MAX_COPIES"})

    def default_program(self, *, target: Target) -> str:
        """``llama-server`` in a container (its image is the default); locally, if it is on PATH."""
        if target == "container" or shutil.which(LLAMA_SERVER):
            return LLAMA_SERVER
        return LLAMA_CPP_PYTHON

    def flavour(self, target: Target, program: str | None = None) -> Flavour:
        """Which program serves (see :meth:`program`)."""
        return LLAMA_SERVER if self.program(target=target, program=program) == LLAMA_SERVER else LLAMA_CPP_PYTHON

    def local_command(self, *, target: Target, program: str | None = None) -> tuple[str, ...]:
        if self.flavour(target, program) == LLAMA_SERVER:
            return (shutil.which(LLAMA_SERVER) or LLAMA_SERVER,)
        return python_module(PYTHON_SERVER_MODULE)

    def server_args(self, params: LaunchParams, *, target: Target, program: str | None = None) -> list[str]:
        gpu = params.accelerator_count > 0
        if self.flavour(target, program) == LLAMA_SERVER:
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

    def api_key(self, key_file: str, *, target: Target, program: str) -> tuple[list[str], str]:
        """llama-server reads the key file itself; llama-cpp-python reads ``API_KEY`` (its settings)."""
        if self.flavour(target, program) == LLAMA_SERVER:
            return ["--api-key-file", key_file], ""
        return [], "API_KEY"

    def render(self, params: LaunchParams, *, target: Target, program: str | None = None) -> LaunchSpec:
        chosen = self.flavour(target, program)
        spec = super().render(params, target=target, program=program)
        if chosen == LLAMA_SERVER:
            return spec
        python = replace(spec, ready_path="/v1/models", health_path="/v1/models")  # it has no /health
        if target == "local":
            # llama-cpp-python flags: this spec must never reach the llama-server image.
            return replace(python, image="", container_command=())
        # A container the shimlet says holds llama-cpp-python: never the default (llama-server) image.
        # Without a pinned image it is left empty, for the shimlet to fill in from its own options
        # (and to refuse, naming its option, when it has none).
        return replace(python, image=self.image_given or "", container_command=PYTHON_CONTAINER_COMMAND)

    def arg_rules(self, *, target: Target, program: str | None = None) -> Mapping[str, ArgRule]:
        return LLAMA_SERVER_ARGS if self.flavour(target, program) == LLAMA_SERVER else PYTHON_SERVER_ARGS

    def refused_args(self, *, target: Target, program: str | None = None) -> Mapping[str, str]:
        return LLAMA_SERVER_REFUSED if self.flavour(target, program) == LLAMA_SERVER else PYTHON_SERVER_REFUSED

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        return (
            f"{model_path} is a Hugging Face folder; llama.cpp serves GGUF files only. Convert it with"
            " llama.cpp's convert_hf_to_gguf.py (e.g. `python convert_hf_to_gguf.py <folder> --outfile"
            ' model.gguf --outtype q8_0`) and deploy the .gguf, or use runtime "vllm" on a GPU.'
        )
