"""The built-in plugins, registered by name.  Third-party ones come through entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modserv_shim.core.registry import Kind
from modserv_shim.plugins import PluginContext


def _local(ctx: PluginContext) -> Any:
    from modserv_shim.shimlets.local import LocalShimlet

    return LocalShimlet(ctx)


def _k8s(ctx: PluginContext) -> Any:
    from modserv_shim.shimlets.k8s import K8sShimlet

    return K8sShimlet(ctx)


def _docker(ctx: PluginContext) -> Any:
    from modserv_shim.shimlets.docker import DockerShimlet

    return DockerShimlet(ctx)


def _opensourcellm(ctx: PluginContext) -> Any:
    from modserv_shim.pipelines.opensourcellm import OpenSourceLLMPipeline

    return OpenSourceLLMPipeline(ctx)


def _privatellm(ctx: PluginContext) -> Any:
    from modserv_shim.pipelines.privatellm import PrivateLLMPipeline

    return PrivateLLMPipeline(ctx)


def _quant(ctx: PluginContext) -> Any:
    from modserv_shim.pipelines.quant import QuantPipeline

    return QuantPipeline(ctx)


BUILTINS: Mapping[Kind, Mapping[str, Callable[[PluginContext], Any]]] = {
    "shimlet": {"local": _local, "k8s": _k8s, "docker": _docker},
    "pipeline": {"opensourcellm": _opensourcellm, "privatellm": _privatellm, "quant": _quant},
}
