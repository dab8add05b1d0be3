"""The default pipeline, ``opensourcellm``: validate, render, deploy, health-check."""

from modserv_shim.pipelines.opensourcellm.pipeline import OpenSourceLLMPipeline

__all__ = ["OpenSourceLLMPipeline"]
