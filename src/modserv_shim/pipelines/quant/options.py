"""Options of the ``quant`` pipeline (config ``pipelines.quant.options``): opensourcellm's, and the cache's."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from modserv_shim.pipelines.opensourcellm import OpenSourceLLMOptions


class QuantOptions(OpenSourceLLMOptions):
    """The default pipeline's options (images, gpu_memory_utilization, probe_prompt) and these."""

    label: ClassVar[str] = "quant pipeline"

    cache_dir: str | None = Field(
        None, min_length=1,
        description="where quantized models are kept, named <input SHA-256>.<type>.gguf (a relative path is"
                    " under the data dir; default: <data_dir>/quant/cache)")
    threads: int = Field(0, ge=0, le=1024, description="threads llama.cpp quantizes with (0: one per CPU core)")
    seconds_per_gib: float = Field(
        600.0, gt=0, le=86400,
        description="model-quantization's timeout: 120 s plus this per GiB of input (hashing and quantizing;"
                    " for a Hugging Face folder, per GiB of the folder's weights and of the converted F16 file)")
    convert_script: str | None = Field(
        None, min_length=1,
        description="llama.cpp's convert_hf_to_gguf.py, which converts a Hugging Face folder to GGUF before it is"
                    " quantized (default: <sys.prefix>/share/modserv-shim/llama.cpp-convert/convert_hf_to_gguf.py,"
                    " where scripts/get-llama-convert.py puts the version matching llama-cpp-python)")
    convert_python: str | None = Field(
        None, min_length=1,
        description="the Python that runs convert_script; it needs the extra convert (torch, transformers,"
                    " sentencepiece): pip install 'modserv-shim[convert]' (default: the shim's own)")
