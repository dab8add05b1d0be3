"""API tokens and roles.

Roles are ordered: ``viewer`` (read) < ``operator`` (deploy, delete, scale, retry)
< ``admin`` (load plugins).  A token's *name* is the operator recorded in step
logs and events; the token itself is never logged.  Tokens come from a YAML file
(``tokens: [{name, role, token | token_sha256}]``) and/or ``MODSERV_TOKENS``
(``name:role:token,...``).  With no token configured the server accepts
anonymous requests as admin, and the CLI only allows that on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import yaml

from modserv_shim.errors import Forbidden, Unauthenticated, ValidationFailed


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


ANONYMOUS = Principal("anonymous", Role.ADMIN)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _role(value: str, where: str) -> Role:
    try:
        return Role[value.strip().upper()]
    except KeyError:
        raise ValidationFailed(f"{where}: unknown role {value!r} (viewer, operator or admin)") from None


class TokenTable:
    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, name: str, role: Role, *, token: str | None = None, token_sha256: str | None = None) -> None:
        digest = token_sha256.lower() if token_sha256 else _sha256(token or "")
        if not token and not token_sha256:
            raise ValidationFailed(f"token {name!r} has no secret")
        if token is not None and len(token) < 16:
            raise ValidationFailed(f"token {name!r} is too short: use at least 16 characters")
        self._by_hash[digest] = Principal(name, role)

    @classmethod
    def load(cls, file: Path | None, env_value: str | None) -> TokenTable:
        table = cls()
        if file is not None:
            data = yaml.safe_load(file.read_text()) or {}
            for i, item in enumerate(data.get("tokens", [])):
                where = f"{file}: tokens[{i}]"
                if not isinstance(item, dict) or "name" not in item:
                    raise ValidationFailed(f"{where}: each token needs a name, a role and a token")
                if item.get("token") is not None and item.get("token_sha256") is not None:
                    raise ValidationFailed(f"{where}: give token or token_sha256, not both")
                secret = item.get("token")
                digest = item.get("token_sha256")
                table.add(str(item["name"]), _role(str(item.get("role", "viewer")), where),
                          token=None if secret is None else str(secret),
                          token_sha256=None if digest is None else str(digest))
        for i, part in enumerate(p for p in (env_value or "").split(",") if p.strip()):
            name, _, rest = part.strip().partition(":")
            role, _, token = rest.partition(":")
            if not name or not token:
                raise ValidationFailed(f"MODSERV_TOKENS entry {i + 1} must look like name:role:token")
            table.add(name, _role(role, f"MODSERV_TOKENS entry {i + 1}"), token=token)
        return table

    def authenticate(self, authorization: str | None) -> Principal:
        if not self._by_hash:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("this server needs an API token: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        digest = _sha256(token.strip())
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("unknown API token")


def require(principal: Principal, role: Role, action: str) -> None:
    if principal.role < role:
        have = principal.role.name.lower()
        raise Forbidden(f"{action} needs the {role.name.lower()} role; {principal.name} has {have}")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
