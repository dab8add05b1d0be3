"""The runtime registry and the rule that picks a runtime for a model.

The rule (``runtime: auto``):

* a GGUF file is served by llama.cpp (CPU or GPU);
* a Hugging Face folder is served by vLLM, which needs an NVIDIA GPU in the
  target environment or, for a local deployment, vLLM installed here.  With
  neither, nothing here can serve the folder, and the error says what to do.
  SGLang (on request only) always needs a GPU.

An explicit runtime is honoured, but a format it cannot read is refused with a
message naming the fix, before anything is started.  All refusals are
:class:`~modserv_shim.errors.PermanentStepError`: retrying cannot change them.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping

from modserv_shim.errors import PermanentStepError
from modserv_shim.runtimes.base import ModelFormat, Runtime
from modserv_shim.runtimes.llamacpp import LlamaCppRuntime
from modserv_shim.runtimes.sglang import SglangRuntime
from modserv_shim.runtimes.vllm import VllmRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    LlamaCppRuntime.name: LlamaCppRuntime,
    VllmRuntime.name: VllmRuntime,
    SglangRuntime.name: SglangRuntime,
}
"""Runtime name (as in the deploy request's ``runtime`` field) -> class."""

AUTO = "auto"


def get_runtime(name: str, *, image: str | None = None) -> Runtime:
    """The runtime called ``name``, with ``image`` instead of its default image if given."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        known = ", ".join([AUTO, *RUNTIMES])
        raise PermanentStepError(f"unknown runtime {name!r}; choose one of: {known}") from None
    return cls(image=image)


@functools.cache
def is_vllm_installed() -> bool:
    """Whether ``import vllm`` would work in this interpreter (without importing it: it is slow).

    Cached for the life of the process: the search walks ``sys.path`` (~7 ms), and a
    package installed later needs a restart of the server to be used anyway.
    """
    return importlib.util.find_spec("vllm") is not None


def hf_without_gpu_message(runtime: str, *, not_installed: bool) -> str:
    """What to do when a Hugging Face folder meets a machine that cannot serve it."""
    installed = f" and {runtime} is not installed on this machine" if not_installed else ""
    return (
        f"this model is a Hugging Face folder, which {runtime} serves on an NVIDIA GPU, but the"
        f" deployment has no GPU (no acceleratorType){installed}."
        " Either convert it to GGUF with llama.cpp's convert_hf_to_gguf.py (e.g. `python"
        " convert_hf_to_gguf.py <folder> --outfile model.gguf --outtype q8_0`) and deploy the .gguf"
        " file, which llama.cpp serves on CPU; or deploy it on the k8s shimlet with a GPU"
        ' (resourceRequirements.acceleratorType, e.g. "NVIDIA L4").'
    )


def select_runtime(
    requested: str,
    model_format: ModelFormat,
    *,
    gpu_available: bool,
    vllm_installed: bool,
    images: Mapping[str, str] | None = None,
    model_path: str = "the model",
) -> Runtime:
    """Pick the runtime for a model, or raise :class:`PermanentStepError` saying what to do instead.

    ``gpu_available``: the target environment gives the workload a GPU.
    ``vllm_installed``: vLLM can run on this machine (see :func:`is_vllm_installed`);
    it matters for local deployments only.  ``images`` overrides default
    container images per runtime name.  ``model_path`` only improves messages.
    """
    if model_format not in ("gguf", "hf"):
        raise PermanentStepError(f"unknown model format {model_format!r}; expected 'gguf' or 'hf'")
    name = requested
    if requested == AUTO:
        name = LlamaCppRuntime.name if model_format == "gguf" else VllmRuntime.name
    runtime = get_runtime(name, image=(images or {}).get(name))
    runtime.check_format(model_format, model_path)
    if model_format == "hf" and not gpu_available:
        if name == VllmRuntime.name and not vllm_installed:
            raise PermanentStepError(hf_without_gpu_message("vLLM", not_installed=True))
        if name == SglangRuntime.name:
            raise PermanentStepError(hf_without_gpu_message("SGLang", not_installed=False))
    return runtime
