"""Plugins: list them, hot-load one."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modserv_shim.server import envelope, views
from modserv_shim.server.auth import Role, require
from modserv_shim.server.deps import API, AUTH, BODY, Manager, Who
from modserv_shim.server.envelope import Envelope, responses
from modserv_shim.server.routes import Routes

routes = Routes()


class LoadPluginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["shimlet", "pipeline"]
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")
    file: str | None = Field(default=None, min_length=1, max_length=255,
                             description="A .py file inside the server's plugin directory.")
    module: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
                               description="An importable module inside an allowed package.")
    attr: str = Field(max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="The factory (class or function).")


@routes.get(f"{API}/plugins", tags=["plugins"], response_model=Envelope[views.PluginsView], responses=responses(*AUTH))
async def list_plugins(who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.VIEWER, "listing plugins")
    return envelope.ok(await manager.plugins.listing())


@routes.post(f"{API}/plugins/load", tags=["plugins"], status_code=201, response_model=Envelope[views.PluginView],
             responses=responses(*AUTH, *BODY))
async def load_plugin(body: LoadPluginRequest, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.ADMIN, "loading plugins")
    data = await manager.plugins.load(body.kind, body.name, file=body.file, module=body.module,
                                      attr=body.attr, operator=who.name)
    return envelope.ok(data, f"{body.kind} {body.name!r} loaded", status=201)
