"""Wires settings into a running server: store, registry, manager, app, uvicorn."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.builtins import BUILTINS
from modserv_shim.config import ConfigFileError, Settings, read_config_file
from modserv_shim.core.executor import StepOverride
from modserv_shim.core.manager import ManagerConfig, ServiceManager
from modserv_shim.core.registry import Registry, RegistryConfig
from modserv_shim.core.store import Store
from modserv_shim.server.app import create_app
from modserv_shim.server.auth import TokenTable


def request_policy(settings: Settings) -> RequestPolicy:
    """What the admin allows a deploy to put into processes, beyond the runtimes' own allowlists."""
    return RequestPolicy.from_settings(settings.allowed_env, settings.allowed_runtime_args, settings.model_roots)


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
            server_settings={"host": settings.host, "port": settings.port,
                             "secrets": {name: sec.plain() for name, sec in settings.secrets.items()}},
            policy=request_policy(settings),
            step_overrides=step_overrides(settings),
        )
    )
    registry.register_builtins(BUILTINS)
    registry.discover_entry_points()
    registry.check_step_overrides()  # a step override naming no step stops the start, with the steps there are
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
            capacity_interval=settings.capacity_interval,
            delete_wait=settings.delete_wait,
            policy=request_policy(settings),
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

    app = create_app(manager, tokens, lifespan_hooks=(start, stop), max_body_bytes=settings.max_body_bytes)
    return Server(settings, app, manager)


GRACEFUL_SHUTDOWN = 10  # seconds open requests may take to finish once the server is told to stop
# Seconds an idle keep-alive connection stays open.  Longer than the idle timeout of clients and proxies
# (httpx 5 s, load balancers 60 s): when the server closes first, a request the client sends on that
# connection at the same moment fails with a reset (uvicorn's default is 5 s, the same as httpx's).
KEEP_ALIVE = 75


class _Uvicorn(uvicorn.Server):
    """Answers pending ``waitFor`` long polls as soon as the server is told to stop, instead of
    letting them hold up the shutdown for their whole timeout."""

    def __init__(self, config: uvicorn.Config, manager: ServiceManager) -> None:
        super().__init__(config)
        self.manager = manager

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self.manager.stop_waiting()


class TLSConfigError(ValueError):
    """The TLS certificate or key cannot be used; the message names the file."""


def _encrypted_key() -> str:
    raise TLSConfigError("the TLS private key is encrypted: give an unencrypted key file (readable by this user only)")


def check_tls(certfile: Path, keyfile: Path) -> None:
    """Load the certificate and key the way the server will, so that a missing or unreadable file,
    a file that is not PEM or a key that does not match the certificate is a clear error at start."""
    for what, path in (("certificate", certfile), ("private key", keyfile)):
        try:
            read_config_file(path, f"TLS {what} file")
        except ConfigFileError as exc:
            raise TLSConfigError(str(exc)) from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_verify_locations(cafile=str(certfile))
    except (ssl.SSLError, ValueError):
        raise TLSConfigError(f"TLS certificate file {certfile} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(str(certfile), str(keyfile), password=_encrypted_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"the TLS private key {keyfile} does not match the certificate {certfile}") from None
        raise TLSConfigError(f"TLS private key file {keyfile} holds no PEM private key for the certificate"
                             f" {certfile} ({exc.reason or exc.library or 'unreadable'})") from None
    except TLSConfigError as exc:
        raise TLSConfigError(f"{exc} ({keyfile})") from None


def uvicorn_config(server: Server, **overrides: Any) -> uvicorn.Config:
    """How the server listens: address, TLS, keep-alive and shutdown times from the settings."""
    s = server.settings
    tls: dict[str, Any] = {}
    if s.tls_certfile is not None and s.tls_keyfile is not None:
        tls = {"ssl_certfile": str(s.tls_certfile), "ssl_keyfile": str(s.tls_keyfile)}
    options: dict[str, Any] = {"host": s.host, "port": s.port, "log_level": s.log_level.lower(), "access_log": False,
                               "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN, "timeout_keep_alive": KEEP_ALIVE,
                               **tls, **overrides}
    return uvicorn.Config(server.app, **options)


def serve(server: Server) -> None:
    _Uvicorn(uvicorn_config(server), server.manager).run()
