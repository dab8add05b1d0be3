"""The default pipeline, ``opensourcellm``: validate, render, deploy, health-check.

Its outputs (typed keys a step inserted by another pipeline reads or writes) are in
:mod:`.outputs`; its options in :class:`OpenSourceLLMOptions`.
"""

from modserv_shim.pipelines.opensourcellm.outputs import ENDPOINT, FIT, LAUNCH, MODEL, MODEL_FILE, WORKLOAD
from modserv_shim.pipelines.opensourcellm.pipeline import (
    CONFIG_RENDERING,
    HEALTH_CHECK,
    MODEL_VALIDATION,
    RESOURCE_DEPLOYMENT,
    OpenSourceLLMOptions,
    OpenSourceLLMPipeline,
)

__all__ = [
    "CONFIG_RENDERING",
    "ENDPOINT",
    "FIT",
    "HEALTH_CHECK",
    "LAUNCH",
    "MODEL",
    "MODEL_FILE",
    "MODEL_VALIDATION",
    "RESOURCE_DEPLOYMENT",
    "WORKLOAD",
    "OpenSourceLLMOptions",
    "OpenSourceLLMPipeline",
]
