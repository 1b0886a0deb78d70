"""Server-side sessions: the store seam, the L1 manager, the per-request handle, the cookie
and the middleware."""

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
