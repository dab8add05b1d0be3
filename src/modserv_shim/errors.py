"""The one error tree of ModelServeShim.

Every error the product raises on purpose derives from :class:`ShimError`.  The
tree is split the way a caller needs it::

    ShimError                         code  HTTP
    ├── ClientError                   (4xx: the request is wrong; nothing changed)
    │   ├── BadRequest                1000  400  malformed JSON / body
    │   ├── ValidationFailed          1001  422  a field breaks a rule
    │   ├── NotFound                  1002  404  unknown service id
    │   ├── PluginNotFound            1003  404  unknown shimlet / pipeline name
    │   ├── StateConflict             1004  409  the service's state forbids the operation
    │   ├── PluginLoadError           1005  422  a plugin failed to import or breaks the contract
    │   ├── NotSupported              1006  409  the shimlet lacks that capability (scale, logs)
    │   ├── PayloadTooLarge           1007  413  the request body is over the server's limit
    │   ├── MethodNotAllowed          1008  405  the path exists, the method does not (Allow lists them)
    │   ├── IdempotencyConflict       1009  409  an Idempotency-Key was used with another body
    │   ├── Unauthenticated           1401  401  no or unknown API token
    │   └── Forbidden                 1403  403  the token's role may not do this
    └── ServerError                   (5xx: something on our side or below us)
        ├── InternalError             2000  500  a bug: an illegal state transition, ...
        ├── BackendUnavailable        2001  503  store / environment not reachable
        └── StepError                 2100  500  a pipeline step failed (retried)
            ├── PermanentStepError    2101  500  ... and retrying cannot help
            └── StepTimeout           2102  504  ... it ran past its timeout (retried)

The HTTP mapping lives in exactly one place (``modserv_shim.server.envelope``);
this module only carries ``code`` and ``http_status`` on each class.  Messages
are written for a person: what is wrong and, where we know it, what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ShimError(Exception):
    """Root of every deliberate ModelServeShim error."""

    code: ClassVar[int] = 2000
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ClientError(ShimError):
    """The caller asked for something wrong; nothing stored was changed."""

    code = 1000
    http_status = 400


class BadRequest(ClientError):
    code = 1000
    http_status = 400


class ValidationFailed(ClientError):
    code = 1001
    http_status = 422


class NotFound(ClientError):
    code = 1002
    http_status = 404


class PluginNotFound(ClientError):
    code = 1003
    http_status = 404


class StateConflict(ClientError):
    code = 1004
    http_status = 409


class PluginLoadError(ClientError):
    code = 1005
    http_status = 422


class NotSupported(ClientError):
    code = 1006
    http_status = 409


class PayloadTooLarge(ClientError):
    code = 1007
    http_status = 413


class MethodNotAllowed(ClientError):
    """``details`` carries the allowed methods; the HTTP layer turns them into an ``Allow`` header."""

    code = 1008
    http_status = 405


class IdempotencyConflict(ClientError):
    code = 1009
    http_status = 409


class Unauthenticated(ClientError):
    code = 1401
    http_status = 401


class Forbidden(ClientError):
    code = 1403
    http_status = 403


class ServerError(ShimError):
    """Something failed on our side or in the environment below us."""

    code = 2000
    http_status = 500


class InternalError(ServerError):
    code = 2000
    http_status = 500


class BackendUnavailable(ServerError):
    code = 2001
    http_status = 503


class StepError(ServerError):
    """A pipeline step failed; the executor retries it per the step's policy."""

    code = 2100
    http_status = 500


class PermanentStepError(StepError):
    """A pipeline step failed in a way that retrying cannot fix (bad model, no fit)."""

    code = 2101
    http_status = 500


class StepTimeout(StepError):
    """A pipeline step ran past its timeout."""

    code = 2102
    http_status = 504


ERROR_TABLE: tuple[type[ShimError], ...] = (
    BadRequest,
    ValidationFailed,
    NotFound,
    PluginNotFound,
    StateConflict,
    PluginLoadError,
    NotSupported,
    PayloadTooLarge,
    MethodNotAllowed,
    IdempotencyConflict,
    Unauthenticated,
    Forbidden,
    InternalError,
    BackendUnavailable,
    StepError,
    PermanentStepError,
    StepTimeout,
)
