"""Server-side sessions: the L1 manager, the per-request handle, the cookie and the middleware."""

from __future__ import annotations

from middleware.sessions.cookie import SessionCookie
from middleware.sessions.handle import SessionData, SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import SessionMiddleware

__all__ = ["SessionCookie", "SessionData", "SessionHandle", "SessionManager", "SessionMiddleware"]
