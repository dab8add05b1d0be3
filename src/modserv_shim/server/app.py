"""The FastAPI application: wiring of the envelope, the body limit and the route tables
(``routes/``: system, services, plugins, ui)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modserv_shim import __version__
from modserv_shim.core.manager import ServiceManager
from modserv_shim.errors import ERROR_TABLE
from modserv_shim.server import envelope
from modserv_shim.server.auth import TokenTable
from modserv_shim.server.deps import AppState
from modserv_shim.server.http_metrics import HttpMetrics
from modserv_shim.server.limits import BodyLimit
from modserv_shim.server.routes import plugins, services, system, ui

ERROR_CODES_DOC = "\n".join(f"| {e.code} | {e.http_status} | {e.__name__} |" for e in ERROR_TABLE)

Hook = Callable[[], Awaitable[None]]


def _description(max_body_bytes: int) -> str:
    return (
        "Deploy open-source LLMs as OpenAI-compatible services.\n\n"
        "Every response is `{\"code\": 0, \"message\": \"...\", \"data\": ...}`; errors carry:\n\n"
        "| code | HTTP | meaning |\n|---|---|---|\n" + ERROR_CODES_DOC + "\n\n"
        "A method a path does not take is answered 405 (code 1008) with an `Allow` header; a request body"
        f" over the server's limit (`max_body_bytes`, now {max_body_bytes} bytes) is answered 413 (code 1007)"
        " on any path."
    )


def create_app(
    manager: ServiceManager,
    tokens: TokenTable,
    *,
    lifespan_hooks: tuple[Hook, Hook] | None = None,
    max_body_bytes: int = 65536,
) -> FastAPI:
    """Build the app around a manager.  ``lifespan_hooks`` = (async start(), async stop());
    ``max_body_bytes`` caps request bodies (the ``max_body_bytes`` setting)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if lifespan_hooks:
            await lifespan_hooks[0]()
        try:
            yield
        finally:
            if lifespan_hooks:
                await lifespan_hooks[1]()

    app = FastAPI(title="ModelServeShim", version=__version__, lifespan=lifespan,
                  description=_description(max_body_bytes))
    app.state.modserv = AppState(manager, tokens)
    envelope.install(app)
    envelope.tidy_openapi(app)
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    app.add_middleware(HttpMetrics, metrics=manager.metrics)  # outermost: it sees the body limit's 413s too
    for table in (system.routes, services.routes, plugins.routes, ui.routes):
        table.add_to(app)
    return app
