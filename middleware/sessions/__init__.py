"""Server-side sessions on the ASGI side, over a session store.

:mod:`~middleware.sessions.backend` (:class:`SessionBackend`: the store seam, which the
client's one :class:`~gateway_redis.SessionStore` and in-memory twins implement),
:mod:`~middleware.sessions.manager` (:class:`SessionManager`: the store behind an L1
cache), :mod:`~middleware.sessions.handle` (:class:`SessionHandle`, :class:`SessionData`:
per-request state), :mod:`~middleware.sessions.cookie` (:class:`SessionCookie`) and
:mod:`~middleware.sessions.middleware` (:class:`SessionMiddleware`) with
:mod:`~middleware.sessions.responder` (its per-response part).
"""

from __future__ import annotations

from middleware.sessions.backend import SessionBackend
from middleware.sessions.cookie import SessionCookie
from middleware.sessions.handle import SessionData, SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import SessionMiddleware

__all__ = [
    "SessionBackend",
    "SessionCookie",
    "SessionData",
    "SessionHandle",
    "SessionManager",
    "SessionMiddleware",
]
