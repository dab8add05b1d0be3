"""Services: deploy, list, read (with the ``waitFor`` long poll), pipeline, logs, events (JSON, or
Server-Sent Events: ``event_stream``), delete, scale, retry."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modserv_shim.core.lifecycle import State
from modserv_shim.errors import ValidationFailed
from modserv_shim.server import envelope, event_stream, views
from modserv_shim.server.auth import Role, require
from modserv_shim.server.deps import API, AUTH, BODY, Manager, Who
from modserv_shim.server.envelope import Envelope, responses
from modserv_shim.server.routes import Routes
from modserv_shim.spec import DeploySpec

routes = Routes()

MAX_WAIT = 300.0
DEFAULT_LIST = 1000  # services per page of GET /api/v1/modserv
MAX_LIST = 10000

IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255,
    description="Makes a retried deploy safe: the same key and body (from the same caller, within 24 h) answer"
    " with the service the first request created; the same key with another body is a 409.")]


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicaCount: int = Field(ge=1, le=64)


def _states(text: str) -> list[State]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.value for s in State}]
    if unknown or not names:
        raise ValidationFailed(f"waitFor takes states separated by commas ({', '.join(s.value for s in State)});"
                               f" got {text!r}")
    return [State(n) for n in names]


@routes.post(f"{API}/modserv/deploy", tags=["services"], status_code=202, response_model=Envelope[views.AcceptedView],
             responses={200: {"model": Envelope[views.DryRunView], "description": "A dry run: nothing deployed."},
                        **responses(*AUTH, *BODY, 409, 503)})
async def deploy(
    spec: Annotated[DeploySpec, Body()],
    who: Who,
    manager: Manager,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    require(who, Role.OPERATOR, "deploying")
    if spec.dryRun:
        res = await manager.dry_run(spec, who.name, caller=who.caller())
        return envelope.ok(views.dry_run(res), "dry run: nothing was deployed")
    if idempotency_key is not None:
        done = await manager.deploy_once(spec, who.name, idempotency_key, caller=who.caller())
    else:
        done = await manager.deploy(spec, who.name, caller=who.caller())
    message = "deploy already accepted for this Idempotency-Key" if done.replayed else "deploy accepted"
    if done.api_key is not None:
        message += "; apiKey is the service's API key, shown this once: keep it (rotate-key makes a new one)"
    elif done.replayed and "apiKey" in views.service(done.record):
        message += " (its API key was shown to the first request only; rotate-key makes a new one)"
    return envelope.ok(views.accepted(done.record, done.api_key), message, status=202)


@routes.get(f"{API}/modserv", tags=["services"], response_model=Envelope[list[views.ServiceView]],
            responses=responses(*AUTH, 422))
async def list_services(
    who: Who,
    manager: Manager,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="At most this many services, oldest first.")]
    = DEFAULT_LIST,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Skip this many (for the next page).")] = 0,
) -> JSONResponse:
    require(who, Role.VIEWER, "listing services")
    records = await manager.list_services(state, limit=limit, offset=offset)
    # Thousands of rows take tens of milliseconds to shape and encode: not on the event loop.
    return await asyncio.to_thread(lambda: envelope.ok([views.service(r) for r in records]))


@routes.get(f"{API}/modserv/{{service_id}}", tags=["services"], response_model=Envelope[views.ServiceView],
            responses=responses(*AUTH, 404, 422))
async def get_service(
    service_id: str,
    who: Who,
    manager: Manager,
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


@routes.get(f"{API}/modserv/{{service_id}}/pipeline", tags=["services"], response_model=Envelope[views.PipelineView],
            responses=responses(*AUTH, 404))
async def get_pipeline(service_id: str, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.VIEWER, "reading a pipeline")
    rec, steps, runs = await manager.pipeline(service_id)
    return envelope.ok(views.pipeline(rec, steps, runs))


@routes.get(f"{API}/modserv/{{service_id}}/pipeline/logs", tags=["services"],
            response_model=Envelope[views.PipelineLogsView], responses=responses(*AUTH, 404, 422))
async def get_pipeline_logs(
    service_id: str, who: Who, manager: Manager, step: Annotated[str | None, Query(max_length=120)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> JSONResponse:
    require(who, Role.VIEWER, "reading pipeline logs")
    rec, runs, lines = await manager.pipeline_logs(service_id, step, limit)
    return envelope.ok({
        "serviceId": rec.id,
        "runs": [views.run(r) for r in runs if step is None or r.step == step],
        "logs": [views.log_line(x) for x in lines],
    })


AfterQuery = Annotated[int | None, Query(
    ge=0, le=event_stream.MAX_ID,
    description="Server-Sent Events only: start after this event id (the `Last-Event-ID` header wins).")]
LastEventId = Annotated[str | None, Header(
    alias="Last-Event-ID", max_length=40,
    description="Server-Sent Events only: the last event id the client has; the stream sends what follows.")]


@routes.get(f"{API}/modserv/{{service_id}}/events", tags=["services"], response_model=Envelope[list[views.EventView]],
            responses={200: event_stream.STREAM_DOC, **responses(*AUTH, 404, 422)})
async def get_events(service_id: str, request: Request, who: Who, manager: Manager, after: AfterQuery = None,
                     last_event_id: LastEventId = None) -> Response:
    """Every state change of the service.  With `Accept: text/event-stream`: its whole history (or what
    follows `Last-Event-ID` / `after`) as Server-Sent Events, then what happens, until it is terminated."""
    require(who, Role.VIEWER, "reading events")
    if event_stream.wants_stream(request):
        rec = await manager.get(service_id)
        return event_stream.response(manager, event_stream.start_after(last_event_id, after) or 0, rec.id)
    return envelope.ok([views.event(e) for e in await manager.events(service_id)])


@routes.get(f"{API}/events", tags=["services"], response_model=Envelope[list[views.ServiceEventView]],
            responses={200: event_stream.STREAM_DOC, **responses(*AUTH, 422)})
async def get_all_events(
    request: Request, who: Who, manager: Manager,
    limit: Annotated[int, Query(ge=1, le=10000, description="JSON only: the last this many state changes.")] = 1000,
    after: AfterQuery = None, last_event_id: LastEventId = None,
) -> Response:
    """The state changes of all services, newest last.  With `Accept: text/event-stream`: what happens from
    now on (or after `Last-Event-ID` / `after`) to any service, as Server-Sent Events."""
    require(who, Role.VIEWER, "reading events")
    if event_stream.wants_stream(request):
        start = event_stream.start_after(last_event_id, after)
        return event_stream.response(manager, start if start is not None else await manager.journal_head(), None)
    return envelope.ok([views.service_event(e) for e in await manager.recent_events(limit)])


@routes.get(f"{API}/modserv/{{service_id}}/logs", tags=["services"], response_model=Envelope[views.RuntimeLogsView],
            responses=responses(*AUTH, 404, 409, 422, 503))
async def get_runtime_logs(
    service_id: str, who: Who, manager: Manager, tail: Annotated[int, Query(ge=1, le=10000)] = 100
) -> JSONResponse:
    require(who, Role.VIEWER, "reading runtime logs")
    return envelope.ok({"serviceId": service_id, "lines": await manager.logs(service_id, tail)})


@routes.delete(f"{API}/modserv/{{service_id}}", tags=["services"], response_model=Envelope[views.ServiceView],
               responses={202: {"model": Envelope[views.ServiceView],
                                "description": "Still terminating after the server's delete wait."},
                          **responses(*AUTH, 404)})
async def delete_service(service_id: str, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.OPERATOR, "deleting a service")
    rec = await manager.delete(service_id, who.name)
    done = rec.state is State.TERMINATED
    return envelope.ok(views.service(rec), "deleted" if done else "deleting", status=200 if done else 202)


@routes.post(f"{API}/modserv/{{service_id}}/scale", tags=["services"], response_model=Envelope[views.ServiceView],
             responses=responses(*AUTH, *BODY, 404, 409, 503))
async def scale_service(service_id: str, body: ScaleRequest, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.OPERATOR, "scaling a service")
    rec = await manager.scale(service_id, body.replicaCount, who.name)
    return envelope.ok(views.service(rec), f"scaling to {body.replicaCount} replicas")


@routes.post(f"{API}/modserv/{{service_id}}/retry", tags=["services"], status_code=202,
             response_model=Envelope[views.AcceptedView], responses=responses(*AUTH, 404, 409, 422))
async def retry_service(service_id: str, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.OPERATOR, "retrying a service")
    rec = await manager.retry(service_id, who.name)
    return envelope.ok(views.accepted(rec), f"retrying from {rec.current_step_name}", status=202)


@routes.post(f"{API}/modserv/{{service_id}}/rotate-key", tags=["services"],
             response_model=Envelope[views.RotatedKeyView], responses=responses(*AUTH, 404, 409, 503))
async def rotate_key(service_id: str, who: Who, manager: Manager) -> JSONResponse:
    require(who, Role.OPERATOR, "rotating a service's API key")
    done = await manager.rotate_key(service_id, who.name, caller=who.caller())
    assert done.api_key is not None
    info = views.key_info(done.record)
    return envelope.ok({"serviceId": done.record.id, "apiKey": done.api_key,
                        "fingerprint": info["fingerprint"] if info else ""},
                       "new API key, shown this once; the old one no longer works")
