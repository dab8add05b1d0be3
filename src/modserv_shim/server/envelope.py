"""The response envelope ``{"code": 0, "message": "...", "data": ...}`` and the one error-to-HTTP mapping.

It also holds the envelope's schemas for the OpenAPI document: :class:`Envelope` for a
success, one ``Error<status>`` model per HTTP status (its ``code`` limited to the codes of
that status in :data:`~modserv_shim.errors.ERROR_TABLE`), and :func:`responses`, which a
route uses to document the error statuses it answers.
"""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, JsonValue, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modserv_shim.errors import (
    ERROR_TABLE,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ShimError,
    Unauthenticated,
    ValidationFailed,
)

log = structlog.get_logger("modserv_shim.server")


def ok(data: Any, message: str = "ok", status: int = 200) -> JSONResponse:
    return JSONResponse({"code": 0, "message": message, "data": data}, status_code=status)


def error_response(exc: ShimError, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "data": None}
    if exc.details is not None:
        body["details"] = exc.details
    out = dict(headers or {})
    if isinstance(exc, MethodNotAllowed) and isinstance(exc.details, dict) and exc.details.get("allowed"):
        out["Allow"] = ", ".join(exc.details["allowed"])
    if isinstance(exc, Unauthenticated):
        out.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(body, status_code=exc.http_status, headers=out or None)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> ShimError:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            return BadRequest(f"the request body is not valid JSON: {ctx.get('error', 'parse error')}")
    problems = []
    details = []
    for e in errors:
        field = _field(tuple(e.get("loc", ())))
        msg = str(e.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if e.get("type") == "missing":
            msg = "is required"
        elif e.get("type") == "extra_forbidden":
            msg = "is not a known field"
        problems.append(f"{field}: {msg}")
        details.append({"field": field, "problem": msg, "type": e.get("type")})
    return ValidationFailed("invalid request: " + "; ".join(problems), details=details)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path (Starlette's own 405 names only one route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def http_error(request: Request, exc: StarletteHTTPException) -> ShimError:
    """The ShimError for an HTTPException raised by Starlette, FastAPI or a middleware."""
    status = exc.status_code
    if status == 404:
        return NotFound(f"no such endpoint: {request.method} {request.url.path}")
    if status == 405:
        allowed = allowed_methods(request)
        return MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
                                details={"allowed": allowed})
    if status == 413:
        return PayloadTooLarge(str(exc.detail))
    if status == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's words for it
        return BadRequest("the request body could not be read: send JSON in UTF-8")
    return InternalError(str(exc.detail)) if status >= 500 else BadRequest(str(exc.detail))


def install(app: FastAPI) -> None:
    @app.exception_handler(ShimError)
    async def _shim(_: Request, exc: ShimError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed", error=exc.message, code=exc.code)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = error_response(http_error(request, exc), dict(exc.headers or {}))
        resp.status_code = exc.status_code
        return resp

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(InternalError(f"internal error: {type(exc).__name__}"))


# ---------------------------------------------------------------- OpenAPI schemas

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    """A success: ``code`` 0, a message for a person, the data."""

    code: Literal[0] = Field(description="0 on success")
    message: str
    data: T


class ErrorBody(BaseModel):
    """An error: a non-zero ``code`` (the table in the API description), a message for a person, no data."""

    code: int = Field(ge=1000)
    message: str = Field(description="What is wrong and, where known, what to do.")
    data: None = Field(description="Always null for an error.")
    details: Any = Field(default=None, description="Structured detail when there is some: the fields that failed"
                         " validation, the methods a path allows, the steps of a failed dry run.")


STATUS_MEANING = {
    400: "The body is not valid JSON.",
    401: "No API token, or an unknown one (`Authorization: Bearer <token>`).",
    403: "The token's role may not do this.",
    404: "No such service or plugin.",
    405: "The path exists but not with this method (`Allow` lists the methods it takes).",
    409: "The service's state or its shimlet does not allow this now.",
    413: "The request body is over the server's limit (setting `max_body_bytes`).",
    422: "A parameter or a field of the body breaks a rule (`details` names them).",
    500: "A bug on our side (the server log has the trace).",
    503: "A backend (the store, the environment) did not answer.",
}

_ERROR_MODELS: dict[int, type[ErrorBody]] = {}


def error_model(status: int) -> type[ErrorBody]:
    """``Error<status>``: the error envelope with ``code`` limited to the codes that answer with ``status``."""
    if status not in _ERROR_MODELS:
        codes: list[JsonValue] = [c for c in sorted({e.code for e in ERROR_TABLE if e.http_status == status})]
        if not codes:
            raise ValueError(f"no error class answers HTTP {status}")
        _ERROR_MODELS[status] = create_model(
            f"Error{status}",
            __base__=ErrorBody,
            __doc__=f"HTTP {status}: {STATUS_MEANING.get(status, '')}",
            code=(int, Field(json_schema_extra={"enum": codes})),
        )
    return _ERROR_MODELS[status]


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer each of ``statuses`` with an error envelope."""
    return {s: {"model": error_model(s), "description": STATUS_MEANING.get(s, "")} for s in sorted(statuses)}


def _framework_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def tidy_openapi(app: FastAPI) -> None:
    """Drop the 422 FastAPI documents for every route with parameters: it shows FastAPI's own error shape,
    which this API never answers; a route that can answer 422 documents :func:`error_model` (422) itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            for ops in doc.get("paths", {}).values():
                for op in ops.values():
                    if _framework_422(op.get("responses", {}).get("422", {})):
                        del op["responses"]["422"]
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                if f'"#/components/schemas/{name}"' not in json.dumps(doc):
                    schemas.pop(name, None)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
