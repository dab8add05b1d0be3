"""Liveness, readiness, Prometheus metrics and who the caller is."""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from modserv_shim import __version__
from modserv_shim.server import envelope, views
from modserv_shim.server.auth import Role, require
from modserv_shim.server.deps import API, AUTH, BASE, Manager, Who
from modserv_shim.server.envelope import Envelope, responses
from modserv_shim.server.routes import Routes

routes = Routes()


@routes.get("/healthz", tags=["health"], response_model=Envelope[views.Health], responses=responses(*BASE))
async def healthz() -> JSONResponse:
    return envelope.ok({"status": "ok", "version": __version__})


@routes.get("/readyz", tags=["health"], response_model=Envelope[views.Ready], responses=responses(*BASE, 503))
async def readyz(manager: Manager) -> JSONResponse:
    await manager.check_ready()  # the store answers
    return envelope.ok({"status": "ready"})


@routes.get("/metrics", tags=["health"], response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **responses(*AUTH)})
async def metrics(who: Who, manager: Manager) -> Response:
    require(who, Role.VIEWER, "reading metrics")
    return Response(manager.render_metrics(), media_type="text/plain; version=0.0.4")


@routes.get(f"{API}/whoami", tags=["auth"], response_model=Envelope[views.WhoAmI], responses=responses(*AUTH))
async def whoami(who: Who) -> JSONResponse:
    """The caller's name, role and groups (anonymous admin on a server without tokens)."""
    require(who, Role.VIEWER, "asking who you are")
    return envelope.ok({"name": who.name, "role": who.role.name.lower(), "groups": sorted(who.groups)})
