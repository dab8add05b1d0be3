"""The ``quant`` pipeline: opensourcellm with a model-quantization step (llama.cpp's quantizer).

Steps, options and the request are in docs/pipelines.md; the step in :mod:`.pipeline`, the
types and size estimates in :mod:`.types`, the child process that quantizes in :mod:`.worker`.
"""

from modserv_shim.pipelines.quant.options import QuantOptions
from modserv_shim.pipelines.quant.outputs import QUANTIZATION
from modserv_shim.pipelines.quant.pipeline import MODEL_QUANTIZATION, QuantPipeline

__all__ = ["MODEL_QUANTIZATION", "QUANTIZATION", "QuantOptions", "QuantPipeline"]
