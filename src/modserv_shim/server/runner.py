"""Wires settings into a running server: store, registry, manager, app, uvicorn."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from modserv_shim.builtins import BUILTINS
from modserv_shim.config import Settings
from modserv_shim.core.executor import StepOverride
from modserv_shim.core.manager import ManagerConfig, ServiceManager
from modserv_shim.core.registry import Registry, RegistryConfig
from modserv_shim.core.store import Store
from modserv_shim.server.app import create_app
from modserv_shim.server.auth import TokenTable


def build_registry(settings: Settings) -> Registry:
    registry = Registry(
        RegistryConfig(
            data_dir=settings.data_dir,
            plugin_dir=settings.resolved_plugin_dir,
            allowed_modules=tuple(settings.allowed_plugin_modules),
            options={
                "shimlet": settings.shimlets,
                "pipeline": {k: v.options for k, v in settings.pipelines.items()},
            },
            server_settings={"host": settings.host, "port": settings.port},
        )
    )
    registry.register_builtins(BUILTINS)
    registry.discover_entry_points()
    return registry


def step_overrides(settings: Settings) -> Mapping[str, Mapping[str, StepOverride]]:
    out: dict[str, dict[str, StepOverride]] = {}
    for pname, p in settings.pipelines.items():
        for sname, s in p.steps.items():
            retry = s.retry.model_dump(exclude_none=True) if s.retry else None
            out.setdefault(pname, {})[sname] = StepOverride(timeout=s.timeout, retry=retry or None)
    return out


@dataclass
class Server:
    settings: Settings
    app: FastAPI
    manager: ServiceManager


def build(settings: Settings, registry: Registry | None = None, **manager_kwargs: Any) -> Server:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.resolved_plugin_dir.mkdir(parents=True, exist_ok=True)
    tokens = TokenTable.load(settings.tokens_file, settings.tokens)
    store = Store(settings.resolved_database_url)
    registry = registry or build_registry(settings)
    manager = ServiceManager(
        store,
        registry,
        ManagerConfig(
            data_dir=settings.data_dir,
            default_shimlet=settings.shimlet,
            default_pipeline=settings.pipeline,
            step_overrides=step_overrides(settings),
            poll_interval=settings.poll_interval,
            delete_wait=settings.delete_wait,
        ),
        **manager_kwargs,
    )

    async def start() -> None:
        await store.open()
        await manager.start()

    async def stop() -> None:
        await manager.close()
        await registry.close()
        await store.close()

    app = create_app(manager, tokens, lifespan_hooks=(start, stop))
    return Server(settings, app, manager)


GRACEFUL_SHUTDOWN = 10  # seconds open requests may take to finish once the server is told to stop


class _Uvicorn(uvicorn.Server):
    """Answers pending ``waitFor`` long polls as soon as the server is told to stop, instead of
    letting them hold up the shutdown for their whole timeout."""

    def __init__(self, config: uvicorn.Config, manager: ServiceManager) -> None:
        super().__init__(config)
        self.manager = manager

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self.manager.stop_waiting()


def serve(server: Server) -> None:
    s = server.settings
    config = uvicorn.Config(server.app, host=s.host, port=s.port, log_level=s.log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
    _Uvicorn(config, server.manager).run()
