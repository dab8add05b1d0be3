"""The web dashboard: ``GET /ui`` (the page) and ``GET /ui/{asset}`` (its scripts and style sheet).

Static files shipped inside the package (``server/ui/``; no CDN, no build step), served from an
allowlist with their content type, an ``ETag`` (``Cache-Control: no-cache``: the browser asks again
and gets 304 while the file is unchanged) and a strict Content-Security-Policy: scripts, styles and
API calls from this server only, no inline script, no frames.  The page needs no token (it holds no
data); it calls the REST API with the token the user types, kept in ``sessionStorage`` only.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import Request
from fastapi.responses import Response

from modserv_shim.errors import NotFound
from modserv_shim.server.routes import Routes

routes = Routes()

# file name -> content type; nothing else is served
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "stream.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
    "service.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and its ETag (read once: package data does not change while the server runs)."""
    body = resources.files("modserv_shim.server").joinpath("ui", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no dashboard file {name[:80]!r}")
    body, etag = _asset(name)
    headers = {**HEADERS, "ETag": etag}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=ASSETS[name], headers=headers)


@routes.get("/ui", include_in_schema=False)
async def ui_index(request: Request) -> Response:
    return _serve("index.html", request)


@routes.get("/ui/{asset}", include_in_schema=False)
async def ui_asset(asset: str, request: Request) -> Response:
    return _serve(asset, request)
