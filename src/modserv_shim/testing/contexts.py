"""Builders for what the core hands a plugin: a :class:`PluginContext`, a :class:`DeployContext`.

In the server these come from the configuration and from a deploy request; in a
plugin's tests they come from here, with defaults that pass the server's own checks::

    shimlet = MyShimlet(make_plugin_context(tmp_path, "mine", {"probe_interval": 0.1}))
    resource_id = await shimlet.create(make_deploy_context("svc-1", replicas=2))

The default launch (:func:`stub_launch`) starts the OpenAI stub of
:mod:`modserv_shim.testing.openai_stub` with this Python, so a shimlet that runs
processes really serves ``/v1/models``.  A container shimlet passes its own
``launch`` (an image the environment can pull).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.plugins import DeployContext, LaunchSpec, Lifecycle, PluginContext
from modserv_shim.spec import DeploySpec

STUB_MODULE = "modserv_shim.testing.openai_stub"


def stub_launch(
    model_name: str = "tiny",
    *,
    model_path: str = "/models/tiny.gguf",
    ready_delay: float = 0.0,
    env: Mapping[str, str] | None = None,
    image: str = "",
    startup_timeout: float = 60.0,
) -> LaunchSpec:
    """A :class:`LaunchSpec` whose local command is the OpenAI stub serving ``model_name``."""
    args = ["--host", "{host}", "--port", "{port}", "--model-name", model_name]
    if ready_delay:
        args += ["--ready-delay", str(ready_delay)]
    return LaunchSpec(
        runtime="openai-stub",
        served_model_name=model_name,
        model_path=model_path,
        local_command=(sys.executable, "-m", STUB_MODULE),
        args=tuple(args),
        image=image,
        container_command=("python", "-m", STUB_MODULE),
        env=dict(env or {}),
        ready_path="/v1/models",
        health_path="/v1/models",
        startup_timeout=startup_timeout,
    )


def make_deploy_spec(model_name: str = "tiny", *, replicas: int = 1, **fields: Any) -> DeploySpec:
    """A valid :class:`DeploySpec` (what ``POST /api/v1/modserv/deploy`` carries); ``fields`` override."""
    body: dict[str, Any] = {"modelName": model_name, "modelFile": f"/models/{model_name}.gguf",
                            "replicaCount": max(replicas, 1)}
    body.update(fields)
    return DeploySpec(**body)


def make_deploy_context(
    service_id: str,
    replicas: int = 1,
    *,
    model_name: str = "tiny",
    env: Mapping[str, str] | None = None,
    launch: LaunchSpec | None = None,
    labels: Mapping[str, str] | None = None,
    spec: DeploySpec | None = None,
) -> DeployContext:
    """What the core passes to ``Shimlet.create`` for one service.

    Its signature starts as the contract's ``make_context(service_id, replicas)``, so it
    can be the contract's context factory as is.  ``env`` goes into the deploy spec (what
    a request's ``env`` carries); the launch defaults to :func:`stub_launch`.
    """
    spec = spec or make_deploy_spec(model_name, replicas=replicas, env=dict(env or {}))
    return DeployContext(
        service_id=service_id,
        spec=spec,
        launch=launch or stub_launch(spec.modelName, model_path=spec.modelFile),
        replicas=replicas,
        labels=dict(labels or {}),
    )


def make_plugin_context(
    data_dir: Path | str,
    name: str = "test",
    options: Mapping[str, Any] | None = None,
    *,
    server_settings: Mapping[str, Any] | None = None,
    policy: RequestPolicy | None = None,
) -> PluginContext:
    """What the server hands a plugin factory; ``data_dir`` is created if missing."""
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    return PluginContext(name, path, dict(options or {}), dict(server_settings or {}), policy or RequestPolicy())


@asynccontextmanager
async def running_plugin(factory: Callable[[PluginContext], Any], ctx: PluginContext) -> AsyncIterator[Any]:
    """``factory(ctx)``, started if it has ``start``/``close`` (``Lifecycle``), and closed afterwards."""
    obj = factory(ctx)
    if isinstance(obj, Lifecycle):
        await obj.start()
    try:
        yield obj
    finally:
        if isinstance(obj, Lifecycle):
            await obj.close()
