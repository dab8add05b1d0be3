"""Every route x {no token, bad token, viewer, operator, admin} -> the status it documents.

The routes come from the app's own route table, so a new route cannot slip through: a
(method, path) with no row in ``EXPECTED`` fails the test with a message saying to add one,
and a row whose route is gone fails it too.  Each row names the least role that may call the
route (``None``: no token needed) and the status that role gets; lower roles get 403 (code
1403), no token or an unknown token 401 (code 1401).  The statuses are also checked against
the OpenAPI document.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import modserv_shim.testing
from modserv_shim.server.auth import Role
from modserv_shim.testing.fake_pipeline import FakePipeline
from tests.conftest import Live, wait_for
from tests.helpers.api_flows import DEPLOY
from tests.helpers.auth import ADMIN, OPER, VIEW, bearer, token_settings

DOUBLES = Path(modserv_shim.testing.__file__).parent  # fake_shimlet.py, fake_pipeline.py: hot-loaded as files

# Who calls: (label, Authorization header or None, role the server gives that token or None).
CALLERS: list[tuple[str, str | None, Role | None]] = [
    ("no token", None, None),
    ("bad token", "Bearer not-a-known-token-0123456789", None),
    ("viewer", f"Bearer {VIEW}", Role.VIEWER),
    ("operator", f"Bearer {OPER}", Role.OPERATOR),
    ("admin", f"Bearer {ADMIN}", Role.ADMIN),
]

Prepare = Callable[["Ctx"], Awaitable[dict[str, Any]]]


@dataclass
class Row:
    role: Role | None  # least role that may call it; None = no token needed
    status: int  # what a caller with that role (or more) gets
    prepare: Prepare | None = None  # -> httpx request kwargs (url, json, ...), run before every call
    envelope: bool = True  # the success body is the envelope (docs and metrics are not)


@dataclass
class Ctx:
    live: Live
    sid: str  # a running service shared by the read-only rows
    n: itertools.count[int] = field(default_factory=itertools.count)

    async def new_service(self, **env: str) -> str:
        body = {**DEPLOY, "env": env} if env else DEPLOY
        r = await self.live.client.post("/api/v1/modserv/deploy", json=body, headers=bearer(OPER))
        assert r.status_code == 202, r.text
        sid: str = r.json()["data"]["serviceId"]
        return sid

    async def wait_state(self, sid: str, state: str) -> None:
        async def reached() -> bool:
            r = await self.live.client.get(f"/api/v1/modserv/{sid}", headers=bearer(VIEW))
            return bool(r.json()["data"]["state"] == state)

        await wait_for(reached, timeout=15)


def on_service(suffix: str = "", **kw: Any) -> Prepare:
    async def prepare(ctx: Ctx) -> dict[str, Any]:
        return {"url": f"/api/v1/modserv/{ctx.sid}{suffix}", **kw}

    return prepare


async def fresh_running_service(ctx: Ctx) -> dict[str, Any]:
    sid = await ctx.new_service()
    await ctx.wait_state(sid, "running")
    return {"url": f"/api/v1/modserv/{sid}"}


async def fresh_failed_service(ctx: Ctx) -> dict[str, Any]:
    sid = await ctx.new_service(FAKE_PERMANENT_PREPARE="refused on purpose")
    await ctx.wait_state(sid, "failed")
    return {"url": f"/api/v1/modserv/{sid}/retry"}


class KeyedFakePipeline(FakePipeline):
    """The fake pipeline with a key per service (as privatellm has)."""

    name = "fake-keyed"
    issues_api_keys = True


async def keyed_service(ctx: Ctx) -> dict[str, Any]:
    """A service with an API key, failed before it was deployed (the fake shimlet cannot restart one)."""
    body = {**DEPLOY, "pipeline": "fake-keyed", "env": {"FAKE_PERMANENT_PREPARE": "refused on purpose"}}
    r = await ctx.live.client.post("/api/v1/modserv/deploy", json=body, headers=bearer(OPER))
    assert r.status_code == 202 and r.json()["data"]["apiKey"], r.text
    sid: str = r.json()["data"]["serviceId"]
    await ctx.wait_state(sid, "failed")
    return {"url": f"/api/v1/modserv/{sid}/rotate-key"}


async def deploy(_: Ctx) -> dict[str, Any]:
    return {"url": "/api/v1/modserv/deploy", "json": DEPLOY}


async def ui_asset(_: Ctx) -> dict[str, Any]:
    return {"url": "/ui/app.js"}


async def plugin_load(ctx: Ctx) -> dict[str, Any]:
    return {"url": "/api/v1/plugins/load",
            "json": {"kind": "shimlet", "name": f"matrix-{next(ctx.n)}", "file": "fake_shimlet.py",
                     "attr": "FakeShimlet"}}


R_VIEW, R_OPER, R_ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN
API = "/api/v1"

EXPECTED: dict[tuple[str, str], Row] = {
    # unauthenticated on purpose: probes and the API's own documentation
    ("GET", "/healthz"): Row(None, 200),
    ("GET", "/readyz"): Row(None, 200),
    ("GET", "/openapi.json"): Row(None, 200, envelope=False),
    ("HEAD", "/openapi.json"): Row(None, 200, envelope=False),
    ("GET", "/docs"): Row(None, 200, envelope=False),
    ("HEAD", "/docs"): Row(None, 200, envelope=False),
    ("GET", "/docs/oauth2-redirect"): Row(None, 200, envelope=False),
    ("HEAD", "/docs/oauth2-redirect"): Row(None, 200, envelope=False),
    ("GET", "/redoc"): Row(None, 200, envelope=False),
    ("HEAD", "/redoc"): Row(None, 200, envelope=False),
    # the web dashboard's static files (its API calls carry the token)
    ("GET", "/ui"): Row(None, 200, envelope=False),
    ("GET", "/ui/{asset}"): Row(None, 200, ui_asset, envelope=False),
    # viewer: reads
    ("GET", "/metrics"): Row(R_VIEW, 200, envelope=False),
    ("GET", f"{API}/modserv"): Row(R_VIEW, 200),
    ("GET", f"{API}/modserv/{{service_id}}"): Row(R_VIEW, 200, on_service()),
    ("GET", f"{API}/modserv/{{service_id}}/pipeline"): Row(R_VIEW, 200, on_service("/pipeline")),
    ("GET", f"{API}/modserv/{{service_id}}/pipeline/logs"): Row(R_VIEW, 200, on_service("/pipeline/logs")),
    ("GET", f"{API}/modserv/{{service_id}}/events"): Row(R_VIEW, 200, on_service("/events")),
    ("GET", f"{API}/events"): Row(R_VIEW, 200),
    ("GET", f"{API}/modserv/{{service_id}}/logs"): Row(R_VIEW, 200, on_service("/logs")),
    ("GET", f"{API}/plugins"): Row(R_VIEW, 200),
    ("GET", f"{API}/whoami"): Row(R_VIEW, 200),
    # operator: deploys, deletes, scales, retries
    ("POST", f"{API}/modserv/deploy"): Row(R_OPER, 202, deploy),
    ("DELETE", f"{API}/modserv/{{service_id}}"): Row(R_OPER, 200, fresh_running_service),
    ("POST", f"{API}/modserv/{{service_id}}/scale"): Row(R_OPER, 200, on_service("/scale", json={"replicaCount": 2})),
    ("POST", f"{API}/modserv/{{service_id}}/retry"): Row(R_OPER, 202, fresh_failed_service),
    ("POST", f"{API}/modserv/{{service_id}}/rotate-key"): Row(R_OPER, 200, keyed_service),
    # admin: loads plugins
    ("POST", f"{API}/plugins/load"): Row(R_ADMIN, 201, plugin_load),
}


def routes_of(live: Live) -> list[tuple[str, str]]:
    out = []
    for route in live.server.app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            out.append((method, str(getattr(route, "path", ""))))
    return out


def expected_for(row: Row, caller_role: Role | None, has_token: bool) -> tuple[int, int | None]:
    """(HTTP status, envelope code or None when the body is not the envelope)."""
    if row.role is None or (caller_role is not None and caller_role >= row.role):
        return row.status, (0 if row.envelope else None)
    if not has_token or caller_role is None:
        return 401, 1401
    return 403, 1403


async def test_every_route_answers_every_caller_as_documented(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    live.server.manager.registry.register("pipeline", "fake-keyed", KeyedFakePipeline, "test-double")
    shutil.copy(DOUBLES / "fake_shimlet.py", live.server.settings.resolved_plugin_dir / "fake_shimlet.py")
    routes = routes_of(live)

    missing = [f"{m} {p}" for m, p in routes if (m, p) not in EXPECTED]
    assert not missing, ("routes with no row in tests/test_auth_matrix.py EXPECTED (add one: the least role"
                         f" that may call it and the status it answers): {missing}")
    stale = [f"{m} {p}" for m, p in EXPECTED if (m, p) not in routes]
    assert not stale, f"rows in EXPECTED for routes the app no longer has (remove them): {stale}"

    ctx = Ctx(live, "")
    ctx.sid = await ctx.new_service()
    await ctx.wait_state(ctx.sid, "running")
    documented = (await live.client.get("/openapi.json")).json()["paths"]

    failures: list[str] = []
    for (method, path), row in EXPECTED.items():
        for label, header, role in CALLERS:
            kw = await row.prepare(ctx) if row.prepare else {"url": path}
            url = kw.pop("url")
            headers = {"Authorization": header} if header else {}
            r = await live.client.request(method, url, headers=headers, **kw)
            status, code = expected_for(row, role, header is not None)
            got_code = _code(r) if code is not None else None
            if r.status_code != status or got_code != code:
                failures.append(f"{method} {path} as {label}: expected {status} (code {code}),"
                                f" got {r.status_code} (code {got_code}): {r.text[:200]}")
        op = documented.get(path, {}).get(method.lower())
        if op is not None:  # the documentation routes are not in the document itself
            want = {str(row.status)} | ({"401", "403"} if row.role is not None else set())
            if not want <= set(op["responses"]):
                failures.append(f"{method} {path}: OpenAPI documents {sorted(op['responses'])}, not all of"
                                f" {sorted(want)}")
            if row.role is None and {"401", "403"} & set(op["responses"]):
                failures.append(f"{method} {path}: needs no token but OpenAPI documents 401/403")
        elif path not in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui", "/ui/{asset}"):
            failures.append(f"{method} {path}: not in the OpenAPI document")
    assert not failures, "\n".join(failures)


def _code(r: httpx.Response) -> int | None:
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) - {"code", "message", "data", "details"}:
        return None
    code = body.get("code")
    return code if isinstance(code, int) else None


# --- the same route table: wrong methods, and what the OpenAPI document says


async def test_a_method_a_path_does_not_take_is_405_with_allow(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    failures = []
    for path in sorted({p for _, p in routes_of(live)}):
        url = path.replace("{service_id}", "no-such-service")
        taken = set()  # every method some route answers on this URL ({service_id} also matches "deploy")
        for route in live.server.app.routes:
            if getattr(route, "path_regex", None) is not None and route.path_regex.match(url):  # type: ignore[attr-defined]
                taken |= set(getattr(route, "methods", None) or ())
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            if method in taken:
                continue
            r = await live.client.request(method, url, headers=bearer(ADMIN))
            body = r.json()
            allow = set(r.headers.get("allow", "").split(", "))
            if r.status_code != 405 or body.get("code") != 1008 or allow != taken or body.get("data") is not None:
                failures.append(f"{method} {url}: {r.status_code} Allow={r.headers.get('allow')!r} {body}"
                                f" (want 405, code 1008, Allow {sorted(taken)})")
            elif body.get("details") != {"allowed": sorted(taken)}:
                failures.append(f"{method} {url}: details {body.get('details')} (want allowed {sorted(taken)})")
    assert not failures, "\n".join(failures)


async def test_openapi_documents_the_envelope_for_every_answer(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    doc = (await live.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 shape is never answered
    token = doc["components"]["securitySchemes"]["token"]
    assert (token["type"], token["scheme"]) == ("http", "bearer")
    failures = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            row = EXPECTED[(method.upper(), path)]
            if (row.role is not None) != bool(op.get("security")):
                failures.append(f"{where}: security {op.get('security')} but role {row.role}")
            for status, response in op["responses"].items():
                content = response.get("content", {})
                if path == "/metrics" and status == "200":
                    if set(content) != {"text/plain"}:
                        failures.append(f"{where} 200: documented as {sorted(content)}, not text/plain")
                    continue
                events_200 = path.endswith("/events") and status == "200"  # JSON, or Server-Sent Events
                streamed = content.pop("text/event-stream", {}) if events_200 else None
                if streamed is not None and streamed.get("schema") != {"type": "string"}:
                    failures.append(f"{where} 200: text/event-stream is not documented")
                ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                want = f"#/components/schemas/Error{status}" if int(status) >= 400 else "#/components/schemas/Envelope_"
                if set(content) != {"application/json"} or not ref.startswith(want):
                    failures.append(f"{where} {status}: {content} (want {want}...)")
                elif int(status) >= 400:
                    codes = schemas[ref.rsplit("/", 1)[1]]["properties"]["code"]["enum"]
                    if not codes:
                        failures.append(f"{where} {status}: no error code answers with this status")
    assert not failures, "\n".join(failures)
