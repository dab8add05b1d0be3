"""The FastAPI application: routes of the brief plus list/delete/scale/retry/health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from modserv_shim import __version__
from modserv_shim.core.lifecycle import State
from modserv_shim.core.manager import ServiceManager
from modserv_shim.errors import ERROR_TABLE, BackendUnavailable, PluginLoadError, PluginNotFound, ValidationFailed
from modserv_shim.server import envelope, views
from modserv_shim.server.auth import Principal, Role, TokenTable, require
from modserv_shim.server.envelope import Envelope, responses
from modserv_shim.server.limits import BodyLimit
from modserv_shim.spec import DeploySpec


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicaCount: int = Field(ge=1, le=64)


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


@dataclass
class AppState:
    manager: ServiceManager
    tokens: TokenTable


def _state(request: Request) -> AppState:
    st: AppState = request.app.state.modserv
    return st


# Documents the token in OpenAPI; the header itself is read below, so that a malformed one gets our message.
_bearer = HTTPBearer(auto_error=False, scheme_name="token",
                     description="An API token of role viewer, operator or admin (README: Authentication).")


def principal(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> Principal:
    return _state(request).tokens.authenticate(request.headers.get("authorization"))


Who = Annotated[Principal, Depends(principal)]
IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255,
    description="Makes a retried deploy safe: the same key and body (from the same caller, within 24 h) answer"
    " with the service the first request created; the same key with another body is a 409.")]
API = "/api/v1"

ERROR_CODES_DOC = "\n".join(f"| {e.code} | {e.http_status} | {e.__name__} |" for e in ERROR_TABLE)

# The error statuses a route documents (envelope.responses): every route can answer 413 (a body over
# the cap, refused before routing) and 500 (a bug); a route with a token adds 401/403, and so on.
BASE = (413, 500)
AUTH = (*BASE, 401, 403)
BODY = (400, 422)  # malformed JSON; a field breaking a rule


MAX_WAIT = 300.0
DEFAULT_LIST = 1000  # services per page of GET /api/v1/modserv
MAX_LIST = 10000


def _states(text: str) -> list[State]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.value for s in State}]
    if unknown or not names:
        raise ValidationFailed(f"waitFor takes states separated by commas ({', '.join(s.value for s in State)});"
                               f" got {text!r}")
    return [State(n) for n in names]


def create_app(
    manager: ServiceManager,
    tokens: TokenTable,
    *,
    lifespan_hooks: tuple[Any, Any] | None = None,
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

    app = FastAPI(
        title="ModelServeShim",
        version=__version__,
        lifespan=lifespan,
        description="Deploy open-source LLMs as OpenAI-compatible services.\n\n"
        "Every response is `{\"code\": 0, \"message\": \"...\", \"data\": ...}`; errors carry:\n\n"
        "| code | HTTP | meaning |\n|---|---|---|\n" + ERROR_CODES_DOC + "\n\n"
        "A method a path does not take is answered 405 (code 1008) with an `Allow` header; a request body"
        f" over the server's limit (`max_body_bytes`, now {max_body_bytes} bytes) is answered 413 (code 1007)"
        " on any path.",
    )
    app.state.modserv = AppState(manager, tokens)
    envelope.install(app)
    envelope.tidy_openapi(app)
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)

    @app.get("/healthz", tags=["health"], response_model=Envelope[views.Health], responses=responses(*BASE))
    async def healthz() -> JSONResponse:
        return envelope.ok({"status": "ok", "version": __version__})

    @app.get("/readyz", tags=["health"], response_model=Envelope[views.Ready], responses=responses(*BASE, 503))
    async def readyz() -> JSONResponse:
        try:
            await manager.store.count_services()  # the store answers
        except Exception as exc:
            raise BackendUnavailable(f"not ready: the store does not answer ({type(exc).__name__})") from exc
        return envelope.ok({"status": "ready"})

    @app.get("/metrics", tags=["health"], response_class=Response, responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **responses(*AUTH)})
    async def metrics(who: Who) -> Response:
        require(who, Role.VIEWER, "reading metrics")
        return Response(manager.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post(f"{API}/modserv/deploy", tags=["services"], status_code=202, response_model=Envelope[views.AcceptedView],
              responses={200: {"model": Envelope[views.DryRunView], "description": "A dry run: nothing deployed."},
                         **responses(*AUTH, *BODY, 409, 503)})
    async def deploy(
        spec: Annotated[DeploySpec, Body()],
        who: Who,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> JSONResponse:
        require(who, Role.OPERATOR, "deploying")
        if spec.dryRun:
            res = await manager.dry_run(spec, who.name)
            return envelope.ok(views.dry_run(res), "dry run: nothing was deployed")
        if idempotency_key is not None:
            rec, replayed = await manager.deploy_once(spec, who.name, idempotency_key)
            message = "deploy already accepted for this Idempotency-Key" if replayed else "deploy accepted"
            return envelope.ok(views.accepted(rec), message, status=202)
        rec = await manager.deploy(spec, who.name)
        return envelope.ok(views.accepted(rec), "deploy accepted", status=202)

    @app.get(f"{API}/modserv", tags=["services"], response_model=Envelope[list[views.ServiceView]],
             responses=responses(*AUTH, 422))
    async def list_services(
        who: Who,
        state: State | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="At most this many services, oldest first.")]
        = DEFAULT_LIST,
        offset: Annotated[int, Query(ge=0, le=10**9, description="Skip this many (for the next page).")] = 0,
    ) -> JSONResponse:
        require(who, Role.VIEWER, "listing services")
        records = await manager.list_services(state, limit=limit, offset=offset)
        # Thousands of rows take tens of milliseconds to shape and encode: not on the event loop.
        return await asyncio.to_thread(lambda: envelope.ok([views.service(r) for r in records]))

    @app.get(f"{API}/modserv/{{service_id}}", tags=["services"], response_model=Envelope[views.ServiceView],
             responses=responses(*AUTH, 404, 422))
    async def get_service(
        service_id: str,
        who: Who,
        wait_for: Annotated[str | None, Query(
            alias="waitFor", max_length=200,
            description="Comma-separated states: answer once the service is in one of them"
            " (or failed, or terminated), or after `timeout` seconds, whatever comes first.")] = None,
        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds `waitFor` may wait.")] = 30.0,
    ) -> JSONResponse:
        require(who, Role.VIEWER, "reading a service")
        if wait_for is None:
            return envelope.ok(views.service(await manager.get(service_id)))
        return envelope.ok(views.service(await manager.wait_for_state(service_id, _states(wait_for), timeout)))

    @app.get(f"{API}/modserv/{{service_id}}/pipeline", tags=["services"], response_model=Envelope[views.PipelineView],
             responses=responses(*AUTH, 404))
    async def get_pipeline(service_id: str, who: Who) -> JSONResponse:
        require(who, Role.VIEWER, "reading a pipeline")
        rec = await manager.get(service_id)
        try:
            steps = await manager.steps_of(rec.pipeline)
        except (PluginNotFound, PluginLoadError):  # the record still says what ran
            steps = None
        runs = await manager.store.list_step_runs(rec.id)
        return envelope.ok(views.pipeline(rec, steps, runs))

    @app.get(f"{API}/modserv/{{service_id}}/pipeline/logs", tags=["services"],
             response_model=Envelope[views.PipelineLogsView], responses=responses(*AUTH, 404, 422))
    async def get_pipeline_logs(
        service_id: str, who: Who, step: Annotated[str | None, Query(max_length=120)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> JSONResponse:
        require(who, Role.VIEWER, "reading pipeline logs")
        rec = await manager.get(service_id)
        runs = await manager.store.list_step_runs(rec.id)
        lines = await manager.store.list_step_logs(rec.id, step, limit)
        return envelope.ok({
            "serviceId": rec.id,
            "runs": [views.run(r) for r in runs if step is None or r.step == step],
            "logs": [views.log_line(x) for x in lines],
        })

    @app.get(f"{API}/modserv/{{service_id}}/events", tags=["services"], response_model=Envelope[list[views.EventView]],
             responses=responses(*AUTH, 404))
    async def get_events(service_id: str, who: Who) -> JSONResponse:
        require(who, Role.VIEWER, "reading events")
        rec = await manager.get(service_id)
        return envelope.ok([views.event(e) for e in await manager.store.list_events(rec.id)])

    @app.get(f"{API}/modserv/{{service_id}}/logs", tags=["services"], response_model=Envelope[views.RuntimeLogsView],
             responses=responses(*AUTH, 404, 409, 422, 503))
    async def get_runtime_logs(
        service_id: str, who: Who, tail: Annotated[int, Query(ge=1, le=10000)] = 100
    ) -> JSONResponse:
        require(who, Role.VIEWER, "reading runtime logs")
        return envelope.ok({"serviceId": service_id, "lines": await manager.logs(service_id, tail)})

    @app.delete(f"{API}/modserv/{{service_id}}", tags=["services"], response_model=Envelope[views.ServiceView],
                responses={202: {"model": Envelope[views.ServiceView],
                                 "description": "Still terminating after the server's delete wait."},
                           **responses(*AUTH, 404)})
    async def delete_service(service_id: str, who: Who) -> JSONResponse:
        require(who, Role.OPERATOR, "deleting a service")
        rec = await manager.delete(service_id, who.name)
        done = rec.state is State.TERMINATED
        return envelope.ok(views.service(rec), "deleted" if done else "deleting", status=200 if done else 202)

    @app.post(f"{API}/modserv/{{service_id}}/scale", tags=["services"], response_model=Envelope[views.ServiceView],
              responses=responses(*AUTH, *BODY, 404, 409, 503))
    async def scale_service(service_id: str, body: ScaleRequest, who: Who) -> JSONResponse:
        require(who, Role.OPERATOR, "scaling a service")
        rec = await manager.scale(service_id, body.replicaCount, who.name)
        return envelope.ok(views.service(rec), f"scaling to {body.replicaCount} replicas")

    @app.post(f"{API}/modserv/{{service_id}}/retry", tags=["services"], status_code=202,
              response_model=Envelope[views.AcceptedView], responses=responses(*AUTH, 404, 409, 422))
    async def retry_service(service_id: str, who: Who) -> JSONResponse:
        require(who, Role.OPERATOR, "retrying a service")
        rec = await manager.retry(service_id, who.name)
        return envelope.ok(views.accepted(rec), f"retrying from {rec.current_step_name}", status=202)

    @app.get(f"{API}/plugins", tags=["plugins"], response_model=Envelope[views.PluginsView], responses=responses(*AUTH))
    async def list_plugins(who: Who) -> JSONResponse:
        require(who, Role.VIEWER, "listing plugins")
        reg = manager.registry
        data: dict[str, Any] = {}
        for kind in ("shimlet", "pipeline"):
            items = []
            for name in reg.names(kind):
                try:
                    if kind == "shimlet":
                        await reg.shimlet(name)
                    else:
                        await reg.pipeline(name)
                    items.append({**reg.describe(kind, name), "default": name == getattr(
                        manager.config, f"default_{kind}")})
                except Exception as exc:  # listed, with the reason it cannot be used
                    items.append({**reg.describe(kind, name), "error": str(exc)})
            data[f"{kind}s"] = items
        data["refused"] = [vars(b) for b in reg.broken]
        return envelope.ok(data)

    @app.post(f"{API}/plugins/load", tags=["plugins"], status_code=201, response_model=Envelope[views.PluginView],
              responses=responses(*AUTH, *BODY))
    async def load_plugin(body: LoadPluginRequest, who: Who) -> JSONResponse:
        require(who, Role.ADMIN, "loading plugins")
        data = await manager.load_plugin(body.kind, body.name, file=body.file, module=body.module,
                                         attr=body.attr, operator=who.name)
        return envelope.ok(data, f"{body.kind} {body.name!r} loaded", status=201)

    return app
