"""Server-side sessions for ``http`` and ``websocket`` scopes (pure ASGI).

::

    sessions = SessionManager(client=client)
    app.add_middleware(SessionMiddleware, sessions=sessions)

    async def login(request):
        handle = get_session_handle(request)
        await handle.create(user_id, {"name": "Alice"})   # new ID, cookie set on the response
    async def page(request):
        request.session["theme"] = "dark"                  # saved after the endpoint

The session ID comes from a cookie (``__Host-session`` by default: ``Secure``, ``HttpOnly``,
``SameSite=Lax``, ``Path=/``) and/or a request header (``header_name``). The session's
metadata is put in ``scope["session"]`` as a ``dict`` (a :class:`SessionData`, a subclass
that only notes whether it was written to), so ``request.session`` works;
:class:`SessionHandle` (``get_session_handle(request)``) creates, regenerates and deletes.
When the endpoint starts its response, the fields that changed (compared by JSON value, so
nested changes count; a session nothing wrote to is not compared at all) are merged into
the stored session in one atomic update that never resurrects a session deleted meanwhile
(a concurrent logout wins; the cookie is then cleared). Data written while there is no
session is discarded: sessions are created explicitly, so no ID the server did not issue
is ever stored. Sliding expiry: a session is touched at most once per
``refresh_interval`` (and at least twice per idle timeout).

Redis unavailable (``on_unavailable``): ``"error"`` (default) answers 503 with
``Retry-After`` to requests that carry a session ID (requests without one never need Redis);
``"anonymous"`` serves them without a session, leaves the cookie alone and discards writes.
``required_paths`` always get ``"error"`` and ``optional_paths`` always ``"anonymous"``, so
a gateway can keep token-only routes up and still refuse session routes during an outage.
A save that fails because of an outage turns the response into a 503 (nothing was sent yet).
WebSocket scopes: loaded at the handshake and saved when the app returns (or, handed over
to the Gateway's bridge, when the socket ends); cookies cannot be changed there.

The warm path (a session in L1, no touch due) awaits nothing and starts no span: it sets
``gateway.session.cache.result = "l1"`` on the current (server) span instead. Loads from
Redis and saves keep their ``gateway.session load`` / ``gateway.session save`` spans.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from typing import Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import telemetry
from gateway_redis.errors import RedisUnavailable, SessionNotFound
from gateway_redis.sessions import Session
from gateway_redis.sessions.codec import is_valid_id
from gateway_redis.support import log_fields
from middleware._handoff import current_handoff
from middleware._memo import Memo
from middleware._paths import PathSet, route_path
from middleware.errors import ErrorHandler, ServiceUnavailable, default_error_response
from middleware.scope import SESSION_KEY
from middleware.sessions.cookie import TOKEN_CHARS, SessionCookie
from middleware.sessions.handle import SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.responder import SessionResponder
from middleware.telemetry import ATTR_SESSION_RESULT

__all__ = ["DEFAULT_COOKIE", "SessionMiddleware"]

_log = logging.getLogger(__name__)
DEFAULT_COOKIE = SessionCookie()
"""The cookie :class:`SessionMiddleware` writes unless told otherwise."""
_L1_SPAN_ATTRS = {ATTR_SESSION_RESULT: "l1"}
_URL_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_L1_LOOKUP = telemetry.lookup_tally("session", "l1")


class SessionMiddleware:
    """Loads the session into the scope and saves its changes; see the module docstring.

    ``sessions`` is the :class:`SessionManager`. ``cookie`` (a :class:`SessionCookie`, or
    None for header-only) and ``header_name`` (e.g. ``"X-Session-ID"``; read first, and
    sent back when a session is issued, empty when it ends) say where IDs travel; at least
    one is needed. ``refresh_interval`` (seconds) bounds how often a session is touched.
    ``on_unavailable`` is ``"error"`` or ``"anonymous"``, overridden by ``required_paths``
    (error) and ``optional_paths`` (anonymous), exact or ``/prefix/*``; ``retry_after``
    (seconds) goes in the 503's ``Retry-After``. ``on_error`` builds error responses.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        sessions: SessionManager,
        cookie: SessionCookie | None = DEFAULT_COOKIE,
        header_name: str | None = None,
        refresh_interval: float = 60.0,
        on_unavailable: Literal["error", "anonymous"] = "error",
        required_paths: Iterable[str] = (),
        optional_paths: Iterable[str] = (),
        retry_after: int = 1,
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not isinstance(sessions, SessionManager):
            raise ValueError("sessions must be a SessionManager")
        if cookie is not None and not isinstance(cookie, SessionCookie):
            raise ValueError("cookie must be a SessionCookie or None")
        if header_name is not None and (not header_name or not set(header_name) <= TOKEN_CHARS):
            raise ValueError(f"header_name must be a header name, got {header_name!r}")
        if cookie is None and header_name is None:
            raise ValueError("configure a cookie, a header_name or both")
        if isinstance(refresh_interval, bool) or not isinstance(refresh_interval, (int, float)):
            raise ValueError("refresh_interval must be seconds")
        if not 0 < refresh_interval <= 86400:
            raise ValueError("refresh_interval must be in (0, 86400] seconds")
        if on_unavailable not in ("error", "anonymous"):
            raise ValueError("on_unavailable must be 'error' or 'anonymous'")
        if type(retry_after) is not int or not 0 <= retry_after <= 3600:
            raise ValueError("retry_after must be an int in [0, 3600]")
        self.app = app
        self._manager = sessions
        self._cookie = cookie
        self._header = header_name.lower().encode("latin-1") if header_name else None
        self._header_name = header_name
        self._cookie_name = cookie.name if cookie is not None else None
        # Cookie header value -> session ID (a pure parse; well-formed IDs only), bounded in
        # entries and bytes; the hot path reads the dict.
        self._id_memo: Memo[bytes, str] = Memo()
        self._ids = self._id_memo.entries
        # Cookie headers without this substring cannot hold the session cookie.
        name = self._cookie_name
        self._cookie_marker = name.encode("latin-1") + b"=" if name is not None else None
        self._refresh = float(refresh_interval)
        self._anonymous = on_unavailable == "anonymous"
        self._required = PathSet(required_paths)
        self._optional = PathSet(optional_paths)
        self._retry_after = retry_after
        self._on_error = on_error

    @property
    def manager(self) -> SessionManager:
        """The session manager."""
        return self._manager

    @property
    def refresh_interval(self) -> float:
        """The most seconds a session is served without being touched."""
        return self._refresh

    @property
    def cookie_marker(self) -> bytes | None:
        """``b"<cookie name>="``: a ``Cookie`` header without it cannot hold the session
        cookie (None when sessions travel in a header only)."""
        return self._cookie_marker

    @property
    def header_key(self) -> bytes | None:
        """The session header's name as in an ASGI scope (lower-case bytes), or None."""
        return self._header

    def session_id(self, scope: Scope, cookie: bytes) -> str | None:
        """The session ID from ``cookie``, the one ``Cookie`` header of ``scope`` that holds
        :attr:`cookie_marker` (memoized for the usual shape; every header is read when it is
        not that simple). None when missing, empty or given twice with different values."""
        found = self._simple_cookie(cookie)
        return found if found is not None else self._parse_cookies(scope)

    def responder(
        self, scope: Scope, receive: Receive, send: Send, handle: SessionHandle
    ) -> SessionResponder:
        """The per-request :class:`SessionResponder` that saves ``handle`` before the
        response starts (for a caller that put ``handle`` in the scope itself)."""
        return SessionResponder(self, scope, receive, send, handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        session_id = self._read_id(scope)
        if session_id is None:
            handle = SessionHandle(self._manager, None, True)
        else:
            # The warm path: from L1 when no touch is due; no await, no span.
            entry = self._manager.entry(session_id, self._refresh)
            if entry is not None:
                _L1_LOOKUP.value += 1
                if telemetry.tracing_enabled():
                    telemetry.annotate_current_span(_L1_SPAN_ATTRS)
                handle = SessionHandle.warm(self._manager, entry.session, entry.flat)
            else:
                found = await self._load_or_refuse(scope, receive, send, session_id)
                if found is None:
                    return
                handle = found
        scope["session"] = handle.data
        scope[SESSION_KEY] = handle
        if kind == "websocket":
            handoff = current_handoff()
            if handoff is not None:  # handed over to the bridge: saved when the socket ends
                handoff.after(functools.partial(self._save_quietly, handle))
                return await self.app(scope, receive, send)
            try:
                await self.app(scope, receive, send)
            finally:
                await self._save_quietly(handle)
            return
        responder = SessionResponder(self, scope, receive, send, handle)
        try:
            await self.app(scope, receive, responder.wrapped_send)
        except ServiceUnavailable as error:
            if responder.started:
                raise
            await responder.fail(error)

    async def _load_or_refuse(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> SessionHandle | None:
        """The handle for ``session_id`` loaded from Redis; None when an error response
        was sent instead (Redis unavailable on a path that needs the session)."""
        session: Session | None = None
        available, clear = True, False
        try:
            if telemetry.tracing_enabled():
                with telemetry.tracer.start_as_current_span(
                    "gateway.session load", record_exception=False
                ):
                    session = await self._load(session_id)
            else:
                session = await self._load(session_id)
        except SessionNotFound:
            clear = True  # unknown or ended: the client should drop it
        except RedisUnavailable:
            if not self._anonymous_on_outage(route_path(scope)):
                error = ServiceUnavailable("session_unavailable")
                await self.error_response(scope, error)(scope, receive, send)
                return None
            available = False
        return SessionHandle(self._manager, session, available, stale_id=clear)

    def _anonymous_on_outage(self, path: str) -> bool:
        if self._required.matches(path):
            return False
        return self._anonymous or self._optional.matches(path)

    async def _load(self, session_id: str) -> Session:
        session = await self._manager.get(session_id)
        now = time.time()
        last = session.last_accessed_at.timestamp()
        interval = self._refresh
        if session.idle_expires_at is not None:
            interval = min(interval, (session.idle_expires_at.timestamp() - last) / 2)
        if now - last >= interval:
            # On an outage the session is still valid; it is touched next time.
            with contextlib.suppress(RedisUnavailable):
                session = await self._manager.touch(session_id)
        return session

    def _read_id(self, scope: Scope) -> str | None:
        header = self._header
        marker = self._cookie_marker
        cookie: bytes | None = None
        several = False
        for name, value in scope["headers"]:
            if name == header and value:
                return value.decode("latin-1").strip() or None
            if name == b"cookie" and marker is not None and marker in value:
                several = cookie is not None
                cookie = value
        if cookie is None:
            return None
        if not several:
            found = self._simple_cookie(cookie)
            if found is not None:
                return found
        return self._parse_cookies(scope)

    def _simple_cookie(self, value: bytes) -> str | None:
        """The session ID from one ``Cookie`` header in the usual shape: our cookie once, at
        the start or after ``;``/``; ``, its value URL-safe characters and ``.`` up to ``;``
        or the end. None when the header is not that simple (:meth:`_parse_cookies` then
        decides). Memoized by the header value (a pure parse) when the ID is well formed."""
        found = self._ids.get(value)
        if found is not None:
            return found
        marker = self._cookie_marker
        if marker is None:
            return None
        start = value.find(marker)
        if start < 0:
            return None
        if start:
            before = value[start - 1]
            if before == 0x20:  # "; name=..."
                if start < 2 or value[start - 2] != 0x3B:
                    return None
            elif before != 0x3B:  # ";name=..."
                return None
        begin = start + len(marker)
        end = value.find(b";", begin)
        raw = value[begin:] if end < 0 else value[begin:end]
        if not raw or raw.translate(None, _URL_SAFE) or value.find(marker, begin) >= 0:
            return None
        found = raw.decode("ascii")
        if is_valid_id(found):  # else never remembered; the manager refuses it unasked
            self._id_memo.remember(value, found, len(value), len(found))
        return found

    def _parse_cookies(self, scope: Scope) -> str | None:
        """The session cookie's value from every ``Cookie`` header, or None when it is
        missing, empty or given twice with different values."""
        found: set[str] = set()
        marker = self._cookie_marker
        for name, value in scope["headers"]:
            if name == b"cookie" and marker is not None and marker in value:
                for item in value.decode("latin-1").split(";"):
                    key, sep, val = item.strip().partition("=")
                    if sep and key == self._cookie_name and val:
                        found.add(val.strip('"'))
        # Two different values (cookie tossing, a stale parent-domain cookie): trust neither.
        return found.pop() if len(found) == 1 else None

    def error_response(self, scope: Scope, error: ServiceUnavailable) -> ASGIApp:
        """The response to ``error`` (a session store outage): ``on_error``'s, with this
        layer's ``Retry-After``."""
        error.retry_after = self._retry_after
        return self._on_error(scope, error)

    def response_headers(self, handle: SessionHandle, headers: MutableHeaders) -> None:
        """Set (issued) or clear (ended) the session ID on a response's ``headers``."""
        session = handle.session
        if handle.issued and session is not None:
            max_age = max(1, int(session.expires_at.timestamp() - time.time()))
            if self._cookie is not None:
                headers.append("set-cookie", self._cookie.header(session.id, max_age))
            if self._header_name is not None:
                headers[self._header_name] = session.id
        elif handle.ended:
            if self._cookie is not None:
                headers.append("set-cookie", self._cookie.header("", 0))
            if self._header_name is not None:
                headers[self._header_name] = ""
        else:
            return
        if "cache-control" not in headers:
            headers["cache-control"] = "no-store"

    async def _save_quietly(self, handle: SessionHandle) -> None:
        try:
            await handle.save()
        except Exception as exc:
            _log.warning(
                "session not saved at the end of a websocket: %s",
                type(exc).__name__,
                extra=log_fields("sessions", "session_save_failed", type(exc).__name__),
            )
