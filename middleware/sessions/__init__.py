"""Server-side sessions on the ASGI side, over the client's one session store.

:mod:`~middleware.sessions.manager` (:class:`SessionManager`: the store behind an L1
cache), :mod:`~middleware.sessions.handle` (:class:`SessionHandle`, :class:`SessionData`:
per-request state), :mod:`~middleware.sessions.cookie` (:class:`SessionCookie`) and
:mod:`~middleware.sessions.middleware` (:class:`SessionMiddleware`).
"""

from __future__ import annotations

from middleware.sessions.cookie import SessionCookie
from middleware.sessions.handle import SessionData, SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import SessionMiddleware

__all__ = ["SessionCookie", "SessionData", "SessionHandle", "SessionManager", "SessionMiddleware"]
