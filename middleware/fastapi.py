"""FastAPI dependencies over what the middleware put in the scope.

::

    from middleware.fastapi import Claims, RequirePermissions, SessionHandleDep

    @app.get("/api/admin", dependencies=[Depends(RequirePermissions("admin:read"))])
    async def admin(claims: Claims) -> dict[str, str]:
        return {"sub": claims.sub}

Failures raise FastAPI's ``HTTPException`` (so the application's exception handlers
apply) with generic messages: 401 with ``WWW-Authenticate: Bearer``, 403, and 503 with
``Retry-After``. Imported on demand: FastAPI is an optional dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from gateway_redis.sessions import Session
from middleware.errors import MiddlewareError, NotAuthenticated, error_answer
from middleware.jwt.claims import TokenClaims
from middleware.scope import (
    get_claims_or_none,
    get_permission_context,
    get_session_handle,
)
from middleware.sessions.handle import SessionHandle

__all__ = [
    "Claims",
    "OptionalClaims",
    "RequirePermissions",
    "RequiredSession",
    "SessionHandleDep",
    "current_claims",
    "current_session",
    "http_exception",
    "optional_claims",
    "session_handle",
]


# The generic 401 text, with a session challenge instead of a bearer one.
_NO_SESSION = error_answer(NotAuthenticated("missing_session"))


def http_exception(error: MiddlewareError) -> HTTPException:
    """The ``HTTPException`` for a middleware error (:func:`~middleware.errors.error_answer`:
    generic detail, standard headers)."""
    answer = error_answer(error)
    return HTTPException(answer.status, answer.detail, dict(answer.headers) or None)


async def optional_claims(conn: HTTPConnection) -> TokenClaims | None:
    """The verified claims, or None (public path without a token)."""
    return get_claims_or_none(conn)


async def current_claims(conn: HTTPConnection) -> TokenClaims:
    """The verified claims; 401 without them."""
    claims = get_claims_or_none(conn)
    if claims is None:
        raise http_exception(NotAuthenticated("missing_token"))
    return claims


Claims = Annotated[TokenClaims, Depends(current_claims)]
"""A parameter annotation: the verified claims (401 without them)."""
OptionalClaims = Annotated[TokenClaims | None, Depends(optional_claims)]
"""A parameter annotation: the verified claims or None."""


class RequirePermissions:
    """A dependency that passes only when every one of ``permissions`` is granted.

    Use as ``Depends(RequirePermissions("orders:read"))``; its value is the principal's
    full permission set. Needs :class:`~middleware.rbac.RBACMiddleware`.
    """

    def __init__(self, *permissions: str) -> None:
        if not permissions or not all(isinstance(p, str) and p for p in permissions):
            raise ValueError("give one or more permissions")
        if any("*" in p for p in permissions):
            raise ValueError("required permissions cannot contain wildcards")
        self.permissions = permissions

    async def __call__(self, conn: HTTPConnection) -> frozenset[str]:
        context = get_permission_context(conn)
        try:
            await context.require(*self.permissions)
            return await context.permissions()
        except MiddlewareError as error:
            raise http_exception(error) from None


async def session_handle(conn: HTTPConnection) -> SessionHandle:
    """The request's :class:`~middleware.sessions.SessionHandle`."""
    return get_session_handle(conn)


async def current_session(conn: HTTPConnection) -> Session:
    """The request's session; 401 without one."""
    session = get_session_handle(conn).session
    if session is None:
        challenge = {"WWW-Authenticate": 'Cookie realm="session"'}
        raise HTTPException(401, _NO_SESSION.detail, challenge)
    return session


SessionHandleDep = Annotated[SessionHandle, Depends(session_handle)]
"""A parameter annotation: the request's session handle."""
RequiredSession = Annotated[Session, Depends(current_session)]
"""A parameter annotation: the request's session (401 without one)."""
