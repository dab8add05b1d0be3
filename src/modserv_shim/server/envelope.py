"""The response envelope ``{"code": 0, "message": "...", "data": ...}`` and the one error-to-HTTP mapping."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modserv_shim.errors import BadRequest, InternalError, NotFound, ShimError, ValidationFailed

log = structlog.get_logger("modserv_shim.server")


def ok(data: Any, message: str = "ok", status: int = 200) -> JSONResponse:
    return JSONResponse({"code": 0, "message": message, "data": data}, status_code=status)


def error_response(exc: ShimError) -> JSONResponse:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "data": None}
    if exc.details is not None:
        body["details"] = exc.details
    return JSONResponse(body, status_code=exc.http_status)


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
        if exc.status_code == 404:
            err: ShimError = NotFound(f"no such endpoint: {request.method} {request.url.path}")
        else:
            err = BadRequest(str(exc.detail))
        resp = error_response(err)
        resp.status_code = exc.status_code
        return resp

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(InternalError(f"internal error: {type(exc).__name__}"))
