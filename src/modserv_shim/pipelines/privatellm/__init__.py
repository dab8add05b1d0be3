"""The ``privatellm`` pipeline: an organization's own models, fetched from a private source and verified.

Steps: model-fetch -> model-verification -> the default pipeline's (model-validation,
config-rendering, resource-deployment, health-check).  See docs/pipelines.md#privatellm.
"""

from modserv_shim.pipelines.privatellm.options import PrivateLLMOptions
from modserv_shim.pipelines.privatellm.outputs import FETCHED, MANIFEST
from modserv_shim.pipelines.privatellm.pipeline import MODEL_FETCH, MODEL_VERIFICATION, PrivateLLMPipeline

__all__ = ["FETCHED", "MANIFEST", "MODEL_FETCH", "MODEL_VERIFICATION", "PrivateLLMOptions", "PrivateLLMPipeline"]
