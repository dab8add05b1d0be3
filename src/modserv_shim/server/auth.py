"""API tokens and roles.

Roles are ordered: ``viewer`` (read) < ``operator`` (deploy, delete, scale, retry)
< ``admin`` (load plugins).  A token's *name* is the operator recorded in step
logs and events; the token itself is never logged.  Tokens come from a YAML file
(``tokens: [{name, role, token | token_sha256, groups}]``) and/or ``MODSERV_TOKENS``
(``name:role:token,...``, no groups).  ``groups`` are names a pipeline may check: ``privatellm``
deploys a private model only for members of the groups its secret allows.  With no token configured the server accepts
anonymous requests as admin, and the CLI only allows that on a loopback address.

Each secret may appear once, across the file and ``MODSERV_TOKENS`` together: a secret
listed twice is refused (naming both entries, never the secret), since it could only
keep one of its roles.  One *name* with several secrets is fine (rotating a token: add
the new one, move the clients, remove the old one); each secret keeps its own role.
``token_sha256`` is the SHA-256 of the token as 64 hexadecimal characters.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from modserv_shim.config import ConfigFileError, read_yaml_mapping
from modserv_shim.errors import Forbidden, Unauthenticated, ValidationFailed
from modserv_shim.plugins import Caller


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    groups: frozenset[str] = frozenset()

    def caller(self) -> Caller:
        """The caller as plugins see it."""
        return Caller(self.name, self.role.name.lower(), self.groups)


ANONYMOUS = Principal("anonymous", Role.ADMIN)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _role(value: str, where: str, *, quote: bool = True) -> Role:
    try:
        return Role[value.strip().upper()]
    except KeyError:
        shown = f" {value!r}" if quote else ""  # in name:role:token, a misplaced secret could sit where the role goes
        raise ValidationFailed(f"{where}: unknown role{shown} (viewer, operator or admin)") from None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = ("name", "role", "token", "token_sha256", "groups")
_ENTRY_SHAPE = "{name, role, token | token_sha256, optional groups}"
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


class TokenTable:
    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}
        self._where: dict[str, str] = {}  # digest -> the entry it came from, for messages

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, name: str, role: Role, *, token: str | None = None, token_sha256: str | None = None,
            where: str | None = None, groups: frozenset[str] = frozenset()) -> None:
        """Add one token; ``where`` names the entry in messages (``tokens.yaml: tokens[2]``)."""
        label = f"token {name!r}" + (f" ({where})" if where else "")
        if not name.strip():
            raise ValidationFailed(f"{where or 'a token'}: the token's name is empty")
        if token and token_sha256:
            raise ValidationFailed(f"{label}: give token or token_sha256, not both")
        if token_sha256:
            digest = token_sha256.strip().lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValidationFailed(f"{label}: token_sha256 must be the SHA-256 of the token as 64 hexadecimal"
                                       f" characters, not {len(digest)} characters of text")
        elif token:
            if len(token) < 16:
                raise ValidationFailed(f"token {name!r} is too short: use at least 16 characters")
            digest = _sha256(token)
        else:
            raise ValidationFailed(f"token {name!r} has no secret")
        if digest in self._by_hash:
            first = self._by_hash[digest]
            raise ValidationFailed(f"{label} has the same secret as token {first.name!r} ({self._where[digest]}):"
                                   " each token needs its own secret")
        self._by_hash[digest] = Principal(name, role, groups)
        self._where[digest] = where or f"token {name!r}"

    @classmethod
    def load(cls, file: Path | None, env_value: str | None) -> TokenTable:
        """The tokens of a YAML file and of ``MODSERV_TOKENS``; any problem is a one-line
        :class:`ValidationFailed` naming the file or entry, never a secret."""
        table = cls()
        if file is not None:
            table._load_file(file)
        for i, part in enumerate(p for p in (env_value or "").split(",") if p.strip()):
            where = f"MODSERV_TOKENS entry {i + 1}"
            name, _, rest = part.strip().partition(":")
            role, _, token = rest.partition(":")
            if not name.strip() or not token:
                raise ValidationFailed(f"{where} must look like name:role:token")
            table.add(name.strip(), _role(role, where, quote=False), token=token, where=where)
        return table

    def _load_file(self, file: Path) -> None:
        try:
            data = read_yaml_mapping(file, "tokens file")
        except ConfigFileError as exc:
            raise ValidationFailed(str(exc)) from None
        unknown = sorted(str(k) for k in data if k != "tokens")
        if unknown:
            raise ValidationFailed(f"tokens file {file}: unknown key(s) {', '.join(map(repr, unknown))}; it holds"
                                   f" one key, tokens: a list of {_ENTRY_SHAPE}")
        items = data.get("tokens") or []
        if not isinstance(items, list):
            raise ValidationFailed(f"tokens file {file}: tokens must be a list of {_ENTRY_SHAPE}, not {_kind(items)}")
        for i, item in enumerate(items):
            where = f"{file}: tokens[{i}]"
            if not isinstance(item, dict) or item.get("name") in (None, ""):
                raise ValidationFailed(f"{where}: each token needs a name, a role and a token ({_ENTRY_SHAPE})")
            extra = sorted(str(k) for k in item if k not in _ENTRY_KEYS)
            if extra:
                raise ValidationFailed(f"{where}: unknown key(s) {', '.join(map(repr, extra))};"
                                       f" an entry is {_ENTRY_SHAPE}")
            secret, digest = item.get("token"), item.get("token_sha256")
            for key, value in (("token", secret), ("token_sha256", digest)):
                if value is not None and not isinstance(value, str):
                    raise ValidationFailed(f"{where}: {key} must be text (put it in quotes), not {_kind(value)}")
            self.add(str(item["name"]), _role(str(item.get("role", "viewer")), where),
                     token=secret, token_sha256=digest, where=where, groups=_groups(item.get("groups"), where))

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


def _groups(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise ValidationFailed(f"{where}: groups must be a list of names, not {_kind(value)}")
    bad = [g for g in value if not _GROUP_RE.fullmatch(g)]
    if bad:
        raise ValidationFailed(f"{where}: group {bad[0][:64]!r} is not a name (letters, digits, '.', '_', '-';"
                               " at most 63 characters)")
    return frozenset(value)


def require(principal: Principal, role: Role, action: str) -> None:
    if principal.role < role:
        have = principal.role.name.lower()
        raise Forbidden(f"{action} needs the {role.name.lower()} role; {principal.name} has {have}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: ``localhost``, 127.0.0.0/8 or ``::1``,
    also bracketed (``[::1]``) or IPv4-mapped (``::ffff:127.0.0.1``).  ``""``, ``0.0.0.0`` and
    ``::`` mean every interface; any other name is not trusted to resolve to loopback."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in ("localhost", "localhost."):
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback
