"""Kubernetes ``Status`` failures, raised inside the simulator and rendered as the API server does.

Every handler raises :class:`StatusError`; the HTTP layer turns it into a JSON body of kind
``Status`` with the matching HTTP code.  The helpers below reproduce the messages of the real
API server (``deployments.apps "x" not found`` and so on) so that client code which shows or
parses them sees the same text as against a real cluster.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType

__all__ = ["StatusError"]

_REASON_BY_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class StatusError(Exception):
    """A failure the API server reports as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASON_BY_CODE.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def to_status(self) -> dict[str, Any]:
        """The ``Status`` body (apiVersion v1, status Failure)."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    # -- constructors mirroring k8s.io/apimachinery/pkg/api/errors ---------------------------

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> StatusError:
        return cls(404, f'{rt.qualified_plural} "{name}" not found',
                   details={"name": name, "group": rt.group, "kind": rt.plural})

    @classmethod
    def already_exists(cls, rt: ResourceType, name: str) -> StatusError:
        return cls(409, f'{rt.qualified_plural} "{name}" already exists', reason="AlreadyExists",
                   details={"name": name, "group": rt.group, "kind": rt.plural})

    @classmethod
    def conflict(cls, rt: ResourceType, name: str, why: str,
                 causes: list[dict[str, str]] | None = None) -> StatusError:
        details: dict[str, Any] = {"name": name, "group": rt.group, "kind": rt.plural}
        if causes:
            details["causes"] = causes
        return cls(409, f'Operation cannot be fulfilled on {rt.qualified_plural} "{name}": {why}',
                   details=details)

    @classmethod
    def modified(cls, rt: ResourceType, name: str) -> StatusError:
        return cls.conflict(rt, name, "the object has been modified; please apply your changes to the "
                                      "latest version and try again")

    @classmethod
    def invalid(cls, rt: ResourceType | None, kind: str, name: str,
                causes: list[tuple[str, str]]) -> StatusError:
        """``causes`` is a list of ``(field, message)``; message already starts with the error type."""
        qualified = rt.qualified_kind if rt else kind
        text = "; ".join(f"{f}: {m}" if f else m for f, m in causes)
        if len(causes) > 1:
            text = "[" + ", ".join(f"{f}: {m}" if f else m for f, m in causes) + "]"
        return cls(
            422,
            f'{qualified} "{name}" is invalid: {text}',
            details={
                "name": name,
                "group": rt.group if rt else "",
                "kind": rt.kind if rt else kind,
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
            },
        )

    @classmethod
    def bad_request(cls, message: str) -> StatusError:
        return cls(400, message)

    @classmethod
    def path_not_found(cls) -> StatusError:
        return cls(404, "the server could not find the requested resource", details={})

    @classmethod
    def method_not_allowed(cls) -> StatusError:
        return cls(405, "the server does not allow this method on the requested resource", details={})

    @classmethod
    def expired(cls, requested: int, oldest: int) -> StatusError:
        return cls(410, f"too old resource version: {requested} ({oldest})", reason="Expired")

    @classmethod
    def unsupported_patch(cls, content_type: str) -> StatusError:
        return cls(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, "
            f"application/strategic-merge-patch+json (got {content_type!r})",
        )
