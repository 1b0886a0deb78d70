"""The error tree of :mod:`middleware` and how errors become responses.

::

    MiddlewareError
    ├── NotAuthenticated        no acceptable credentials (401; WebSocket close 1008)
    ├── PermissionDenied        authenticated, but lacking permissions (403; close 1008)
    ├── ServiceUnavailable      a dependency cannot answer right now (503; close 1013)
    ├── InvalidToken            a token validator's verdict: not acceptable (401)
    └── ValidatorUnavailable    a token validator's key source is down (503; never cached)

The last two are what a :class:`~middleware.jwt.TokenValidator` raises; the JWT middleware
turns them into :class:`NotAuthenticated` and :class:`ServiceUnavailable` (they are not
subclasses of those, so code catching a request-level error never takes a validator's
verdict for one by accident). Errors carry no HTTP status: an
``on_error`` callable (:data:`ErrorHandler`, default :func:`default_error_response`) maps
them to an ASGI app that answers the request. Clients only ever see generic messages; the
details (``reason``) go to logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Scope
from starlette.websockets import WebSocketClose

__all__ = [
    "ErrorAnswer",
    "ErrorHandler",
    "InvalidToken",
    "MiddlewareError",
    "NotAuthenticated",
    "PermissionDenied",
    "ServiceUnavailable",
    "ValidatorUnavailable",
    "default_error_response",
    "error_answer",
]


class MiddlewareError(Exception):
    """Root of every error raised by :mod:`middleware`.

    ``reason`` is a short machine-readable word for logs and metrics; it is never sent to
    the client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAuthenticated(MiddlewareError):
    """The request has no acceptable credentials (missing, invalid, expired or revoked)."""


class PermissionDenied(MiddlewareError):
    """The principal lacks a required permission; ``required`` lists what was asked for."""

    def __init__(self, reason: str = "forbidden", *, required: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.required = required


class ServiceUnavailable(MiddlewareError):
    """A dependency (Redis, the key source, the permission source) cannot answer now.

    ``retry_after`` is the suggested wait in whole seconds.
    """

    def __init__(self, reason: str, *, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class InvalidToken(MiddlewareError):
    """The token is not acceptable; `reason` says why, in a short machine-readable word.

    Reasons: ``malformed``, ``too_large``, ``algorithm_not_allowed``, ``unsupported_crit``,
    ``bad_signature``, ``key_mismatch`` (the JWKS key does not fit the token's `alg`),
    ``unknown_kid``, ``expired``, ``not_yet_valid`` (`nbf` or `iat` in the future),
    ``bad_issuer``, ``bad_audience``, ``missing_claim``, ``duplicate_claim``,
    ``bad_claim_type`` and ``revoked`` (raised by callers that check a denylist).
    The message never contains the token.
    """

    def __str__(self) -> str:
        return f"invalid token: {self.reason}"


class ValidatorUnavailable(MiddlewareError):
    """The verifier could not reach its key source (JWKS endpoint down, timeout, bad reply).

    A transient condition: it says nothing about the token, so it must never be cached.
    ``reason`` is ``"validator_unavailable"``; ``detail`` says what failed (for logs).
    """

    def __init__(self, detail: str = "key source unavailable") -> None:
        super().__init__("validator_unavailable")
        self.detail = detail

    def __str__(self) -> str:
        return f"validator unavailable: {self.detail}"


ErrorHandler = Callable[[Scope, MiddlewareError], ASGIApp]
"""``on_error(scope, error) -> ASGI app`` that answers the request (or closes the socket)."""

_BEARER_CHALLENGE = 'Bearer error="invalid_token"'
_BODIES: dict[type[MiddlewareError], tuple[int, str, str]] = {
    NotAuthenticated: (401, "unauthorized", "Authentication required."),
    PermissionDenied: (403, "forbidden", "You do not have permission to do this."),
    ServiceUnavailable: (503, "unavailable", "Service temporarily unavailable; retry shortly."),
    # A validator's own errors, if a handler ever gets one: as the middleware maps them.
    InvalidToken: (401, "unauthorized", "Authentication required."),
    ValidatorUnavailable: (503, "unavailable", "Service temporarily unavailable; retry shortly."),
}
_INTERNAL = (500, "error", "Internal error.")


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What a client is told about an error: ``status``, a generic ``code`` and ``detail``
    sentence, and the standard ``headers`` (``WWW-Authenticate`` or ``Retry-After``)."""

    status: int
    code: str
    detail: str
    headers: Mapping[str, str]


def error_answer(error: MiddlewareError) -> ErrorAnswer:
    """The generic answer to ``error``, shared by every response builder (HTTP, FastAPI):
    401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750) when credentials
    were presented, plain ``Bearer`` when none were; 403; 503 with ``Retry-After``; else 500.
    Never contains ``error.reason`` or any other detail."""
    status, code, detail = _INTERNAL
    for cls, triple in _BODIES.items():
        if isinstance(error, cls):
            status, code, detail = triple
            break
    headers: dict[str, str] = {}
    if isinstance(error, (NotAuthenticated, InvalidToken)):
        headers["WWW-Authenticate"] = (
            "Bearer" if error.reason == "missing_token" else _BEARER_CHALLENGE
        )
    elif isinstance(error, ServiceUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, ValidatorUnavailable):
        headers["Retry-After"] = "1"
    return ErrorAnswer(status, code, detail, headers)


def default_error_response(scope: Scope, error: MiddlewareError) -> ASGIApp:
    """The default answer: a generic JSON body, or a WebSocket close before accepting.

    HTTP: :func:`error_answer`'s status and headers, plus ``Cache-Control: no-store``; the
    body is ``{"error": <code>, "detail": <generic sentence>}``. WebSocket: close 1008
    (policy violation) for 401/403, 1013 (try again later) for 503.
    """
    answer = error_answer(error)
    if scope["type"] == "websocket":
        return WebSocketClose(code=1013 if answer.status == 503 else 1008)
    headers = {"Cache-Control": "no-store", **answer.headers}
    return JSONResponse(
        {"error": answer.code, "detail": answer.detail},
        status_code=answer.status,
        headers=headers,
    )
