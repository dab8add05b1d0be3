"""What every router shares: the app's state, the caller (``Who``), the manager (``Manager``) and
the error statuses a route documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from modserv_shim.core.manager import ServiceManager
from modserv_shim.server.auth import Principal, TokenTable

API = "/api/v1"

# The error statuses a route documents (envelope.responses): every route can answer 413 (a body over
# the cap, refused before routing) and 500 (a bug); a route with a token adds 401/403, and so on.
BASE = (413, 500)
AUTH = (*BASE, 401, 403)
BODY = (400, 422)  # malformed JSON; a field breaking a rule


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


def manager(request: Request) -> ServiceManager:
    return _state(request).manager


Who = Annotated[Principal, Depends(principal)]
Manager = Annotated[ServiceManager, Depends(manager)]
